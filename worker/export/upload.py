"""Streaming the captured module to S3 with its format's exporter."""

from __future__ import annotations

from typing import Any

from serializer.archive.info import ArchiveInfo
from serializer.pt2.export import export_pt2
from serializer.s3.client import S3Client
from serializer.s3.options import UploadOptions
from serializer.torchscript.export import export_torchscript

from ..settings import Settings
from ..spec import ExportSpec
from .progress import UploadProgress


def upload_archive(
    spec: ExportSpec,
    settings: Settings,
    client: S3Client,
    captured: Any,
    extras: dict[str, bytes],
    uri: str,
    *,
    conditional: bool,
    progress: UploadProgress,
) -> ArchiveInfo:
    """Write ``captured`` with ``extras`` as the spec's format to ``uri``.

    Args:
        conditional: write with ``If-None-Match: *``: an object already there is not replaced.

    Raises:
        ObjectExists: ``conditional``, and another job wrote ``uri`` first.
        UploadFailed, ArchiveError: the upload or the archive failed (nothing is left at ``uri``).
    """
    options = UploadOptions(
        part_size=settings.part_size,
        max_in_flight=settings.fixed_in_flight,
        # The client's pool is sized to the same number (worker.tasks.s3_client).
        max_connections=settings.max_in_flight,
        checksum_algorithm=settings.checksum_algorithm,
        if_none_match=conditional,
    )
    common: dict[str, Any] = {
        "client": client,
        "extra_files": extras,
        "options": options,
        "spool_dir": settings.spool_dir,
        "progress": progress.on_bytes,
        "on_size": progress.on_size,
    }
    if spec.format == "pt2":
        return export_pt2(captured, uri, strategy=settings.pt2_strategy, **common)
    return export_torchscript(captured, uri, strategy=settings.upload_strategy, **common)
