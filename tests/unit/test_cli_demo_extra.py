"""``exportctl demo`` without the ``demo`` extra (moto): one line saying how to get it, and
nothing started."""

from __future__ import annotations

import importlib.util
from typing import Any

import pytest

from worker.cli import demo, main


def test_demo_without_moto_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    find_spec = importlib.util.find_spec

    def without_moto(name: str, *args: Any, **kwargs: Any) -> Any:
        return None if name == "moto" else find_spec(name, *args, **kwargs)

    def must_not_start(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("a service was started before the check")

    monkeypatch.setattr(importlib.util, "find_spec", without_moto)
    for name in ("redis_server", "moto_server", "celery_worker"):
        monkeypatch.setattr(demo, name, must_not_start)
    for name in ("AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL", "CELERY_BROKER_URL"):
        monkeypatch.delenv(name, raising=False)

    assert main(["demo"]) == 1
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1, err
    assert "pip install 'export-worker[demo]'" in err


def test_demo_with_its_own_s3_endpoint_needs_no_moto(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a, **k: None)
    demo.check_demo_extra({"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9000"})
