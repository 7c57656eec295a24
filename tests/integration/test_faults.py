"""Faults for real: worker processes killed mid-upload, Redis restarted, one spec delivered
twice at once, the soft time limit hit during an upload; secrets kept out of everything the
worker writes; Redis with a password and over TLS.

Each test starts the workers (and, where it restarts or secures Redis, the redis-server) it
needs; all on loopback, every wait bounded.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serializer.s3.client import make_s3_client
from worker.cli.demo_services import free_port, stop_process

from .services import client_app, db_url, running_worker, tail, worker_env

#: Redis databases of the session's redis-server used here.
KILL_DB, DUPLICATE_DB, SOFT_LIMIT_DB = 11, 8, 9
#: Trials of killing the exporting process mid-upload.
KILL_TRIALS = 10
#: A model large enough that its upload takes a while on loopback.
BIG_BYTES = 48 * 1024**2


def blob_spec(bucket: str, seed: int, total_bytes: int = BIG_BYTES) -> dict[str, Any]:
    return {
        "name": f"blob-{seed}",
        "builder": "tests.fixtures:param_blob",
        "kwargs": {"total_bytes": total_bytes, "seed": seed},
        "destination": f"s3://{bucket}/models",
        "extra_files": {"notes.txt": f"seed {seed}\n"},
    }


def slow_spec(bucket: str, n: int, seconds: float = 1.0) -> dict[str, Any]:
    return {
        "name": f"slow-{n}",
        "builder": "tests.fixtures:slow_linear",
        "kwargs": {"seconds": seconds, "seed": n},
        "example_inputs": [{"shape": [2, 4], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
    }


class Store:
    """The moto server, seen directly (not through the worker)."""

    def __init__(self, endpoint: str) -> None:
        self.s3 = make_s3_client(endpoint_url=endpoint, max_pool_connections=4)

    def bucket(self) -> str:
        name = f"faults-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        return name

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        pages = self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        return sorted(item["Key"] for page in pages for item in page.get("Contents", []))

    def uploads(self, bucket: str) -> list[dict[str, Any]]:
        return list(self.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    def read(self, bucket: str, key: str) -> bytes:
        return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())

    def check_export(self, bucket: str, result: dict[str, Any]) -> None:
        """Exactly one archive and one manifest in the export's folder, all digests agreeing."""
        artifact = result["artifact_uri"].removeprefix(f"s3://{bucket}/")
        folder = artifact.rsplit("/", 1)[0] + "/"
        manifest_key = result["manifest_uri"].removeprefix(f"s3://{bucket}/")
        assert self.keys(bucket, folder) == sorted([artifact, manifest_key])
        manifest = json.loads(self.read(bucket, manifest_key))
        digest = hashlib.sha256(self.read(bucket, artifact)).hexdigest()
        assert digest == manifest["artifact"]["sha256"] == result["sha256"]


@pytest.fixture(scope="module")
def store(moto_process_endpoint: str) -> Store:
    return Store(moto_process_endpoint)


