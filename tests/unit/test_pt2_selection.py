"""Bulk conversion to .pt2 (``to_format``) without a store: the run keys a converting run
resumes by, target formats accepted and refused, and beat entries that carry a target format."""

from __future__ import annotations

import hashlib
import inspect

import pytest

from worker import bulk
from worker.celery import beat_schedule
from worker.errors import SpecError
from worker.settings import ScheduleEntry, Settings

# -- RunKeys and new_format -----------------------------------------------------------------------

SOURCE, POLICY = "s3://bkt1/models", "if-stale"
#: The keys a run of SOURCE under POLICY resumed by before target formats existed.
OLD_SELECTION = hashlib.sha256(f"{SOURCE}\0{POLICY}".encode()).hexdigest()[:32]


def test_run_keys_without_a_target_format_are_the_old_ones() -> None:
    keys = bulk.RunKeys("run-1", SOURCE, POLICY)
    assert (
        keys.done == f"{bulk.PREFIX}done:{OLD_SELECTION}" == "export-worker:bulk:done:dd049c221516a22355767c86a7d076df"
    )
    assert keys.last == f"{bulk.PREFIX}last:{OLD_SELECTION}"
    empty = bulk.RunKeys("run-1", SOURCE, POLICY, "")
    assert (empty.done, empty.last) == (keys.done, keys.last)


def test_a_target_format_is_a_selection_of_its_own() -> None:
    plain = bulk.RunKeys("run-1", SOURCE, POLICY)
    pt2 = bulk.RunKeys("run-1", SOURCE, POLICY, "pt2")
    torchscript = bulk.RunKeys("run-1", SOURCE, POLICY, "torchscript")
    assert len({plain.done, pt2.done, torchscript.done}) == 3
    assert len({plain.last, pt2.last, torchscript.last}) == 3
    assert pt2.done == f"{bulk.PREFIX}done:" + hashlib.sha256(f"{SOURCE}\0{POLICY}\0pt2".encode()).hexdigest()[:32]
    # What belongs to the run itself does not depend on the selection.
    assert pt2.all_run_keys() == plain.all_run_keys()


@pytest.mark.parametrize(
    ("value", "expected"), [(None, None), ("", None), ("pt2", "pt2"), ("torchscript", "torchscript")]
)
def test_new_format_accepts_the_formats_and_nothing(value: str | None, expected: str | None) -> None:
    assert bulk.new_format(value) == expected


@pytest.mark.parametrize("value", ["onnx", "PT2", " pt2", "script"])
def test_new_format_refuses_anything_else_naming_it(value: str) -> None:
    with pytest.raises(SpecError) as info:
        bulk.new_format(value)
    assert repr(value) in str(info.value)
    assert "torchscript, pt2" in str(info.value)


# -- beat entries with a target format ------------------------------------------------------------


def test_beat_passes_to_format_where_an_entry_has_one() -> None:
    s = Settings(
        reexport_schedule=[
            ScheduleEntry(source="s3://bkt/models", policy="always", every=60, to_format="pt2"),
            ScheduleEntry(source="s3://bkt/models", every=60),
        ]
    )
    entries = beat_schedule(s)
    assert list(entries) == ["reexport-0-always-to-pt2-s3://bkt/models", "reexport-1-if-stale-s3://bkt/models"]
    converting, plain = entries.values()
    assert converting["kwargs"] == {"policy": "always", "to_format": "pt2"}
    assert plain["kwargs"] == {"policy": "if-stale"}


def test_a_beat_entry_with_to_format_binds_to_the_reexport_task() -> None:
    from worker import tasks
    from worker.celery import app

    s = Settings(reexport_schedule=[ScheduleEntry(source="s3://bkt/models", every=60, to_format="pt2")])
    (entry,) = beat_schedule(s).values()
    task = app.tasks[entry["task"]]
    assert task.name == tasks.reexport.name
    bound = inspect.signature(task.run).bind(*entry["args"], **entry["kwargs"])
    assert bound.arguments == {"source": "s3://bkt/models", "policy": "if-stale", "to_format": "pt2"}


def test_a_schedule_entry_refuses_an_unknown_format() -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="to_format"):
        ScheduleEntry(source="s3://bkt/models", every=60, to_format="onnx")  # type: ignore[arg-type]
