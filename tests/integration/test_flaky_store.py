"""Exports through a flaky store: a fault-injecting proxy (tests/faultproxy.py) between a real
worker and the moto server.

The worker (2 processes, on Redis database 6) reaches S3 only through the proxy; the tests
read what was stored directly from moto.  Faults are 5xx replies, SlowDown, connection
resets before the request reaches the store, resets after it was carried out (the reply is
lost), and stalls.  The worker keeps its production S3 settings (botocore's standard retry
mode, the writer's retries, 60 s read timeout) except:

- ``EXPORT_PART_SIZE=5MiB``, so that a ~24 MB model is a multipart upload of 5 parts;
- ``EXPORT_TASK_MAX_RETRIES=1``, so that a job whose every part upload fails gives up after
  one retry (two attempts, ~20 s) instead of five retries with up to a minute of backoff.

Stalls last :data:`STALL_SECONDS` and end in a reset: a stall longer than the client's read
timeout (60 s, serializer/s3/client.py) would cost a minute per stalled request.

The last tests exhaust botocore's retry
quota in the worker process that runs them, so they run after the others.
"""

from __future__ import annotations

import base64
import hashlib
import http.client
import io
import json
import re
import time
import urllib.error
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.manifest.model import Manifest
from serializer.s3.client import make_s3_client
from serializer.s3.uri import parse_s3_uri
from tests.faultproxy import ProxyHandle, classify, fault_proxy
from tests.fixtures import ALL_BYTES, TinyLinear, load_archive
from worker.keys import export_keys
from worker.spec import parse_spec

from .services import client_app, db_url, running_worker, tail, worker_env

#: This module's Redis database.
FLAKY_DB = 6
#: The bucket whose ``models`` prefix the worker sweeps (EXPORT_SWEEP_PREFIXES: a message may
#: only narrow the configured prefixes).
SWEPT_BUCKET = f"flaky-swept-{uuid.uuid4().hex[:8]}"
#: Fault kinds of the 10 % run: every kind the proxy has except truncated replies.
ALL_FAULTS = ["500", "slowdown", "reset", "reset-after", "stall"]
#: Seconds a stalled request hangs before its connection is reset.
STALL_SECONDS = 1.5
#: Parameters of the multi-part models: 5 parts of 5 MiB.
BIG_BYTES = 24 * 1024**2
#: Seconds for a batch of exports under 10 % faults, and for one job.
BATCH_TIMEOUT = 240.0
JOB_TIMEOUT = 150.0
#: Exports in the 10 % run, half small and half multipart.
EXPORTS = 16
#: The seed of the proxy's choices (which requests fail, and how).
SEED = 20240611
RECORD = "export_worker"


@dataclass
class Flaky:
    """The module's world: proxy, worker, a client of the worker's broker, moto directly."""

    proxy: ProxyHandle
    app: Any
    s3: Any
    proc: Any
    log_path: Path
    spool_dir: Path

    def bucket(self) -> str:
        name = f"flaky-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        return name

    def submit(self, spec: dict[str, Any]) -> Any:
        return self.app.send_task("worker.tasks.export_model", args=[spec], queue="cpu")

    def wait(self, result: Any, timeout: float) -> tuple[str, Any]:
        value = result.get(timeout=timeout, propagate=False, interval=0.2)
        return result.state, value

    def diagnostics(self) -> str:
        stats = self.proxy.stats()
        events = "\n".join(json.dumps(e) for e in stats["events"][-40:])
        return f"proxy faults: {stats['faults']}\nrecent faults:\n{events}\nworker log:\n{tail(self.log_path, 60)}"

    def open_uploads(self, bucket: str) -> list[dict[str, Any]]:
        return list(self.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))

    def keys(self, bucket: str) -> list[str]:
        return [o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", [])]

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the worker exited with {self.proc.returncode}:\n{tail(self.log_path)}"
        assert self.app.control.ping(timeout=2.0), "the worker does not answer a ping"


@pytest.fixture(scope="module")
def flaky(redis_server: str, moto_process_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Flaky]:
    import redis

    broker = db_url(redis_server, FLAKY_DB)
    base = tmp_path_factory.mktemp("flaky")
    spool_dir = base / "spool"
    spool_dir.mkdir()
    log_path = base / "worker.log"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.close()
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=4)
    with fault_proxy(moto_process_endpoint, rate=0.0, seed=SEED, stall_seconds=STALL_SECONDS) as proxy:
        env = worker_env(
            broker,
            proxy.url,
            EXPORT_PART_SIZE="5MiB",
            EXPORT_TASK_MAX_RETRIES="1",
            EXPORT_SPOOL_DIR=str(spool_dir),
            EXPORT_SWEEP_PREFIXES=f"s3://{SWEPT_BUCKET}/models",
        )
        app = client_app(broker)
        with running_worker(app, env, log_path, concurrency=2) as proc:
            yield Flaky(proxy, app, s3, proc, log_path, spool_dir)


