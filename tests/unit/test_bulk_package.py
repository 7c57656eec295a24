"""worker.bulk's package: its public names, its Lua scripts, and statuses that serialise as
the plain strings the reports and Redis records have always held."""

from __future__ import annotations

import json
from importlib.resources import files

import worker.bulk
from worker.bulk import OUTCOMES, Action, Outcome, RunStatus, lua


def test_the_public_names() -> None:
    assert sorted(worker.bulk.__all__) == sorted(
        ["DRY_RUN_RECENT_TARGETS", "OUTCOMES", "PLAN_BATCH", "PREFIX", "TARGET_LOCK_POLL", "Action", "BulkRun",
         "BulkRunBusy", "Candidate", "Decision", "Outcome", "Planner", "RecentTargets", "RunKeys", "RunStatus",
         "Send", "build_report", "check_source", "dry_run", "is_catalog", "iter_candidates", "list_manifests",
         "new_format", "new_policy", "plan", "plan_run", "report_uri_for", "save_report", "target_lock",
         "target_lock_ttl", "target_locked", "write_report"]
    )  # fmt: skip
    assert all(hasattr(worker.bulk, name) for name in worker.bulk.__all__)


def test_each_lua_script_is_loaded_from_its_file() -> None:
    scripts = files("worker.bulk").joinpath("scripts")
    loaded = {"claim": lua.CLAIM, "finish": lua.FINISH, "lock_owned": lua.LOCK_OWNED, "complete": lua.COMPLETE}
    assert sorted(p.name for p in scripts.iterdir() if p.name.endswith(".lua")) == sorted(f"{n}.lua" for n in loaded)
    for name, text in loaded.items():
        assert text == scripts.joinpath(f"{name}.lua").read_text(encoding="utf-8")
        assert "redis.call" in text and text.endswith("\n")


def test_statuses_serialise_as_the_strings_they_always_were() -> None:
    assert [s.value for s in RunStatus] == ["planning", "running", "finished", "failed", "superseded", "expired"]
    assert tuple(Outcome) == OUTCOMES
    assert [o.value for o in Outcome] == ["exported", "skipped", "unchanged", "failed", "superseded"]
    assert [a.value for a in Action] == ["export", "replace", "unchanged", "invalid"]
    for enum in (RunStatus, Outcome, Action):
        for member in enum:
            assert json.dumps(member) == json.dumps(member.value)
            assert json.dumps({member: member}, indent=2) == json.dumps({member.value: member.value}, indent=2)
            assert str(member) == f"{member}" == member.value
            assert member == member.value and hash(member) == hash(member.value)
