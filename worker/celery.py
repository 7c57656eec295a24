"""The Celery app: ``celery -A worker worker`` and ``celery -A worker beat`` find it here.

Configured from :class:`~worker.settings.Settings`, read once when the app is created.
"""

from __future__ import annotations

import os
from typing import Any

from celery import Celery, signals
from kombu import Queue  # type: ignore[attr-defined]

from .settings import Settings

#: Queue names; a spec's ``device`` picks one (see :func:`route_task`).
CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"


#: Deepest JSON a message may carry as it is; deeper parts are cut off (see _loads_bounded).
MAX_MESSAGE_DEPTH = 64


def _loads_bounded(data: str | bytes) -> Any:
    """kombu's JSON decoder, bounded in depth.

    A worker's main process hands each job's decoded arguments to a pool process by
    pickling them; arguments nested a few hundred levels deep (a 1 KB message) make the
    pickling overflow the stack and kill the whole worker, and the next one, when Redis
    redelivers the job.  Anything deeper than MAX_MESSAGE_DEPTH is replaced by a marker
    nested just as deep as allowed: the job then fails its spec validation (JSON nested too
    deep, worker.spec.limits), with its message, in a pool process, and the worker lives.
    """
    from kombu.utils.json import loads

    try:
        value = loads(data)
    except RecursionError:
        return [[_too_deep()], {}, {}]  # a task message body: (args, kwargs, embed)
    return _cut(value, MAX_MESSAGE_DEPTH)


def _too_deep() -> dict[str, Any]:
    marker: Any = "nested too deep"
    for _ in range(MAX_MESSAGE_DEPTH - 1):
        marker = [marker]
    return {"json_nested_too_deep": marker}


def _cut(value: Any, limit: int) -> Any:
    """``value`` with every container deeper than ``limit`` replaced (iteratively)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        node, depth = stack.pop()
        keys = list(node) if isinstance(node, dict) else range(len(node)) if isinstance(node, list) else ()
        for key in keys:
            child = node[key]
            if isinstance(child, dict | list):
                if depth + 1 >= limit:
                    node[key] = _too_deep()
                else:
                    stack.append((child, depth + 1))
    return value


def _register_bounded_json() -> None:
    from kombu.serialization import register
    from kombu.utils.json import dumps

    register("json", dumps, _loads_bounded, content_type="application/json", content_encoding="utf-8")


_register_bounded_json()


def cuda_available() -> bool:
    """Whether this host has CUDA, asked through NVML so no CUDA context is created in the
    parent (forked pool children could not use one)."""
    os.environ.setdefault("PYTORCH_NVML_BASED_CUDA_CHECK", "1")
    import torch

    return bool(torch.cuda.is_available())


def route_task(name: str, args: Any, kwargs: Any, options: Any, task: Any = None, **kw: Any) -> dict[str, str] | None:
    """Route ``export_model`` by its spec's device: ``cuda*`` to ``gpu``, else ``cpu``."""
    if name != "worker.tasks.export_model":
        return None
    spec = (args or [None])[0] if args else (kwargs or {}).get("spec")
    device = spec.get("device", "cpu") if isinstance(spec, dict) else "cpu"
    return {"queue": GPU_QUEUE if str(device).startswith("cuda") else CPU_QUEUE}