@pytest.fixture()
def clean_proxy(flaky: Flaky) -> Iterator[Flaky]:
    """The proxy with no faults and zeroed counters before and after the test."""
    flaky.proxy.configure(rate=0.0, ops="all", faults=ALL_FAULTS, limit=None, after=0, trace=False, reset=True)
    yield flaky
    flaky.proxy.configure(rate=0.0, ops="all", faults=ALL_FAULTS, limit=None, after=0, trace=False)


# -- specs and checks ------------------------------------------------------------------------


def small_spec(bucket: str, n: int) -> dict[str, Any]:
    """A tiny model (one PutObject) with extra files of every kind but remote ones."""
    return {
        "name": f"small-{n}",
        "builder": "tests.fixtures:tiny_linear",
        "kwargs": {"seed": n},
        "example_inputs": [{"shape": [2, 4], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
        "extra_files": {
            "notes/readme.txt": f"model {n}\nünïcödé\n",
            "bin/all-bytes.bin": {"base64": base64.b64encode(ALL_BYTES).decode()},
        },
    }


def big_spec(bucket: str, n: int) -> dict[str, Any]:
    """A model of ~24 MB: a multipart upload of 5 parts of 5 MiB."""
    return {
        "name": f"big-{n}",
        "builder": "tests.fixtures:param_blob",
        "kwargs": {"total_bytes": BIG_BYTES, "seed": n},
        "example_inputs": [{"shape": [4], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
        "extra_files": {"labels.txt": f"label-{n}\n"},
    }


def expected_extras(spec: dict[str, Any]) -> dict[str, bytes]:
    out = {}
    for name, source in spec.get("extra_files", {}).items():
        out[name] = base64.b64decode(source["base64"]) if isinstance(source, dict) else source.encode()
    return out


def get_bytes(s3: Any, uri: str) -> bytes:
    target = parse_s3_uri(uri)
    return bytes(s3.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())


def exists(s3: Any, uri: str) -> bool:
    target = parse_s3_uri(uri)
    return any(o["Key"] == target.key for o in s3.list_objects_v2(Bucket=target.bucket).get("Contents", []))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_stored(s3: Any, spec: dict[str, Any], result: dict[str, Any]) -> None:
    """The export as stored in moto (read directly, not through the proxy) is the one the
    result and the manifest describe, loads, and holds the spec's extra files."""
    parsed = parse_spec(spec)
    keys = export_keys(parsed, torch.__version__)
    assert (result["artifact_uri"], result["manifest_uri"]) == (keys.artifact, keys.manifest)
    assert result["skipped"] is False
    archive = get_bytes(s3, result["artifact_uri"])
    raw = get_bytes(s3, result["manifest_uri"])
    manifest = Manifest.from_json(raw)
    assert len(archive) == result["size"] == manifest.artifact.size
    assert sha256(archive) == result["sha256"] == manifest.artifact.sha256, spec["name"]
    assert manifest.artifact.uri == result["artifact_uri"]
    assert manifest.spec_hash == parsed.spec_hash
    assert manifest.verification is not None and manifest.verification.passed

    names = [e.name for e in manifest.extra_files]
    module, extras = load_archive(archive, names)
    for entry in manifest.extra_files:
        piece = archive[entry.offset : entry.offset + entry.size]
        assert sha256(piece) == entry.sha256 == sha256(extras[entry.name]), entry.name
    for name, data in expected_extras(spec).items():
        assert extras[name] == data, name
    # The build record lets the archive check itself: stored inputs give stored outputs.
    inputs = torch.load(io.BytesIO(extras[f"{RECORD}/example_inputs.pt"]), weights_only=True)
    reference = torch.load(io.BytesIO(extras[f"{RECORD}/reference_outputs.pt"]), weights_only=True)
    with torch.no_grad():
        assert torch.allclose(module(*inputs), reference, atol=1e-6), spec["name"]
        if spec["builder"] == "tests.fixtures:tiny_linear":
            eager = TinyLinear(seed=spec["kwargs"]["seed"])
            assert torch.allclose(module(*inputs), eager(*inputs), atol=1e-6), spec["name"]


def lost_upload_ids(stats: dict[str, Any], bucket: str) -> set[str]:
    """Multipart uploads in ``bucket`` whose CreateMultipartUpload reply the proxy dropped."""
    return {u["upload_id"] for u in stats["lost_uploads"] if u["bucket"] == bucket}


# -- tests -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "target", "headers", "op"),
    [
        ("POST", "/b/k?uploads", {}, "CreateMultipartUpload"),
        ("PUT", "/b/k?partNumber=2&uploadId=u", {}, "UploadPart"),
        ("PUT", "/b/k?partNumber=2&uploadId=u", {"x-amz-copy-source": "/b/j"}, "UploadPartCopy"),
        ("POST", "/b/k?uploadId=u", {}, "CompleteMultipartUpload"),
        ("DELETE", "/b/k?uploadId=u", {}, "AbortMultipartUpload"),
        ("GET", "/b/k?uploadId=u", {}, "ListParts"),
        ("PUT", "/b/a/b/c.pt", {}, "PutObject"),
        ("PUT", "/b/k", {"X-Amz-Copy-Source": "/b/j"}, "CopyObject"),
        ("GET", "/b/k", {}, "GetObject"),
        ("HEAD", "/b/k", {}, "HeadObject"),
        ("DELETE", "/b/k", {}, "DeleteObject"),
        ("GET", "/b?list-type=2&prefix=m%2F", {}, "ListObjectsV2"),
        ("GET", "/b?uploads", {}, "ListMultipartUploads"),
        ("GET", "/b", {}, "ListObjects"),
        ("POST", "/b?delete", {}, "DeleteObjects"),
        ("PUT", "/b", {}, "CreateBucket"),
        ("HEAD", "/b", {}, "HeadBucket"),
        ("GET", "/", {}, "ListBuckets"),
    ],
)
def test_the_proxy_names_s3_operations(method: str, target: str, headers: dict[str, str], op: str) -> None:
    assert classify(method, target, headers) == op


def test_the_proxy_relays_bytes_unchanged_and_its_faults_are_visible(moto_process_endpoint: str) -> None:
    """Each fault is one the client can tell from a good reply; what passes is byte for byte."""
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=2)
    bucket = f"proxy-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    data = ALL_BYTES * 4099
    with fault_proxy(moto_process_endpoint, stall_seconds=0.5) as proxy:
        port = int(proxy.url.rsplit(":", 1)[1])

        def request(method: str, key: str, body: Any = None, **headers: str) -> tuple[int, bytes]:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            try:
                conn.request(method, f"/{bucket}/{key}", body=body, headers=headers, encode_chunked=body is not None)
                reply = conn.getresponse()
                return reply.status, reply.read()
            finally:
                conn.close()

        # A chunked body (odd chunk sizes) arrives whole; a GET returns it unchanged.
        pieces = (data[i : i + 65_537] for i in range(0, len(data), 65_537))
        # Unsigned requests: moto lets anyone put, and read what is public.
        public = {"x-amz-acl": "public-read"}
        assert request("PUT", "chunked", pieces, **public, **{"Transfer-Encoding": "chunked"})[0] == 200
        assert request("GET", "chunked") == (200, data)
        assert get_bytes(s3, f"s3://{bucket}/chunked") == data

        proxy.configure(rate=1.0, limit=1, ops="GetObject", faults=["500"])
        status, body = request("GET", "chunked")
        assert (status, b"<Code>InternalError</Code>" in body) == (500, True)
        proxy.configure(rate=1.0, limit=1, ops="GetObject", faults=["slowdown"])
        status, body = request("GET", "chunked")
        assert (status, b"<Code>SlowDown</Code>" in body) == (503, True)
        proxy.configure(rate=1.0, limit=1, ops="GetObject", faults=["reset"])
        with pytest.raises(ConnectionResetError):
            request("GET", "chunked")
        proxy.configure(rate=1.0, limit=1, ops="GetObject", faults=["truncate"])
        with pytest.raises(http.client.IncompleteRead):
            request("GET", "chunked")
        proxy.configure(rate=1.0, limit=1, ops="GetObject", faults=["stall"])
        started = time.monotonic()
        with pytest.raises(ConnectionResetError):
            request("GET", "chunked")
        assert time.monotonic() - started >= 0.5
        # Reset after forwarding: the client sees a reset, but the store carried the request out.
        proxy.configure(rate=1.0, limit=1, ops="PutObject", faults=["reset-after"])
        with pytest.raises(ConnectionResetError):
            request("PUT", "lost-reply", b"stored anyway", **{"Content-Length": "13"})
        assert get_bytes(s3, f"s3://{bucket}/lost-reply") == b"stored anyway"
        assert request("GET", "chunked") == (200, data), "no fault once the limit is spent"

        stats = proxy.stats()
        assert stats["faults"] == {
            "GetObject": {"500": 1, "slowdown": 1, "reset": 1, "truncate": 1, "stall": 1},
            "PutObject": {"reset-after": 1},
        }
        assert stats["requests"] == {"PutObject": 2, "GetObject": 7}
        with pytest.raises(urllib.error.HTTPError, match="400"):
            proxy.configure(faults=["no-such-fault"], rate=0.5)
        assert proxy.stats()["config"]["rules"] == [stats["config"]["rules"][0]], "a bad change changes nothing"


def test_ten_percent_of_requests_failing_every_export_succeeds_with_its_bytes(clean_proxy: Flaky) -> None:
    world = clean_proxy
    bucket = world.bucket()
    specs = [spec(bucket, n) for n in range(EXPORTS // 2) for spec in (big_spec, small_spec)]
    world.proxy.configure(rate=0.1, ops="all", faults=ALL_FAULTS, reset=True)
    started = time.monotonic()
    pending = [(spec, world.submit(spec)) for spec in specs]
    outcomes = []
    for spec, result in pending:
        remaining = max(1.0, BATCH_TIMEOUT - (time.monotonic() - started))
        outcomes.append((spec, *world.wait(result, remaining)))
    stats = world.proxy.configure(rate=0.0)
    failed = [(spec["name"], state, repr(value)) for spec, state, value in outcomes if state != "SUCCESS"]
    assert not failed, f"{failed}\n{world.diagnostics()}"

    for spec, _, value in outcomes:
        check_stored(world.s3, spec, value)
    assert len(world.keys(bucket)) == 2 * len(specs), "one archive and one manifest per export, nothing else"
    assert list(world.spool_dir.iterdir()) == [], "spool files were left behind"

    # An upload whose CreateMultipartUpload reply was lost cannot be aborted by the writer
    # (it never learns the id; see test_a_lost_create_reply_leaves_no_open_upload): the only
    # open uploads allowed are those.  Any other means an upload the writer gave up on.
    open_ids = {u["UploadId"] for u in world.open_uploads(bucket)}
    assert open_ids <= lost_upload_ids(stats, bucket), f"open uploads not aborted: {open_ids}"
    for upload in world.open_uploads(bucket):
        world.s3.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])

    # The faults really happened, on reads and writes, of several kinds.
    faulted_ops = {op for op, kinds in stats["faults"].items() if sum(kinds.values())}
    kinds = {kind for per_op in stats["faults"].values() for kind in per_op}
    print(f"10 % run: {time.monotonic() - started:.1f} s, {stats['total_requests']} requests, faults {stats['faults']}")
    assert stats["total_faults"] >= 8, stats["faults"]
    assert len(faulted_ops) >= 3, stats["faults"]
    assert len(kinds) >= 3, stats["faults"]
    assert stats["requests"].get("UploadPart", 0) >= EXPORTS // 2 * 5, "the big models were multipart uploads"
    assert stats["upstream_errors"] == 0


def test_a_lost_complete_reply_is_recognized_as_the_upload_committed(clean_proxy: Flaky) -> None:
    """The store completes the upload, the reply is lost: the retried Complete meets the
    committed object (412 or NoSuchUpload) and the writer knows it by its ETag."""
    world = clean_proxy
    bucket = world.bucket()
    spec = big_spec(bucket, 10)
    world.proxy.configure(
        rules=[{"ops": ["CompleteMultipartUpload"], "faults": ["reset-after"], "rate": 1.0, "limit": 1}], reset=True
    )
    state, value = world.wait(world.submit(spec), JOB_TIMEOUT)
    stats = world.proxy.configure(rate=0.0)
    assert state == "SUCCESS", f"{value!r}\n{world.diagnostics()}"
    assert stats["faults"] == {"CompleteMultipartUpload": {"reset-after": 1}}
    (event,) = stats["events"]
    assert event["upstream_status"] == 200, "the store did complete the upload"
    check_stored(world.s3, spec, value)
    assert world.open_uploads(bucket) == []
    assert stats["requests"]["CreateMultipartUpload"] == 1, "recognized without a second upload"


def test_a_reply_cut_short_while_verifying_is_never_taken_for_the_archive(clean_proxy: Flaky) -> None:
    """The worker reads the archive back to verify it; one ranged GET's reply stops halfway
    (headers and half the body, then a reset).  The short read is noticed, never used: the
    job is retried (transient) and stores the right bytes."""
    world = clean_proxy
    bucket = world.bucket()
    spec = big_spec(bucket, 12)
    # The first GetObject is the manifest check; the ones after it read the archive back.
    world.proxy.configure(
        rules=[{"ops": ["GetObject"], "faults": ["truncate"], "rate": 1.0, "after": 1, "limit": 1}], reset=True
    )
    state, value = world.wait(world.submit(spec), JOB_TIMEOUT)
    stats = world.proxy.configure(rate=0.0)
    print(f"one verification read cut short: {state}; requests {stats['requests']}")
    assert state == "SUCCESS", f"{value!r}\n{world.diagnostics()}"
    assert stats["faults"] == {"GetObject": {"truncate": 1}}
    (event,) = stats["events"]
    assert event["upstream_status"] == 206, "a ranged read of the archive was cut"
    check_stored(world.s3, spec, value)
    assert world.open_uploads(bucket) == []
    assert len(world.keys(bucket)) == 2


def test_a_store_error_on_the_manifest_check_is_retried(clean_proxy: Flaky) -> None:
    """The first request of a job (GetObject of the manifest, does the export exist?) fails
    with 500 on each of botocore's attempts: a transient error, so the job is retried."""
    world = clean_proxy
    bucket = world.bucket()
    spec = small_spec(bucket, 20)
    world.proxy.configure(rules=[{"ops": ["GetObject"], "faults": ["500"], "rate": 1.0, "limit": 4}], reset=True)
    state, value = world.wait(world.submit(spec), JOB_TIMEOUT)
    stats = world.proxy.configure(rate=0.0)
    print(f"manifest check failing 4 times: {state} {value!r}; faults {stats['faults']}")
    assert stats["faults"] == {"GetObject": {"500": 4}}
    assert state == "SUCCESS", f"{type(value).__name__}: {value}"
    check_stored(world.s3, spec, value)


def test_a_lost_create_reply_leaves_an_upload_only_the_sweeper_can_remove(clean_proxy: Flaky) -> None:
    # The writer never learns the id of an upload whose CreateMultipartUpload reply was lost,
    # so it cannot abort it: the sweeper (or the store's lifecycle rule) does.
    world = clean_proxy
    bucket = SWEPT_BUCKET
    world.s3.create_bucket(Bucket=bucket)
    spec = big_spec(bucket, 30)
    world.proxy.configure(
        rules=[{"ops": ["CreateMultipartUpload"], "faults": ["reset-after"], "rate": 1.0, "limit": 1}], reset=True
    )
    state, value = world.wait(world.submit(spec), JOB_TIMEOUT)
    stats = world.proxy.configure(rate=0.0)
    assert state == "SUCCESS", f"{value!r}\n{world.diagnostics()}"
    check_stored(world.s3, spec, value)
    assert stats["requests"]["CreateMultipartUpload"] == 2
    (lost,) = stats["lost_uploads"]
    open_ids = [u["UploadId"] for u in world.open_uploads(bucket)]
    assert open_ids == [lost["upload_id"]]
    # (the configured age, EXPORT_SWEEP_AFTER: moto dates every upload in 2010)
    swept = world.app.send_task("worker.tasks.sweep_stale", args=[[f"s3://{bucket}/models"]], queue="cpu")
    assert swept.get(timeout=JOB_TIMEOUT)["aborted_uploads"] == 1
    assert world.open_uploads(bucket) == []


def test_a_lost_put_reply_then_a_failing_head_is_still_our_own_put(clean_proxy: Flaky) -> None:
    """The archive's PutObject (If-None-Match: *) is carried out, its reply lost; the retry gets
    412 and the writer asks HeadObject whose object it is, which fails 4 times (botocore's
    attempts) with 500.  Transient: the job must not decide another writer won."""
    world = clean_proxy
    bucket = world.bucket()
    spec = small_spec(bucket, 60)
    world.proxy.configure(
        rules=[
            {"ops": ["PutObject"], "faults": ["reset-after"], "rate": 1.0, "limit": 1},
            {"ops": ["HeadObject"], "faults": ["500"], "rate": 1.0, "limit": 4},
        ],
        reset=True,
    )
    started = time.monotonic()
    state, value = world.wait(world.submit(spec), JOB_TIMEOUT)
    stats = world.proxy.configure(rate=0.0)
    print(f"lost put reply, HEAD failing: {state} after {time.monotonic() - started:.1f} s: {value!r}")
    assert stats["faults"] == {"PutObject": {"reset-after": 1}, "HeadObject": {"500": 4}}
    keys = export_keys(parse_spec(spec), torch.__version__)
    assert state == "SUCCESS" or not exists(world.s3, keys.artifact), f"archive left behind: {value!r}"
    assert state == "SUCCESS", f"{type(value).__name__}: {value}"
    check_stored(world.s3, spec, value)


def test_every_complete_reply_lost_leaves_no_half_export(clean_proxy: Flaky) -> None:
    """Complete is carried out but its reply never arrives, however often it is retried: the job
    may succeed (the object is there, with the ETag its parts add up to) or fail, but must not
    leave an archive without a manifest.  Runs near the end: its retries exhaust the worker
    process's botocore retry quota."""
    world = clean_proxy
    bucket = world.bucket()
    spec = big_spec(bucket, 11)
    world.proxy.configure(ops="CompleteMultipartUpload", faults=["reset-after"], rate=1.0, reset=True)
    state, value = world.wait(world.submit(spec), JOB_TIMEOUT)
    stats = world.proxy.configure(rate=0.0)
    statuses = [e["upstream_status"] for e in stats["events"]]
    print(f"every Complete reply lost: {state} {value!r}; requests {stats['requests']}; store said {statuses}")
    world.assert_alive()
    keys = export_keys(parse_spec(spec), torch.__version__)
    assert world.open_uploads(bucket) == []
    if state == "SUCCESS":
        check_stored(world.s3, spec, value)
    else:
        assert state == "FAILURE"
        assert not exists(world.s3, keys.manifest)
        assert not exists(world.s3, keys.artifact), f"archive left without a manifest after: {value!r}"


def test_a_burst_of_lost_complete_replies_heals_once_the_store_does(clean_proxy: Flaky) -> None:
    """Every Complete reply of the job's first attempt is lost (the store did complete), then
    the store is healthy again before the retry: the job must end with a proper export."""
    world = clean_proxy
    bucket = world.bucket()
    spec = big_spec(bucket, 13)
    world.proxy.configure(ops="CompleteMultipartUpload", faults=["reset-after"], rate=1.0, reset=True)
    result = world.submit(spec)
    deadline = time.monotonic() + JOB_TIMEOUT
    # The first attempt gave up once it aborted its upload: the store heals before the retry's Complete.
    while world.proxy.stats()["requests"].get("AbortMultipartUpload", 0) == 0 and not result.ready():
        assert time.monotonic() < deadline, "the first attempt did not give up"
        time.sleep(0.05)
    world.proxy.configure(rate=0.0)
    state, value = world.wait(result, JOB_TIMEOUT)
    stats = world.proxy.stats()
    statuses = [e["upstream_status"] for e in stats["events"]]
    print(f"burst of lost Complete replies: {state} {value!r}; requests {stats['requests']}; store said {statuses}")
    world.assert_alive()
    assert world.open_uploads(bucket) == []
    assert state == "SUCCESS", f"{type(value).__name__}: {value}"
    check_stored(world.s3, spec, value)


def test_every_part_upload_failing_fails_the_job_cleanly_and_the_worker_carries_on(clean_proxy: Flaky) -> None:
    """Every UploadPart fails (500, SlowDown or a reset): the job fails within a bounded time
    with a message naming the part upload and the store's error; the upload is aborted
    (AbortMultipartUpload passes the proxy), nothing is visible; the worker then exports
    again once the store is healthy.  Runs last: it exhausts the worker process's botocore
    retry quota."""
    world = clean_proxy
    bucket = world.bucket()
    spec = big_spec(bucket, 40)
    world.proxy.configure(ops="UploadPart", faults=["500", "slowdown", "reset"], rate=1.0, reset=True)
    started = time.monotonic()
    state, value = world.wait(world.submit(spec), JOB_TIMEOUT)
    elapsed = time.monotonic() - started
    stats = world.proxy.configure(rate=0.0)
    print(f"every part failing: {state} after {elapsed:.1f} s: {value!r}; requests {stats['requests']}")

    assert state == "FAILURE", f"{state}: {value!r}\n{world.diagnostics()}"
    assert type(value).__name__ == "UploadFailed"
    message = str(value)
    assert re.search(r"part \d+ of s3://\S+/model\.pt failed", message), message
    assert re.search(r"InternalError|SlowDown|Connection was closed|reset", message), message
    assert elapsed < JOB_TIMEOUT

    # One upload per attempt (the job was retried once), each aborted, none faulted.
    assert stats["requests"]["CreateMultipartUpload"] == 2, stats["requests"]
    assert stats["requests"].get("AbortMultipartUpload", 0) >= 2, stats["requests"]
    assert set(stats["faults"]) == {"UploadPart"}
    assert "CompleteMultipartUpload" not in stats["requests"]
    assert world.keys(bucket) == [], "no archive, no manifest"
    assert world.open_uploads(bucket) == [], "the uploads were aborted"
    assert list(world.spool_dir.iterdir()) == [], "spool files were left behind"

    world.assert_alive()
    healthy = small_spec(bucket, 41)
    state, value = world.wait(world.submit(healthy), JOB_TIMEOUT)
    assert state == "SUCCESS", f"{value!r}\n{world.diagnostics()}"
    check_stored(world.s3, healthy, value)
