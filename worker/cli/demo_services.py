"""Local stand-ins for a deployment's services on loopback: an S3 endpoint (moto, from the
``demo`` extra), Redis and a worker.

Used by ``exportctl demo``, and by the tests and benchmarks; never by a worker in production.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator

__all__ = [
    "START_TIMEOUT",
    "ServiceMissing",
    "celery_worker",
    "free_port",
    "moto_server",
    "redis_server",
    "stop_process",
]

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
