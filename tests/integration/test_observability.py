"""A worker's Prometheus metrics and JSON log lines, after real exports."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest

from serializer.s3.client import make_s3_client
from worker.cli.demo_services import free_port

from .services import client_app, db_url, running_worker, worker_env

#: This module's Redis database.
METRICS_DB = 12


def _scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:
        text = reply.read().decode()
    values = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            values[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return values


def test_metrics_and_json_logs_after_real_exports(
    redis_server: str, moto_process_endpoint: str, tmp_path: Path
) -> None:
    broker = db_url(redis_server, METRICS_DB)
    app = client_app(broker)
    port = free_port()
    secret = f"aws-secret-{uuid.uuid4().hex}"
    env = worker_env(
        broker,
        moto_process_endpoint,
        EXPORT_METRICS_PORT=str(port),
        EXPORT_LOG_FORMAT="json",
        AWS_SECRET_ACCESS_KEY=secret,
    )
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=2)
    bucket = f"metrics-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    spec = {
        "name": "observed",
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {"in_features": 8, "hidden": 8, "classes": 3},
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
    }
    log_path = tmp_path / "worker.log"
    with running_worker(app, env, log_path, concurrency=2):
        result = app.send_task("worker.tasks.export_model", args=[spec], queue="cpu").get(timeout=120)
        again = app.send_task("worker.tasks.export_model", args=[spec], queue="cpu").get(timeout=120)
        bad = {**spec, "name": "broken", "kwargs": {"no_such_argument": 1}}
        failed = app.send_task("worker.tasks.export_model", args=[bad], queue="cpu")
        with pytest.raises(Exception, match=r"BuildFailed|no_such_argument"):
            failed.get(timeout=120)
        values = _scrape(port)

    def value(name: str, **labels: str) -> float:
        return values.get((name, tuple(sorted(labels.items()))), 0.0)

    assert again["skipped"] is True
    assert value("export_worker_exports_total", outcome="exported") == 1
    assert value("export_worker_exports_total", outcome="skipped") == 1
    assert value("export_worker_exports_total", outcome="failed") == 1
    assert value("export_worker_uploaded_bytes_total") == result["size"]
    for stage in ("building", "scripting", "uploading", "verifying", "publishing"):
        assert value("export_worker_stage_seconds_count", stage=stage) >= 1, stage
    assert value("export_worker_jobs_in_flight") == 0

    lines = [json.loads(line) for line in log_path.read_text().splitlines() if line.startswith("{")]
    stages = [e for e in lines if e.get("logger") == "worker.stages"]
    assert {e.get("stage") for e in stages} >= {"building", "scripting", "uploading", "verifying", "publishing"}
    assert all(e["task_id"] and len(e["spec_hash"]) == 64 for e in stages)
    assert {e.get("outcome") for e in stages if "outcome" in e} == {"exported", "skipped", "failed"}
    assert secret not in log_path.read_text()
