"""The README's first command, run as a user would: ``exportctl demo`` in a fresh process.

It starts its own redis-server, moto S3 server and Celery worker, submits the bundled
example, waits for it, and loads the artifact back."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _exportctl(*args: str, env: dict[str, str] | None = None, timeout: float = 180) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


@pytest.mark.parametrize("strategy", ["spool", "fifo"])
def test_demo_exports_verifies_and_loads_back(tmp_path: Path, strategy: str) -> None:
    # As on a fresh machine: no broker, no S3 endpoint, no settings; the demo starts its own.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT", "EXPORT_", "CELERY_"))}
    env["EXPORT_UPLOAD_STRATEGY"] = strategy
    env["EXPORT_SPOOL_DIR"] = str(tmp_path)
    proc = _exportctl("demo", env=env)
    assert proc.returncode == 0, proc.stderr
    # The last JSON document on stdout is the consumer's view of the loaded artifact.
    consumer = json.loads(proc.stdout[proc.stdout.rindex("\n{\n") + 1 :])
    assert consumer["verification_passed"] is True
    assert consumer["logits_shape"] == [2, 4]
    assert set(consumer["predicted"]) <= {"cat", "dog", "bird", "fish"}
    assert consumer["extra_files"] == {"labels.txt": 18, "README.md": 24}
    assert consumer["loaded_from"].startswith("s3://export-demo/demo/tiny-classifier/")
    assert '"schema_version": 2' in proc.stdout
    assert '"sha256"' in proc.stdout
    assert list(tmp_path.iterdir()) == [], "spool files or pipes were left behind"


def test_demo_in_pt2_format_exports_verifies_and_loads_back(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_ENDPOINT", "EXPORT_", "CELERY_"))}
    env["EXPORT_SPOOL_DIR"] = str(tmp_path)
    proc = _exportctl("demo", "--format", "pt2", env=env)
    assert proc.returncode == 0, proc.stderr
    consumer = json.loads(proc.stdout[proc.stdout.rindex("\n{\n") + 1 :])
    assert consumer["format"] == "pt2"
    assert consumer["loaded_from"].endswith("/model.pt2")
    assert consumer["verification_passed"] is True
    assert consumer["logits_shape"] == [2, 4]
    assert consumer["extra_files"] == {"labels.txt": 18, "README.md": 24}
    assert '"schema_version": 3' in proc.stdout
    assert '"archive_version": 0' in proc.stdout
    assert list(tmp_path.iterdir()) == [], "spool files were left behind"


def test_show_of_a_missing_manifest_is_one_clear_line(moto_process_endpoint: str) -> None:
    env = dict(os.environ, AWS_ENDPOINT_URL_S3=moto_process_endpoint)
    proc = _exportctl("show", "s3://no-such-bucket-here/x/model.pt", env=env, timeout=60)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "error" in proc.stderr
