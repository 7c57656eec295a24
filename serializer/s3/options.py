"""How bytes go to S3: the options one upload takes, shared by every archive format."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .multipart import ChecksumAlgorithm
from .parts import DEFAULT_MAX_IN_FLIGHT, DEFAULT_PART_SIZE


@dataclass(frozen=True)
class UploadOptions:
    """How archive bytes go to S3 (see :class:`~serializer.s3.multipart.MultipartWriter`)."""

    part_size: int = DEFAULT_PART_SIZE
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    checksum_algorithm: ChecksumAlgorithm | None = None
    if_none_match: bool = False
    extra_args: Mapping[str, Any] = field(default_factory=dict)
