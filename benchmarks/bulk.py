"""Bulk re-exports: throughput with 1 and 2 worker processes, and the dispatcher's peak memory.

Two phases, both against servers this script starts on loopback (redis-server, and a moto
S3 server in its own process):

``throughput``
    For each worker concurrency (1, then 2): a fresh ``celery -A worker worker -c N``, warmed
    up with a small bulk run, then one ``worker.tasks.reexport`` of a JSON Lines catalog of
    ``--exports`` tiny specs (``worker.examples:tiny_classifier``, policy ``missing``), timed
    from sending the task to its result (the run's report).  Every spec must be exported and
    none may fail.  Reported: exports per second (exported / wall seconds), the report's own
    duration, the mean seconds of one item, how many items ran at once on average (item
    seconds / wall), the CPU seconds the worker, moto and Redis used during the run, and the
    cores kept busy by this benchmark and by everything else on the machine (the rates mean
    little when other work takes cores).  Target: 2 processes give at least 1.6x the rate of
    1 (with ``--repeat``, runs alternate and the fastest of each concurrency counts).

``memory``
    For each selection size: a bucket holding that many manifests (a synthetic listing: one
    real export's manifest, rewritten for distinct specs; about 10% of them made by another
    torch, so the plan both replaces and leaves unchanged), planned under ``if-stale`` by the
    dispatcher's two paths: ``worker.bulk.dry_run`` (the ``--dry-run`` path, its plan written
    to S3) and ``worker.bulk.plan_run`` into Redis with a ``send`` that sends nothing (the
    window fills, the rest stays queued in Redis).  Each measurement runs in a fresh process,
    after imports and a warm-up run of the same path on a small selection: once for the peak
    resident memory above the RSS just before the call (sampled from outside every 5 ms) and
    the wall time, once more under ``tracemalloc`` for the peak Python heap.  Target: at each
    larger size, both peaks within 1.2x of those at the smallest.

Usage (from the repository root, in the project's virtual environment)::

    .venv/bin/python benchmarks/bulk.py                 # 1000 exports; sizes 1000,10000
    .venv/bin/python benchmarks/bulk.py --quick         # 50 exports; sizes 200,2000
    .venv/bin/python benchmarks/bulk.py --phases memory --sizes 1000,2000,10000 --json out.json
    .venv/bin/python benchmarks/bulk.py --phases throughput --exports 300 --repeat 2 --keep-logs logs/

The exit status is 1 when a run failed or a count did not match (not for a missed target),
130 when interrupted.  Everything started here is stopped on exit, and its files removed.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Any

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from rss_sampler import RssSampler  # noqa: E402 - this script's folder

BUILDER = "worker.examples:tiny_classifier"
INPUTS = [{"shape": [2, 8], "dtype": "float32"}]
TINY = {"in_features": 8, "hidden": 8, "classes": 3}
CONCURRENCIES = (1, 2)
PATHS = ("dry-run", "plan_run")
POLICY = "if-stale"
#: Targets.
TARGET_SPEEDUP = 1.6
TARGET_MEMORY_RATIO = 1.2
#: Specs of the warm-up run of each worker; manifests of the memory phase's warm-up selection.
WARMUP_EXPORTS = 10
WARMUP_MANIFESTS = 100
#: Every STALE_EVERY-th synthetic manifest is made by another torch (replaced under if-stale).
STALE_EVERY = 10
STALE_TORCH = "2.12.0"
#: Seconds: a worker's start, and one measurement of the memory phase.
WORKER_START_TIMEOUT = 120.0
MEASURE_TIMEOUT = 1800.0
#: Seconds between RSS samples of a measurement process.
SAMPLE_INTERVAL = 0.005
#: Threads putting synthetic manifests.
PUT_THREADS = 16
MiB = 1024**2


# -- helpers ---------------------------------------------------------------------------------
def _csv_ints(text: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"need positive integers, got {text!r}")
    return values


def _die_with_parent() -> None:
    """In a child, before exec: ask Linux to SIGTERM it if this script dies without cleanup."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def _kill_tree(proc: subprocess.Popen[Any]) -> None:
    try:
        victims = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        victims = []
    with contextlib.suppress(OSError):
        proc.kill()
    for victim in victims:
        with contextlib.suppress(psutil.Error):
            victim.kill()
    proc.wait()


