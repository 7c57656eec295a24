"""Loading a hostile ``.pt2``: every way torch 2.13's loader can run code from an archive is
refused before torch reads it, and the payload never runs.

Each hostile archive is a real ``torch.export.save`` archive rewritten with ``zipfile``;
its payload is a pickle that would create a marker file when unpickled.
"""

from __future__ import annotations

import contextlib
import io
import json
import pickle
import struct
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.errors import ArchiveError
from serializer.pt2.check import check_pt2_payloads
from serializer.pt2.load import _weights_only_loads, load_pt2_file

Entries = list[tuple[str, bytes]]

_TENSOR_META = {
    "dtype": 1,  # uint8: any payload size passes torch's size check
    "sizes": [],
    "requires_grad": False,
    "device": {"type": "cpu", "index": None},
    "strides": [],
    "storage_offset": {"as_int": 0},
    "layout": 7,
}


class _Marker:
    """Unpickling it writes a file: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"__import__('pathlib').Path({self.path!r}).write_text('ran')",))


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    path = tmp_path / "archive.pt2"  # torch names the zip's root folder after the file
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(2, 3),))
    torch.export.save(program, str(path), extra_files={"labels.txt": "a\nb\n"})
    return path


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


def _rewrite(good: Path, out: Path, change: Callable[[Entries], Entries]) -> Path:
    with zipfile.ZipFile(good) as src:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate name", category=UserWarning)
        for name, data in change(entries):
            dst.writestr(name, data)
    return out


def _constants(config: dict[str, Any]) -> Callable[[Entries], Entries]:
    def change(entries: Entries) -> Entries:
        return [
            (name, json.dumps({"config": config}).encode() if name.endswith("model_constants_config.json") else data)
            for name, data in entries
        ]

    return change


def _hostile(kind: str, evil: bytes) -> Callable[[Entries], Entries]:
    if kind == "legacy weights file":
        return lambda entries: [*entries, ("archive/data/weights/model.pt", evil)]
    if kind == "legacy constants file":
        return lambda entries: [*entries, ("archive/data/constants/model.pt", evil)]
    if kind in ("opaque object", "custom object"):
        prefix = "opaque_obj_0" if kind == "opaque object" else "custom_obj_0"
        meta = {"path_name": prefix, "is_param": False, "use_pickle": False, "tensor_meta": _TENSOR_META}
        base = _constants({"obj": meta})
        return lambda entries: [*base(entries), (f"archive/data/constants/{prefix}", evil)]
    if kind == "pickled weight":

        def change(entries: Entries) -> Entries:
            out = []
            for name, data in entries:
                if name.endswith("model_weights_config.json"):
                    config = json.loads(data)
                    for meta in config["config"].values():
                        meta["use_pickle"] = True
                    out.append((name, json.dumps(config).encode()))
                else:
                    out.append((name, data))
            return out

        return change
    if kind == "duplicate config":
        meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}

        def change(entries: Entries) -> Entries:
            out: Entries = []
            for name, data in entries:
                if name.endswith("model_constants_config.json"):
                    out.append((name, json.dumps({"config": {"obj": meta}}).encode()))  # torch reads this copy
                out.append((name, data))
            return [*out, ("archive/data/constants/opaque_obj_0", evil)]

        return change
    if kind == "pickled sample inputs":
        return lambda entries: [
            (name, evil if name.endswith("data/sample_inputs/model.pt") else data) for name, data in entries
        ]
    if kind == "aotinductor library":
        return lambda entries: [*entries, ("archive/data/aotinductor/model/model.so", b"\x7fELF")]
    if kind == "second root":
        return lambda entries: [*entries, ("other/data/weights/model.pt", evil)]
    raise AssertionError(kind)


HOSTILE = [
    "legacy weights file",
    "legacy constants file",
    "opaque object",
    "custom object",
    "pickled weight",
    "duplicate config",
    "pickled sample inputs",
    "aotinductor library",
    "second root",
]


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_archive_is_refused_and_its_code_never_runs(
    kind: str, good: Path, marker: Path, tmp_path: Path
) -> None:
    evil = pickle.dumps(_Marker(marker), protocol=2)
    path = _rewrite(good, tmp_path / "hostile.pt2", _hostile(kind, evil))
    with pytest.raises(ArchiveError, match="refused"):
        load_pt2_file(str(path), source="s3://bucket/x/model.pt2")
    assert not marker.exists(), f"{kind}: the archive's code ran"


def test_the_payload_would_run_without_the_check(good: Path, marker: Path, tmp_path: Path) -> None:
    # The hostile archives above are real threats: torch's own loader runs this one.
    from torch.export.pt2_archive._package import load_pt2

    evil = pickle.dumps(_Marker(marker), protocol=2)
    path = _rewrite(good, tmp_path / "hostile.pt2", _hostile("opaque object", evil))
    load_pt2(str(path))
    assert marker.read_text() == "ran"


def test_behind_the_check_torch_loads_are_weights_only(good: Path, marker: Path, tmp_path: Path) -> None:
    from torch.export.pt2_archive._package import load_pt2

    evil = pickle.dumps(_Marker(marker), protocol=2)
    path = _rewrite(good, tmp_path / "hostile.pt2", _hostile("legacy weights file", evil))
    with _weights_only_loads(), pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_pt2(str(path))
    assert not marker.exists()


def test_the_weights_only_switch_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    with _weights_only_loads():
        assert os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_a_plain_archive_with_buffers_and_constants_passes(tmp_path: Path) -> None:
    class WithState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(4)
            self.offset = torch.ones(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.norm(x) + self.offset
            return out

    module = WithState().eval()
    path = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(3, 4),)), str(path), extra_files={"a.txt": "x"})
    check_pt2_payloads(str(path))
    program, extras = load_pt2_file(str(path))
    assert extras == {"a.txt": b"x"}
    x = torch.randn(3, 4)
    torch.testing.assert_close(program.module()(x), module(x))


def test_a_cuda_program_is_refused_on_a_host_without_cuda(good: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA: a CUDA program loads here")

    def to_cuda(entries: Entries) -> Entries:
        out = []
        for name, data in entries:
            if name.endswith("model_weights_config.json"):
                config = json.loads(data)
                for meta in config["config"].values():
                    meta["tensor_meta"]["device"] = {"type": "cuda", "index": 0}
                out.append((name, json.dumps(config).encode()))
            else:
                out.append((name, data))
        return out

    path = _rewrite(good, tmp_path / "cuda.pt2", to_cuda)
    with pytest.raises(ArchiveError, match=r"exported on CUDA.*no CUDA"):
        check_pt2_payloads(str(path))


def _program_json(change: Callable[[dict[str, Any]], None]) -> Callable[[Entries], Entries]:
    def rewrite(entries: Entries) -> Entries:
        out = []
        for name, data in entries:
            if name.endswith("models/model.json"):
                program = json.loads(data)
                change(program)
                out.append((name, json.dumps(program).encode()))
            else:
                out.append((name, data))
        return out

    return rewrite


def _evil_size(marker: Path) -> Callable[[dict[str, Any]], None]:
    code = f"__import__('pathlib').Path({str(marker)!r}).write_text('ran') and 2"

    def change(program: dict[str, Any]) -> None:
        # sympy.sympify evaluates a symbolic size's expression with Python's eval.
        values = program["graph_module"]["graph"]["tensor_values"]
        first = next(iter(values.values()))
        first["sizes"][0] = {"as_expr": {"expr_str": code, "hint": {"as_int": 2}}}

    return change


def _evil_guard(marker: Path) -> Callable[[dict[str, Any]], None]:
    def change(program: dict[str, Any]) -> None:
        # ExportedProgram.module() execs each guard as a function's body.
        program["guards_code"] = [f"__import__('pathlib').Path({str(marker)!r}).write_text('ran') > 0"]

    return change


@pytest.mark.parametrize("evil", [_evil_size, _evil_guard], ids=["symbolic size", "guard"])
def test_code_in_the_program_json_is_refused_and_never_runs(
    evil: Callable[[Path], Callable[[dict[str, Any]], None]], good: Path, marker: Path, tmp_path: Path
) -> None:
    path = _rewrite(good, tmp_path / "hostile.pt2", _program_json(evil(marker)))
    with pytest.raises(ArchiveError, match="program JSON holds code"):
        load_pt2_file(str(path))
    assert not marker.exists()


def test_torch_runs_code_from_a_symbolic_size_without_the_check(good: Path, marker: Path, tmp_path: Path) -> None:
    from torch.export.pt2_archive._package import load_pt2

    path = _rewrite(good, tmp_path / "hostile.pt2", _program_json(_evil_size(marker)))
    with contextlib.suppress(Exception):
        load_pt2(str(path))
    assert marker.read_text() == "ran"


class _Dynamic(torch.nn.Module):
    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, y]).reshape(-1, 2) * 2


class _Tied(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(10, 4)
        self.out = torch.nn.Linear(4, 10, bias=False)
        self.out.weight = self.embed.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.out(self.embed(x))
        return out


def _plain_programs() -> list[tuple[str, Callable[[], tuple[torch.nn.Module, tuple[Any, ...], Any]]]]:
    from torch.export import Dim

    return [
        ("conv-bn", lambda: (torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).eval(),
                             (torch.randn(2, 3, 8, 8),), None)),
        ("lstm", lambda: (torch.nn.LSTM(4, 8, batch_first=True), (torch.randn(2, 5, 4),), None)),
        ("tied weights", lambda: (_Tied(), (torch.tensor([[1, 2, 3]]),), None)),
        ("dynamic shapes", lambda: (_Dynamic(), (torch.randn(4, 2), torch.randn(6, 2)),
                                    ({0: Dim("b", min=2, max=64)}, {0: Dim("c", min=2, max=64)}))),
        ("transformer layer", lambda: (torch.nn.TransformerEncoderLayer(8, 2, 16, batch_first=True).eval(),
                                       (torch.randn(2, 5, 8),), None)),
    ]  # fmt: skip


@pytest.mark.parametrize(("kind", "make"), _plain_programs(), ids=[k for k, _ in _plain_programs()])
def test_plain_programs_of_common_models_pass_the_check(
    kind: str, make: Callable[[], tuple[torch.nn.Module, tuple[Any, ...], Any]], tmp_path: Path
) -> None:
    module, inputs, dynamic = make()
    path = tmp_path / "archive.pt2"
    with warnings.catch_warnings():
        # torch's own note on LSTM's flat weights, not about the archive.
        warnings.filterwarnings("ignore", message="The tensor attributes", category=UserWarning)
        torch.export.save(torch.export.export(module, inputs, dynamic_shapes=dynamic), str(path))
    program, _ = load_pt2_file(str(path))
    with torch.no_grad():
        torch.testing.assert_close(program.module()(*inputs), module(*inputs))


def _zip_parts(entries: Entries) -> tuple[bytes, bytes, int]:
    """A zip of ``entries`` as (local records, central directory, record count)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_STORED) as out:
        for name, data in entries:
            out.writestr(name, data)
    raw = buffer.getvalue()
    end = raw.rfind(b"PK\x05\x06")
    count, size, offset = struct.unpack("<HIL", raw[end + 10 : end + 20])
    return raw[:offset], raw[offset : offset + size], count


