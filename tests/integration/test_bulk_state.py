"""A bulk run's state in a real redis-server: the window, counting once, finishing once, locks."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from worker.bulk import BulkRun, BulkRunBusy, Decision, RunKeys, target_lock
from worker.settings import Settings

#: This file's Redis database (the session's worker uses 0, the bulk tests 3 and 4).
STATE_DB = 5


@pytest.fixture()
def r(redis_server: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_server.rsplit("/", 1)[0] + f"/{STATE_DB}")
    client.flushdb()
    yield client
    client.flushdb()
    client.close()


def _settings(**values: Any) -> Settings:
    return Settings(**values)


def _run(r: Any, source: str = "s3://bkt/models", policy: str = "always", **settings: Any) -> BulkRun:
    return BulkRun(r, RunKeys(uuid.uuid4().hex, source, policy), _settings(**settings))


def _decision(n: int, action: str = "replace") -> Decision:
    target = f"s3://bkt/models/m{n}/h/torch-x/model.pt"
    spec = {"name": f"m{n}"}
    return Decision(action, "why", f"m{n}", f"s3://bkt/models/m{n}.manifest.json", spec, target)  # type: ignore[arg-type]


def _planned(r: Any, n: int, window: int = 3, **settings: Any) -> BulkRun:
    run = _run(r, **settings)
    run.start(window=window, report_uri="s3://bkt/r.json")
    for i in range(n):
        assert run.add(_decision(i), i) == "queued"
    run.planned()
    return run


def test_dispatch_never_exceeds_the_window_and_refills_as_items_finish(r: Any) -> None:
    run = _planned(r, 10, window=3)
    sent: list[dict[str, Any]] = []
    assert run.dispatch(lambda run_id, item: sent.append(item)) == 3
    assert run.dispatch(lambda run_id, item: sent.append(item)) == 0  # full
    assert run.progress()["in_flight"] == 3 and run.progress()["queued"] == 7
    while sent:
        item = sent.pop(0)
        assert run.complete(item, "exported", 0.01)
        run.dispatch(lambda run_id, item: sent.append(item))
        assert run.progress()["in_flight"] <= 3
    p = run.progress()
    assert p["exported"] == 10 and p["in_flight"] == 0 and p["queued"] == 0 and p["remaining"] == 0


def test_an_item_that_could_not_be_sent_goes_back(r: Any) -> None:
    run = _planned(r, 2, window=5)

    def broken(run_id: str, item: dict[str, Any]) -> None:
        raise ConnectionError("broker down")

    with pytest.raises(ConnectionError):
        run.dispatch(broken)
    assert run.progress()["in_flight"] == 0 and run.progress()["queued"] == 2


def test_an_item_is_counted_once_and_a_counted_item_is_known(r: Any) -> None:
    run = _planned(r, 1)
    sent: list[dict[str, Any]] = []
    run.dispatch(lambda run_id, item: sent.append(item))
    assert not run.is_counted(sent[0])
    assert run.complete(sent[0], "failed", 0.5, "BuildFailed: boom")
    assert not run.complete(sent[0], "failed", 0.5, "BuildFailed: boom")
    assert run.is_counted(sent[0])
    p = run.progress()
    assert p["failed"] == 1 and p["in_flight"] == 0
    assert list(run.iter_failures()) == [{"name": "m0", "source": sent[0]["source"], "error": "BuildFailed: boom"}]


def test_the_run_finishes_once_and_only_when_everything_is_done(r: Any) -> None:
    run = _run(r)
    run.start(window=4, report_uri="s3://bkt/r.json")
    for i in range(4):
        run.add(_decision(i), i)
    sent: list[dict[str, Any]] = []
    run.dispatch(lambda run_id, item: sent.append(item))
    assert not run.try_finish()  # still planning
    run.planned()
    for item in sent[:-1]:
        run.complete(item, "exported", 0.1)
        assert not run.try_finish()
    run.complete(sent[-1], "exported", 0.1)
    winners = []
    threads = [threading.Thread(target=lambda: winners.append(run.try_finish())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert winners.count(True) == 1


def test_unchanged_invalid_and_duplicate_candidates_are_counted_not_queued(r: Any) -> None:
    run = _run(r)
    run.start(window=4, report_uri="s3://bkt/r.json")
    assert run.add(_decision(0, "unchanged"), 0) == "unchanged"
    assert run.add(Decision("invalid", "line 3: not JSON", "?", "cat.jsonl:3"), 1) == "failed"
    assert run.add(_decision(2), 2) == "queued"
    assert run.add(_decision(2), 3) == "unchanged"  # same target again
    p = run.progress()
    assert (p["selected"], p["unchanged"], p["failed"], p["queued"]) == (4, 2, 1, 1)


def test_one_run_per_selection_and_the_lock_goes_at_the_end(r: Any, s3: Any, bucket: str) -> None:
    first = _run(r, source=f"s3://{bucket}/models")
    first.start(window=2, report_uri=f"s3://{bucket}/_reexport/a.json")
    second = _run(r, source=f"s3://{bucket}/models", policy="if-stale")
    with pytest.raises(BulkRunBusy, match=f"already running \\(run {first.keys.run_id}\\)"):
        second.start(window=2, report_uri=f"s3://{bucket}/_reexport/b.json")
    other = _run(r, source=f"s3://{bucket}/other")  # another selection is free
    other.start(window=2, report_uri=f"s3://{bucket}/_reexport/c.json")
    assert r.ttl(first.keys.lock) > 0
    first.planned()
    assert first.try_finish()
    report = first.finalize(s3)
    assert report["status"] == "finished"
    assert json.loads(s3.get_object(Bucket=bucket, Key="_reexport/a.json")["Body"].read()) == report
    assert r.get(first.keys.lock) is None
    second.start(window=2, report_uri=f"s3://{bucket}/_reexport/b.json")  # now it may


def test_a_report_that_cannot_be_written_still_ends_the_run(r: Any, s3: Any) -> None:
    run = _run(r, source="s3://no-such-bucket-here/models")
    run.start(window=2, report_uri="s3://no-such-bucket-here/_reexport/x.json")
    run.planned()
    assert run.try_finish()
    report = run.finalize(s3)
    assert "NoSuchBucket" in report["report_error"]
    assert r.get(run.keys.lock) is None
    assert run.stored_report() == report


def test_a_new_run_resumes_an_unfinished_one(r: Any) -> None:
    old = _run(r, bulk_lock_ttl=4000)
    old.start(window=1, report_uri="s3://bkt/r.json")
    for i in range(3):
        old.add(_decision(i), i)
    old.planned()
    sent: list[dict[str, Any]] = []
    old.dispatch(lambda run_id, item: sent.append(item))
    assert old.complete(sent[0], "exported", 0.1)  # m0 done; then the run dies
    r.delete(old.keys.lock)  # (as if it expired)

    new = BulkRun(r, RunKeys(uuid.uuid4().hex, old.keys.source, old.keys.policy), old.settings)
    assert new.start(window=4, report_uri="s3://bkt/r2.json") == old.keys.run_id
    assert old.status() == "superseded" and old.progress()["queued"] == 0
    assert new.add(_decision(0), 0) == "skipped"  # finished by the old run
    assert new.add(_decision(1), 1) == "queued"


def test_a_finished_run_or_another_policy_is_not_resumed(r: Any, s3: Any, bucket: str) -> None:
    finished = _run(r, source=f"s3://{bucket}/models")
    finished.start(window=1, report_uri=f"s3://{bucket}/r.json")
    finished.planned()
    assert finished.try_finish()
    finished.finalize(s3)
    again = BulkRun(r, RunKeys(uuid.uuid4().hex, finished.keys.source, "always"), finished.settings)
    assert again.start(window=1, report_uri=f"s3://{bucket}/r2.json") is None
    r.delete(again.keys.lock)  # it dies unfinished
    other_policy = BulkRun(r, RunKeys(uuid.uuid4().hex, finished.keys.source, "if-stale"), finished.settings)
    assert other_policy.start(window=1, report_uri=f"s3://{bucket}/r3.json") is None
    assert again.status() == "planning"


def test_a_target_lock_is_exclusive_and_released_by_its_holder_only(r: Any) -> None:
    release = target_lock(r, "s3://bkt/a/model.pt", ttl=30)
    assert release is not None
    assert target_lock(r, "s3://bkt/a/model.pt", ttl=30) is None
    assert target_lock(r, "s3://bkt/b/model.pt", ttl=30) is not None
    release()
    assert target_lock(r, "s3://bkt/a/model.pt", ttl=30) is not None
