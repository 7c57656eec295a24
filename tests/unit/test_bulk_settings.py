"""Settings of bulk re-exports (window, lock TTL, report prefix, the beat schedule read from
``EXPORT_REEXPORT_SCHEDULE``) and the beat entries made from them."""

from __future__ import annotations

import inspect
import json
from datetime import timedelta
from typing import Any

import pytest
from celery.schedules import crontab
from pydantic import ValidationError

from worker.celery import CPU_QUEUE, beat_schedule, create_app
from worker.settings import ScheduleEntry, Settings, crontab_of

pytestmark = pytest.mark.usefixtures("clean_env")


# -- crontab_of ---------------------------------------------------------------------------------


def test_crontab_of_reads_five_fields_in_order() -> None:
    schedule = crontab_of("30 3 1-7 */2 mon")
    assert isinstance(schedule, crontab)
    assert schedule.minute == {30}
    assert schedule.hour == {3}
    assert schedule.day_of_month == set(range(1, 8))
    assert schedule.month_of_year == {1, 3, 5, 7, 9, 11}
    assert schedule.day_of_week == {1}
    assert crontab_of("  30   3 * *  * ") == crontab(minute="30", hour="3")


@pytest.mark.parametrize("expression", ["", "* * * *", "0 3 * * * *", "daily"])
def test_crontab_of_needs_five_fields(expression: str) -> None:
    with pytest.raises(ValueError, match="needs 5 fields") as info:
        crontab_of(expression)
    assert repr(expression) in str(info.value)


@pytest.mark.parametrize("expression", ["61 * * * *", "0 24 * * *", "0 0 32 * *", "0 0 * 13 *", "0 0 * * funday"])
def test_crontab_of_refuses_fields_out_of_range(expression: str) -> None:
    with pytest.raises(ValueError) as info:
        crontab_of(expression)
    assert repr(expression) in str(info.value)


# -- ScheduleEntry -------------------------------------------------------------------------------


def test_schedule_entry_with_a_crontab() -> None:
    entry = ScheduleEntry(source="s3://bkt/models", cron="30 3 * * *")
    assert (entry.source, entry.policy, entry.cron, entry.every) == ("s3://bkt/models", "if-stale", "30 3 * * *", None)


def test_schedule_entry_with_an_interval() -> None:
    entry = ScheduleEntry(source="s3://bkt/specs.jsonl", policy="missing", every=600)
    assert (entry.policy, entry.cron, entry.every) == ("missing", None, 600.0)


@pytest.mark.parametrize(
    ("fields", "match"),
    [
        ({}, "exactly one of 'cron' and 'every'"),
        ({"cron": "0 3 * * *", "every": 60}, "exactly one of 'cron' and 'every'"),
        ({"cron": "0 3 * *"}, "needs 5 fields"),
        ({"cron": "0 25 * * *"}, "0 25"),
        ({"every": 0}, "greater than 0"),
        ({"every": -5}, "greater than 0"),
        ({"every": 60, "policy": "sometimes"}, "policy"),
        ({"every": 60, "window": 8}, "window"),
    ],
)
def test_schedule_entry_is_checked(fields: dict[str, Any], match: str) -> None:
    with pytest.raises(ValidationError, match=match) as info:
        ScheduleEntry(source="s3://bkt/models", **fields)
    if "exactly one" in match:
        assert "s3://bkt/models" in str(info.value), "the entry is named by its source"


def test_schedule_entry_is_frozen() -> None:
    entry = ScheduleEntry(source="s3://bkt/models", every=60)
    with pytest.raises(ValidationError):
        entry.every = 30


# -- bulk settings --------------------------------------------------------------------------------


def test_bulk_defaults() -> None:
    s = Settings()
    assert s.bulk_window == 64
    assert s.bulk_lock_ttl is None
    assert s.lock_ttl == s.visibility_timeout
    assert s.report_prefix is None
    assert s.reexport_schedule == []
    assert beat_schedule(s) == {}


def test_bulk_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_BULK_WINDOW", "8")
    monkeypatch.setenv("EXPORT_BULK_LOCK_TTL", "7200")
    monkeypatch.setenv("EXPORT_REPORT_PREFIX", "s3://reports/bulk")
    s = Settings()
    assert s.bulk_window == 8
    assert s.bulk_lock_ttl == 7200
    assert s.lock_ttl == 7200
    assert s.report_prefix == "s3://reports/bulk"