def _tail(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def _spec(i: int, bucket: str, tag: str) -> dict[str, Any]:
    return {
        "name": f"{tag}-{i:06d}",
        "builder": BUILDER,
        "kwargs": {**TINY, "seed": i},
        "example_inputs": INPUTS,
        "destination": f"s3://{bucket}/models",
    }


def _cpu_seconds(proc: psutil.Process | None) -> float:
    """CPU seconds of a process and its live descendants, with their reaped children's."""
    if proc is None:
        return 0.0
    total = 0.0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return 0.0
    for p in procs:
        with contextlib.suppress(psutil.Error):
            t = p.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
    return total


def _child_named(fragment: str) -> psutil.Process | None:
    """The direct child of this process whose command line contains ``fragment``."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if fragment in " ".join(child.cmdline()):
                return child
    return None


def _busy() -> float:
    """CPU seconds the whole machine has been busy (all processes, anyone's)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0))


def _cpu_snapshot(processes: dict[str, psutil.Process | None]) -> dict[str, float]:
    """CPU seconds so far of each named process tree, of the rest of this benchmark, of the machine."""
    seconds = {name: _cpu_seconds(proc) for name, proc in processes.items()}
    return {**seconds, "bench": _cpu_seconds(psutil.Process()) - sum(seconds.values()), "machine": _busy()}


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


def render_table(headers: list[str], rows: list[list[str]], right: set[int]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(headers)]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(headers), line(["-" * w for w in widths]), *(line(r) for r in rows)])


class BenchFailure(RuntimeError):
    """A run did not do what it had to (counts, status): the numbers would mean nothing."""


# -- environment -------------------------------------------------------------------------------
def use_bench_environment(redis_url: str, s3_url: str, spool_dir: str) -> dict[str, str]:
    """Drop the caller's S3, Celery and export settings; point this process at the local servers.
    Returns the environment of the worker processes."""
    for name in [k for k in os.environ if k.startswith(("AWS_", "EXPORT_", "CELERY_"))]:
        del os.environ[name]
    os.environ.update(
        AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing",
        AWS_DEFAULT_REGION="us-east-1",
        AWS_ENDPOINT_URL_S3=s3_url,
        CELERY_BROKER_URL=redis_url,
        CELERY_RESULT_BACKEND=redis_url,
        EXPORT_ALLOWED_BUILDERS="worker.examples",
        EXPORT_SPOOL_DIR=spool_dir,
        PYTHONPATH=os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH", "")) if p),
        PYTHONUNBUFFERED="1",
    )
    return dict(os.environ)


def _new_bucket(client: Any, tag: str) -> str:
    name = f"bench-{tag}-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return name


# -- throughput ----------------------------------------------------------------------------
def _client_app(redis_url: str) -> Any:
    from celery import Celery

    app = Celery("bulk-bench", broker=redis_url, backend=redis_url)
    app.conf.update(task_serializer="json", accept_content=["json"], result_serializer="json")
    return app


def _put_catalog(client: Any, bucket: str, specs: list[dict[str, Any]]) -> str:
    body = "\n".join(json.dumps(s) for s in specs).encode()
    client.put_object(Bucket=bucket, Key="catalog.jsonl", Body=body)
    return f"s3://{bucket}/catalog.jsonl"


def _bulk_run(app: Any, source: str, timeout: float, log_path: Path) -> tuple[dict[str, Any], float]:
    """Send ``reexport`` (policy missing) and wait for its report; (report, wall seconds)."""
    started = time.perf_counter()
    result = app.send_task("worker.tasks.reexport", args=[source], kwargs={"policy": "missing"}, queue="cpu")
    try:
        report: dict[str, Any] = result.get(timeout=timeout)
    except Exception as exc:
        raise BenchFailure(f"bulk run of {source} failed: {exc}\n--- worker log ---\n{_tail(log_path)}") from exc
    return report, time.perf_counter() - started


