"""The service for real: a redis-server, a Celery worker process, and moto in its own process.

The Celery app reads its settings when ``worker.celery`` is first imported, so the broker's
port is chosen here, at import, and the app is imported with the test broker in the
environment.  The variables are set only around that import, not for the whole session:
other tests start subprocesses (``exportctl demo``) that must not find a broker or an
allow-list from these tests in their environment.  The worker process gets them (and the
moto endpoint) in its own environment.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker.cli.demo_services import celery_worker as celery_worker_process
from worker.cli.demo_services import free_port, stop_process

#: The repository root: the worker's working directory, so ``tests.fixtures`` imports there.
ROOT = Path(__file__).resolve().parents[2]
#: Port of the test redis-server, chosen once per session.
REDIS_PORT = free_port()
BROKER_URL = f"redis://127.0.0.1:{REDIS_PORT}/0"
#: Builder modules the test worker may import (not ``tests.never_import``), each as a module
#: of registered builders; ``tests.acme_models`` also imports names an attacker would give.
ALLOWED_BUILDERS = "worker.examples,tests.fixtures,tests.acme_models"
#: Seconds to wait for redis-server and for the worker to answer.
REDIS_START_TIMEOUT = 15.0
WORKER_START_TIMEOUT = 60.0

TEST_ENV = {
    "CELERY_BROKER_URL": BROKER_URL,
    "CELERY_RESULT_BACKEND": BROKER_URL,
    "EXPORT_ALLOWED_BUILDERS": ALLOWED_BUILDERS,
    "AWS_ACCESS_KEY_ID": os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
    "AWS_SECRET_ACCESS_KEY": os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    "AWS_DEFAULT_REGION": os.environ.get("AWS_DEFAULT_REGION", "us-east-1"),
    # Random bucket names: the suite's workers are explicitly unscoped; scoped tests override.
    "EXPORT_READ_SCOPES": "*",
    "EXPORT_WRITE_SCOPES": "*",
}


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


with _environment(TEST_ENV):
    # The app and its settings are created now, from the test environment.
    from worker.celery import app as celery_app


def _point_app_at_test_broker() -> None:
    """Where ``worker.celery`` was imported before this file (e.g. by unit tests collected
    first), its app holds the default broker: point it at the test one (nothing has
    connected yet)."""
    if celery_app.conf.broker_url != BROKER_URL or celery_app.conf.result_backend != BROKER_URL:
        celery_app.conf.update(broker_url=BROKER_URL, result_backend=BROKER_URL)


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A redis-server of our own on :data:`REDIS_PORT`, no persistence; yields its URL."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server); the Celery tests need a broker")
    import redis

    workdir = tmp_path_factory.mktemp("redis")
    log_path = workdir / "redis.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [exe, "--port", str(REDIS_PORT), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            cwd=workdir,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        client = redis.Redis(host="127.0.0.1", port=REDIS_PORT, socket_connect_timeout=1)
        deadline = time.monotonic() + REDIS_START_TIMEOUT
        while True:
            try:
                if client.ping():
                    break
            except redis.exceptions.ConnectionError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server on port {REDIS_PORT} did not start:\n{_tail(log_path)}")
            time.sleep(0.05)
        client.close()
        yield BROKER_URL
    finally:
        stop_process(proc, grace=10)


@pytest.fixture()
def redis_client(redis_server: str) -> Iterator[Any]:
    """A client of the test redis-server (the broker's queues are lists named after them)."""
    import redis

    client = redis.Redis.from_url(redis_server)
    yield client
    client.close()


@dataclass(frozen=True)
class WorkerProcess:
    """The running ``celery -A worker worker`` and what the tests look at around it."""

    proc: subprocess.Popen[bytes]
    log_path: Path
    #: File ``tests/never_import.py`` creates if the worker ever imports it.
    never_import_marker: Path
    #: The worker's spool directory: empty whenever no export runs.
    spool_dir: Path
    #: A directory both the tests and the worker can write to.
    shared_dir: Path
    s3_endpoint: str

    def log_tail(self, lines: int = 60) -> str:
        return _tail(self.log_path, lines)

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the worker exited with {self.proc.returncode}:\n{self.log_tail()}"


@pytest.fixture(scope="session")
def celery_worker(
    redis_server: str, moto_process_endpoint: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[WorkerProcess]:
    """``python -m celery -A worker worker -Q cpu -c 1`` in its own process, against the test
    redis and the moto server process; ready once it answers a ping."""
    _point_app_at_test_broker()
    base = tmp_path_factory.mktemp("worker")
    spool_dir, shared_dir = base / "spool", base / "shared"
    spool_dir.mkdir()
    shared_dir.mkdir()
    marker = shared_dir / "never_import.marker"
    log_path = base / "worker.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "CELERY_", "AWS_ENDPOINT_URL"))}
    env.update(TEST_ENV)
    env.update(
        {
            "AWS_ENDPOINT_URL_S3": moto_process_endpoint,
            "EXPORT_SPOOL_DIR": str(spool_dir),
            "NEVER_IMPORT_MARKER": str(marker),
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
        }
    )
    node = f"export-tests-{uuid.uuid4().hex[:8]}@%h"
    with celery_worker_process(env, log_path=str(log_path), node=node, cwd=str(ROOT)) as proc:
        worker = WorkerProcess(proc, log_path, marker, spool_dir, shared_dir, moto_process_endpoint)
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not celery_app.control.ping(timeout=0.5):
            if proc.poll() is not None:
                pytest.fail(f"the Celery worker exited with {proc.returncode}:\n{worker.log_tail()}")
            if time.monotonic() > deadline:
                pytest.fail(
                    f"the Celery worker did not answer a ping in {WORKER_START_TIMEOUT:.0f} s:\n{worker.log_tail()}"
                )
        yield worker


@pytest.fixture()
def worker_s3(celery_worker: WorkerProcess) -> Any:
    """A client of the same moto server the worker writes to, for the tests' own checks."""
    from serializer.s3.client import make_s3_client

    return make_s3_client(endpoint_url=celery_worker.s3_endpoint, max_pool_connections=4)


@pytest.fixture()
def dest_bucket(worker_s3: Any) -> str:
    """A fresh, empty bucket on the worker's moto server: where a test's exports go."""
    name = f"dest-{uuid.uuid4().hex[:12]}"
    worker_s3.create_bucket(Bucket=name)
    return name


@pytest.fixture()
def assets_bucket(worker_s3: Any) -> str:
    """A fresh bucket for a test's inputs (weights, extra files), apart from its exports."""
    name = f"assets-{uuid.uuid4().hex[:12]}"
    worker_s3.create_bucket(Bucket=name)
    return name
