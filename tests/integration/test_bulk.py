"""Bulk re-exports for real: redis-server, ``celery -A worker worker -c 2``, moto server, beat.

These tests use Redis databases of their own (the session's worker consumes database 0),
so the workers started here are the only ones serving their jobs.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from serializer.s3.client import make_s3_client
from worker.bulk import PREFIX, BulkRun, RunKeys
from worker.cli.demo_services import stop_process
from worker.errors import ExportError
from worker.settings import Settings

from .conftest import ROOT
from .services import ServiceWorld
from .services import db_url as _url
from .services import running_worker as _worker
from .services import tail as _tail
from .services import worker_env as _env

#: Redis databases: the shared bulk worker's, and the one the interruption test owns.
BULK_DB, RESUME_DB = 3, 4
#: Seconds to wait for a worker to answer and for a bulk run to end.
WORKER_START_TIMEOUT = 60.0
RUN_TIMEOUT = 240.0
INPUTS = [{"shape": [2, 8], "dtype": "float32"}]
TINY = {"in_features": 8, "hidden": 8, "classes": 3}


class Bulk(ServiceWorld):
    """The bulk tests' world: a broker database, a worker with 2 processes, the S3 server."""

    bucket_prefix = "bulk"

    def reexport(self, source: str, **kwargs: Any) -> Any:
        return self.app.send_task("worker.tasks.reexport", args=[source], kwargs=kwargs, queue="cpu")

    def run(self, source: str, **kwargs: Any) -> dict[str, Any]:
        result = self.reexport(source, **kwargs)
        try:
            report: dict[str, Any] = result.get(timeout=RUN_TIMEOUT)
        except Exception:
            print(_tail(self.log_path))
            raise
        return report

    def progress(self, run_id: str) -> dict[str, Any]:
        return BulkRun.load(self.redis, run_id, Settings()).progress()

    def put_catalog(self, bucket: str, specs: list[dict[str, Any]], key: str = "catalog.jsonl") -> str:
        body = "\n".join(json.dumps(s) for s in specs).encode()
        self.s3.put_object(Bucket=bucket, Key=key, Body=body)
        return f"s3://{bucket}/{key}"

    def populate(self, bucket: str, specs: list[dict[str, Any]]) -> dict[str, Any]:
        """Export ``specs`` through a bulk run of a catalog (policy missing)."""
        report = self.run(self.put_catalog(bucket, specs), policy="missing")
        assert report["status"] == "finished", report
        return report


def tiny_spec(bucket: str, n: int, **overrides: Any) -> dict[str, Any]:
    spec = {
        "name": f"model-{n:04d}",
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {**TINY, "seed": n},
        "example_inputs": INPUTS,
        "destination": f"s3://{bucket}/models",
        "extra_files": {"labels.txt": f"label-{n}\n"},
    }
    spec.update(overrides)
    return spec


def slow_spec(bucket: str, n: int, seconds: float) -> dict[str, Any]:
    return {
        "name": f"slow-{n:03d}",
        "builder": "tests.fixtures:slow_linear",
        "kwargs": {"seconds": seconds, "in_features": 4, "seed": n},
        "example_inputs": [{"shape": [2, 4], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
    }


@pytest.fixture(scope="module")
def bulk(redis_server: str, moto_process_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bulk]:
    broker = _url(redis_server, BULK_DB)
    log_path = tmp_path_factory.mktemp("bulk") / "worker.log"
    env = _env(broker, moto_process_endpoint)
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=4)
    world = Bulk(broker, env, s3, log_path)
    world.redis.flushdb()
    with _worker(world.app, env, log_path):
        yield world


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.1)


