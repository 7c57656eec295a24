"""What a worker shows about itself holds no secret: ``celery inspect`` (conf, stats,
registered, active, report: what Flower shows), the task events, and the results, for a
worker whose broker URL carries a password and whose S3 credentials are in its environment.

On the code before this test, ``inspect conf`` answered the worker's whole Settings object,
broker password included. The worker and its redis-server (with ``--requirepass``) are this
module's own.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from .services import client_app, running_worker, worker_env
from .test_faults import Store, own_redis, slow_spec


def capture_events(app: Any, events: list[dict[str, Any]]) -> tuple[Any, threading.Thread]:
    """A receiver appending every event on ``app``'s broker to ``events``, in a thread;
    set its ``should_stop`` to end it."""
    connection = app.connection_for_read()
    receiver = app.events.Receiver(connection, handlers={"*": events.append})
    thread = threading.Thread(target=receiver.capture, kwargs={"limit": None, "timeout": None}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not any(event["type"] == "worker-heartbeat" for event in events):
        assert time.monotonic() < deadline, "no worker heartbeat reached the event receiver"
        time.sleep(0.1)
    return receiver, thread


def test_inspect_events_and_results_show_no_secret(moto_process_endpoint: str, tmp_path: Path) -> None:
    password = f"broker-pw-{uuid.uuid4().hex}"
    access_key, secret_key = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"aws-secret-{uuid.uuid4().hex}"
    secrets = (password, secret_key)
    store = Store(moto_process_endpoint)
    bucket = store.bucket()
    data = tmp_path / "redis"
    data.mkdir()
    with own_redis(data, "--requirepass", password, "--save", "", "--appendonly", "no") as (port, _):
        broker = f"redis://:{password}@127.0.0.1:{port}/0"
        env = worker_env(
            broker,
            moto_process_endpoint,
            AWS_ACCESS_KEY_ID=access_key,
            AWS_SECRET_ACCESS_KEY=secret_key,
            # Pool processes started afresh get the app (and its settings) pickled by Celery,
            # not from app.conf.
            EXPORT_POOL_START_METHOD="spawn",
        )
        app = client_app(broker)
        app.conf.task_send_sent_event = True
        events: list[dict[str, Any]] = []
        with running_worker(app, env, tmp_path / "worker.log", concurrency=1):
            receiver, listener = capture_events(app, events)
            job = app.send_task("worker.tasks.export_model", args=[slow_spec(bucket, 1, 8.0)], queue="cpu")
            inspect = app.control.inspect(timeout=5, limit=1)  # one worker: answered once it replies
            active: dict[str, Any] = {}
            deadline = time.monotonic() + 120
            while not any(active.values()) and time.monotonic() < deadline and not job.ready():
                active = inspect.active() or {}
                time.sleep(0.2)
            result = job.get(timeout=120)
            replies = {
                "conf": inspect.conf(with_defaults=True),
                "stats": inspect.stats(),
                "registered": inspect.registered(),
                "active": active,
                "report": inspect.report(),
                "query_task": inspect.query_task([job.id]),
            }
            meta = app.backend.get_task_meta(job.id)
            time.sleep(2)  # the last events (task-succeeded, a heartbeat) reach the receiver
            receiver.should_stop = True
            listener.join(10)
            receiver.connection.close()
    # Each reply came, from the worker, about this worker and this job: the check reads real answers.
    for name, reply in replies.items():
        assert reply, f"no worker answered inspect {name}"
    (conf,) = replies["conf"].values()
    assert conf["broker_url"].startswith("redis://") and "export_settings" not in conf
    assert any(task["id"] == job.id for tasks in active.values() for task in tasks), f"never seen active: {active}"
    assert "worker.tasks.export_model" in next(iter(replies["registered"].values()))
    kinds = {event["type"] for event in events}
    assert {"task-sent", "task-received", "task-started", "task-succeeded", "worker-heartbeat"} <= kinds, kinds
    assert result["artifact_uri"].startswith(f"s3://{bucket}/") and meta["status"] == "SUCCESS"
    shown = {
        **{f"inspect {name}": json.dumps(reply, default=repr) for name, reply in replies.items()},
        "events": json.dumps(events, default=repr),
        "result": json.dumps(result),
        "result meta": json.dumps(meta, default=repr),
    }
    for where, text in shown.items():
        for secret in secrets:
            assert secret not in text, f"{where} shows a secret"
