"""Celery tasks: thin wrappers that parse the argument and call plain functions."""

from __future__ import annotations

import logging
import random
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from celery import Task
from celery.exceptions import SoftTimeLimitExceeded
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from serializer.client import make_s3_client
from serializer.errors import SerializerError, UploadFailed
from serializer.retry import is_transient

from .celery import app
from .errors import ExportError
from .job import Stage, run_export
from .settings import Settings
from .spec import ExportSpec, parse_spec

log = logging.getLogger(__name__)

#: Seconds before the first retry of a job after a transient error; doubles each retry.
RETRY_BASE = 2.0
#: Longest wait between retries.
RETRY_CAP = 120.0

_client: Any = None


def s3_client(settings: Settings) -> Any:
    """One S3 client per worker process, its pool sized to the upload threads."""
    global _client  # noqa: PLW0603 - a per-process cache; clients are thread-safe
    if _client is None:
        _client = make_s3_client(
            max_pool_connections=settings.max_in_flight + 2, checksum_mode=settings.s3_checksum_mode
        )
    return _client


def _transient(exc: BaseException) -> bool:
    if isinstance(exc, RedisConnectionError | RedisTimeoutError):
        return True
    if isinstance(exc, UploadFailed) and exc.__cause__ is not None:
        return _transient(exc.__cause__)
    return isinstance(exc, BotoCoreError | ClientError) and is_transient(exc)


@app.task(bind=True, name="worker.tasks.export_model", max_retries=None, acks_late=True)
def export_model(self: Task, spec: dict[str, Any]) -> dict[str, Any]:
    """Export the model ``spec`` names (see CONTRACT.md); returns the result dict.

    Permanent errors (bad spec, builder not allowed, not scriptable, missing objects) fail
    at once with a message naming the cause; transient S3 and broker errors are retried
    with exponential backoff and jitter, at most ``EXPORT_TASK_MAX_RETRIES`` times.
    """
    settings: Settings = self.app.conf.export_settings
    parsed = parse_spec(spec)
    # Taken here: upload progress is reported from the upload's threads, where
    # ``self.request`` (thread-local) has no id.
    task_id = self.request.id

    def progress(stage: Stage, info: dict[str, Any]) -> None:
        self.update_state(task_id=task_id, state="PROGRESS", meta={"stage": stage.value, "name": parsed.name, **info})

    try:
        return run_export(parsed, settings=settings, client=s3_client(settings), progress=progress)
    except (ExportError, SoftTimeLimitExceeded):
        raise
    except (SerializerError, BotoCoreError, ClientError, RedisConnectionError, RedisTimeoutError) as exc:
        if _transient(exc) and self.request.retries < settings.task_max_retries:
            delay = random.uniform(0, min(RETRY_CAP, RETRY_BASE * 2**self.request.retries))
            log.warning("export %s: transient error, retry in %.1f s: %s", parsed.name, delay, exc)
            raise self.retry(exc=exc, countdown=delay, max_retries=settings.task_max_retries) from exc
        raise


def submit_export(spec: dict[str, Any] | ExportSpec, **options: Any) -> Any:
    """Validate ``spec`` here, then enqueue ``export_model`` on the queue its device picks.

    A bad spec fails at once, in the caller, instead of on a worker.  ``options`` go to
    ``apply_async`` (``countdown``, ``priority``...).

    Returns:
        The ``AsyncResult``.

    Raises:
        SpecError: naming each bad field; nothing is sent.
    """
    parsed = parse_spec(spec)
    options.setdefault("queue", parsed.queue)
    return export_model.apply_async(args=[parsed.to_json_dict()], **options)
