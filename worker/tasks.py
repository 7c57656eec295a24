"""Celery tasks: thin wrappers that parse the argument and call plain functions."""

from __future__ import annotations

import logging
import os
import random
import time
from typing import Any

import redis
import torch
from botocore.exceptions import BotoCoreError, ClientError
from celery import Task
from celery.exceptions import Ignore, SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from serializer.errors import SerializerError, UploadFailed
from serializer.s3.client import S3Client, make_s3_client
from serializer.s3.retry import is_transient

from . import bulk, metrics
from .access import check_run_scopes, check_spec_scopes
from .bulk import Action, Outcome, Planner, RunStatus, check_source
from .celery import app, settings_of
from .errors import ExportError
from .export import Stage, run_export
from .keys import export_keys
from .settings import Settings
from .spec import ExportSpec, parse_spec
from .sweeper import sweep, sweep_scope

log = logging.getLogger(__name__)

#: Seconds before the first retry of a job after a transient error; doubles each retry.
RETRY_BASE = 2.0
#: Longest wait between retries.
RETRY_CAP = 120.0
#: Seconds before a job whose worker process died runs again.
WORKER_LOST_DELAY = 5.0

_client: S3Client | None = None
_redis: Any = None


def s3_client(settings: Settings) -> Any:
    """One S3 client per worker process, its pool sized to the upload threads."""
    global _client  # noqa: PLW0603 - a per-process cache; clients are thread-safe
    if _client is None:
        _client = make_s3_client(
            max_pool_connections=settings.max_in_flight + 2, checksum_mode=settings.s3_checksum_mode
        )
    return _client


def torch_version() -> str:
    return str(torch.__version__)


def redis_client(settings: Settings) -> Any:
    """One Redis client per process for bulk-run state (the broker's Redis)."""
    global _redis  # noqa: PLW0603 - a per-process cache; the client is thread-safe
    if _redis is None:
        _redis = redis.Redis.from_url(settings.broker_url, socket_timeout=30, socket_connect_timeout=10)
    return _redis


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return True
    if isinstance(exc, UploadFailed) and exc.__cause__ is not None:
        return _transient(exc.__cause__)
    return isinstance(exc, BotoCoreError | ClientError) and is_transient(exc)


@app.task(
    bind=True,
    name="worker.tasks.export_model",
    acks_late=True,
    # A job whose process died (OOM kill, kill -9) runs again after WORKER_LOST_DELAY
    # seconds, at most EXPORT_TASK_MAX_RETRIES times.
    max_retries=settings_of(app).task_max_retries,
    default_retry_delay=WORKER_LOST_DELAY,
)
def export_model(self: Task, spec: dict[str, Any]) -> dict[str, Any]:
    """Export the model ``spec`` names (see docs/contract.md); returns the result dict.

    Permanent errors (bad spec, builder not allowed, not scriptable, missing objects) fail
    at once with a message naming the cause; transient S3 and broker errors are retried
    with exponential backoff and jitter, at most ``EXPORT_TASK_MAX_RETRIES`` times.
    """
    settings = settings_of(self.app)
    parsed = parse_spec(spec)
    # Taken here: upload progress is reported from the upload's threads, where
    # ``self.request`` (thread-local) has no id.
    task_id = self.request.id

    clock = metrics.StageClock(task_id, parsed.spec_hash, parsed.name)

    def progress(stage: Stage, info: dict[str, Any]) -> None:
        clock.stage(stage.value, info)
        meta = {"stage": stage.value, "name": parsed.name, "pid": os.getpid(), **info}
        self.update_state(task_id=task_id, state="PROGRESS", meta=meta)

    # One job per export at a time: an archive found without its manifest by the holder of
    # the export's lock was left by a job that died; a job that does not get the lock (the
    # same spec delivered twice) runs on, loses the conditional publish, and waits for the
    # holder's manifest for as long as the holder is alive.
    redis = redis_client(settings)
    target = export_keys(parsed, torch_version()).artifact
    try:
        release = bulk.target_lock(redis, target, bulk.target_lock_ttl(settings), owner=task_id)
    except (RedisConnectionError, RedisTimeoutError) as exc:
        # Redis restarting: the lock is tried again with the job, like any transient error.
        if self.request.retries < settings.task_max_retries:
            delay = random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2**self.request.retries))
            metrics.count_retry("transient")
            raise self.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from exc
        raise
    outcome = "failed"
    try:
        with metrics.in_flight():
            result = run_export(
                parsed,
                settings=settings,
                client=s3_client(settings),
                progress=progress,
                exclusive=release is not None,
                other_running=lambda: bulk.target_locked(redis, target),
            )
        outcome = "skipped" if result["skipped"] else "exported"
        return result
    except (ExportError, SoftTimeLimitExceeded):
        raise
    except (SerializerError, BotoCoreError, ClientError, RedisConnectionError, RedisTimeoutError) as exc:
        if _transient(exc) and self.request.retries < settings.task_max_retries:
            delay = random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2**self.request.retries))
            log.warning("export %s: transient error, retry in %.1f s: %s", parsed.name, delay, exc)
            outcome = "retried"
            metrics.count_retry("transient")
            raise self.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from exc
        raise
    finally:
        if release is not None:
            release()
        if outcome != "retried":
            clock.finish(outcome, result["size"] if outcome == "exported" else None)


