"""Fixtures of the unit tests."""

from __future__ import annotations

import os

import pytest


@pytest.fixture()
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No EXPORT_ / CELERY_ setting from the caller's shell (a report prefix, an allow-list)."""
    for name in list(os.environ):
        if name.startswith(("EXPORT_", "CELERY_")):
            monkeypatch.delenv(name)