class ExportApp(Celery):  # type: ignore[misc]  # Celery is untyped
    """The service's Celery app: its :class:`Settings` kept on the app, outside ``app.conf``.

    ``app.conf`` is what ``celery inspect conf`` (and so Flower) shows; Celery censors its
    own URL and key settings there, but an object of ours would be shown whole, broker
    password and all.  The settings travel with the app where Celery pickles it (a pool
    process started with ``spawn``), never through the broker.
    """

    def __init__(self, *args: Any, export_settings: Settings | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.export_settings = export_settings if export_settings is not None else Settings()

    def __reduce_keys__(self) -> dict[str, Any]:
        keys: dict[str, Any] = super().__reduce_keys__()
        return {**keys, "export_settings": self.export_settings}


def settings_of(app: Any) -> Settings:
    """The :class:`Settings` the app (a task's ``self.app``) was created with.

    Raises:
        TypeError: ``app`` is not one :func:`create_app` made.
    """
    settings = getattr(app, "export_settings", None)
    if not isinstance(settings, Settings):
        raise TypeError(f"{app!r} is not the export worker's app (made by worker.celery.create_app)")
    return settings


def create_app(settings: Settings | None = None) -> Celery:
    """A Celery app configured from ``settings`` (read from the environment when omitted).

    With ``EXPORT_MESSAGE_SIGNING_KEY`` (and its certificate and store) every message it
    sends is signed and it accepts only signed ones (see :func:`use_message_signing`).
    """
    settings = settings or Settings()
    app = ExportApp(
        "worker",
        broker=settings.broker_url,
        backend=settings.backend_url,
        include=["worker.tasks"],
        export_settings=settings,
    )
    transport = {
        "visibility_timeout": settings.visibility_timeout,
        "health_check_interval": 25,
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        "socket_keepalive": True,
        "retry_on_timeout": True,
    }
    queues = [Queue(CPU_QUEUE)] + ([Queue(GPU_QUEUE)] if cuda_available() else [])
    app.conf.update(
        accept_content=["json"],
        task_serializer="json",
        result_serializer="json",
        result_accept_content=["json"],
        task_acks_late=True,
        # A job whose pool process died is retried, at most task_max_retries times.
        task_retry_on_worker_lost=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_soft_time_limit=settings.soft_time_limit,
        task_time_limit=settings.time_limit,
        broker_transport_options=transport,
        result_backend_transport_options=transport,
        broker_connection_retry_on_startup=True,
        # Results (and progress) written while Redis restarts are retried, not lost: a job
        # whose result cannot be stored would otherwise be rejected and never run again.
        result_backend_always_retry=True,
        result_backend_max_retries=30,
        result_backend_base_sleep_between_retries_ms=100,
        result_backend_max_sleep_between_retries_ms=5000,
        result_expires=settings.result_expires,
        result_extended=True,
        task_track_started=True,
        task_send_sent_event=True,
        worker_send_task_events=True,
        task_default_queue=CPU_QUEUE,
        task_queues=queues,
        task_routes=(route_task,),
        worker_max_tasks_per_child=settings.max_tasks_per_child,
        worker_max_memory_per_child=settings.max_memory_per_child,
        # CUDA must not be initialised in a forked child of a parent that touched it; the
        # parent here never does (NVML check only), and GPU hosts may also run
        # `--pool prefork` with EXPORT_POOL_START_METHOD=spawn.
        worker_pool_start_method=settings.pool_start_method,
        worker_hijack_root_logger=False,
    )
    app.conf.beat_schedule = beat_schedule(settings)
    if settings.message_signing_key is not None:
        use_message_signing(app, settings)
    return app


#: Content types a signing app still decodes: ``auth``'s (signed task and control messages)
#: and JSON (results and task events, which the worker writes and nothing executes).
SIGNED_APP_CONTENT_TYPES = ("application/data", "application/json")


def use_message_signing(app: Celery, settings: Settings) -> None:
    """Sign every task and control message ``app`` sends, and accept only signed ones.

    Celery's ``auth`` serializer: the JSON body is signed with the private key
    (``EXPORT_MESSAGE_SIGNING_KEY``), the signer named by its certificate
    (``EXPORT_MESSAGE_SIGNING_CERT``), and a message is accepted only where its signature
    verifies against a certificate in the trusted folder (``EXPORT_MESSAGE_SIGNING_CERT_STORE``).
    An unsigned message, or one signed by a key not trusted there, is refused and never run;
    so are unsigned control commands (``shutdown``, ``revoke``, ``inspect``).  Results and
    task events stay JSON.  Celery registers the serializer for the whole process.

    Raises:
        ValueError: a key or certificate that cannot be read, naming the setting.
    """
    from celery.exceptions import SecurityError

    for name, path in (
        ("EXPORT_MESSAGE_SIGNING_KEY", settings.message_signing_key),
        ("EXPORT_MESSAGE_SIGNING_CERT", settings.message_signing_cert),
        ("EXPORT_MESSAGE_SIGNING_CERT_STORE", settings.message_signing_cert_store),
    ):
        if path is None or not os.path.exists(path):
            raise ValueError(f"{name}={path}: no such file or folder (message signing needs all three)")
    app.conf.update(
        security_key=settings.message_signing_key,
        security_certificate=settings.message_signing_cert,
        security_cert_store=settings.message_signing_cert_store,
        security_digest="sha256",
        task_serializer="auth",
        accept_content=["auth"],
        result_serializer="json",
        result_accept_content=["json"],
        event_serializer="json",
    )
    try:
        app.setup_security(allowed_serializers=list(SIGNED_APP_CONTENT_TYPES), digest="sha256", serializer="json")
    except (SecurityError, OSError, ValueError) as exc:
        raise ValueError(f"message signing: the key, certificate or trusted certificates are unusable: {exc}") from exc


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """``celery -A worker beat``'s entries: one ``reexport`` per ``EXPORT_REEXPORT_SCHEDULE`` entry."""
    from datetime import timedelta

    from .settings import crontab_of

    schedule: dict[str, dict[str, Any]] = {}
    for n, entry in enumerate(settings.reexport_schedule):
        when = crontab_of(entry.cron) if entry.cron is not None else timedelta(seconds=entry.every or 0)
        to = f"-to-{entry.to_format}" if entry.to_format else ""
        schedule[f"reexport-{n}-{entry.policy}{to}-{entry.source}"] = {
            "task": "worker.tasks.reexport",
            "schedule": when,
            "args": [entry.source],
            "kwargs": {"policy": entry.policy, **({"to_format": entry.to_format} if entry.to_format else {})},
            # A run that could not start in one period is not worth starting late.
            "options": {"queue": CPU_QUEUE, "expires": entry.every or 3600},
        }
    if settings.sweep_prefixes:
        schedule["sweep-stale-uploads"] = {
            "task": "worker.tasks.sweep_stale",
            "schedule": timedelta(seconds=settings.sweep_every),
            "options": {"queue": CPU_QUEUE, "expires": settings.sweep_every},
        }
    return schedule


@signals.worker_init.connect
def _init_worker(**_: Any) -> None:
    """In the worker's main process, before the pool starts: metrics from every process."""
    from . import metrics

    settings = settings_of(app)
    if settings.metrics_port is not None:
        metrics.prepare_multiprocess_dir()
        metrics.serve(settings.metrics_port)


@signals.worker_shutdown.connect
def _stop_worker(**_: Any) -> None:
    from . import metrics

    metrics.cleanup()


@signals.worker_process_shutdown.connect
def _pool_process_ended(pid: int | None = None, **_: Any) -> None:
    from . import metrics

    metrics.process_died(pid or os.getpid())


@signals.after_setup_logger.connect
@signals.after_setup_task_logger.connect
def _json_logs(logger: Any = None, **_: Any) -> None:
    """``EXPORT_LOG_FORMAT=json``: every line of the worker's logs a JSON object."""
    from . import metrics

    if logger is not None and settings_of(app).log_format == "json":
        metrics.use_json_logs(logger)


@signals.worker_process_init.connect
def _init_pool_process(**_: Any) -> None:
    """Per pool process: one share of the cores for torch, so concurrent exports don't
    oversubscribe; and on GPU hosts, one GPU (pool process N owns GPU N mod count)."""
    import torch
    from billiard.process import current_process

    from . import builders

    settings = settings_of(app)
    concurrency = max(1, int(app.conf.worker_concurrency or os.cpu_count() or 1))
    threads = settings.torch_threads or max(1, (os.cpu_count() or 1) // concurrency)
    torch.set_num_threads(threads)
    index = getattr(current_process(), "index", None)
    if index is not None and cuda_available():
        builders.assigned_gpu = int(index) % max(1, torch.cuda.device_count())


app = create_app()
