"""Starting the service's processes for a test module: a worker of its own on its own Redis
database, a Celery client of that database."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from worker.cli.demo_services import celery_worker as celery_worker_process

from .conftest import ALLOWED_BUILDERS, ROOT, TEST_ENV

#: Seconds to wait for a worker to answer a ping.
WORKER_START_TIMEOUT = 60.0


def db_url(redis_server: str, db: int) -> str:
    """The test redis-server's URL with database ``db``."""
    return redis_server.rsplit("/", 1)[0] + f"/{db}"


def worker_env(broker: str, endpoint: str, **extra: str) -> dict[str, str]:
    """A worker's environment: this broker and S3 endpoint, the tests' builders, ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "CELERY_", "AWS_ENDPOINT_URL"))}
    env.update(TEST_ENV)
    env.update(
        {
            "CELERY_BROKER_URL": broker,
            "CELERY_RESULT_BACKEND": broker,
            "EXPORT_ALLOWED_BUILDERS": ALLOWED_BUILDERS,
            "AWS_ENDPOINT_URL_S3": endpoint,
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
            "EXPORT_BULK_WINDOW": "8",
        }
    )
    env.update(extra)
    return env


def client_app(broker: str) -> Celery:
    """A Celery client of ``broker`` for sending tasks by name and reading results."""
    app = Celery("test-client", broker=broker, backend=broker)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return app


@contextlib.contextmanager
def running_worker(
    app: Celery, env: dict[str, str], log_path: Path, concurrency: int = 2
) -> Iterator[subprocess.Popen[bytes]]:
    """``celery -A worker worker`` with ``env``, once it answers a ping (stopped at the end)."""
    node = f"module-tests-{uuid.uuid4().hex[:8]}@%h"
    with celery_worker_process(env, concurrency=concurrency, log_path=str(log_path), node=node, cwd=str(ROOT)) as proc:
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not app.control.ping(destination=[node.replace("%h", _host())], timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the test worker did not start:\n{tail(log_path)}")
        yield proc


def _host() -> str:
    import socket

    return socket.gethostname()


def tail(path: Path, lines: int = 80) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


class ServiceWorld:
    """A test module's service: its broker database (a Celery client and a Redis client of
    it), the environment its worker runs with, the S3 server, and the worker's log."""

    #: Prefix of the buckets :meth:`bucket` makes.
    bucket_prefix = "test"

    def __init__(self, broker: str, env: dict[str, str], s3: Any, log_path: Path) -> None:
        import redis

        self.broker = broker
        self.env = env
        self.s3 = s3
        self.log_path = log_path
        self.app = client_app(broker)
        self.redis = redis.Redis.from_url(broker)

    def bucket(self) -> str:
        """A fresh bucket."""
        name = f"{self.bucket_prefix}-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        """Every key under ``prefix``, sorted."""
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def open_uploads(self, bucket: str, prefix: str = "") -> list[Any]:
        """Multipart uploads still open under ``prefix``."""
        return list(self.s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix).get("Uploads", []))

    def manifests(self, bucket: str, prefix: str = "models/") -> dict[str, dict[str, Any]]:
        """Every manifest under ``prefix``, by key."""
        return {
            key: json.loads(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())
            for key in self.keys(bucket, prefix)
            if key.endswith(".manifest.json")
        }

    def log_tail(self) -> str:
        return tail(self.log_path)