def _wait_uploading(result: Any, timeout: float = 120) -> dict[str, Any]:
    """The job's progress once some of its archive is uploaded."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = result.info
        uploading = result.state == "PROGRESS" and isinstance(info, dict) and info.get("stage") == "uploading"
        if uploading and info.get("bytes", 0) > 0:
            return dict(info)
        if result.state in ("SUCCESS", "FAILURE"):
            pytest.fail(f"the job ended ({result.state}) before it could be interrupted: {info}")
        time.sleep(0.02)
    pytest.fail("the job never reached its upload")


def test_killing_the_exporting_process_mid_upload_loses_nothing(
    redis_server: str, moto_process_endpoint: str, store: Store, tmp_path: Path
) -> None:
    broker = db_url(redis_server, KILL_DB)
    app = client_app(broker)
    env = worker_env(broker, moto_process_endpoint)
    bucket = store.bucket()
    results = []
    with running_worker(app, env, tmp_path / "worker.log", concurrency=1) as proc:
        for trial in range(KILL_TRIALS):
            job = app.send_task("worker.tasks.export_model", args=[blob_spec(bucket, trial)], queue="cpu")
            info = _wait_uploading(job)
            os.kill(info["pid"], signal.SIGKILL)
            try:
                result = job.get(timeout=180)
            except Exception:
                print(tail(tmp_path / "worker.log"))
                raise
            assert result["skipped"] is False
            store.check_export(bucket, result)
            results.append(result)
        assert proc.poll() is None
    # A killed process cannot abort its upload; its retry holds the export's lock, knows any
    # other upload open on its key is a dead job's, and aborts it: no orphan parts are left,
    # without waiting for the sweeper.
    assert (tmp_path / "worker.log").read_text(errors="replace").count("left by a job that died") >= 1
    assert store.uploads(bucket) == []
    assert len(store.keys(bucket)) == 2 * KILL_TRIALS
    assert len({r["sha256"] for r in results}) == KILL_TRIALS


def test_killing_the_whole_worker_mid_upload_redelivers_the_job(
    redis_server: str, moto_process_endpoint: str, store: Store, tmp_path: Path
) -> None:
    broker = db_url(redis_server, KILL_DB)
    app = client_app(broker)
    # A short visibility timeout, so the unacknowledged job comes back within the test.
    limits = {"EXPORT_SOFT_TIME_LIMIT": "8", "EXPORT_TIME_LIMIT": "10", "EXPORT_VISIBILITY_TIMEOUT": "12"}
    env = worker_env(broker, moto_process_endpoint, **limits)
    bucket = store.bucket()
    with running_worker(app, env, tmp_path / "first.log", concurrency=1) as proc:
        job = app.send_task("worker.tasks.export_model", args=[blob_spec(bucket, 100)], queue="cpu")
        _wait_uploading(job)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    assert store.keys(bucket) == []  # nothing half-written is visible
    with running_worker(app, env, tmp_path / "second.log", concurrency=1):
        result = job.get(timeout=150)
    assert result["skipped"] is False
    store.check_export(bucket, result)
    assert store.uploads(bucket) == []  # the dead worker's upload, aborted by the redelivered job


def test_the_same_spec_delivered_twice_at_once_gives_one_consistent_export(
    redis_server: str, moto_process_endpoint: str, store: Store, tmp_path: Path
) -> None:
    broker = db_url(redis_server, DUPLICATE_DB)
    app = client_app(broker)
    env = worker_env(broker, moto_process_endpoint)
    bucket = store.bucket()
    with contextlib.ExitStack() as stack:
        for n in range(2):  # two workers, one process each
            stack.enter_context(running_worker(app, env, tmp_path / f"worker{n}.log", concurrency=1))
        for trial in range(5):
            spec = blob_spec(bucket, 200 + trial, total_bytes=16 * 1024**2)
            jobs = [app.send_task("worker.tasks.export_model", args=[spec], queue="cpu") for _ in range(2)]
            results = [job.get(timeout=180) for job in jobs]
            assert sorted(r["skipped"] for r in results) == [False, True], results
            assert results[0]["sha256"] == results[1]["sha256"]
            assert results[0]["artifact_uri"] == results[1]["artifact_uri"]
            store.check_export(bucket, results[0])
    assert store.uploads(bucket) == []


def test_the_soft_time_limit_during_an_upload_aborts_it_cleanly(
    redis_server: str, moto_process_endpoint: str, store: Store, tmp_path: Path
) -> None:
    broker = db_url(redis_server, SOFT_LIMIT_DB)
    app = client_app(broker)
    spool = tmp_path / "spool"
    spool.mkdir()
    limits = {"EXPORT_SOFT_TIME_LIMIT": "4", "EXPORT_TIME_LIMIT": "60", "EXPORT_VISIBILITY_TIMEOUT": "90"}
    env = worker_env(broker, moto_process_endpoint, EXPORT_SPOOL_DIR=str(spool), **limits)
    bucket = store.bucket()
    with running_worker(app, env, tmp_path / "worker.log", concurrency=1) as proc:
        job = app.send_task(
            "worker.tasks.export_model", args=[blob_spec(bucket, 300, total_bytes=1024**3)], queue="cpu"
        )
        with pytest.raises(Exception, match=r"SoftTimeLimitExceeded|soft time limit") as info:
            job.get(timeout=120)
        assert job.state == "FAILURE", info.value
        assert proc.poll() is None
        assert store.keys(bucket) == []
        assert store.uploads(bucket) == []
        assert list(spool.iterdir()) == []
        # The worker goes on serving.
        assert app.send_task("worker.tasks.export_model", args=[slow_spec(bucket, 1, 0)], queue="cpu").get(timeout=60)


# -- Redis of our own: restarted, with a password, over TLS --------------------------------


@contextlib.contextmanager
def own_redis(workdir: Path, *args: str, port: int | None = None) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """A redis-server in ``workdir`` (its data and log there) with ``args``; yields its port."""
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = port or free_port()
    listen = list(args) if "--tls-port" in args else ["--port", str(port), *args]
    log_path = workdir / "redis.log"
    start = log_path.stat().st_size if log_path.exists() else 0  # a restart appends to the log
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--dir", str(workdir), *listen],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 15
        while b"Ready to accept connections" not in log_path.read_bytes()[start:]:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"redis-server did not start:\n{tail(workdir / 'redis.log')}")
            time.sleep(0.05)
        yield port, proc
    finally:
        stop_process(proc, grace=10)
        log.close()


def test_redis_restarts_with_jobs_queued_and_one_running(
    moto_process_endpoint: str, store: Store, tmp_path: Path
) -> None:
    data = tmp_path / "redis"
    data.mkdir()
    port = free_port()
    persistence = ("--appendonly", "yes", "--appendfsync", "always", "--save", "")
    broker = f"redis://127.0.0.1:{port}/0"
    app = client_app(broker)
    env = worker_env(broker, moto_process_endpoint)
    bucket = store.bucket()
    specs = [slow_spec(bucket, n, 1.5) for n in range(6)]
    with contextlib.ExitStack() as stack:
        _, redis_proc = stack.enter_context(own_redis(data, *persistence, port=port))
        worker = stack.enter_context(running_worker(app, env, tmp_path / "worker.log", concurrency=1))
        jobs = [app.send_task("worker.tasks.export_model", args=[s], queue="cpu") for s in specs]
        deadline = time.monotonic() + 60
        while jobs[0].state not in ("STARTED", "PROGRESS"):
            assert time.monotonic() < deadline, "the first job never started"
            time.sleep(0.05)
        # Redis goes away (a clean shutdown writes the append-only file) and comes back.
        stop_process(redis_proc, grace=10)
        time.sleep(2)
        stack.enter_context(own_redis(data, *persistence, port=port))
        results = [job.get(timeout=180) for job in jobs]
        assert worker.poll() is None
    assert sorted(r["artifact_uri"] for r in results) == sorted(set(r["artifact_uri"] for r in results))
    for result in results:
        store.check_export(bucket, result)
    # The worker saw the broker go and came back by itself.
    log = (tmp_path / "worker.log").read_text(errors="replace")
    assert "Connection to broker lost" in log or "Cannot connect to redis" in log, tail(tmp_path / "worker.log")


def _scan_redis(client: Any) -> bytes:
    """Every key and value in a Redis database, concatenated."""
    out = []
    for key in client.scan_iter():
        kind = client.type(key).decode()
        out.append(key)
        if kind == "string":
            out.append(client.get(key) or b"")
        elif kind == "hash":
            out.extend(k + v for k, v in client.hgetall(key).items())
        elif kind == "list":
            out.extend(client.lrange(key, 0, -1))
        elif kind == "set":
            out.extend(client.smembers(key))
        elif kind == "zset":
            out.extend(client.zrange(key, 0, -1))
    return b"\n".join(out)


def _make_certificates(folder: Path) -> tuple[Path, Path, Path]:
    """A CA and a server certificate for 127.0.0.1, made with openssl."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed; the TLS test needs it to make certificates")
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.pem", "server.key", "server.csr", "server.pem"))
    ext = folder / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    new_key = ["-newkey", "rsa:2048", "-nodes", "-days", "2"]
    steps = [
        ["req", "-x509", *new_key, "-keyout", ca_key, "-out", ca, "-subj", "/CN=export-worker test CA"],
        ["req", "-newkey", "rsa:2048", "-nodes", "-keyout", key, "-out", csr, "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", csr, "-CA", ca, "-CAkey", ca_key, "-CAcreateserial", "-days", "2", "-out", cert],
    ]
    steps[2] += ["-extfile", ext]
    for step in steps:
        subprocess.run([openssl, *map(str, step)], check=True, capture_output=True, timeout=60)
    return ca, cert, key


