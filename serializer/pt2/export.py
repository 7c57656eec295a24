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
    :class:`~serializer.s3.multipart.MultipartWriter` (parts upload on its threads while the
    save continues; a write blocks while ``max_in_flight`` parts are in flight).  No disk,
    no child process, save and upload overlap; about 60 MiB more at peak (the writer's
    parts).  The seek the save makes at the end is the only one it accepts.

Either way the export's memory above the model is the writer's bound, plus what
``torch.export.save`` itself holds whatever its target (a path included): it copies each
weight's storage into a ``bytes`` object, and ``write_record`` copies that again into C++
memory, so two extra copies of the largest single tensor exist for a moment.  (The stream
passes torch's writes on a slice at a time, so it adds none.)

Loading back: :mod:`serializer.pt2.load`, after :mod:`serializer.pt2.check` refused what
would run code.

Extra files: ``torch.export.save`` stores them as text (it encodes ``str`` as UTF-8) and
``torch.export.load`` decodes them as UTF-8, so a ``.pt2`` archive carries text extra
files only; :func:`check_text_extras` refuses others by name.
"""

from __future__ import annotations

import io
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Any, Literal

import torch

from ..archive.extras import normalize_extra_files
from ..archive.info import ArchiveInfo, Pt2Info, check_extras, describe_archive, read_int_record
from ..archive.upload import CONTENT_TYPE, upload_file
from ..archive.zipindex import CentralDirectoryTooLarge, ZipIndex, ZipStreamIndexer
from ..errors import ArchiveError, InvalidExtraFile
from ..s3.client import S3Client
from ..s3.multipart import MultipartWriter, UploadResult
from ..s3.options import UploadOptions
from ..s3.uri import parse_s3_uri
from .versions import export_schema_version

log = logging.getLogger(__name__)

Pt2Strategy = Literal["stream", "spool"]

#: File name the archive is saved under; torch names the zip's root folder after it, so
#: the root is "archive", as for a buffer.
ARCHIVE_FILE = "archive.pt2"
#: Bytes copied out of one of torch's writes at a time (a write can be a whole tensor).
WRITE_SLICE = 1024**2
#: Record (under the zip's root) holding the PT2 archive version.
ARCHIVE_VERSION_RECORD = "archive_version"


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
    client: S3Client,
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
        client: boto3 S3 client (its pool caps the connections a tuned upload may use).
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
        result, index = _stream(program, client, target.bucket, target.key, opts, progress, extras)
    else:
        raise ValueError(f"unknown strategy {strategy!r} (stream or spool)")
    return describe_archive(result, index, extras, format="pt2", pt2=describe_pt2(index))


def _stream(
    program: torch.export.ExportedProgram,
    client: S3Client,
    bucket: str,
    key: str,
    opts: UploadOptions,
    progress: Callable[[int], None] | None,
    extras: Mapping[str, bytes],
) -> tuple[UploadResult, ZipIndex]:
    """Save ``program`` through an :class:`UploadStream` straight into ``s3://bucket/key``,
    indexing the zip as it goes; the extra files are checked before the object is committed."""
    indexer = ZipStreamIndexer()
    writer = opts.writer(client, bucket, key, content_type=CONTENT_TYPE, progress=progress)
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
    return writer.result, index
