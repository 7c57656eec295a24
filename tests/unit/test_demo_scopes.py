"""``exportctl demo --bucket NAME`` scopes its own worker to ``NAME`` unless the user set scopes."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.cli.demo import _demo_services
from worker.cli.parser import build_parser
from worker.settings import DEMO_BUCKET


@pytest.fixture()
def configured(monkeypatch: pytest.MonkeyPatch, default_scopes: None) -> None:
    # Broker and endpoint given: the demo starts nothing of its own.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:1")


def test_the_demo_scopes_its_worker_to_its_bucket(configured: None, tmp_path: Path) -> None:
    with _demo_services(str(tmp_path), "my-demo-bucket") as env:
        assert env["EXPORT_READ_SCOPES"] == env["EXPORT_WRITE_SCOPES"] == "s3://my-demo-bucket"
    assert build_parser().parse_args(["demo"]).bucket == DEMO_BUCKET


def test_scopes_the_user_set_are_kept(configured: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_READ_SCOPES", "s3://mine/models")
    with _demo_services(str(tmp_path), "my-demo-bucket") as env:
        assert env["EXPORT_READ_SCOPES"] == "s3://mine/models"
        assert env["EXPORT_WRITE_SCOPES"] == "s3://my-demo-bucket"
