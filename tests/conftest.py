"""Shared fixtures: a real moto S3 server over HTTP and S3 clients of it (tests/functional replaces
``s3`` and ``bucket`` with in-process moto), the environment, and hostile archives in a bucket."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
# The tests pick their endpoints themselves; an endpoint from the caller's shell must not leak in.
os.environ.pop("AWS_ENDPOINT_URL", None)
os.environ.pop("AWS_ENDPOINT_URL_S3", None)
#: The suite's buckets have random names, so its settings are explicitly unscoped (``*``);
#: a test of the defaults asks for the ``default_scopes`` fixture, a scoped test sets its own.
UNSCOPED_ENV = {"EXPORT_READ_SCOPES": "*", "EXPORT_WRITE_SCOPES": "*"}
os.environ.update(UNSCOPED_ENV)


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EXPORT_ / CELERY_ setting from the caller's shell (a report prefix, an allow-list); the
    scopes stay the suite's unscoped ``*``."""
    for name in list(os.environ):
        if name.startswith(("EXPORT_", "CELERY_")):
            monkeypatch.delenv(name)
    for name, value in UNSCOPED_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture()
def default_scopes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The shipped scopes (``EXPORT_READ_SCOPES`` / ``EXPORT_WRITE_SCOPES`` unset), not the suite's ``*``."""
    for name in UNSCOPED_ENV:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="session")
def moto_endpoint() -> Iterator[str]:
    """URL of a moto S3 server on a free loopback port, shared by the session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture()
def s3(moto_endpoint: str) -> Any:
    """A client of the moto server, pool sized for the writers in the tests."""
    from serializer.s3.client import make_s3_client

    return make_s3_client(endpoint_url=moto_endpoint, max_pool_connections=8)


@pytest.fixture()
def bucket(s3: Any) -> str:
    """A fresh, empty bucket on the moto server."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=name)
    return name


def open_uploads(client: Any, bucket: str) -> list[dict[str, Any]]:
    """Multipart uploads still open in ``bucket``."""
    return list(client.list_multipart_uploads(Bucket=bucket).get("Uploads", []))


def object_keys(client: Any, bucket: str) -> list[str]:
    """Every key in ``bucket``."""
    return [o["Key"] for o in client.list_objects_v2(Bucket=bucket).get("Contents", [])]


@pytest.fixture(scope="session")
def moto_process_endpoint() -> Iterator[str]:
    """URL of a moto S3 server in its own process.

    The ``fifo`` export path blocks its process's interpreter for the whole save, so the
    store it uploads to must not live in the test process.
    """
    from worker.cli.demo_services import moto_server

    with moto_server() as url:
        yield url


@pytest.fixture()
def hostile(s3: Any, bucket: str) -> tuple[str, bytes]:
    """An archive with every hostile name (``tests.hostile_archives.SLIP_NAMES``), and a manifest
    listing them, in ``bucket``."""
    from tests.hostile_archives import SLIP_NAMES, _store

    return _store(s3, bucket, "hostile", SLIP_NAMES)


@pytest.fixture()
def safe(s3: Any, bucket: str) -> tuple[str, bytes]:
    """The same kind of archive with only a safe extra file: the control."""
    from tests.hostile_archives import _store

    return _store(s3, bucket, "safe", [])


@pytest.fixture()
def empty_cwd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty working directory, under an otherwise empty folder: nothing may appear in either."""
    from tests.hostile_archives import _tree

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    yield work
    assert _tree(tmp_path) == ["cwd"], "a file was written"
