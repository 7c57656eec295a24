"""Builders outside the allow-list are never imported by a real worker, however spelled."""

from __future__ import annotations

import sys
from typing import Any

import pytest

from tests.hostile_corpus import NEVER_IMPORT_SPELLINGS
from tests.integration.conftest import WorkerProcess
from tests.integration.hostile import assert_nothing_written, send

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_builders_outside_the_allow_list_are_never_imported(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    marker = celery_worker.never_import_marker
    assert "tests.never_import" not in sys.modules
    kwargs_that_would_import = {"name": "tests.never_import", "mod_name": "tests.never_import"}
    for builder in NEVER_IMPORT_SPELLINGS:
        for kwargs in ({}, kwargs_that_would_import):
            spec = {
                "name": "never",
                "builder": builder,
                "kwargs": kwargs,
                "destination": f"s3://{dest_bucket}/never",
            }
            state, value = send(spec)
            assert state == "FAILURE", f"{builder!r}: {state} {value!r}"
            assert isinstance(value, BaseException)
            assert type(value).__name__ in ("SpecError", "BuilderNotAllowed", "BuildFailed"), f"{builder!r}: {value!r}"
            assert not marker.exists(), f"{builder!r} with {kwargs} imported tests.never_import: {marker.read_text()}"
            celery_worker.assert_alive()
    assert_nothing_written(worker_s3, dest_bucket)
    assert "tests.never_import" not in sys.modules
