"""Export a ScriptModule, with extra files, to S3 as a TorchScript archive.

``torch.jit.save(m, fileobj)`` builds the whole archive in memory (``save_to_buffer``):
about 3x the model's size at peak.  Saving to a *path* streams records to disk instead,
so the archive is saved to a path and its bytes streamed to S3 by a
:class:`~serializer.s3.multipart.MultipartWriter`; the export's memory is then the writer's
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

import functools
import logging
import os
import tempfile
from collections.abc import Callable, Mapping
from typing import Literal

import torch

from ..archive.extras import normalize_extra_files
from ..archive.fifo import save_through_fifo
from ..archive.info import ArchiveInfo, describe_archive
from ..archive.upload import upload_file
from ..s3.client import S3Client
from ..s3.options import UploadOptions
from ..s3.uri import parse_s3_uri
from .save import ARCHIVE_FILE, check_scripted, save_archive

log = logging.getLogger(__name__)

Strategy = Literal["spool", "fifo"]


def export_torchscript(
    module: torch.jit.ScriptModule,
    uri: str,
    *,
    client: S3Client,
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
        client: boto3 S3 client (its pool caps the connections a tuned upload may use).
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
    check_scripted(module)
    opts = options or UploadOptions()
    with tempfile.TemporaryDirectory(prefix="export-worker-", dir=spool_dir) as tmp:
        path = os.path.join(tmp, ARCHIVE_FILE)
        if strategy == "spool":
            save_archive(module, path, extras)
            if on_size is not None:
                on_size(os.path.getsize(path))
            result, index = upload_file(path, client, target.bucket, target.key, opts, progress, extras)
        elif strategy == "fifo":
            result, index = save_through_fifo(
                functools.partial(save_archive, module, extra_files=extras),
                path,
                client,
                target.bucket,
                target.key,
                opts,
                extras,
            )
            if progress is not None:
                progress(result.size)
        else:
            raise ValueError(f"unknown strategy {strategy!r} (spool or fifo)")
    return describe_archive(result, index, extras)
