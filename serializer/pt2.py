"""Export a ``torch.export`` program, with extra files, to S3 as a ``.pt2`` archive.

``torch.export.save(ep, f, extra_files=...)`` writes the archive record by record through
``PyTorchFileWriter``: to a path it streams to disk; to a file-like object it calls
``f.write`` for every piece (a local header, a record's bytes, a data descriptor) and never
builds the archive in memory.  It checks that the object says ``seekable()``, and seeks
once, to 0, after the last byte (to hand a buffer back ready for reading); nothing else.
Unlike ``torch.jit.save``, the writing is driven from Python, so a thread of this process
can upload while the save goes on.  Two paths (docs/benchmarks.md compares them):

``spool`` (default)
    save to a temporary file, then stream it (as the TorchScript ``spool`` path).  Its
    peak is torch's own save's, and it was as fast as ``stream`` or faster.
``stream``
    the save writes into an :class:`UploadStream`: each write goes straight into a
    :class:`~serializer.multipart.MultipartWriter` (parts upload on its threads while the
    save continues; a write blocks while ``max_in_flight`` parts are in flight).  No disk,
    no child process, save and upload overlap; about 60 MiB more at peak (the writer's
    parts).  The seek the save makes at the end is the only one it accepts.

Either way the export's memory above the model is the writer's bound, plus what
``torch.export.save`` itself holds whatever its target (a path included): it copies each
weight's storage into a ``bytes`` object, and ``write_record`` copies that again into C++
memory, so two extra copies of the largest single tensor exist for a moment.  (The stream
passes torch's writes on a slice at a time, so it adds none.)

Loading: ``torch.export.load`` unpickles some payloads with ``weights_only=False``
(tensor subclasses, constants that are objects, sample inputs that ``weights_only`` refuses),
loads AOTInductor shared libraries it finds, and evaluates the program JSON's symbolic
shapes and guards as Python.  :func:`check_pt2_payloads` refuses such an archive before
torch sees it: only raw tensor bytes, plain JSON, text and plain sample inputs are loaded
here.  Hardening, not a sandbox: load archives from stores you trust.

Extra files: ``torch.export.save`` stores them as text (it encodes ``str`` as UTF-8) and
``torch.export.load`` decodes them as UTF-8, so a ``.pt2`` archive carries text extra
files only; :func:`check_text_extras` refuses others by name.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Literal

import torch

from .archive import ArchiveInfo, Pt2Info, check_extras, describe_archive, read_int_record
from .errors import ArchiveError, InvalidExtraFile
from .extras import normalize_extra_files
from .multipart import MultipartWriter
from .s3uri import parse_s3_uri
from .torchscript import CONTENT_TYPE, UploadOptions, upload_file
from .zipindex import CentralDirectoryTooLarge, ZipIndex, ZipStreamIndexer

log = logging.getLogger(__name__)

Pt2Strategy = Literal["stream", "spool"]

#: File name the archive is saved under; torch names the zip's root folder after it, so
#: the root is "archive", as for a buffer.
ARCHIVE_FILE = "archive.pt2"
#: The format's name, as manifests and specs spell it.
FORMAT = "pt2"
#: Bytes copied out of one of torch's writes at a time (a write can be a whole tensor).
WRITE_SLICE = 1024**2
#: Record (under the zip's root) holding the PT2 archive version.
ARCHIVE_VERSION_RECORD = "archive_version"


def export_schema_version() -> tuple[int, int]:
    """The export schema version this torch serializes programs with ``(major, minor)``."""
    from torch._export.serde.schema import SCHEMA_VERSION

    return int(SCHEMA_VERSION[0]), int(SCHEMA_VERSION[1])


def archive_version() -> int:
    """The PT2 archive version this torch writes (and the only one it loads)."""
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

    return int(ARCHIVE_VERSION_VALUE)


def check_text_extras(extras: Mapping[str, bytes]) -> dict[str, str]:
    """The extra files as text, as ``torch.export.save`` takes them.

    Raises:
        InvalidExtraFile: an extra file is not UTF-8 text (``torch.export.load`` decodes
            every extra file as UTF-8: a binary one would make the archive unloadable).
    """
    out = {}
    for name, content in extras.items():
        try:
            out[name] = content.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidExtraFile(
                f"extra file {name!r} is not UTF-8 text ({exc.reason} at byte {exc.start}): a .pt2 archive "
                "carries text extra files only (torch.export.load decodes them as UTF-8); encode it "
                "(base64, say) or use format torchscript"
            ) from None
    return out


class UploadStream(io.RawIOBase):
    """The write-only, forward-only target ``torch.export.save`` writes into.

    Each write is copied (torch passes views of its own memory), indexed and handed to the
    multipart writer.  ``seekable()`` is true because ``torch.export.save`` insists; a seek
    to the current position is allowed, and so is the one rewind to 0 the save makes after
    its last byte, which ends writing.  Any other seek raises ``io.UnsupportedOperation``:
    bytes already sent cannot be rewritten.

    :meth:`write` never raises.  It is called from inside torch's C++ writer, and an
    exception there leaves the writer inconsistent: its destructor then fails and the C++
    runtime aborts the whole process.  So the first failure (an upload error, a soft time
    limit arriving in the upload's Python code) is kept in :attr:`failure`, the rest of the
    save is discarded, and :meth:`raise_failure` raises it once the save has returned.
    """

    def __init__(self, writer: MultipartWriter, indexer: ZipStreamIndexer) -> None:
        super().__init__()
        self._writer = writer
        self._indexer = indexer
        self._pos = 0
        self._rewound = False
        #: The first error met while writing; later writes are discarded.
        self.failure: BaseException | None = None

    def raise_failure(self) -> None:
        """Raise the error kept by :meth:`write`, if any."""
        if self.failure is not None:
            failure, self.failure = self.failure, None
            raise failure

    def writable(self) -> bool:
        return True

    def readable(self) -> bool:
        return False

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return 0 if self._rewound else self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.tell(), io.SEEK_END: self._pos}.get(whence)
        if base is None:
            raise ValueError(f"invalid whence {whence}")
        target = base + offset
        if target == self.tell():
            return target
        if target == 0 and whence == io.SEEK_SET:
            self._rewound = True
            return 0
        raise io.UnsupportedOperation(
            f"cannot seek to {target}: {self._pos} bytes already streamed to S3 can not be rewritten"
        )

    def write(self, data: Any) -> int:
        size = 0
        try:
            view = memoryview(data).cast("B")
            size = view.nbytes
            if self.failure is not None:
                return size
            if self._rewound:
                raise io.UnsupportedOperation("write after the archive was rewound: the stream is finished")
            # torch writes a whole tensor in one call: copied and passed on a slice at a
            # time, so this adds one slice, not one tensor, to what the save holds (the
            # indexer keeps the chunks it is fed for its tail).
            for start in range(0, size, WRITE_SLICE):
                chunk = bytes(view[start : start + WRITE_SLICE])
                self._indexer.feed(chunk)
                self._writer.write(chunk)
                self._pos += len(chunk)
        except BaseException as exc:  # noqa: BLE001 - kept, raised by raise_failure (see the class)
            self.failure = exc
        return size

    def flush(self) -> None:
        """Nothing to do: the writer sends parts as they fill."""


def _check_program(program: object) -> None:
    if not isinstance(program, torch.export.ExportedProgram):
        raise ArchiveError(f"expected an ExportedProgram (torch.export.export), got {type(program).__name__}")
    pickled = [
        name
        for name, value in [*program.state_dict.items(), *program.constants.items()]
        if not (isinstance(value, torch.Tensor) and type(value.data) is torch.Tensor)
    ]
    if pickled:
        raise ArchiveError(
            f"the program holds weights or constants that torch.export.save pickles ({', '.join(pickled[:3])}: "
            "tensor subclasses or objects); loading them would unpickle code, which this service refuses: "
            "export it as torchscript"
        )


def save_pt2(program: torch.export.ExportedProgram, target: str | io.IOBase, extras: Mapping[str, bytes]) -> None:
    """``torch.export.save`` to a path or a stream, with text extra files.

    Raises:
        InvalidExtraFile: an extra file that is not UTF-8 text.
        ArchiveError: torch could not save the program.
    """
    _check_program(program)
    text = check_text_extras(extras)
    try:
        torch.export.save(program, target, extra_files=text or None)  # type: ignore[arg-type]
    except (RuntimeError, OSError, AssertionError, TypeError, ValueError) as exc:
        raise ArchiveError(f"torch.export.save failed: {exc}") from exc


def describe_pt2(index: ZipIndex) -> Pt2Info:
    """The PT2 facts of an archive: its archive version (from the zip) and the export
    schema version this torch serialized it with."""
    major, minor = export_schema_version()
    return Pt2Info(
        archive_version=read_int_record(index, ARCHIVE_VERSION_RECORD), schema_major=major, schema_minor=minor
    )


def export_pt2(
    program: torch.export.ExportedProgram,
    uri: str,
    *,
    client: Any,
    extra_files: Mapping[str, bytes | str] | None = None,
    options: UploadOptions | None = None,
    strategy: Pt2Strategy = "spool",
    spool_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_size: Callable[[int], None] | None = None,
) -> ArchiveInfo:
    """Save ``program`` with ``extra_files`` as a ``.pt2`` archive at ``uri`` (``s3://``).

    The object appears complete or not at all.  Memory above the model: the writer's bound,
    ``part_size * (max_in_flight + 1)``, plus twice the largest tensor (torch's save copies
    each weight twice before writing it, whatever the target).

    Args:
        client: boto3 S3 client (pool sized to ``options.max_in_flight``).
        extra_files: archive name -> contents; UTF-8 text only.
        strategy: ``"stream"`` or ``"spool"`` (see the module docstring).
        spool_dir: where the ``spool`` path's temporary archive lives.
        progress: called with byte counts as parts land.
        on_size: called with the archive's size before the upload (``spool`` only).

    Raises:
        InvalidExtraFile: a bad extra-file name, or contents that are not UTF-8 text.
        ArchiveError: the program could not be saved.
        UploadFailed, ObjectExists: the upload failed or the key was taken (conditional).
    """
    target = parse_s3_uri(uri)
    extras = normalize_extra_files(extra_files)
    _check_program(program)
    check_text_extras(extras)
    opts = options or UploadOptions()
    if strategy == "spool":
        with tempfile.TemporaryDirectory(prefix="export-worker-", dir=spool_dir) as tmp:
            path = os.path.join(tmp, ARCHIVE_FILE)
            save_pt2(program, path, extras)
            if on_size is not None:
                on_size(os.path.getsize(path))
            result, index = upload_file(path, client, target.bucket, target.key, opts, progress, extras)
    elif strategy == "stream":
        indexer = ZipStreamIndexer()
        writer = MultipartWriter(
            client,
            target.bucket,
            target.key,
            part_size=opts.part_size,
            max_in_flight=opts.max_in_flight,
            checksum_algorithm=opts.checksum_algorithm,
            if_none_match=opts.if_none_match,
            extra_args={"ContentType": CONTENT_TYPE, **opts.extra_args},
            progress=progress,
        )
        with writer:
            stream = UploadStream(writer, indexer)
            try:
                save_pt2(program, stream, extras)
            except BaseException:
                stream.raise_failure()  # the cause, where the stream failed first
                raise
            stream.raise_failure()
            try:
                index = indexer.finish()
            except CentralDirectoryTooLarge as exc:
                raise ArchiveError(
                    f"the archive's central directory ({exc.needed} bytes) is larger than the stream keeps of its "
                    "end: set EXPORT_PT2_STRATEGY=spool for a program with this many tensors"
                ) from exc
            # Checked before commit, so a malformed archive is never published.
            check_extras(index, extras)
        assert writer.result is not None
        result = writer.result
    else:
        raise ValueError(f"unknown strategy {strategy!r} (stream or spool)")
    return describe_archive(result, index, extras, format=FORMAT, pt2=describe_pt2(index))


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
    must be the plain form torch writes (:mod:`serializer.pt2_program`).  The sample inputs
    must load with ``weights_only=True``.  A program whose weights live on CUDA is refused
    on a host without it, with that reason.  Everything is read through torch's reader.

    Raises:
        ArchiveError: naming what was found.
    """
    from .pt2_program import check_program_json

    where = source or path
    try:
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

        def read(name: str) -> bytes:
            return bytes(reader.get_record(name))

        payloads: set[str] = set()
        devices: set[str] = set()
        bad: list[str] = []
        for config_name, (folder, allowed) in _PAYLOAD_CONFIGS.items():
            if config_name not in seen:
                raise ArchiveError(f"{where}: not a plain exported program: no {config_name}")
            raw = json.loads(read(config_name))
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
        program = f"models/{PROGRAM}.json"
        if program not in seen:
            raise ArchiveError(f"{where}: not a plain exported program: no {program}")
        try:
            check_program_json(json.loads(read(program)))
        except ArchiveError as exc:
            raise _refuse(where, f"its program JSON holds code: {exc}") from None
        if "cuda" in devices and not torch.cuda.is_available():
            raise ArchiveError(
                f"{where}: its weights were exported on CUDA and torch.export.load puts them back there; "
                "this host has no CUDA: load it on a GPU host"
            )
        sample_inputs = f"data/sample_inputs/{PROGRAM}.pt"
        if sample_inputs in seen:
            try:
                torch.load(io.BytesIO(read(sample_inputs)), weights_only=True, map_location="cpu")
            except Exception as exc:
                raise _refuse(
                    where, f"its sample inputs are not plain tensors (weights_only=True refused them: {exc})"
                ) from exc
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, RuntimeError) as exc:
        raise ArchiveError(f"{where}: not a readable .pt2 archive: {exc}") from exc


def _numel(tensor_meta: dict[str, Any]) -> int:
    """Elements of a tensor as its tensor_meta gives them (-1 where a size is symbolic)."""
    total = 1
    for size in tensor_meta.get("sizes") or []:
        value = size.get("as_int") if isinstance(size, dict) else None
        if not isinstance(value, int):
            return -1
        total *= value
    return total


@contextlib.contextmanager
def _weights_only_loads() -> Iterator[None]:
    """Force every ``torch.load`` inside to ``weights_only=True`` (torch's own switch,
    ``TORCH_FORCE_WEIGHTS_ONLY_LOAD``): a second guard behind :func:`check_pt2_payloads`."""
    saved = {
        name: os.environ.get(name) for name in ("TORCH_FORCE_WEIGHTS_ONLY_LOAD", "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD")
    }
    os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] = "1"
    os.environ.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def load_pt2_file(path: str, *, source: str | None = None) -> tuple[torch.export.ExportedProgram, dict[str, bytes]]:
    """``torch.export.load`` a ``.pt2`` file, after :func:`check_pt2_payloads`; its extra
    files are read from the zip as bytes.

    Raises:
        ArchiveError: refused, or torch could not load it (naming why).
    """
    where = source or path
    check_pt2_payloads(path, source=source)
    try:
        # torch.export.load logs and falls back to a pre-2.8 layout on any error, which
        # then fails with a message about that layout: the PT2 loader is called directly.
        from torch.export.pt2_archive._package import load_pt2

        with _weights_only_loads():
            contents = load_pt2(path)
        program = contents.exported_programs["model"]
    except KeyError as exc:
        raise ArchiveError(f"torch.export.load of {where} failed: the archive holds no program 'model'") from exc
    except (RuntimeError, ValueError, AssertionError, zipfile.BadZipFile, OSError) as exc:
        raise ArchiveError(f"torch.export.load of {where} failed: {exc}") from exc
    # Read as torch reads the archive (check_pt2_payloads made sure both readers agree).
    reader = torch._C.PyTorchFileReader(path)
    extras = {
        name[len("extra/") :]: bytes(reader.get_record(name))
        for name in reader.get_all_records()
        if name.startswith("extra/") and len(name) > len("extra/")
    }
    return program, extras


def load_pt2_artifact(
    client: Any, uri: str, *, sha256: str | None = None, size: int | None = None, spool_dir: str | None = None
) -> tuple[torch.export.ExportedProgram, dict[str, bytes]]:
    """Download (to a temporary file, checked against ``size`` and ``sha256`` as it
    arrives) and ``torch.export.load`` a stored ``.pt2`` archive.

    Raises:
        ArchiveError: digest mismatch, or torch could not load it.
    """
    from .loading import download_checked

    with tempfile.TemporaryDirectory(prefix="export-worker-load-", dir=spool_dir) as tmp:
        path = os.path.join(tmp, ARCHIVE_FILE)
        download_checked(client, uri, path, sha256=sha256, size=size)
        return load_pt2_file(path, source=uri)


def program_device(program: torch.export.ExportedProgram) -> torch.device:
    """Where a loaded program's weights live (its inputs must go there too): the device of
    its first parameter, buffer or constant tensor; the CPU for a program without any."""
    for value in [*program.state_dict.values(), *program.constants.values()]:
        if isinstance(value, torch.Tensor):
            return value.device
    return torch.device("cpu")
