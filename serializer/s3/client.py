"""Building boto3 S3 clients sized for concurrent part uploads."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import boto3
from botocore.config import Config

from .tuner import DEFAULT_CAP

if TYPE_CHECKING:
    # boto3-stubs (a dev dependency) types the client; at run time it is boto3's own.
    from mypy_boto3_s3 import S3Client
else:
    S3Client = Any

__all__ = ["BOTOCORE_ATTEMPTS", "ChecksumMode", "S3Client", "make_s3_client"]

ChecksumMode = Literal["when_supported", "when_required"]

#: botocore's own retries per request ("standard" mode backs off with jitter); our retry
#: layer in :mod:`serializer.s3.retry` sits above it for what botocore gives up on.
BOTOCORE_ATTEMPTS = 3


def make_s3_client(
    *,
    max_pool_connections: int = DEFAULT_CAP,
    checksum_mode: ChecksumMode = "when_supported",
    endpoint_url: str | None = None,
    region_name: str | None = None,
    connect_timeout: float = 10.0,
    read_timeout: float = 60.0,
    session: boto3.Session | None = None,
) -> S3Client:
    """An S3 client whose connection pool holds ``max_pool_connections`` connections.

    Size the pool to at least the most requests a transfer keeps in flight (a
    :class:`MultipartWriter` uses ``max_in_flight`` when fixed, else up to its tuner's cap,
    :data:`~serializer.s3.tuner.DEFAULT_CAP` by default), or threads queue for connections
    and botocore warns that the pool is full.  Connections are opened as needed, so a large
    pool costs nothing until it is used.  ``checksum_mode="when_required"`` stops boto3 from adding CRC trailers
    and headers to every request, for S3-compatible stores that reject them.  The endpoint
    and credentials come from boto3's own chain (``AWS_ENDPOINT_URL_S3``,
    ``AWS_ACCESS_KEY_ID``, profiles) unless given.
    """
    config = Config(
        max_pool_connections=max_pool_connections,
        retries={"mode": "standard", "max_attempts": BOTOCORE_ATTEMPTS},
        request_checksum_calculation=checksum_mode,
        response_checksum_validation=checksum_mode,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        tcp_keepalive=True,
    )
    return (session or boto3.Session()).client("s3", endpoint_url=endpoint_url, region_name=region_name, config=config)
