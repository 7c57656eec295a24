"""Send a saved archive file to S3 while indexing its zip: the spool path of every format.

The file is read once, in order, for the sha256 and the zip index (the writer's
:meth:`~serializer.s3.multipart.MultipartWriter.send_file`); the parts are read from their
ranges of the file while they are sent, so the parts in flight hold no buffers.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping

from ..s3.client import S3Client
from ..s3.multipart import UploadResult
from ..s3.options import UploadOptions
from .info import check_extras
from .zipindex import CentralDirectoryTooLarge, ZipIndex, ZipStreamIndexer

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
    """Send a saved archive at ``path`` to ``s3://bucket/key`` and index its zip; the
    extra files are checked against the index before the object is committed."""
    size = os.path.getsize(path)
    # The spool can be read again, so local headers are read from it at the end instead of
    # searched for in every byte.
    indexer = ZipStreamIndexer(scan_headers=False)
    writer = opts.writer(client, bucket, key, content_type=CONTENT_TYPE, size_hint=size, progress=progress)
    # The file is opened first, so it is still open when the writer commits on leaving.
    with open(path, "rb", buffering=0) as f, writer:
        # One pass: each chunk is hashed by the writer and fed to the indexer, in order.
        writer.send_file(f, on_chunk=indexer.feed)

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
