"""What the bulk benchmark's phases share: the tiny specs, targets, CPU accounting, the
environment of its servers and workers, and its tables."""

from __future__ import annotations

import argparse
import contextlib
import os
import uuid
from pathlib import Path
from typing import Any

import psutil

from ._common import REPO_ROOT

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


# -- helpers ---------------------------------------------------------------------------------
def csv_ints(text: str) -> list[int]:
    try:
        values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not a list of integers: {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"need positive integers, got {text!r}")
    return values


def tail_of(path: Path, lines: int = 60) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError as exc:
        return f"(no log: {exc})"


def tiny_spec(i: int, bucket: str, tag: str) -> dict[str, Any]:
    return {
        "name": f"{tag}-{i:06d}",
        "builder": BUILDER,
        "kwargs": {**TINY, "seed": i},
        "example_inputs": INPUTS,
        "destination": f"s3://{bucket}/models",
    }


def cpu_seconds(proc: psutil.Process | None) -> float:
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


def child_named(fragment: str) -> psutil.Process | None:
    """The direct child of this process whose command line contains ``fragment``."""
    for child in psutil.Process().children():
        with contextlib.suppress(psutil.Error):
            if fragment in " ".join(child.cmdline()):
                return child
    return None


def busy_cores() -> float:
    """CPU seconds the whole machine has been busy (all processes, anyone's)."""
    t = psutil.cpu_times()
    return float(sum(t) - t.idle - getattr(t, "iowait", 0.0) - getattr(t, "guest", 0.0) - getattr(t, "guest_nice", 0.0))


def cpu_snapshot(processes: dict[str, psutil.Process | None]) -> dict[str, float]:
    """CPU seconds so far of each named process tree, of the rest of this benchmark, of the machine."""
    seconds = {name: cpu_seconds(proc) for name, proc in processes.items()}
    return {**seconds, "bench": cpu_seconds(psutil.Process()) - sum(seconds.values()), "machine": busy_cores()}


def load_average() -> str:
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


def new_bucket(client: Any, tag: str) -> str:
    name = f"bench-{tag}-{uuid.uuid4().hex[:10]}"
    client.create_bucket(Bucket=name)
    return name