def submit_export(spec: dict[str, Any] | ExportSpec, *, settings: Settings | None = None, **options: Any) -> Any:
    """Validate ``spec`` here, then enqueue ``export_model`` on the queue its device picks.

    A bad spec fails at once, in the caller, instead of on a worker: its fields, and its
    locations against the scopes of ``settings`` (the submitter's; default: the app's).
    The worker checks the scopes again.  ``options`` go to ``apply_async`` (``countdown``,
    ``priority``...).

    Returns:
        The ``AsyncResult``.

    Raises:
        SpecError: naming each bad field; nothing is sent.
        ScopeError: a location outside ``EXPORT_READ_SCOPES`` / ``EXPORT_WRITE_SCOPES``; nothing is sent.
    """
    parsed = parse_spec(spec)
    check_spec_scopes(parsed, settings or settings_of(export_model.app))
    options.setdefault("queue", parsed.queue)
    return export_model.apply_async(args=[parsed.to_json_dict()], **options)


def _send_item(run_id: str, item: dict[str, Any]) -> None:
    queue = parse_spec(item["spec"]).queue
    reexport_item.apply_async(args=[run_id, item], queue=queue)


def _publish_progress(task: Task, run: bulk.BulkRun) -> None:
    task.backend.store_result(run.keys.run_id, run.progress(), "PROGRESS")


@app.task(bind=True, name="worker.tasks.reexport", acks_late=True)
def reexport(
    self: Task,
    source: str,
    policy: str = "if-stale",
    dry_run: bool = False,
    window: int | None = None,
    report_to: str | None = None,
    to_format: str | None = None,
) -> dict[str, Any]:
    """Re-export every spec of a selection that ``policy`` picks (see worker/bulk/).

    With ``to_format`` (``"pt2"``), every spec is converted to that format first: a bulk
    run turns TorchScript exports into ``.pt2`` ones, written next to them.

    ``source`` is an ``s3://bucket/prefix`` of manifests or a catalog of specs (``.jsonl``,
    ``.yaml``; on S3 or on a disk the workers share).  Returns the report (counts by
    outcome, each failure's name and message, durations), also stored in S3; with
    ``dry_run``, the counts of what would run, the plan itself in the report object.
    The task's state is ``PROGRESS`` (with the counts) while the run goes on: its result
    arrives when the last export finishes, not when this task returns.

    Raises:
        BulkRunBusy: another run of the same selection holds its lock.
        SpecError: a bad selection, policy or window.
    """
    settings = settings_of(self.app)
    source = check_source(source)
    chosen = bulk.new_policy(policy)
    target_format = bulk.new_format(to_format)
    if window is not None and window < 1:
        raise ExportError(f"window must be at least 1, got {window}")
    run_id = str(self.request.id)
    report_uri = bulk.report_uri_for(source, run_id, settings, report_to)
    report_field = "report_to" if report_to else "EXPORT_REPORT_PREFIX" if settings.report_prefix else "report"
    check_run_scopes(source, report_uri, settings, report_field=report_field)
    client = s3_client(settings)
    if dry_run:
        return bulk.dry_run(
            client, source, chosen, settings, run_id=run_id, report_uri=report_uri, to_format=target_format
        )

    keys = bulk.RunKeys(run_id, source, chosen, target_format or "")
    run = bulk.BulkRun(redis_client(settings), keys, settings)
    resumed = run.start(window=window or settings.bulk_window, report_uri=report_uri)
    if resumed:
        log.info("bulk run %s resumes %s of %s", run_id, resumed, source)
    try:
        planner = Planner(client, settings, chosen, to_format=target_format)
        bulk.plan_run(run, client, planner, _send_item, lambda: _publish_progress(self, run))
    except BaseException as exc:
        run.finalize(client, error=f"planning failed: {exc}")
        raise
    if run.try_finish():
        return run.finalize(client)
    # The last item to finish stores the report as this task's result.
    raise Ignore()


