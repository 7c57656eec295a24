"""Signed exports end to end: a real worker (signing with its key) fed through real Redis,
moto over HTTP, and ``exportctl`` as a consumer runs it: ``verify`` and ``extra`` with
``--key`` pass on the worker's export and refuse it, naming why, once it is tampered with,
signed by another key, or unsigned; the standard model-signing command verifies it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serializer.s3.client import make_s3_client
from serializer.s3.uri import parse_s3_uri
from tests.signing_keys import KeyPair, make_key_pair

from .services import client_app, db_url, running_worker, tail, worker_env

#: This module's Redis database.
SIGNED_DB = 1
#: Seconds for one job.
JOB_TIMEOUT = 120.0
LABELS = "cat\ndog\n"


def spec(bucket: str, name: str, fmt: str = "torchscript") -> dict[str, Any]:
    return {
        "name": name,
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {"in_features": 8, "hidden": 4, "classes": 2},
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "extra_files": {"labels.txt": LABELS},
        "destination": f"s3://{bucket}/models",
        "format": fmt,
    }


class World:
    """The worker (signing with ``key``), its bucket, moto, and the consumer's environment."""

    def __init__(self, app: Any, s3: Any, bucket: str, key: KeyPair, stranger: KeyPair, env: dict[str, str]) -> None:
        self.app, self.s3, self.bucket, self.key, self.stranger, self.env = app, s3, bucket, key, stranger, env

    def export(self, name: str, fmt: str = "torchscript") -> dict[str, Any]:
        result = self.app.send_task("worker.tasks.export_model", args=[spec(self.bucket, name, fmt)], queue="cpu")
        value = result.get(timeout=JOB_TIMEOUT, interval=0.2)
        assert isinstance(value, dict)
        return value

    def exportctl(self, *args: str, text: bool = True) -> subprocess.CompletedProcess[Any]:
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", *args],
            capture_output=True, text=text, env=self.env, timeout=120, check=False,
        )  # fmt: skip

    def get(self, uri: str) -> bytes:
        target = parse_s3_uri(uri)
        return bytes(self.s3.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())

    def put(self, uri: str, body: bytes) -> None:
        target = parse_s3_uri(uri)
        self.s3.put_object(Bucket=target.bucket, Key=target.key, Body=body)


@pytest.fixture(scope="module")
def world(redis_server: str, moto_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    keys = tmp_path_factory.mktemp("keys")
    key, stranger = make_key_pair(keys, "worker"), make_key_pair(keys, "stranger")
    broker = db_url(redis_server, SIGNED_DB)
    s3 = make_s3_client(endpoint_url=moto_endpoint)
    bucket = f"signed-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    app = client_app(broker)
    env = worker_env(broker, moto_endpoint, EXPORT_SIGNING_KEY=str(key.private))
    log_path = tmp_path_factory.mktemp("signed-worker") / "worker.log"
    consumer_env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "EXPORT_", "AWS_ENDPOINT"))}
    consumer_env.update(AWS_ENDPOINT_URL_S3=moto_endpoint, COLUMNS="300")
    with running_worker(app, env, log_path, concurrency=1) as proc:
        yield World(app, s3, bucket, key, stranger, consumer_env)
        assert proc.poll() is None, f"the worker died:\n{tail(log_path)}"


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_exportctl_verify_with_the_workers_key_passes(world: World, fmt: str) -> None:
    result = world.export(f"ok-{fmt}", fmt)
    assert result["signature_uri"].endswith("/model.sig")
    done = world.exportctl("verify", "--key", str(world.key.public), result["artifact_uri"])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "signed by trusted key" in done.stdout
    extra = world.exportctl("extra", "--key", str(world.key.public), result["artifact_uri"], "labels.txt")
    assert extra.returncode == 0 and extra.stdout == LABELS


def test_the_model_signing_command_verifies_the_workers_export(world: World, tmp_path: Path) -> None:
    result = world.export("standard")
    folder = tmp_path / "export"
    folder.mkdir()
    for uri in (result["artifact_uri"], result["manifest_uri"], result["signature_uri"]):
        (folder / uri.rsplit("/", 1)[1]).write_bytes(world.get(uri))
    done = subprocess.run(
        [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(folder / "model.sig"),
         "--public_key", str(world.key.public), str(folder)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr


def test_a_tampered_manifest_fails_verify_and_extra_as_altered(world: World) -> None:
    result = world.export("tampered")
    doc = json.loads(world.get(result["manifest_uri"]))
    doc["metadata"] = {"approved": True}
    world.put(result["manifest_uri"], json.dumps(doc, sort_keys=True, separators=(",", ":")).encode())
    done = world.exportctl("verify", "--key", str(world.key.public), result["artifact_uri"])
    assert done.returncode == 1
    assert "FAIL signature" in done.stdout and "altered: " in done.stdout and "manifest was altered" in done.stdout
    assert "checksum" not in done.stdout  # nothing downloaded
    extra = world.exportctl("extra", "--key", str(world.key.public), result["artifact_uri"], "labels.txt")
    assert extra.returncode == 1 and extra.stdout == ""
    assert "altered: " in extra.stderr and "Traceback" not in extra.stderr


def test_a_key_that_is_not_the_workers_refuses_its_export_as_foreign(world: World) -> None:
    result = world.export("foreign")
    done = world.exportctl("verify", "--key", str(world.stranger.public), result["artifact_uri"])
    assert done.returncode == 1 and "foreign: " in done.stdout
    both = world.exportctl(
        "verify", "--key", str(world.stranger.public), "--key", str(world.key.public), result["artifact_uri"]
    )
    assert both.returncode == 0, both.stdout + both.stderr


def test_trusted_keys_from_the_environment_refuse_a_removed_signature(world: World) -> None:
    result = world.export("stripped")
    target = parse_s3_uri(result["signature_uri"])
    world.s3.delete_object(Bucket=target.bucket, Key=target.key)
    env = {**world.env, "EXPORT_TRUSTED_KEYS": str(world.key.public)}
    done = subprocess.run(
        [sys.executable, "-m", "worker.cli", "verify", result["artifact_uri"]],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 1 and "unsigned: " in done.stdout
    without = world.exportctl("verify", result["artifact_uri"])
    assert without.returncode == 0 and "not checked" in without.stdout


def test_extra_without_the_manifest_is_refused_with_keys(world: World) -> None:
    result = world.export("no-manifest")
    done = world.exportctl(
        "extra", "--no-manifest", "--key", str(world.key.public), result["artifact_uri"], "labels.txt"
    )
    assert done.returncode == 1 and "--no-manifest reads no signature" in done.stderr
