"""``exportctl verify`` in a fresh process against the moto server, on hostile archives
that call ``aten::from_file`` behind a hand-written manifest: it fails at the load step,
naming the operator, and the file the archive would write is never created.  A real export
of the bundled example verifies, in both formats.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from serializer.manifest.model import manifest_uri_for
from serializer.s3.client import make_s3_client
from tests.operator_archives import from_file_pt2, from_file_torchscript
from worker.export import run_export
from worker.settings import Settings
from worker.spec import parse_spec

SUFFIX = {"torchscript": ".pt", "pt2": ".pt2"}


@pytest.fixture(scope="module")
def client(moto_endpoint: str) -> Any:
    return make_s3_client(endpoint_url=moto_endpoint, max_pool_connections=4)


@pytest.fixture(scope="module")
def bucket(client: Any) -> str:
    name = f"ops-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def cli_env(moto_endpoint: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "EXPORT_", "AWS_ENDPOINT"))}
    env.update(AWS_ENDPOINT_URL_S3=moto_endpoint, COLUMNS="300")
    return env


def _export(client: Any, bucket: str, fmt: str) -> dict[str, Any]:
    spec = {
        "name": "tiny-classifier",
        "builder": "worker.examples:tiny_classifier",
        "example_inputs": [{"shape": [2, 16], "dtype": "float32"}],
        "destination": f"s3://{bucket}/{fmt}-{uuid.uuid4().hex[:8]}",
        "format": fmt,
    }
    return run_export(parse_spec(spec), settings=Settings(allowed_builders=("worker.examples",)), client=client)


def _verify(env: dict[str, str], uri: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "verify", uri],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )


def _replace_with(client: Any, artifact_uri: str, data: bytes, root: str) -> None:
    """Put ``data`` where the export was, and a manifest written by hand to describe it."""
    bucket, key = artifact_uri.removeprefix("s3://").split("/", 1)
    manifest_key = manifest_uri_for(artifact_uri).removeprefix("s3://").split("/", 1)[1]
    manifest = json.loads(client.get_object(Bucket=bucket, Key=manifest_key)["Body"].read())
    manifest["artifact"].update(size=len(data), sha256=hashlib.sha256(data).hexdigest(), archive_root=root, etag="")
    manifest["extra_files"] = []
    client.put_object(Bucket=bucket, Key=key, Body=data)
    client.put_object(Bucket=bucket, Key=manifest_key, Body=json.dumps(manifest, sort_keys=True).encode())


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_verify_passes_a_real_export(client: Any, bucket: str, cli_env: dict[str, str], fmt: str) -> None:
    result = _export(client, bucket, fmt)
    proc = _verify(cli_env, result["artifact_uri"])
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_verify_refuses_an_archive_that_calls_from_file_and_nothing_is_written(
    client: Any, bucket: str, cli_env: dict[str, str], fmt: str, tmp_path: Path
) -> None:
    site = tmp_path / "site-packages"
    site.mkdir()
    target = site / "evil.pth"
    build = from_file_torchscript if fmt == "torchscript" else from_file_pt2
    archive = build(tmp_path / f"hostile{SUFFIX[fmt]}", target)
    result = _export(client, bucket, fmt)
    _replace_with(client, result["artifact_uri"], archive.read_bytes(), root=archive.stem)
    proc = _verify(cli_env, result["artifact_uri"])
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "refused" in out and "aten::from_file (file access)" in out, out
    assert "checksum" in out, "it failed before the download: the manifest was not accepted"
    assert not target.exists(), "the archive wrote its file"
    assert list(site.iterdir()) == []
