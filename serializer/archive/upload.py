"""Stream a saved archive file to S3 while indexing its zip: the spool path of every format."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping

from ..s3.client import S3Client
from ..s3.multipart import UploadResult
from ..s3.options import UploadOptions
from .info import check_extras
from .zipindex import CentralDirectoryTooLarge, ZipIndex, ZipStreamIndexer

#: Bytes read from the spool file per write to the uploader.
READ_CHUNK = 1024**2
#: Content type of stored archives (a zip).
CONTENT_TYPE = "application/zip"


def upload_file(
    path: str,
    client: S3Client,
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
    writer = opts.writer(client, bucket, key, content_type=CONTENT_TYPE, size_hint=size, progress=progress)
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
