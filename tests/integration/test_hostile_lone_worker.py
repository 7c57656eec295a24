"""A message the worker's own machinery cannot handle (a job nested hundreds deep): it fails,
and a worker of its own, that it might have killed, lives.
"""

from __future__ import annotations

import os
import pathlib
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from tests.hostile_corpus import _deep
from tests.integration.conftest import WorkerProcess
from tests.integration.hostile import JOB_TIMEOUT, assert_nothing_written, check_failed

#: Redis database of the lone worker below, apart from the shared test worker's (0).
LONE_DB = 7


@pytest.fixture()
def lone_worker(
    redis_server: str, moto_process_endpoint: str, tmp_path: pathlib.Path
) -> Iterator[tuple[Any, WorkerProcess]]:
    """A worker of its own (own Redis database), for jobs that may kill it; and an app to send to it."""
    import redis
    from celery import Celery

    from tests.integration.conftest import ROOT, TEST_ENV
    from worker.cli.demo_services import celery_worker as celery_worker_process

    url = f"{redis_server.rsplit('/', 1)[0]}/{LONE_DB}"
    spool, shared = tmp_path / "spool", tmp_path / "shared"
    spool.mkdir()
    shared.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EXPORT_", "CELERY_", "AWS_ENDPOINT_URL"))}
    env.update(TEST_ENV)
    env.update(
        {
            "CELERY_BROKER_URL": url,
            "CELERY_RESULT_BACKEND": url,
            "AWS_ENDPOINT_URL_S3": moto_process_endpoint,
            "EXPORT_SPOOL_DIR": str(spool),
            "NEVER_IMPORT_MARKER": str(shared / "never_import.marker"),
            "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p),
            "PYTHONUNBUFFERED": "1",
        }
    )
    app = Celery("hostile-sender", broker=url, backend=url)
    app.conf.update(
        task_serializer="json", accept_content=["json"], result_serializer="json", result_accept_content=["json"]
    )
    log_path = tmp_path / "worker.log"
    node = f"hostile-lone-{uuid.uuid4().hex[:8]}@%h"
    try:
        with celery_worker_process(env, log_path=str(log_path), node=node, cwd=str(ROOT)) as proc:
            worker = WorkerProcess(proc, log_path, shared / "never_import.marker", spool, shared, moto_process_endpoint)
            deadline = time.monotonic() + 60
            while not app.control.ping(timeout=0.5):
                assert proc.poll() is None, f"the worker exited with {proc.returncode}:\n{worker.log_tail()}"
                assert time.monotonic() < deadline, f"the worker did not answer a ping:\n{worker.log_tail()}"
            yield app, worker
    finally:
        app.close()
        client = redis.Redis.from_url(url)
        client.flushdb()
        client.close()


@pytest.mark.parametrize(
    ("make", "cause"),
    [
        pytest.param(
            lambda bucket: {
                "name": "deep",
                "builder": "tests.fixtures:tiny_linear",
                "destination": f"s3://{bucket}/deep",
                "kwargs": {"deep": _deep(500)},
            },
            r"kwargs|deep|nest",
            id="kwargs-500-deep",
        ),
        pytest.param(lambda bucket: _deep(900), r"JSON object|deep|nest", id="spec-is-a-900-deep-list"),
    ],
)
def test_a_deeply_nested_job_fails_and_the_worker_lives(
    lone_worker: tuple[Any, WorkerProcess], worker_s3: Any, dest_bucket: str, make: Callable[[str], Any], cause: str
) -> None:
    app, worker = lone_worker
    result = app.send_task("worker.tasks.export_model", args=[make(dest_bucket)], queue="cpu")
    deadline = time.monotonic() + JOB_TIMEOUT
    while not result.ready():
        worker.assert_alive()
        assert time.monotonic() < deadline, f"no result:\n{worker.log_tail()}"
        time.sleep(0.2)
    value = result.get(timeout=1, propagate=False)
    check_failed(result.state, value, "SpecError", cause, worker)
    assert app.control.ping(timeout=5.0), "the worker does not answer a ping"
    assert_nothing_written(worker_s3, dest_bucket)
