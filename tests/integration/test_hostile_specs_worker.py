"""The hostile-spec corpus against a real worker: each spec fails naming its cause, writes
nothing, and the worker goes on serving.

Jobs are sent with ``export_model.apply_async(..., queue="cpu")``, bypassing the client-side
validation and routing of ``submit_export``, so the worker itself sees every bad spec; the
specs that are invalid by their schema alone are also checked to be refused by
``submit_export`` before anything is sent.
"""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.conftest import object_keys
from tests.hostile_corpus import CORPUS, Ctx, Make
from tests.integration.conftest import WorkerProcess
from tests.integration.hostile import assert_no_bucket, assert_nothing_written, check_failed, queue_lengths, send
from worker.errors import SpecError
from worker.spec import parse_spec
from worker.tasks import submit_export

pytestmark = pytest.mark.usefixtures("celery_worker")


@pytest.mark.parametrize(("make", "error", "cause", "schema"), CORPUS)
def test_hostile_spec_fails_naming_its_cause_and_writes_nothing(
    celery_worker: WorkerProcess,
    worker_s3: Any,
    dest_bucket: str,
    assets_bucket: str,
    redis_client: Any,
    make: Make,
    error: str,
    cause: str,
    schema: bool,
) -> None:
    ctx = Ctx(celery_worker, worker_s3, dest_bucket, assets_bucket)
    spec = make(ctx)
    if schema:
        # Refused in the caller, naming the same cause; nothing reaches a queue.
        with pytest.raises(SpecError) as refused:
            parse_spec(spec)
        assert re.search(cause, str(refused.value)), f"{cause!r} not found in {refused.value}"
        before = queue_lengths(redis_client)
        with pytest.raises(SpecError, match=cause):
            submit_export(spec)
        assert queue_lengths(redis_client) == before, "a spec refused by submit_export was sent"

    state, value = send(spec)
    check_failed(state, value, error, cause, celery_worker)
    assert_nothing_written(worker_s3, dest_bucket)
    if ctx.missing_dest is not None:
        assert_no_bucket(worker_s3, ctx.missing_dest)
    for marker in ctx.markers:
        assert not marker.exists(), f"{marker} exists: code ran in the worker that never should have"


def test_the_worker_still_answers_and_exports_after_the_corpus(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    from worker.celery import app

    celery_worker.assert_alive()
    assert app.control.ping(timeout=5.0), "the worker does not answer a ping"
    spec = Ctx(celery_worker, worker_s3, dest_bucket, "unused").spec()
    state, value = send(spec)
    assert state == "SUCCESS", f"{state}: {value!r}\n{celery_worker.log_tail()}"
    assert value["skipped"] is False
    assert sorted(object_keys(worker_s3, dest_bucket)) == sorted(
        k.split("/", 3)[3] for k in (value["artifact_uri"], value["manifest_uri"])
    )