def _check_report(report: dict[str, Any], n: int, log_path: Path) -> None:
    counts = report.get("counts", {})
    if report.get("status") != "finished" or counts.get("exported") != n or counts.get("failed"):
        failures = json.dumps(report.get("failures", [])[:5], indent=1)
        raise BenchFailure(
            f"bulk run {report.get('run_id')}: status {report.get('status')}, counts {counts}; "
            f"expected {n} exported, 0 failed\nfirst failures: {failures}\n--- worker log ---\n{_tail(log_path)}"
        )


def throughput_phase(
    args: argparse.Namespace, env: dict[str, str], client: Any, redis_url: str, workdir: Path, out: dict[str, Any]
) -> None:
    """Fill ``out`` run by run (what was measured stays there if a later run fails)."""
    from worker.local_services import celery_worker

    app = _client_app(redis_url)
    moto = _child_named("moto.server")
    redis_proc = _child_named("redis-server")
    runs: list[dict[str, Any]] = out.setdefault("runs", [])
    out.update(speedup_2_vs_1=None, target=TARGET_SPEEDUP, verdict=None)
    for repeat, concurrency in [(r, c) for r in range(args.repeat) for c in args.concurrency]:
        log_path = workdir / f"worker-c{concurrency}-{repeat}.log"
        node = f"bulk-bench-c{concurrency}-{uuid.uuid4().hex[:6]}@%h"
        print(f"\n-- {concurrency} worker process(es): starting", flush=True)
        with celery_worker(env, concurrency=concurrency, log_path=str(log_path), node=node, cwd=str(REPO_ROOT)) as proc:
            deadline = time.monotonic() + WORKER_START_TIMEOUT
            while not app.control.ping(timeout=0.5):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise BenchFailure(f"worker did not start:\n{_tail(log_path)}")
            warm = _new_bucket(client, f"warm-c{concurrency}")
            specs = [_spec(i, warm, "warm") for i in range(WARMUP_EXPORTS)]
            report, wall = _bulk_run(app, _put_catalog(client, warm, specs), args.timeout, log_path)
            _check_report(report, WARMUP_EXPORTS, log_path)
            print(f"   warm-up: {WARMUP_EXPORTS} exports in {wall:.2f} s", flush=True)

            bucket = _new_bucket(client, f"tp-c{concurrency}")
            source = _put_catalog(client, bucket, [_spec(i, bucket, "bulk") for i in range(args.exports)])
            processes = {"worker": psutil.Process(proc.pid), "moto": moto, "redis": redis_proc}
            cpu_before = _cpu_snapshot(processes)
            report, wall = _bulk_run(app, source, args.timeout, log_path)
            cpu_after = _cpu_snapshot(processes)
            _check_report(report, args.exports, log_path)
        exported = int(report["counts"]["exported"])
        used = {k: cpu_after[k] - cpu_before[k] for k in cpu_after}
        ours = sum(used[k] for k in ("worker", "moto", "redis", "bench"))
        mean_item = float(report["item_seconds"]["mean"])
        run = {
            "processes": concurrency,
            "repeat": repeat,
            "exports": args.exports,
            "exported": exported,
            "failed": int(report["counts"].get("failed", 0)),
            "wall_s": round(wall, 3),
            "report_duration_s": float(report["duration_s"]),
            "exports_per_s": round(exported / wall, 3),
            "item_seconds_mean": mean_item,
            "item_seconds_max": float(report["item_seconds"]["max"]),
            "busy_processes": round(exported * mean_item / wall, 3),
            "window": int(report.get("window", 0)),
            "cpu_s": {k: round(used[k], 2) for k in used},
            "cpu_per_export_ms": {k: round(used[k] / exported * 1000, 2) for k in ("worker", "moto", "redis")},
            # Cores busy on average during the run: this benchmark's processes, and everything else.
            "cores_ours": round(ours / wall, 2),
            "cores_others": round(max(0.0, used["machine"] - ours) / wall, 2),
            "load_after": _load(),
        }
        print(
            f"   {exported} exports in {wall:.2f} s: {run['exports_per_s']:.2f}/s "
            f"(mean item {mean_item:.3f} s, load {run['load_after']})",
            flush=True,
        )
        runs.append(run)
    best = _best_runs(runs)
    ratio = None
    if 1 in best and 2 in best:
        ratio = round(best[2]["exports_per_s"] / best[1]["exports_per_s"], 3)
    out.update(speedup_2_vs_1=ratio, verdict=None if ratio is None else "PASS" if ratio >= TARGET_SPEEDUP else "MISS")