@pytest.mark.parametrize("value", ["0", "-1", "100001", "many"])
def test_bulk_window_is_bounded(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("EXPORT_BULK_WINDOW", value)
    with pytest.raises(ValidationError, match="bulk_window"):
        Settings()


def test_bulk_window_bounds_are_inclusive() -> None:
    assert Settings(bulk_window=1).bulk_window == 1
    assert Settings(bulk_window=100_000).bulk_window == 100_000


@pytest.mark.parametrize("ttl", [1, 100, 3600])
def test_bulk_lock_ttl_must_exceed_the_time_limit(ttl: int) -> None:
    with pytest.raises(ValidationError, match="EXPORT_BULK_LOCK_TTL > EXPORT_TIME_LIMIT") as info:
        Settings(bulk_lock_ttl=ttl)
    assert f"got {ttl}, 3600" in str(info.value)


def test_bulk_lock_ttl_is_checked_against_the_configured_time_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_SOFT_TIME_LIMIT", "50")
    monkeypatch.setenv("EXPORT_TIME_LIMIT", "100")
    monkeypatch.setenv("EXPORT_VISIBILITY_TIMEOUT", "200")
    monkeypatch.setenv("EXPORT_BULK_LOCK_TTL", "100")
    with pytest.raises(ValidationError, match="got 100, 100"):
        Settings()
    monkeypatch.setenv("EXPORT_BULK_LOCK_TTL", "101")
    s = Settings()
    assert s.lock_ttl == 101
    monkeypatch.delenv("EXPORT_BULK_LOCK_TTL")
    assert Settings().lock_ttl == 200, "default: the visibility timeout"


def test_bulk_lock_ttl_may_be_below_the_visibility_timeout() -> None:
    s = Settings(bulk_lock_ttl=3601)
    assert s.visibility_timeout == 4000
    assert s.lock_ttl == 3601


# -- EXPORT_REEXPORT_SCHEDULE ----------------------------------------------------------------------


SCHEDULE: list[dict[str, Any]] = [
    {"source": "s3://bkt/models", "cron": "30 3 * * *"},
    {"source": "s3://bkt/catalogs/nightly.jsonl", "policy": "always", "every": 600},
    {"source": "s3://bkt/models", "policy": "missing", "every": 90.5},
]


def test_schedule_is_json_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_REEXPORT_SCHEDULE", json.dumps(SCHEDULE))
    s = Settings()
    assert s.reexport_schedule == [
        ScheduleEntry(source="s3://bkt/models", policy="if-stale", cron="30 3 * * *"),
        ScheduleEntry(source="s3://bkt/catalogs/nightly.jsonl", policy="always", every=600),
        ScheduleEntry(source="s3://bkt/models", policy="missing", every=90.5),
    ]


def test_empty_schedule_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_REEXPORT_SCHEDULE", "[]")
    assert Settings().reexport_schedule == []


@pytest.mark.parametrize(
    "value",
    [
        "not json",
        '[{"source": "s3://bkt/models"',
        json.dumps([{"source": "s3://bkt/models"}]),
        json.dumps([{"source": "s3://bkt/models", "cron": "30 3 * *"}]),
        json.dumps([{"source": "s3://bkt/models", "every": 60, "cron": "* * * * *"}]),
        json.dumps([{"source": "s3://bkt/models", "every": 60, "policy": "never"}]),
        json.dumps([{"every": 60}]),
    ],
)
def test_bad_schedule_in_the_environment_is_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("EXPORT_REEXPORT_SCHEDULE", value)
    with pytest.raises(ValueError, match="reexport_schedule"):
        Settings()


# -- beat_schedule ---------------------------------------------------------------------------------


def test_beat_schedule_has_one_reexport_per_entry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_REEXPORT_SCHEDULE", json.dumps(SCHEDULE))
    entries = beat_schedule(Settings())
    assert len(entries) == len(SCHEDULE), "one entry each, even for one source twice"
    assert list(entries) == [
        "reexport-0-if-stale-s3://bkt/models",
        "reexport-1-always-s3://bkt/catalogs/nightly.jsonl",
        "reexport-2-missing-s3://bkt/models",
    ]
    cron, interval, other = entries.values()
    for entry, given in zip(entries.values(), SCHEDULE, strict=True):
        assert entry["task"] == "worker.tasks.reexport"
        assert entry["args"] == [given["source"]]
        assert entry["kwargs"] == {"policy": given.get("policy", "if-stale")}
        assert entry["options"]["queue"] == CPU_QUEUE
    assert isinstance(cron["schedule"], crontab)
    assert cron["schedule"] == crontab(minute="30", hour="3")
    assert cron["schedule"].minute == {30} and cron["schedule"].hour == {3}
    assert cron["options"]["expires"] == 3600
    assert interval["schedule"] == timedelta(seconds=600)
    assert interval["options"]["expires"] == 600
    assert other["schedule"] == timedelta(seconds=90.5)
    assert other["options"]["expires"] == 90.5


def test_beat_entries_call_the_reexport_task_as_it_is_declared() -> None:
    from worker import tasks
    from worker.celery import app

    s = Settings(reexport_schedule=[ScheduleEntry(source="s3://bkt/models", policy="always", every=60)])
    (entry,) = beat_schedule(s).values()
    task = app.tasks[entry["task"]]
    assert task.name == tasks.reexport.name == "worker.tasks.reexport"
    bound = inspect.signature(task.run).bind(*entry["args"], **entry["kwargs"])
    assert bound.arguments == {"source": "s3://bkt/models", "policy": "always"}


def test_the_app_carries_the_beat_schedule() -> None:
    s = Settings(reexport_schedule=[ScheduleEntry(source="s3://bkt/models", cron="*/15 * * * *")])
    app = create_app(s)
    assert app.conf.beat_schedule == beat_schedule(s)
    (entry,) = app.conf.beat_schedule.values()
    assert entry["schedule"] == crontab(minute="*/15")


def test_crc32c_and_crc64nvme_need_the_crt_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import settings as settings_module

    monkeypatch.setattr(settings_module, "_has_crt", lambda: False)
    for algorithm in ("CRC32C", "CRC64NVME"):
        with pytest.raises(ValueError, match=r"botocore\[crt\]"):
            Settings(checksum_algorithm=algorithm)
    assert Settings(checksum_algorithm="CRC32").checksum_algorithm == "CRC32"
    monkeypatch.setattr(settings_module, "_has_crt", lambda: True)
    assert Settings(checksum_algorithm="CRC32C").checksum_algorithm == "CRC32C"
