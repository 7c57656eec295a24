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

import sys
from pathlib import Path

# Run as `python benchmarks/bulk.py`: the repository root, for `benchmarks` and `devtools`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from benchmarks._bulk_common import (
    CONCURRENCIES,
    PATHS,
    POLICY,
    PUT_THREADS,
    SAMPLE_INTERVAL,
    STALE_EVERY,
    BenchFailure,
    csv_ints,
    load_average,
    use_bench_environment,
)
from benchmarks._bulk_memory import child_main, memory_phase, memory_tables
from benchmarks._bulk_throughput import throughput_phase, throughput_table
from benchmarks._common import on_sigterm
from devtools.child import ChildFailed
from serializer.s3.client import make_s3_client
from worker.cli.demo_services import moto_server, redis_server


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--exports", type=int, default=None, help="specs of the throughput runs (1000; --quick: 50)")
    p.add_argument("--sizes", type=csv_ints, default=None, help="selection sizes (1000,10000; --quick: 200,2000)")
    p.add_argument("--quick", action="store_true", help="a fast check: 50 exports, sizes 200,2000")
    p.add_argument("--phases", default="throughput,memory", help="throughput,memory (both)")
    p.add_argument("--concurrency", type=csv_ints, default=list(CONCURRENCIES), help="worker processes (1,2)")
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
        f"{platform.system()} {platform.machine()}; load average at start {load_average()}"
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
    signal.signal(signal.SIGTERM, on_sigterm)
    started = time.perf_counter()
    results: dict[str, Any] = {"load_average_start": load_average()}
    status = 0
    workdir: Path | None = None
    with contextlib.ExitStack() as stack:
        try:
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
        except (BenchFailure, ChildFailed) as exc:
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
    results["load_average_end"] = load_average()
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