def _best_runs(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The fastest run of each concurrency (with --repeat, the one least disturbed)."""
    best: dict[int, dict[str, Any]] = {}
    for r in runs:
        if r["processes"] not in best or r["exports_per_s"] > best[r["processes"]]["exports_per_s"]:
            best[r["processes"]] = r
    return best


def throughput_table(result: dict[str, Any]) -> str:
    headers = [
        "procs",
        "run",
        "exported",
        "failed",
        "wall s",
        "report s",
        "exports/s",
        "item s (mean)",
        "busy procs",
        "window",
        "CPU s worker/moto/redis",
        "CPU ms/export worker/moto/redis",
        "cores busy ours/others",
        "target",
    ]
    rows = []
    best = _best_runs(result["runs"])
    for r in result["runs"]:
        cpu, per = r["cpu_s"], r["cpu_per_export_ms"]
        target = "-"
        if r is best.get(2) and result["speedup_2_vs_1"] is not None:
            which = "best of 1" if len(result["runs"]) > 2 else "1"
            target = f"{result['speedup_2_vs_1']:.2f}x vs {which} (>= {TARGET_SPEEDUP}x) {result['verdict']}"
        rows.append(
            [
                str(r["processes"]),
                str(r["repeat"] + 1),
                f"{r['exported']}/{r['exports']}",
                str(r["failed"]),
                f"{r['wall_s']:.2f}",
                f"{r['report_duration_s']:.2f}",
                f"{r['exports_per_s']:.2f}",
                f"{r['item_seconds_mean']:.3f}",
                f"{r['busy_processes']:.2f}",
                str(r["window"]),
                f"{cpu['worker']:.1f}/{cpu['moto']:.1f}/{cpu['redis']:.1f}",
                f"{per['worker']:.0f}/{per['moto']:.0f}/{per['redis']:.0f}",
                f"{r['cores_ours']:.2f}/{r['cores_others']:.2f}",
                target,
            ]
        )
    return render_table(headers, rows, right={1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12})


# -- memory: the synthetic listing ---------------------------------------------------------------
def _template_manifest(client: Any, bucket: str) -> dict[str, Any]:
    """The manifest of one real export (in this process), as JSON data."""
    from serializer.manifest.store import read_manifest
    from worker.export import run_export
    from worker.settings import Settings
    from worker.spec import parse_spec

    result = run_export(parse_spec(_spec(0, bucket, "template")), settings=Settings(), client=client)
    data: dict[str, Any] = json.loads(read_manifest(client, result["manifest_uri"]).to_json())
    return data


def _put_listing(client: Any, bucket: str, n: int, template: dict[str, Any]) -> int:
    """Put ``n`` manifests of distinct specs under ``s3://bucket/models``; returns how many are stale."""
    import torch

    from serializer.manifest.model import Manifest, canonical_json
    from worker.keys import export_keys
    from worker.spec import parse_spec

    def body(i: int) -> tuple[str, bytes]:
        spec = parse_spec(_spec(i, bucket, "mem"))
        keys = export_keys(spec, torch.__version__)
        data = {**template, "spec": spec.to_json_dict(), "spec_hash": spec.spec_hash}
        data["artifact"] = {**template["artifact"], "uri": keys.artifact}
        if i % STALE_EVERY == 0:
            data["producer"] = {**template["producer"], "torch": STALE_TORCH}
        return keys.manifest, canonical_json(data)

    first = body(0)[1]
    Manifest.from_json(first)  # a valid manifest, or stop here

    def put(i: int) -> None:
        uri, payload = body(i)
        key = uri.split("/", 3)[3]
        client.put_object(Bucket=bucket, Key=key, Body=payload, ContentType="application/json")

    with ThreadPoolExecutor(PUT_THREADS) as pool:
        for _ in pool.map(put, range(n)):
            pass
    return len(range(0, n, STALE_EVERY))


# -- memory: one measurement in its own process --------------------------------------------------
def _send(stream: IO[str], message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def _receive(proc: subprocess.Popen[str], deadline: float, log_path: Path) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise TimeoutError(f"measurement timed out\n{_tail(log_path)}")
    line = proc.stdout.readline()
    if not line:
        raise BenchFailure(f"measurement process exited with status {proc.wait()}\n{_tail(log_path)}")
    message: dict[str, Any] = json.loads(line)
    if message.get("event") == "error":
        raise BenchFailure(f"measurement failed: {message['error']}\n{_tail(log_path)}")
    return message


def measure_in_child(config: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """Run one dispatcher call in a fresh process; its numbers plus the RSS growth seen from here."""
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).resolve()), "--child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            cwd=REPO_ROOT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
        )
    assert proc.stdin is not None
    deadline = time.monotonic() + MEASURE_TIMEOUT
    sampler: RssSampler | None = None
    try:
        _send(proc.stdin, config)
        _receive(proc, deadline, log_path)  # ready: imported, warmed up
        sampler = RssSampler(proc.pid, interval=SAMPLE_INTERVAL)
        baseline = sampler.sample()
        sampler.peak = baseline
        sampler.start()
        _send(proc.stdin, {"go": True})
        done = _receive(proc, deadline, log_path)
        peak = sampler.stop()
        sampler = None
        final = _receive(proc, deadline, log_path)
        if proc.wait(timeout=60) != 0:
            raise BenchFailure(f"measurement process exited with status {proc.returncode}\n{_tail(log_path)}")
        return {**done, **final, "rss_before": baseline, "rss_growth": peak - baseline}
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if proc.poll() is None:
            _kill_tree(proc)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def child_main() -> int:
    """One measurement: warm up, report ready, run the measured call on "go"; JSON lines on stdout."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # what libraries print goes to the log, not into the protocol
    cfg = json.loads(sys.stdin.readline())
    try:
        import gc
        import tracemalloc

        import redis

        from serializer.s3.client import make_s3_client
        from worker import bulk
        from worker.bulk import Planner
        from worker.settings import Settings

        settings = Settings()
        client = make_s3_client(max_pool_connections=settings.max_in_flight + 2)
        store = redis.Redis.from_url(cfg["redis_url"])

        def call(source: str) -> dict[str, Any]:
            run_id = str(uuid.uuid4())
            report_uri = f"{cfg['report_prefix']}/{run_id}.json"
            if cfg["path"] == "dry-run":
                summary = bulk.dry_run(client, source, POLICY, settings, run_id=run_id, report_uri=report_uri)
                return {"selected": summary["selected"], **summary["would"]}
            run = bulk.BulkRun(store, bulk.RunKeys(run_id, source, POLICY), settings)
            run.start(window=cfg["window"], report_uri=report_uri)
            try:
                bulk.plan_run(run, client, Planner(client, settings, POLICY), lambda run_id, item: None)
                progress = run.progress()
            finally:
                keys = run.keys
                store.delete(*keys.all_run_keys(), keys.done, keys.last, keys.lock)
            return {k: progress[k] for k in ("selected", "queued", "in_flight", "unchanged", "failed", "skipped")}

        # Warm-up: the same path on a small selection (imports torch, builds a Planner, reads a
        # builder's source, touches every module the measured call needs).
        Planner(client, settings, POLICY)
        call(cfg["warm_source"])
        gc.collect()
        _send(protocol, {"event": "ready", "rss": psutil.Process().memory_info().rss})
        if not json.loads(sys.stdin.readline() or "{}").get("go"):
            return 1
        if cfg["trace"]:
            tracemalloc.start()
        started = time.perf_counter()
        counts = call(cfg["source"])
        wall = time.perf_counter() - started
        heap_peak = tracemalloc.get_traced_memory()[1] if cfg["trace"] else None
        tracemalloc.stop()
        _send(protocol, {"event": "done", "wall_s": wall, "heap_peak": heap_peak})
        _send(protocol, {"event": "result", "counts": counts})
    except Exception as exc:
        traceback.print_exc()
        _send(protocol, {"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


def _check_counts(path: str, counts: dict[str, Any], n: int, stale: int) -> None:
    if path == "dry-run":
        ok = counts["selected"] == n and counts["replace"] == stale and counts["unchanged"] == n - stale
        ok = ok and counts["export"] == 0 and counts["invalid"] == 0
    else:
        ok = counts["selected"] == n and counts["queued"] + counts["in_flight"] == stale
        ok = ok and counts["unchanged"] == n - stale and counts["failed"] == 0 and counts["skipped"] == 0
    if not ok:
        raise BenchFailure(f"{path} of {n} manifests ({stale} stale): unexpected counts {counts}")


def memory_phase(args: argparse.Namespace, client: Any, redis_url: str, workdir: Path, out: dict[str, Any]) -> None:
    """Fill ``out`` measurement by measurement (what was measured stays there if a later one fails)."""
    print("\n-- memory: one real export for the manifest template", flush=True)
    template_bucket = _new_bucket(client, "template")
    template = _template_manifest(client, template_bucket)
    warm_bucket = _new_bucket(client, "mem-warm")
    _put_listing(client, warm_bucket, WARMUP_MANIFESTS, template)
    listings: dict[int, tuple[str, int]] = {}
    for size in args.sizes:
        bucket = _new_bucket(client, f"mem-{size}")
        started = time.perf_counter()
        stale = _put_listing(client, bucket, size, template)
        listings[size] = (bucket, stale)
        print(f"   {size} manifests ({stale} stale) put in {time.perf_counter() - started:.1f} s", flush=True)

    rows: list[dict[str, Any]] = out.setdefault("rows", [])
    comparisons: list[dict[str, Any]] = out.setdefault("comparisons", [])
    for path in args.paths:
        for size in args.sizes:
            bucket, stale = listings[size]
            row: dict[str, Any] = {"path": path, "specs": size, "stale": stale}
            for trace in (False, True):
                config = {
                    "path": path,
                    "trace": trace,
                    "source": f"s3://{bucket}/models",
                    "warm_source": f"s3://{warm_bucket}/models",
                    "report_prefix": f"s3://{bucket}/_reexport",
                    "redis_url": redis_url,
                    "window": args.window or 64,
                }
                got = measure_in_child(config, workdir / f"measure-{path}-{size}-{int(trace)}.log")
                _check_counts(path, got["counts"], size, stale)
                if trace:
                    row["heap_peak"] = got["heap_peak"]
                    row["wall_s_traced"] = round(got["wall_s"], 3)
                else:
                    row["rss_growth"] = got["rss_growth"]
                    row["rss_before"] = got["rss_before"]
                    row["wall_s"] = round(got["wall_s"], 3)
                    row["counts"] = got["counts"]
            row["candidates"] = row["counts"]["selected"]
            print(
                f"   {path} {size}: {row['wall_s']:.2f} s, heap peak {row['heap_peak'] / MiB:.2f} MiB, "
                f"RSS growth {row['rss_growth'] / MiB:.2f} MiB",
                flush=True,
            )
            rows.append(row)
    # Every larger selection against the smallest.
    small = min(args.sizes)
    by_key = {(r["path"], r["specs"]): r for r in rows}
    for path in args.paths:
        for large in [s for s in args.sizes if s != small]:
            for metric in ("heap_peak", "rss_growth"):
                a, b = by_key[(path, small)][metric], by_key[(path, large)][metric]
                ratio = b / a if a > 0 else float("inf")
                comparisons.append(
                    {
                        "path": path,
                        "metric": metric,
                        "small": small,
                        "large": large,
                        "at_small": a,
                        "at_large": b,
                        "ratio": round(ratio, 3),
                        "target": TARGET_MEMORY_RATIO,
                        "verdict": "PASS" if ratio <= TARGET_MEMORY_RATIO else "MISS",
                    }
                )


def memory_tables(result: dict[str, Any]) -> str:
    headers = ["path", "specs", "candidates", "plan", "wall s", "wall s (traced)", "heap peak MiB", "RSS growth MiB"]
    rows = []
    for r in result["rows"]:
        c = r["counts"]
        if r["path"] == "dry-run":
            plan = f"replace {c['replace']}, unchanged {c['unchanged']}"
        else:
            plan = f"in flight {c['in_flight']}, queued {c['queued']}, unchanged {c['unchanged']}"
        rows.append(
            [
                r["path"],
                str(r["specs"]),
                str(r["candidates"]),
                plan,
                f"{r['wall_s']:.2f}",
                f"{r['wall_s_traced']:.2f}",
                f"{r['heap_peak'] / MiB:.2f}",
                f"{r['rss_growth'] / MiB:.2f}",
            ]
        )
    text = render_table(headers, rows, right={1, 2, 4, 5, 6, 7})
    if result["comparisons"]:
        headers = ["path", "metric", "at small MiB", "at large MiB", "large / small", "target"]
        rows = [
            [
                c["path"],
                f"{'heap peak' if c['metric'] == 'heap_peak' else 'RSS growth'} {c['large']} vs {c['small']}",
                f"{c['at_small'] / MiB:.2f}",
                f"{c['at_large'] / MiB:.2f}",
                f"{c['ratio']:.3f}x",
                f"<= {TARGET_MEMORY_RATIO}x {c['verdict']}",
            ]
            for c in result["comparisons"]
        ]
        text += "\n\n" + render_table(headers, rows, right={2, 3, 4})
    return text


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--exports", type=int, default=None, help="specs of the throughput runs (1000; --quick: 50)")
    p.add_argument("--sizes", type=_csv_ints, default=None, help="selection sizes (1000,10000; --quick: 200,2000)")
    p.add_argument("--quick", action="store_true", help="a fast check: 50 exports, sizes 200,2000")
    p.add_argument("--phases", default="throughput,memory", help="throughput,memory (both)")
    p.add_argument("--concurrency", type=_csv_ints, default=list(CONCURRENCIES), help="worker processes (1,2)")
    p.add_argument(
        "--repeat", type=int, default=1, help="throughput runs per concurrency, alternating; best counts (1)"
    )
    p.add_argument("--paths", default=",".join(PATHS), help="dispatcher paths measured: dry-run,plan_run (both)")
    p.add_argument("--window", type=int, default=None, help="EXPORT_BULK_WINDOW of the runs (the setting's default)")
    p.add_argument(
        "--worker-env", action="append", default=[], metavar="NAME=VALUE", help="more worker environment (repeatable)"
    )
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for one bulk run (1800)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep-logs", metavar="DIR", help="copy the worker and measurement logs to DIR on exit")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.exports = args.exports or (50 if args.quick else 1000)
    args.sizes = sorted(set(args.sizes or ([200, 2000] if args.quick else [1000, 10000])))
    args.phases = [x.strip() for x in args.phases.split(",") if x.strip()]
    if unknown := set(args.phases) - {"throughput", "memory"}:
        p.error(f"unknown phase(s): {', '.join(sorted(unknown))}")
    args.paths = [x.strip() for x in args.paths.split(",") if x.strip()]
    if unknown := set(args.paths) - set(PATHS):
        p.error(f"unknown path(s): {', '.join(sorted(unknown))}")
    if args.exports < 1 or args.repeat < 1 or (args.window is not None and args.window < 1):
        p.error("--exports, --repeat and --window must be at least 1")
    for item in args.worker_env:
        if "=" not in item:
            p.error(f"--worker-env wants NAME=VALUE, got {item!r}")
    return args


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def header_lines(args: argparse.Namespace) -> list[str]:
    import torch

    from worker.settings import Settings

    settings = Settings()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    window = args.window or settings.bulk_window
    threads = settings.torch_threads or "cores / processes"
    lines = [
        f"python {platform.python_version()}, torch {torch.__version__}, {os.cpu_count()} CPUs "
        f"({affinity} usable), {psutil.virtual_memory().total / 1024**3:.0f} GiB RAM, "
        f"{platform.system()} {platform.machine()}; load average at start {_load()}"
    ]
    if "throughput" in args.phases:
        lines.append(
            f"throughput: {args.exports} tiny specs per run, processes {','.join(map(str, args.concurrency))} "
            f"x {args.repeat} run(s), window {window}, torch threads per process {threads}, "
            f"max tasks per child {settings.max_tasks_per_child}"
            + (f", worker env {' '.join(args.worker_env)}" if args.worker_env else "")
        )
    if "memory" in args.phases:
        lines.append(
            f"memory: {', '.join(args.paths)} on selections of {','.join(map(str, args.sizes))} manifests "
            f"(1 in {STALE_EVERY} stale), policy {POLICY}; heap peak: tracemalloc; RSS growth: sampled every "
            f"{SAMPLE_INTERVAL * 1000:.0f} ms above the RSS after imports and a warm-up"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main()
    signal.signal(signal.SIGTERM, _on_sigterm)
    started = time.perf_counter()
    results: dict[str, Any] = {"load_average_start": _load()}
    status = 0
    workdir: Path | None = None
    with contextlib.ExitStack() as stack:
        try:
            from serializer.s3.client import make_s3_client
            from worker.local_services import moto_server, redis_server

            workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bulk-bench-")))
            redis_url = stack.enter_context(redis_server())
            s3_url = stack.enter_context(moto_server())
            env = use_bench_environment(redis_url, s3_url, str(workdir))
            if args.window is not None:
                env["EXPORT_BULK_WINDOW"] = str(args.window)
            env.update(item.split("=", 1) for item in args.worker_env)
            header = header_lines(args)
            print("\n".join(header), flush=True)
            results.update(header=header, cpu_count=os.cpu_count(), exports=args.exports, sizes=args.sizes)
            client = make_s3_client(max_pool_connections=PUT_THREADS + 4)
            if "throughput" in args.phases:
                throughput_phase(args, env, client, redis_url, workdir, results.setdefault("throughput", {}))
            if "memory" in args.phases:
                memory_phase(args, client, redis_url, workdir, results.setdefault("memory", {}))
        except KeyboardInterrupt:
            print("\ninterrupted; stopping what was started", flush=True)
            status = 130
        except BenchFailure as exc:
            print(f"\nFAILED: {exc}", flush=True)
            results["failure"] = str(exc).splitlines()[0]
            status = 1
        except Exception as exc:
            traceback.print_exc()
            results["failure"] = f"{type(exc).__name__}: {exc}"
            status = 1
        finally:
            if args.keep_logs and workdir is not None:
                Path(args.keep_logs).mkdir(parents=True, exist_ok=True)
                for log in workdir.glob("*.log"):
                    shutil.copy(log, args.keep_logs)
    results["wall_s"] = round(time.perf_counter() - started, 1)
    results["load_average_end"] = _load()
    _report(results, args.json)
    return status


def _report(results: dict[str, Any], json_path: str | None) -> None:
    sections: list[tuple[str, Callable[[dict[str, Any]], str]]] = [
        ("throughput", throughput_table),
        ("memory", memory_tables),
    ]
    for name, render in sections:
        if name in results:
            print(f"\n== {name} ==")
            print(render(results[name]))
    print(
        f"\nbenchmark wall {results['wall_s']:.0f} s; load average {results['load_average_start']} at start, "
        f"{results['load_average_end']} at end"
    )
    if json_path:
        Path(json_path).write_text(json.dumps(results, indent=2) + "\n")
        print(f"JSON written to {json_path}")


if __name__ == "__main__":
    sys.exit(main())
