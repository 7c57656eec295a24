"""What the export benchmark's parent, children and report share: variants, the local
endpoints' bucket and keys, targets, sizes, and a plain boto3 client."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Sequence
from typing import Any

import boto3
from botocore.config import Config

from serializer.s3.parts import parse_size

from ._common import MiB

TS_VARIANTS = ("buffer", "file", "spool", "fifo")
PT2_VARIANTS = ("pt2-buffer", "pt2-file", "pt2-stream", "pt2-spool")
VARIANTS = TS_VARIANTS + PT2_VARIANTS
ENDPOINTS = ("moto", "seaweedfs")
#: Streaming variant -> (its strategy's name in export_*, the naive file and buffer baselines).
STRATEGIES = {
    "spool": ("spool", "file", "buffer"),
    "fifo": ("fifo", "file", "buffer"),
    "pt2-stream": ("stream", "pt2-file", "pt2-buffer"),
    "pt2-spool": ("spool", "pt2-file", "pt2-buffer"),
}
BUFFER_VARIANTS = ("buffer", "pt2-buffer")
BUCKET = "export-bench"
REGION = "us-east-1"
#: Credentials of the local endpoints (weed mini enforces them; moto accepts anything).
ACCESS_KEY = "export-bench"
SECRET_KEY = "export-bench-secret"
#: Largest parameter tensor of the generated model (``--max-tensor``'s default).
MAX_TENSOR_BYTES = 256 * 1024**2
#: Seconds between RSS samples, and samples between rescans of the child's descendants.
SAMPLE_INTERVAL = 0.02
RESCAN_EVERY = 5
#: Seconds to wait for an endpoint to answer after it was started.
START_TIMEOUT = 90.0
#: Bytes per read when hashing a stored object or a local archive.
HASH_CHUNK = 8 * 1024**2
#: Targets for the streaming strategies (``pt2-*``: RSS plus the largest tensor, and faster
#: than ``pt2-buffer`` by any margin).
TARGET_RSS_MIB = 256
TARGET_VS_FILE = 1.1
TARGET_VS_BUFFER = 3.0
TARGET_PT2_VS_BUFFER = 1.0


# -- sizes -------------------------------------------------------------------------------
def size_arg(text: str) -> int:
    """A size option: bytes, or binary units as the project's settings take them (``64MiB``, ``1G``)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def format_size(n: int) -> str:
    """Bytes as the shortest exact binary unit (``1GiB``, ``64MiB``), else decimals of GiB/MiB."""
    for unit, scale in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    if n >= 1024**3:
        return f"{n / 1024**3:.2f}GiB"
    return f"{n / MiB:.1f}MiB" if n >= MiB else f"{n}B"


def csv_arg(kind: Callable[[str], Any], allowed: Sequence[str] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [kind(item.strip()) for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if allowed is not None:
            unknown = [item for item in items if item not in allowed]
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown {unknown} (choose from {', '.join(allowed)})")
        return items

    return parse


def use_bench_credentials() -> None:
    """Drop the caller's S3 settings (endpoint, profile, keys) and use the local endpoints' keys."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)


def bench_env(**extra: str) -> dict[str, str]:
    """Environment of a server or child: ours (see :func:`use_bench_credentials`) plus ``extra``."""
    return {**os.environ, **extra}


def plain_client(url: str, checksum_mode: str = "when_supported", **config: Any) -> Any:
    """A boto3 S3 client with boto3's defaults (bar the checksum mode the endpoint needs)."""
    cfg = Config(request_checksum_calculation=checksum_mode, response_checksum_validation=checksum_mode, **config)
    return boto3.Session().client("s3", endpoint_url=url, region_name=REGION, config=cfg)