@pytest.mark.parametrize("tls", [False, True], ids=["password", "tls-and-password"])
def test_redis_with_a_password_and_tls_and_no_secret_in_anything_written(
    tls: bool, moto_process_endpoint: str, store: Store, tmp_path: Path
) -> None:
    import redis

    password = f"broker-pw-{uuid.uuid4().hex}"
    access_key, secret_key = f"AKIA{uuid.uuid4().hex[:16].upper()}", f"aws-secret-{uuid.uuid4().hex}"
    secrets = [password.encode(), secret_key.encode()]
    data = tmp_path / "redis"
    data.mkdir()
    port = free_port()
    args: list[str] = ["--requirepass", password, "--save", "", "--appendonly", "no"]
    query = ""
    if tls:
        ca, cert, key = _make_certificates(tmp_path)
        args = ["--port", "0", "--tls-port", str(port), "--tls-cert-file", str(cert), "--tls-key-file", str(key)]
        args += ["--tls-ca-cert-file", str(ca), "--tls-auth-clients", "no", "--requirepass", password, "--save", ""]
        query = f"?ssl_cert_reqs=required&ssl_ca_certs={ca}"
    scheme = "rediss" if tls else "redis"
    broker = f"{scheme}://:{password}@127.0.0.1:{port}/0{query}"
    env = worker_env(broker, moto_process_endpoint, AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    bucket = store.bucket()
    log_path = tmp_path / "worker.log"
    with own_redis(data, *args, port=port):
        app = client_app(broker)
        with running_worker(app, env, log_path, concurrency=1):
            good = app.send_task("worker.tasks.export_model", args=[slow_spec(bucket, 1, 0)], queue="cpu")
            result = good.get(timeout=120)
            store.check_export(bucket, result)
            bad_spec = {**slow_spec(bucket, 2, 0), "weights": f"s3://{bucket}/missing/weights.pt"}
            bad = app.send_task("worker.tasks.export_model", args=[bad_spec], queue="cpu")
            with pytest.raises(Exception, match="weights") as failure:
                bad.get(timeout=120)
            bulk = app.send_task("worker.tasks.reexport", args=[f"s3://{bucket}/models"], queue="cpu")
            report = bulk.get(timeout=120)
            assert report["status"] == "finished"
        client = redis.Redis.from_url(broker)
        everything_in_redis = _scan_redis(client)
        client.close()
    written = [log_path.read_bytes(), everything_in_redis, str(failure.value).encode(), json.dumps(result).encode()]
    written += [store.read(bucket, k) for k in store.keys(bucket)]
    for blob in written:
        for secret in secrets:
            assert secret not in blob
    # (the scan covered a real log: the worker's start-up and both jobs are in it)
    assert b"ready." in written[0] and written[0].count(b"worker.tasks.export_model") >= 2
