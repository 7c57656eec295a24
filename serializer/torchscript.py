"""Export a ScriptModule, with extra files, to S3 as a TorchScript archive.

``torch.jit.save(m, fileobj)`` builds the whole archive in memory (``save_to_buffer``):
about 3x the model's size at peak.  Saving to a *path* streams records to disk instead,
so the archive is saved to a path and its bytes streamed to S3 by a
:class:`~serializer.multipart.MultipartWriter`; the export's memory is then the writer's
bound, whatever the model's size.  Two paths are offered (docs/benchmarks.md compares them):

``spool`` (default)
    save to a temporary file, then stream it.  The save holds the GIL only for the save
    itself (~0.5 s per GiB); the upload runs on threads that leave the interpreter free, so
    progress reports and time limits keep working.  Needs disk for one archive.
``fifo``
    save into a named pipe read by an uploader in a child process (a thread of this
    process would deadlock: the C++ save holds the GIL).  Needs no disk and overlaps save
    and upload, but this process is blocked inside the save for the whole upload.

Either way the bytes pass once: the sha256 is computed and the zip indexed as they go.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import os
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from .archive import ArchiveInfo, check_extras, describe_archive
from .errors import ArchiveError
from .extras import normalize_extra_files
from .multipart import DEFAULT_MAX_IN_FLIGHT, DEFAULT_PART_SIZE, ChecksumAlgorithm, MultipartWriter, UploadResult
from .s3uri import parse_s3_uri
from .zipindex import CentralDirectoryTooLarge, ZipIndex, ZipStreamIndexer

log = logging.getLogger(__name__)

Strategy = Literal["spool", "fifo"]

#: File name the archive is saved under; torch names the zip's root folder after it, so
#: every archive has the same root as one saved to a buffer ("archive/").
ARCHIVE_FILE = "archive.pt"
#: Bytes read from the spool file per write to the uploader.
READ_CHUNK = 1024**2
#: Content type of stored archives (a zip).
CONTENT_TYPE = "application/zip"
#: torch 2.13's deprecation of TorchScript, matched by message so no other warning is hidden.
_DEPRECATION = r"`torch\.jit\.[a-z_]+` is deprecated"


@dataclass(frozen=True)
class UploadOptions:
    """How archive bytes go to S3 (see :class:`~serializer.multipart.MultipartWriter`)."""

    part_size: int = DEFAULT_PART_SIZE
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    checksum_algorithm: ChecksumAlgorithm | None = None
    if_none_match: bool = False
    extra_args: Mapping[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def quiet_torchscript_deprecation() -> Iterator[None]:
    """Silence torch's TorchScript deprecation warning, and only that one."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=_DEPRECATION, category=DeprecationWarning)
        yield


def _check_scripted(module: object) -> None:
    if not isinstance(module, torch.jit.ScriptModule):
        raise ArchiveError(
            f"expected a ScriptModule (torch.jit.script or torch.jit.trace), got {type(module).__name__}"
        )


def save_archive(module: torch.jit.ScriptModule, path: str, extra_files: Mapping[str, bytes]) -> None:
    """``torch.jit.save`` to a path (records stream out; nothing is built in memory).

    Raises:
        ArchiveError: torch could not save the module.
    """
    _check_scripted(module)
    try:
        with quiet_torchscript_deprecation():
            torch.jit.save(module, path, _extra_files=dict(extra_files))
    except (RuntimeError, OSError) as exc:
        raise ArchiveError(f"torch.jit.save failed: {exc}") from exc


