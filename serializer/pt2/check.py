"""Refuse a ``.pt2`` that ``torch.export.load`` would run code from, before torch sees it.

``torch.export.load`` unpickles some payloads with ``weights_only=False`` (tensor
subclasses, constants that are objects, sample inputs that ``weights_only`` refuses), loads
AOTInductor shared libraries it finds, and evaluates the program JSON's symbolic shapes and
guards as Python, and its graphs may call any registered operator or ``torch.*`` callable
(``aten::from_file`` writes files).  :func:`check_pt2_payloads` is an allow-list of what a
plain exported program holds and calls.  Hardening, not a sandbox: load archives from
stores you trust.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from typing import Any

import torch

from ..errors import ArchiveError
from .program import check_program_json, check_program_operators

#: The one program a ``.pt2`` loaded here holds (``torch.export.save`` names it "model").
PROGRAM = "model"
#: Records such an archive holds besides its payloads and extra files (below the zip's root).
_PLAIN_RECORDS = frozenset(
    {
        "archive_format",
        "archive_version",
        "byteorder",
        ".data/version",
        ".data/serialization_id",
        f"models/{PROGRAM}.json",
        f"data/sample_inputs/{PROGRAM}.pt",
    }
)
#: Payload configs: config record -> (folder of its payloads, the only payload names allowed:
#: raw tensor bytes; ``custom_obj_*`` / ``opaque_obj_*`` are unpickled by torch).
_PAYLOAD_CONFIGS = {
    f"data/weights/{PROGRAM}_weights_config.json": ("data/weights/", re.compile(r"weight_[0-9]{1,9}")),
    f"data/constants/{PROGRAM}_constants_config.json": ("data/constants/", re.compile(r"tensor_[0-9]{1,9}")),
}


def _refuse(where: str, why: str) -> ArchiveError:
    return ArchiveError(f"{where}: {why}; refused (torch.export.load could run code from it)")


def check_pt2_payloads(path: str, *, source: str | None = None) -> None:
    """Refuse a ``.pt2`` unless it holds a plain exported program, and nothing
    ``torch.export.load`` would unpickle, evaluate or load as code.

    An allow-list.  The zip is read twice, by Python's ``zipfile`` and by torch's own reader
    (``PyTorchFileReader``, the one ``torch.export.load`` uses); the two must see the same
    records, or a crafted zip could show each a different central directory.  Then: one
    root folder, no duplicate names, exactly the records of one program named "model" (its
    JSON, its sample inputs, its weights and constants configs), payloads that those
    configs name as raw tensor bytes (``use_pickle`` false, a tensor_meta, a
    ``weight_N``/``tensor_N`` name; an empty record only for an empty tensor), and extra
    files.  Every string of the program JSON that torch evaluates (symbolic shapes, guards)
    must be the plain form torch writes, and every operator its graphs call must be on the
    allow-list of :mod:`serializer.operators` (:mod:`serializer.pt2.program`).  The sample inputs
    must load with ``weights_only=True``.  A program whose weights live on CUDA is refused
    on a host without it, with that reason.  Everything is read through torch's reader.

    Raises:
        ArchiveError: naming what was found.
    """
    where = source or path
    try:
        reader, seen = _read_records(path, where)
        payloads, devices = _check_payload_configs(reader, seen, where)
        _check_no_other_records(seen, payloads, where)
        program = f"models/{PROGRAM}.json"
        if program not in seen:
            raise ArchiveError(f"{where}: not a plain exported program: no {program}")
        graph = json.loads(bytes(reader.get_record(program)))
        try:
            check_program_json(graph)
        except ArchiveError as exc:
            raise _refuse(where, f"its program JSON holds code: {exc}") from None
        try:
            check_program_operators(graph)
        except ArchiveError as exc:
            raise ArchiveError(f"{where}: refused: {program} {exc}") from None
        if "cuda" in devices and not torch.cuda.is_available():
            raise ArchiveError(
                f"{where}: its weights were exported on CUDA and torch.export.load puts them back there; "
                "this host has no CUDA: load it on a GPU host"
            )
        sample_inputs = f"data/sample_inputs/{PROGRAM}.pt"
        if sample_inputs in seen:
            try:
                torch.load(io.BytesIO(bytes(reader.get_record(sample_inputs))), weights_only=True, map_location="cpu")
            except Exception as exc:
                raise _refuse(
                    where, f"its sample inputs are not plain tensors (weights_only=True refused them: {exc})"
                ) from exc
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ArchiveError(f"{where}: not a readable .pt2 archive: {exc}") from exc


def _read_records(path: str, where: str) -> tuple[Any, set[str]]:
    """torch's reader of the zip and the records it sees (below the root), once Python's
    ``zipfile`` was shown the same records under one root, none named twice."""
    with zipfile.ZipFile(path) as zf:
        names = [info.filename for info in zf.infolist()]
    if len(set(names)) != len(names):
        raise _refuse(where, "the zip names a record twice")
    roots = {name.partition("/")[0] for name in names}
    if len(roots) != 1:
        raise _refuse(where, f"records under {len(roots)} root folders")
    listed = {name.partition("/")[2] for name in names}
    try:
        reader = torch._C.PyTorchFileReader(path)
        seen = set(reader.get_all_records())
    except RuntimeError as exc:
        raise ArchiveError(f"{where}: torch cannot read it as a zip: {exc}") from exc
    if seen != listed:
        differ = sorted(seen ^ listed)[:3]
        raise _refuse(where, f"torch's reader and Python's see different records ({', '.join(differ)})")
    return reader, seen


def _check_payload_configs(reader: Any, seen: set[str], where: str) -> tuple[set[str], set[str]]:
    """The payload records the weights and constants configs name, and the devices their
    tensors live on; refused where a config names anything but a raw tensor."""
    payloads: set[str] = set()
    devices: set[str] = set()
    bad: list[str] = []
    for config_name, (folder, allowed) in _PAYLOAD_CONFIGS.items():
        if config_name not in seen:
            raise ArchiveError(f"{where}: not a plain exported program: no {config_name}")
        raw = json.loads(bytes(reader.get_record(config_name)))
        config = raw.get("config") if isinstance(raw, dict) else None
        if not isinstance(config, dict):
            raise ArchiveError(f"{where}: {config_name} is not a payload config")
        for fqn, meta in config.items():
            name = meta.get("path_name") if isinstance(meta, dict) else None
            tensor_meta = meta.get("tensor_meta") if isinstance(meta, dict) else None
            if (
                not isinstance(name, str)
                or not allowed.fullmatch(name)
                or meta.get("use_pickle") is not False
                or not isinstance(tensor_meta, dict)
            ):
                bad.append(str(fqn))
                continue
            payloads.add(folder + name)
            device = tensor_meta.get("device")
            devices.add(str(device.get("type")) if isinstance(device, dict) else "?")
            if folder + name in seen and reader.get_record_size(folder + name) == 0 and _numel(tensor_meta) != 0:
                bad.append(f"{fqn} (an empty record for a tensor of {_numel(tensor_meta)} elements)")
    if bad:
        raise _refuse(where, f"it holds pickled or object payloads ({', '.join(bad[:3])})")
    return payloads, devices


def _check_no_other_records(seen: set[str], payloads: set[str], where: str) -> None:
    odd = [
        name
        for name in seen
        if name not in _PLAIN_RECORDS
        and name not in _PAYLOAD_CONFIGS
        and name not in payloads
        and not (name.startswith("extra/") and len(name) > len("extra/"))
    ]
    if odd:
        raise _refuse(where, f"records other than a plain exported program ({', '.join(sorted(odd)[:3])})")


def _numel(tensor_meta: dict[str, Any]) -> int:
    """Elements of a tensor as its tensor_meta gives them (-1 where a size is symbolic)."""
    total = 1
    for size in tensor_meta.get("sizes") or []:
        value = size.get("as_int") if isinstance(size, dict) else None
        if not isinstance(value, int):
            return -1
        total *= value
    return total