def _split_view(good: Path, out: Path, evil: bytes) -> Path:
    """One file, two central directories: Python's ``zipfile`` takes the gap before the one
    next to the end record for prepended data and reads a clean archive; torch's reader
    follows the end record's offset to a hostile one (an opaque object it unpickles)."""
    with zipfile.ZipFile(good) as src:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]
    opaque = "archive/data/constants/opaque_obj_0"
    filler = "archive/extra/" + "p" * (len(opaque) - len("archive/extra/"))  # same length: same directory size
    meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": False, "tensor_meta": _TENSOR_META}
    hostile = [
        (name, json.dumps({"config": {"obj": meta}}).encode() if name.endswith("model_constants_config.json") else data)
        for name, data in entries
    ]
    clean_records, clean_directory, count = _zip_parts([*entries, (filler, b"x" * 8192)])
    hostile_records, hostile_directory, hostile_count = _zip_parts([*hostile, (opaque, evil)])
    assert (len(hostile_directory), hostile_count) == (len(clean_directory), count)
    at = len(clean_records)  # where the end record says the directory is
    body = hostile_records.ljust(at, b"\0") + hostile_directory + clean_records + clean_directory
    end = b"PK\x05\x06" + struct.pack("<HHHHLLH", 0, 0, count, count, len(clean_directory), at, 0)
    out.write_bytes(body + end)
    return out


def test_a_zip_showing_python_and_torch_different_records_is_refused(good: Path, marker: Path, tmp_path: Path) -> None:
    from torch.export.pt2_archive._package import load_pt2

    path = _split_view(good, tmp_path / "hostile.pt2", pickle.dumps(_Marker(marker), protocol=2))
    with zipfile.ZipFile(path) as view:
        assert not any("opaque" in name for name in view.namelist()), "Python's zipfile sees the clean archive"
    with pytest.raises(ArchiveError, match="torch's reader and Python's see different records"):
        load_pt2_file(str(path))
    assert not marker.exists()
    # The threat is real: torch's own loader reads the other directory and runs the payload.
    with contextlib.suppress(Exception):
        load_pt2(str(path))
    assert marker.read_text() == "ran"