@functools.cache
def produced_format_version() -> int:
    """The file-format version this torch writes for a plain module (the archive's
    ``version`` record); archives using newer operators may carry a higher one."""

    class _Plain(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return x + 1

    buf = io.BytesIO()
    with quiet_torchscript_deprecation():
        torch.jit.save(torch.jit.script(_Plain()), buf)
    with zipfile.ZipFile(buf) as zf:
        name = next(n for n in zf.namelist() if n.split("/", 1)[-1] in ("version", ".data/version"))
        return int(zf.read(name).decode("ascii").strip())


def export_torchscript(
    module: torch.jit.ScriptModule,
    uri: str,
    *,
    client: Any,
    extra_files: Mapping[str, bytes | str] | None = None,
    options: UploadOptions | None = None,
    strategy: Strategy = "spool",
    spool_dir: str | None = None,
    progress: Callable[[int], None] | None = None,
    on_size: Callable[[int], None] | None = None,
) -> ArchiveInfo:
    """Save ``module`` with ``extra_files`` as a TorchScript archive at ``uri`` (``s3://``).

    The object appears complete or not at all.  Peak memory above the model is the
    writer's bound, ``part_size * (max_in_flight + 1)``, plus the zip index's tail.

    Args:
        client: boto3 S3 client (pool sized to ``options.max_in_flight``).
        extra_files: archive name -> contents (text is stored as UTF-8).
        strategy: ``"spool"`` or ``"fifo"`` (see the module docstring).
        spool_dir: where the temporary archive or pipe lives (default: the system's temp
            dir); put it on a disk, not tmpfs, for large models.
        progress: called with byte counts as parts land.
        on_size: called with the archive's size once it is known, before the upload
            (``spool`` only: the ``fifo`` path learns it at the end).

    Raises:
        InvalidExtraFile: a bad extra-file name.
        ArchiveError: the module could not be saved.
        UploadFailed, ObjectExists: the upload failed or the key was taken (conditional).
    """
    target = parse_s3_uri(uri)
    extras = normalize_extra_files(extra_files)
    _check_scripted(module)
    opts = options or UploadOptions()
    with tempfile.TemporaryDirectory(prefix="export-worker-", dir=spool_dir) as tmp:
        path = os.path.join(tmp, ARCHIVE_FILE)
        if strategy == "spool":
            save_archive(module, path, extras)
            if on_size is not None:
                on_size(os.path.getsize(path))
            result, index = upload_file(path, client, target.bucket, target.key, opts, progress, extras)
        elif strategy == "fifo":
            from ._fifo import save_through_fifo

            result, index = save_through_fifo(module, path, client, target.bucket, target.key, opts, extras)
            if progress is not None:
                progress(result.size)
        else:
            raise ValueError(f"unknown strategy {strategy!r} (spool or fifo)")
    return describe_archive(result, index, extras)


def upload_file(
    path: str,
    client: Any,
    bucket: str,
    key: str,
    opts: UploadOptions,
    progress: Callable[[int], None] | None,
    extras: Mapping[str, bytes],
) -> tuple[UploadResult, ZipIndex]:
    """Stream a saved archive at ``path`` to ``s3://bucket/key`` and index its zip; the
    extra files are checked against the index before the object is committed."""
    size = os.path.getsize(path)
    # The spool can be read again, so local headers are read from it at the end instead of
    # searched for in every byte.
    indexer = ZipStreamIndexer(scan_headers=False)
    writer = MultipartWriter(
        client,
        bucket,
        key,
        part_size=opts.part_size,
        max_in_flight=opts.max_in_flight,
        size_hint=size,
        checksum_algorithm=opts.checksum_algorithm,
        if_none_match=opts.if_none_match,
        extra_args={"ContentType": CONTENT_TYPE, **opts.extra_args},
        progress=progress,
    )
    with writer, open(path, "rb", buffering=0) as f:
        while chunk := f.read(READ_CHUNK):
            indexer.feed(chunk)
            writer.write(chunk)
        with contextlib.suppress(AttributeError, OSError):
            # The spool is read once; keep it from crowding the page cache.
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)

        def read_at(offset: int, n: int) -> bytes:
            return os.pread(f.fileno(), n, offset)

        try:
            index = indexer.finish(read_at=read_at)
        except CentralDirectoryTooLarge as exc:
            index = indexer.finish(tail=read_at(size - exc.needed, exc.needed), read_at=read_at)
        # Checked before commit, so a malformed archive is never published.
        check_extras(index, extras)
    assert writer.result is not None
    return writer.result, index
