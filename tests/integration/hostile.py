"""Sending hostile jobs straight to a real worker, and what must hold after each: it failed
naming its cause, nothing was written, and the worker lives.
"""

from __future__ import annotations

import re
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests.conftest import object_keys, open_uploads
from tests.integration.conftest import WorkerProcess
from worker.tasks import export_model

#: Seconds to wait for one job; generous, the machine may be busy with other tests.
JOB_TIMEOUT = 120.0


def send(spec: Any, queue: str = "cpu") -> tuple[str, Any]:
    """Send ``spec`` straight to a queue (no client-side validation); its state and value."""
    result = export_model.apply_async(args=[spec], queue=queue)
    value = result.get(timeout=JOB_TIMEOUT, propagate=False)
    return result.state, value


def assert_nothing_written(client: Any, bucket: str) -> None:
    assert object_keys(client, bucket) == [], f"objects left in {bucket}"
    assert open_uploads(client, bucket) == [], f"multipart uploads left open in {bucket}"


def assert_no_bucket(client: Any, bucket: str) -> None:
    with pytest.raises(ClientError) as info:
        client.head_bucket(Bucket=bucket)
    assert info.value.response["Error"]["Code"] in ("404", "NoSuchBucket"), info.value


def queue_lengths(redis_client: Any) -> tuple[int, int]:
    return int(redis_client.llen("cpu")), int(redis_client.llen("gpu"))


def check_failed(state: str, value: Any, error: str, cause: str, worker: WorkerProcess) -> None:
    assert state == "FAILURE", f"{state}: {value!r}"
    assert isinstance(value, BaseException), repr(value)
    assert type(value).__name__ == error, f"{type(value).__name__}: {value}"
    assert re.search(cause, str(value)), f"{cause!r} not found in {value}"
    assert list(worker.spool_dir.iterdir()) == [], "spool files were left behind"
    worker.assert_alive()