def test_bulk_run_of_200_specs_with_some_failing(bulk: Bulk) -> None:
    bucket = bulk.bucket()
    specs = [tiny_spec(bucket, n) for n in range(200)]
    failing = {
        3: ("BuildFailed", tiny_spec(bucket, 3, kwargs={**TINY, "no_such_argument": 1})),
        50: ("ScriptingFailed", tiny_spec(bucket, 50, builder="tests.fixtures:unscriptable", kwargs={})),
        97: ("EXPORT_ALLOWED_BUILDERS", tiny_spec(bucket, 97, builder="tests.never_import:build")),
        120: ("weights", tiny_spec(bucket, 120, weights=f"s3://{bucket}/no/such/weights.pt")),
        199: ("eager module fails", tiny_spec(bucket, 199, example_inputs=[{"shape": [2, 5], "dtype": "float32"}])),
    }
    for n, (_, spec) in failing.items():
        specs[n] = spec
    catalog = bulk.put_catalog(bucket, specs)

    # Through the command line, as a user would: the bar while it runs, the report at the end.
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "reexport", catalog, "--policy", "missing", "--wait"],
        env=bulk.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 1, proc.stderr  # some exports failed
    assert proc.stdout.startswith("{"), proc.stderr
    report = json.loads(proc.stdout)
    assert "failed" in proc.stderr and "remaining" in proc.stderr, proc.stderr
    assert report["status"] == "finished"
    assert report["selected"] == 200
    assert report["counts"] == {"exported": 195, "skipped": 0, "unchanged": 0, "failed": 5, "superseded": 0}
    by_name = {f["name"]: f for f in report["failures"]}
    assert set(by_name) == {f"model-{n:04d}" for n in failing}
    for n, (cause, _) in failing.items():
        assert cause in by_name[f"model-{n:04d}"]["error"], by_name[f"model-{n:04d}"]
    assert report["item_seconds"]["count"] == 199  # the builder outside the allow-list never ran
    assert 0 < report["item_seconds"]["mean"] <= report["item_seconds"]["max"]
    assert report["duration_s"] > 0

    # The report object is what was returned; every good spec has its manifest; nothing half-done.
    report_key = report["report_uri"].removeprefix(f"s3://{bucket}/")
    stored = json.loads(bulk.s3.get_object(Bucket=bucket, Key=report_key)["Body"].read())
    assert stored == report
    manifests = bulk.manifests(bucket)
    assert len(manifests) == 195
    assert {m["spec"]["name"] for m in manifests.values()} == {s["name"] for s in specs} - set(by_name)
    assert not bulk.open_uploads(bucket)
    assert not [k for k in bulk.keys(bucket) if ".staging-" in k]
    # Nothing of the run is left to resume, and its lock is gone.
    assert not bulk.redis.exists(RunKeys(report["run_id"], catalog, "missing").lock)
    assert not bulk.redis.exists(RunKeys(report["run_id"], catalog, "missing").todo)


def test_if_stale_picks_exactly_the_stale_ones(bulk: Bulk) -> None:
    bucket = bulk.bucket()
    bulk.populate(bucket, [tiny_spec(bucket, n) for n in range(30)])
    before = bulk.manifests(bucket)
    keys = sorted(before)
    # A simulated producer change: some in an older archive format, some by other builder
    # code.  (Another torch writes at keys of its own: a manifest naming one here is not
    # trusted, see tests/integration/test_bulk_trust.py.)
    older_format, other_builder = set(keys[0:4]), set(keys[10:13])
    for key in older_format | other_builder:
        doc = before[key]
        if key in older_format:
            doc["artifact"]["format_version"] = 0
        else:
            doc["producer"]["builder"] = "sha256:" + "0" * 64
        bulk.s3.put_object(Bucket=bucket, Key=key, Body=json.dumps(doc).encode())
    stale = older_format | other_builder
    before = bulk.manifests(bucket)

    dry = bulk.run(f"s3://{bucket}/models", policy="if-stale", dry_run=True)
    assert dry["would"] == {"export": 0, "replace": 7, "unchanged": 23, "invalid": 0}
    plan_key = dry["report_uri"].removeprefix(f"s3://{bucket}/")
    plan = json.loads(bulk.s3.get_object(Bucket=bucket, Key=plan_key)["Body"].read())["plan"]
    picked = {p["source"].removeprefix(f"s3://{bucket}/") for p in plan if p["action"] == "replace"}
    assert picked == stale
    assert all("archive format version 0 <" in p["reason"] for p in plan if p["source"].endswith(tuple(older_format)))

    report = bulk.run(f"s3://{bucket}/models", policy="if-stale")
    assert report["counts"] == {"exported": 7, "skipped": 0, "unchanged": 23, "failed": 0, "superseded": 0}
    after = bulk.manifests(bucket)
    assert set(after) == set(before)
    for key in keys:
        if key in stale:
            assert after[key]["created_at"] != before[key]["created_at"]
            assert after[key]["artifact"]["format_version"] != 0
            assert after[key]["producer"]["builder"] != "sha256:" + "0" * 64
            body = bulk.s3.get_object(Bucket=bucket, Key=key.replace(".manifest.json", ".pt"))["Body"].read()
            assert hashlib.sha256(body).hexdigest() == after[key]["artifact"]["sha256"]
        else:
            assert after[key] == before[key]
    # Now nothing is stale.
    again = bulk.run(f"s3://{bucket}/models", policy="if-stale", dry_run=True)
    assert again["would"]["replace"] == 0 and again["would"]["unchanged"] == 30
    assert not bulk.open_uploads(bucket)
    assert not [k for k in bulk.keys(bucket) if ".staging-" in k]


