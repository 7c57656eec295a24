"""A checkpoint whose pickle would run code never runs it in a real worker."""

from __future__ import annotations

import pathlib
import re
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from tests.hostile_corpus import CHECKPOINTS, Ctx
from tests.integration.conftest import WorkerProcess
from tests.integration.hostile import assert_nothing_written, check_failed, send

pytestmark = pytest.mark.usefixtures("celery_worker")


@pytest.mark.parametrize("make", list(CHECKPOINTS.values()), ids=list(CHECKPOINTS))
def test_malicious_checkpoint_never_runs_in_the_worker(
    celery_worker: WorkerProcess,
    worker_s3: Any,
    dest_bucket: str,
    assets_bucket: str,
    make: Callable[[pathlib.Path], bytes],
) -> None:
    ctx = Ctx(celery_worker, worker_s3, dest_bucket, assets_bucket)
    marker = celery_worker.shared_dir / f"pwned-{uuid.uuid4().hex[:8]}"
    weights = ctx.put("evil/state_dict.pt", make(marker))
    state, value = send(ctx.spec(weights=weights))
    check_failed(
        state, value, "BuildFailed", rf"weights {re.escape(weights)} are not a plain state_dict", celery_worker
    )
    assert not marker.exists(), "the checkpoint's pickle ran in the worker"
    assert_nothing_written(worker_s3, dest_bucket)
