"""``exportctl ls``, ``show``, ``verify`` and ``extra`` run as a user would, in a fresh
process against the moto server, on artifacts exported in the test process."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from serializer.manifest.model import MANIFEST_SUFFIX
from serializer.manifest.store import read_manifest
from serializer.s3.client import make_s3_client
from worker.cli import list_manifests
from worker.export import run_export
from worker.settings import Settings
from worker.spec import parse_spec

LABELS = "cat\ndog\nbird\nfish\n"
#: Every byte value, and bytes that are not UTF-8: stdout must carry them untouched.
BLOB = bytes(range(256)) + b"\xff\xfe\r\n\x00"


@pytest.fixture(scope="module")
def client(moto_endpoint: str) -> Any:
    return make_s3_client(endpoint_url=moto_endpoint, max_pool_connections=16)


def export(client: Any, bucket: str, prefix: str) -> dict[str, Any]:
    spec = {
        "name": "tiny-classifier",
        "builder": "worker.examples:tiny_classifier",
        "example_inputs": [{"shape": [2, 16], "dtype": "float32"}],
        "extra_files": {"labels.txt": LABELS, "blob.bin": {"base64": base64.b64encode(BLOB).decode()}},
        "destination": f"s3://{bucket}/{prefix}",
    }
    return run_export(parse_spec(spec), settings=Settings(allowed_builders=("worker.examples",)), client=client)


@pytest.fixture(scope="module")
def bucket(client: Any) -> str:
    name = f"cli-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def exported(client: Any, bucket: str) -> dict[str, Any]:
    return export(client, bucket, "models")


@pytest.fixture(scope="module")
def cli_env(moto_endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "EXPORT_", "AWS_ENDPOINT"))}
    env.update(AWS_ENDPOINT_URL_S3=moto_endpoint, COLUMNS="300")
    return env


def exportctl(env: dict[str, str], *args: str, text: bool = True) -> subprocess.CompletedProcess[Any]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], capture_output=True, text=text, env=env, timeout=120, check=False
    )


def assert_one_error_line(proc: subprocess.CompletedProcess[Any]) -> str:
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ")
    return str(lines[0])


# -- ls --------------------------------------------------------------------------------------


def test_ls_shows_the_export(cli_env: dict[str, str], bucket: str, exported: dict[str, Any]) -> None:
    proc = exportctl(cli_env, "ls", f"s3://{bucket}/models")
    assert proc.returncode == 0, proc.stderr
    assert "tiny-classifier" in proc.stdout
    assert exported["artifact_uri"] in proc.stdout
    assert "1 exports under" in proc.stderr


def test_ls_json_is_one_object_per_export(
    client: Any, cli_env: dict[str, str], bucket: str, exported: dict[str, Any]
) -> None:
    proc = exportctl(cli_env, "ls", "--json", f"s3://{bucket}/models")
    assert proc.returncode == 0, proc.stderr
    (row,) = [json.loads(line) for line in proc.stdout.splitlines()]
    assert row["artifact_uri"] == exported["artifact_uri"]
    assert row["size"] == exported["size"]
    assert row["torch"] == read_manifest(client, exported["manifest_uri"]).producer.torch
    assert row["verified"] is True
    assert row["name"] == "tiny-classifier"


def test_ls_of_an_empty_prefix(cli_env: dict[str, str], bucket: str) -> None:
    proc = exportctl(cli_env, "ls", "--json", f"s3://{bucket}/nothing-here")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""


@pytest.fixture(scope="module")
def crowded_prefix(client: Any, bucket: str, exported: dict[str, Any]) -> Iterator[tuple[str, list[str]]]:
    """Over 1000 objects (more than one listing page) under a prefix, two of them manifests."""
    prefix = "crowded"
    body = read_manifest(client, exported["manifest_uri"]).to_json()
    manifests = [f"{prefix}/a/model{MANIFEST_SUFFIX}", f"{prefix}/zz/model{MANIFEST_SUFFIX}"]

    def put(i: int) -> None:
        client.put_object(Bucket=bucket, Key=f"{prefix}/junk/{i:04d}.json", Body=b"{}")

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(1005)))
    for key in manifests:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    yield prefix, [f"s3://{bucket}/{k}" for k in manifests]


def test_list_manifests_pages_through_the_listing(client: Any, bucket: str, crowded_prefix: Any) -> None:
    prefix, manifests = crowded_prefix
    pages: list[int] = []
    client.meta.events.register("after-call.s3.ListObjectsV2", lambda parsed, **_: pages.append(parsed["KeyCount"]))
    assert sorted(list_manifests(client, f"s3://{bucket}/{prefix}")) == manifests
    assert len(pages) >= 2, "the listing fit one page: nothing was paged"
    assert sum(pages) == 1007


def test_ls_json_pages_too(cli_env: dict[str, str], bucket: str, crowded_prefix: Any) -> None:
    prefix, _ = crowded_prefix
    proc = exportctl(cli_env, "ls", "--json", f"s3://{bucket}/{prefix}")
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout.splitlines()) == 2


# -- show ------------------------------------------------------------------------------------


def test_show_json_prints_the_canonical_manifest(
    client: Any, cli_env: dict[str, str], exported: dict[str, Any]
) -> None:
    canonical = read_manifest(client, exported["manifest_uri"]).to_json().decode()
    for uri in (exported["artifact_uri"], exported["manifest_uri"]):
        proc = exportctl(cli_env, "show", uri, "--json")
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout == canonical + "\n"


# -- verify ----------------------------------------------------------------------------------


def test_verify_prints_every_step(cli_env: dict[str, str], exported: dict[str, Any]) -> None:
    proc = exportctl(cli_env, "verify", exported["artifact_uri"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    for step in ("manifest", "signature", "compatibility", "checksum", "load", "extra files", "self-check"):
        assert any(line.split()[:1] == ["ok"] and f" {step} " in line for line in lines), (step, proc.stdout)
    assert lines[-1] == f"verified: {exported['artifact_uri']}"
    assert "Traceback" not in proc.stderr


def test_verify_of_a_corrupted_artifact_fails_at_checksum(client: Any, cli_env: dict[str, str], bucket: str) -> None:
    result = export(client, bucket, "corrupt")
    key = result["artifact_uri"].split("/", 3)[3]
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[len(data) // 3] ^= 0x04
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))
    proc = exportctl(cli_env, "verify", result["artifact_uri"])
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert any(line.startswith("FAIL checksum") and "sha256" in line for line in proc.stdout.splitlines()), proc.stdout
    assert f"NOT verified: {result['artifact_uri']}" in proc.stdout


def test_verify_of_a_missing_artifact_fails_at_manifest(cli_env: dict[str, str], bucket: str) -> None:
    proc = exportctl(cli_env, "verify", f"s3://{bucket}/none/model.pt")
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert proc.stdout.splitlines()[0].startswith("FAIL manifest")


# -- extra -----------------------------------------------------------------------------------


@pytest.mark.parametrize("via", ["manifest", "zip"])
@pytest.mark.parametrize(("name", "expected"), [("labels.txt", LABELS.encode()), ("blob.bin", BLOB)])
def test_extra_prints_the_exact_bytes(
    cli_env: dict[str, str], exported: dict[str, Any], via: str, name: str, expected: bytes
) -> None:
    flags = ["--no-manifest"] if via == "zip" else []
    proc = exportctl(cli_env, "extra", exported["artifact_uri"], name, *flags, text=False)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == expected


@pytest.mark.parametrize("via", ["manifest", "zip"])
def test_extra_failures_are_one_line(cli_env: dict[str, str], bucket: str, exported: dict[str, Any], via: str) -> None:
    flags = ["--no-manifest"] if via == "zip" else []
    missing_name = assert_one_error_line(exportctl(cli_env, "extra", exported["artifact_uri"], "nope.txt", *flags))
    assert "nope.txt" in missing_name
    if via == "manifest":
        assert "labels.txt" in missing_name, "the names it has are listed"
    missing_object = assert_one_error_line(exportctl(cli_env, "extra", f"s3://{bucket}/gone/model.pt", "x", *flags))
    assert "NoSuchKey" in missing_object or "no manifest" in missing_object
    bad_uri = assert_one_error_line(exportctl(cli_env, "extra", "not-a-uri", "labels.txt", *flags))
    assert "not an s3:// URI" in bad_uri


def test_a_prefix_names_a_folder(client: Any, bucket: str, exported: dict[str, Any]) -> None:
    from worker.cli import list_manifests

    export(client, bucket, "models2")
    assert list(list_manifests(client, f"s3://{bucket}/models")) == list(
        list_manifests(client, f"s3://{bucket}/models/")
    )
    listed = list(list_manifests(client, f"s3://{bucket}/models"))
    assert listed and all("/models/" in uri for uri in listed)
    assert any("/models2/" in uri for uri in list_manifests(client, f"s3://{bucket}/"))
