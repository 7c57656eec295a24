"""How bytes go to S3: the options one upload takes, shared by every archive format."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .client import S3Client
from .multipart import ChecksumAlgorithm, MultipartWriter
from .tuner import DEFAULT_CAP


@dataclass(frozen=True)
class UploadOptions:
    """How archive bytes go to S3 (see :class:`~serializer.s3.multipart.MultipartWriter`).

    ``part_size`` and ``max_in_flight`` are overrides: None (the default) sizes parts to
    the object and tunes the parts in flight to the measured throughput, within
    ``max_connections`` for a file and within 4 for a stream (whose parts are in memory).
    """

    part_size: int | None = None
    max_in_flight: int | None = None
    max_connections: int = DEFAULT_CAP
    checksum_algorithm: ChecksumAlgorithm | None = None
    if_none_match: bool = False
    extra_args: Mapping[str, Any] = field(default_factory=dict)

    def writer(
        self,
        client: S3Client,
        bucket: str,
        key: str,
        *,
        content_type: str,
        size_hint: int | None = None,
        progress: Callable[[int], None] | None = None,
    ) -> MultipartWriter:
        """A :class:`~serializer.s3.multipart.MultipartWriter` of ``s3://bucket/key`` with these options."""
        return MultipartWriter(
            client,
            bucket,
            key,
            part_size=self.part_size,
            max_in_flight=self.max_in_flight,
            max_connections=self.max_connections,
            size_hint=size_hint,
            checksum_algorithm=self.checksum_algorithm,
            if_none_match=self.if_none_match,
            extra_args={"ContentType": content_type, **self.extra_args},
            progress=progress,
        )
