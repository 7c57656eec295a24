"""The sweeper's schedule: beat sweeps only where prefixes are set, and the sweep age must
exceed the hard time limit."""

from __future__ import annotations

from datetime import timedelta

import pytest

from worker.celery import beat_schedule
from worker.settings import Settings


def test_beat_sweeps_only_where_prefixes_are_set() -> None:
    assert "sweep-stale-uploads" not in beat_schedule(Settings())
    entry = beat_schedule(Settings(sweep_prefixes="s3://a/models,s3://b/x", sweep_every=600))["sweep-stale-uploads"]
    assert entry["task"] == "worker.tasks.sweep_stale"
    assert entry["schedule"] == timedelta(seconds=600)


def test_sweep_after_must_exceed_the_hard_time_limit() -> None:
    with pytest.raises(ValueError, match="EXPORT_SWEEP_AFTER > EXPORT_TIME_LIMIT"):
        Settings(sweep_after=100, time_limit=200, soft_time_limit=100, visibility_timeout=300)
    assert Settings().stale_after == Settings().visibility_timeout