def test_dry_run_enqueues_nothing(bulk: Bulk) -> None:
    bucket = bulk.bucket()
    bulk.populate(bucket, [tiny_spec(bucket, n) for n in range(6)])
    objects = set(bulk.keys(bucket))
    runs = set(bulk.redis.scan_iter(f"{PREFIX}run:*"))
    queued = bulk.redis.llen("cpu")

    command = ["reexport", f"s3://{bucket}/models", "--policy", "always", "--dry-run", "--json"]
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", *command],
        env=bulk.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    lines = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(lines) == 6 and {p["action"] for p in lines} == {"replace"}
    assert all(p["reason"].startswith("policy always") for p in lines)
    assert "nothing was enqueued" in proc.stderr
    # Nothing sent, nothing written, no run recorded.
    assert bulk.redis.llen("cpu") == queued
    assert set(bulk.redis.scan_iter(f"{PREFIX}run:*")) == runs
    assert set(bulk.keys(bucket)) == objects

    # The task's dry run writes its report and nothing else.
    summary = bulk.run(f"s3://{bucket}/models", policy="always", dry_run=True)
    assert summary["would"]["replace"] == 6
    assert set(bulk.keys(bucket)) == objects | {summary["report_uri"].removeprefix(f"s3://{bucket}/")}
    assert set(bulk.redis.scan_iter(f"{PREFIX}run:*")) == runs


def test_a_second_run_of_a_selection_is_refused_while_the_first_runs(bulk: Bulk) -> None:
    bucket = bulk.bucket()
    source = bulk.put_catalog(bucket, [slow_spec(bucket, n, 1.0) for n in range(6)], key="slow.jsonl")
    first = bulk.reexport(source, policy="missing", window=2)  # 6 exports of a second each, 2 at a time
    _wait_for(lambda: bulk.redis.get(RunKeys(first.id, source, "").lock) is not None, 30, "the first run's lock")

    second = bulk.reexport(source, policy="always")
    with pytest.raises(Exception, match=rf"already running \(run {first.id}\)"):
        second.get(timeout=60)
    assert first.state in ("PROGRESS", "STARTED", "PENDING")

    report = first.get(timeout=RUN_TIMEOUT)
    assert report["counts"]["exported"] == 6
    # Once finished, the lock is gone and the next run goes ahead.
    third = bulk.run(source, policy="missing")
    assert third["status"] == "finished" and third["counts"]["exported"] == 0