@app.task(
    bind=True,
    name="worker.tasks.reexport_item",
    acks_late=True,
    ignore_result=True,
    max_retries=settings_of(app).task_max_retries,
    default_retry_delay=WORKER_LOST_DELAY,
)
def reexport_item(self: Task, run_id: str, item: dict[str, Any]) -> dict[str, Any]:
    """One export of a bulk run; whatever happens to it is counted, and frees its slot."""
    settings = settings_of(self.app)
    redis = redis_client(settings)
    try:
        run = bulk.BulkRun.load(redis, run_id, settings)
    except ExportError as exc:
        log.warning("bulk %s item %s: %s", run_id, item.get("id"), exc)
        return {"outcome": Outcome.SKIPPED, "error": str(exc)}
    client = s3_client(settings)
    status = run.status()
    if status in (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.EXPIRED) or run.is_counted(item):
        log.info("bulk %s item %s: the run is %s or the item was counted; nothing to do", run_id, item["id"], status)
        return {"outcome": Outcome.SKIPPED, "error": None}
    started = time.monotonic()
    release = None
    if status != RunStatus.SUPERSEDED:  # an interrupted run's leftover jobs export nothing: its successor does
        release = bulk.target_lock(redis, item["target"], bulk.target_lock_ttl(settings), owner=self.request.id)
        if release is None:
            # Another export of this target is running (or died holding the lock, which then
            # expires): try again once it is over.
            log.info("bulk %s item %s: %s is being exported elsewhere; waiting", run_id, item["id"], item["target"])
            raise self.retry(countdown=bulk.TARGET_LOCK_POLL, max_retries=None)
    spec = parse_spec(item["spec"])
    clock = metrics.StageClock(self.request.id, spec.spec_hash, spec.name)
    outcome: Outcome = Outcome.SUPERSEDED
    error = None
    try:
        if release is not None:
            outcome, error = _export_item(self, run_id, item, spec, clock, settings, client)
    finally:
        if release is not None:
            release()
    if outcome != Outcome.SUPERSEDED:
        clock.finish(outcome)
    _count_item(self, run, item, outcome, time.monotonic() - started, error, client)
    return {"outcome": outcome, "error": error}


def _export_item(
    task: Task,
    run_id: str,
    item: dict[str, Any],
    spec: ExportSpec,
    clock: metrics.StageClock,
    settings: Settings,
    client: S3Client,
) -> tuple[Outcome, str | None]:
    """Export one item under its target's lock: its outcome and error; a transient error is
    retried (by raising Celery's Retry) while retries are left."""
    try:
        with metrics.in_flight():
            result = run_export(
                spec,
                settings=settings,
                client=client,
                progress=lambda stage, info: clock.stage(stage.value, info),
                replace=item["action"] == Action.REPLACE,
                exclusive=True,
            )
        return (Outcome.SKIPPED if result["skipped"] else Outcome.EXPORTED), None
    except (SerializerError, BotoCoreError, ClientError, RedisConnectionError, RedisTimeoutError) as exc:
        if _transient(exc) and task.request.retries < settings.task_max_retries:
            delay = random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2**task.request.retries))
            log.warning("bulk %s item %s: transient error, retry in %.1f s: %s", run_id, item["id"], delay, exc)
            raise task.retry(exc=exc, countdown=delay) from exc
        return Outcome.FAILED, f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # noqa: BLE001 - one export's failure, whatever it is, never stops the run
        return Outcome.FAILED, f"{type(exc).__name__}: {exc}"


def _count_item(
    task: Task,
    run: bulk.BulkRun,
    item: dict[str, Any],
    outcome: Outcome,
    seconds: float,
    error: str | None,
    client: S3Client,
) -> None:
    """Count a finished item; the item that leaves nothing in flight and nothing to do
    dispatches the next ones and, when the run is over, stores its report as its result."""
    # Progress first: once counted, this item may be the last and store the run's result.
    _publish_progress(task, run)
    if run.complete(item, outcome, seconds, error):
        try:
            run.dispatch(_send_item)
        finally:
            if run.try_finish():
                report = run.finalize(client)
                task.backend.store_result(run.keys.run_id, report, "SUCCESS")


@app.task(bind=True, name="worker.tasks.sweep_stale", acks_late=True)
def sweep_stale(self: Task, prefixes: list[str] | None = None, older_than: float | None = None) -> dict[str, int]:
    """Abort stale multipart uploads and delete stale staging objects and orphan archives
    under ``prefixes`` (default ``EXPORT_SWEEP_PREFIXES``); see worker/sweeper.py.

    Raises:
        SweepRefused: ``prefixes`` outside ``EXPORT_SWEEP_PREFIXES`` or ``older_than`` under
            ``EXPORT_SWEEP_AFTER``: a message narrows the sweep, never widens it; nothing is swept.
    """
    settings = settings_of(self.app)
    chosen, age = sweep_scope(settings.sweep_prefixes, settings.stale_after, prefixes, older_than)
    return sweep(s3_client(settings), chosen, older_than=age).as_dict()
