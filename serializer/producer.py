"""This process as the producer of an export, as its manifest records it."""

from __future__ import annotations

import platform
import socket
from importlib import metadata

import torch

from .manifest.model import Producer


def current_producer(device: str, builder: str | None = None) -> Producer:
    """This process as a producer: torch, python and export-worker versions, device, host,
    and the digest of the builder's source (``builder``), when known."""
    try:
        version = metadata.version("export-worker")
    except metadata.PackageNotFoundError:
        version = "0+unknown"
    return Producer(
        torch=torch.__version__,
        python=platform.python_version(),
        export_worker=version,
        device=device,
        host=socket.gethostname(),
        builder=builder,
    )