def test_interrupted_run_is_resumed_without_redoing_what_was_done(
    redis_server: str, moto_process_endpoint: str, tmp_path: Path
) -> None:
    broker = _url(redis_server, RESUME_DB)
    # Short limits, so the dead run's lock expires and its jobs come back within the test.
    env = _env(
        broker,
        moto_process_endpoint,
        EXPORT_SOFT_TIME_LIMIT="6",
        EXPORT_TIME_LIMIT="8",
        EXPORT_VISIBILITY_TIMEOUT="10",
        EXPORT_BULK_LOCK_TTL="9",
    )
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=4)
    world = Bulk(broker, env, s3, tmp_path / "worker.log")
    world.redis.flushdb()
    bucket = world.bucket()
    source = f"s3://{bucket}/models"
    with _worker(world.app, env, world.log_path) as proc:
        world.populate(bucket, [slow_spec(bucket, n, 0.6) for n in range(12)])
        first_started = datetime.now(UTC).isoformat()
        first = world.reexport(source, policy="always", window=2)
        _wait_for(lambda: _progress_or_none(world, first.id, "done") >= 4, 60, "four items of the first run")
        # The whole worker dies at once, mid-run.
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    done_before = {m.decode() for m in world.redis.smembers(RunKeys(first.id, source, "always").done)}
    assert len(done_before) >= 4
    manifests_before = world.manifests(bucket)
    _wait_for(lambda: world.redis.get(RunKeys(first.id, source, "").lock) is None, 30, "the dead run's lock to expire")

    with _worker(world.app, env, world.log_path):
        report = world.run(source, policy="always", window=2)
        assert report["resumed_from"] == first.id
        assert report["counts"]["failed"] == 0
        # What the first run finished is skipped (its jobs redelivered before the resume may
        # have finished a few more), the rest is exported: every spec once.
        assert report["counts"]["skipped"] >= len(done_before)
        assert report["counts"]["exported"] >= 1
        assert report["counts"]["skipped"] + report["counts"]["exported"] == 12
        after = world.manifests(bucket)
        assert set(after) == set(manifests_before)
        for key, manifest in after.items():
            # Everything was re-exported by one run or the other...
            assert manifest["created_at"] > first_started, key
            # ...and nothing the first run had finished was done again.
            if f"s3://{bucket}/{key.replace('.manifest.json', '.pt')}" in done_before:
                assert manifest == manifests_before[key]
        # The dead run's own jobs, redelivered, export nothing.
        assert world.progress(first.id)["status"] == "superseded"
    assert not world.open_uploads(bucket)


def _progress_or_none(world: Bulk, run_id: str, field: str) -> int:
    try:
        return int(world.progress(run_id)[field])
    except ExportError:  # not recorded yet
        return -1


def test_beat_fires_the_scheduled_reexport(bulk: Bulk, tmp_path: Path) -> None:
    bucket = bulk.bucket()
    bulk.populate(bucket, [tiny_spec(bucket, n) for n in range(3)])
    schedule = [{"source": f"s3://{bucket}/models", "policy": "if-stale", "every": 1}]
    env = {**bulk.env, "EXPORT_REEXPORT_SCHEDULE": json.dumps(schedule)}
    log_path = tmp_path / "beat.log"
    command = [sys.executable, "-m", "celery", "-A", "worker", "beat", "-l", "info"]
    command += ["-s", str(tmp_path / "schedule"), "--pidfile", str(tmp_path / "beat.pid")]
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            command, env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:

        def reports() -> list[str]:
            return [k for k in bulk.keys(bucket) if k.startswith("models/_reexport/")]

        deadline = time.monotonic() + 60
        while not reports():
            assert proc.poll() is None, _tail(log_path)
            if time.monotonic() > deadline:
                pytest.fail(f"beat's run left no report in 60 s:\n{_tail(log_path)}\n{_tail(bulk.log_path)}")
            time.sleep(0.2)
    finally:
        stop_process(proc, grace=10)
    report = json.loads(bulk.s3.get_object(Bucket=bucket, Key=reports()[0])["Body"].read())
    assert report["source"] == f"s3://{bucket}/models" and report["policy"] == "if-stale"
    assert report["counts"]["unchanged"] == 3 and report["status"] == "finished"
    assert "Scheduler: Sending due task" in log_path.read_text()
