"""Prometheus metrics of a worker, and its log lines per stage.

With ``EXPORT_METRICS_PORT`` set, the worker's main process serves ``/metrics`` on that
port, summing what every pool process recorded (prometheus-client's multiprocess mode: each
process writes its values to files in a directory the main process created, and reads them
all when scraped).  Metrics:

- ``export_worker_exports_total{outcome}``: ``exported``, ``skipped``, ``failed``;
- ``export_worker_uploaded_bytes_total``: archive bytes sent to S3;
- ``export_worker_stage_seconds{stage}``: a histogram per stage (building,
  scripting, or exporting for pt2, then uploading, verifying, publishing);
- ``export_worker_jobs_in_flight``: exports running now;
- ``export_worker_retries_total{reason}``: jobs sent back for another try.

Each stage also logs one line with the task id, the spec's hash and the stage; with
``EXPORT_LOG_FORMAT=json`` every log line is a JSON object.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

log = logging.getLogger("worker.stages")

#: Environment variable prometheus-client reads to write per-process metric files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: Histogram buckets of stage durations, seconds (tiny models to hour-long uploads).
STAGE_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 180, 600, 1800, 3600)

_metrics: dict[str, Any] | None = None
_served_dir: str | None = None


def prepare_multiprocess_dir() -> str:
    """Before pool processes start (and before prometheus_client is imported anywhere):
    a fresh directory for the processes' metric files, named in the environment."""
    global _served_dir  # noqa: PLW0603 - one directory per worker main process
    if _served_dir is None:
        _served_dir = tempfile.mkdtemp(prefix="export-worker-metrics-")
        os.environ[MULTIPROC_ENV] = _served_dir
    return _served_dir


def serve(port: int, address: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside the host
    """Serve ``/metrics`` of every process of this worker on ``port`` (a thread)."""
    from prometheus_client import CollectorRegistry, start_http_server
    from prometheus_client.multiprocess import MultiProcessCollector

    registry = CollectorRegistry()
    MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=address, registry=registry)


def cleanup() -> None:
    """Remove the metric files' directory (the worker is stopping)."""
    if _served_dir is not None:
        shutil.rmtree(_served_dir, ignore_errors=True)


def process_died(pid: int) -> None:
    """A pool process ended: its live gauges no longer count."""
    if os.environ.get(MULTIPROC_ENV):
        from prometheus_client import multiprocess

        multiprocess.mark_process_dead(pid)  # type: ignore[no-untyped-call]


def _get() -> dict[str, Any] | None:
    """The metric objects, created on first use; None when metrics are off."""
    global _metrics  # noqa: PLW0603 - created once per process
    if _metrics is None and os.environ.get(MULTIPROC_ENV):
        from prometheus_client import Counter, Gauge, Histogram

        _metrics = {
            "exports": Counter("export_worker_exports", "Exports by outcome", ["outcome"]),
            "bytes": Counter("export_worker_uploaded_bytes", "Archive bytes uploaded to S3"),
            "stage": Histogram(
                "export_worker_stage_seconds", "Seconds spent in each stage", ["stage"], buckets=STAGE_BUCKETS
            ),
            "in_flight": Gauge("export_worker_jobs_in_flight", "Exports running", multiprocess_mode="livesum"),
            "retries": Counter("export_worker_retries", "Jobs sent back for another try", ["reason"]),
        }
    return _metrics


def count_retry(reason: str) -> None:
    metrics = _get()
    if metrics is not None:
        metrics["retries"].labels(reason=reason).inc()


class StageClock:
    """Times an export's stages (as its progress reports them) and logs one line each."""

    def __init__(self, task_id: str | None, spec_hash: str, name: str) -> None:
        self.task_id = task_id
        self.spec_hash = spec_hash
        self.name = name
        self._stage: str | None = None
        self._since = 0.0
        self._bytes = 0

    def stage(self, stage: str, info: dict[str, Any]) -> None:
        """Called with each progress report: a new stage ends the previous one."""
        if stage == "uploading":
            self._bytes = max(self._bytes, int(info.get("bytes") or 0))
        if stage == self._stage:
            return
        self._end()
        self._stage, self._since = stage, time.monotonic()
        log.info(
            "task %s spec %s (%s): %s",
            self.task_id,
            self.spec_hash[:16],
            self.name,
            stage,
            extra={"task_id": self.task_id, "spec_hash": self.spec_hash, "stage": stage, "export": self.name},
        )

    def _end(self) -> None:
        metrics = _get()
        if self._stage is not None and metrics is not None:
            metrics["stage"].labels(stage=self._stage).observe(time.monotonic() - self._since)

    def finish(self, outcome: str, uploaded: int | None = None) -> None:
        """The export ended: its last stage, its outcome and its bytes are recorded."""
        self._end()
        self._stage = None
        metrics = _get()
        if metrics is not None:
            metrics["exports"].labels(outcome=outcome).inc()
            sent = uploaded if uploaded is not None else self._bytes
            if sent:
                metrics["bytes"].inc(sent)
        log.info(
            "task %s spec %s (%s): %s",
            self.task_id,
            self.spec_hash[:16],
            self.name,
            outcome,
            extra={"task_id": self.task_id, "spec_hash": self.spec_hash, "outcome": outcome, "export": self.name},
        )


@contextmanager
def in_flight() -> Iterator[None]:
    """Counts an export as running for the duration of the block."""
    metrics = _get()
    if metrics is None:
        yield
        return
    metrics["in_flight"].inc()
    try:
        yield
    finally:
        metrics["in_flight"].dec()


#: Attributes every LogRecord has; anything else was passed with ``extra=``.
_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, and the ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S%z"),
            "level": record.levelname,
            "logger": record.name,
            "process": record.process,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD and not k.startswith("_")})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def use_json_logs(logger: logging.Logger) -> None:
    """Give every handler of ``logger`` the JSON formatter."""
    for handler in logger.handlers:
        handler.setFormatter(JsonFormatter())
