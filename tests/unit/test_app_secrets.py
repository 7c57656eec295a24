"""Secrets stay out of what the app shows: its Settings live outside ``app.conf`` (which
``celery inspect conf`` and Flower show), their repr and validation errors mask the broker
password, and message signing is all three settings or none."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from celery import Celery

from worker.celery import create_app, settings_of, use_message_signing
from worker.settings import PASSWORD_MASK, Settings, masked_url

PASSWORD = "hunter2-broker-secret"
BROKER = f"redis://:{PASSWORD}@redis:6379/0"
BACKEND = f"rediss://worker:{PASSWORD}@redis:6380/1"


def settings_with(**env: str) -> Settings:
    with mock.patch.dict(os.environ, env, clear=True):
        return Settings()


def walk(value: Any) -> Iterator[Any]:
    """``value`` and everything inside its dicts, lists and tuples."""
    stack = [value]
    while stack:
        item = stack.pop()
        yield item
        if isinstance(item, dict):
            stack.extend([*item.keys(), *item.values()])
        elif isinstance(item, list | tuple | set):
            stack.extend(item)


def test_settings_are_kept_outside_app_conf() -> None:
    settings = settings_with(CELERY_BROKER_URL=BROKER, CELERY_RESULT_BACKEND=BACKEND)
    app = create_app(settings)
    assert settings_of(app) is settings
    conf = dict(app.conf.table(with_defaults=True, censored=False))
    assert not [v for v in walk(conf) if isinstance(v, Settings)], "a Settings object sits in app.conf"
    shown = repr(app.conf.table(with_defaults=True))  # what `celery inspect conf` answers
    assert PASSWORD not in shown
    assert "broker_url" in shown and "result_backend" in shown


def test_settings_of_refuses_an_app_it_did_not_make() -> None:
    with pytest.raises(TypeError, match="create_app"):
        settings_of(Celery("other", set_as_current=False))


def test_repr_masks_the_passwords_of_the_urls() -> None:
    settings = settings_with(CELERY_BROKER_URL=BROKER, CELERY_RESULT_BACKEND=BACKEND)
    for text in (repr(settings), str(settings)):
        assert PASSWORD not in text
        assert f"redis://:{PASSWORD_MASK}@redis:6379/0" in text
        assert f"rediss://worker:{PASSWORD_MASK}@redis:6380/1" in text
    assert settings.broker_url == BROKER, "the URL itself is kept whole: the app connects with it"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://redis:6379/0", "redis://redis:6379/0"),
        ("redis://:pw@h:1/0", f"redis://:{PASSWORD_MASK}@h:1/0"),
        ("redis://user:pw@h/0?ssl_cert_reqs=required", f"redis://user:{PASSWORD_MASK}@h/0?ssl_cert_reqs=required"),
        ("redis://user@h/0", "redis://user@h/0"),
        ("redis://:p@ss@h:1/0", f"redis://:{PASSWORD_MASK}@h:1/0"),
    ],
)
def test_masked_url(url: str, shown: str) -> None:
    assert masked_url(url) == shown


def test_a_refused_setting_does_not_echo_the_environment() -> None:
    with pytest.raises(ValueError, match="EXPORT_TIME_LIMIT") as refused:
        settings_with(CELERY_BROKER_URL="redis://:pw9@r/0", EXPORT_TIME_LIMIT="5000")
    assert "pw9" not in str(refused.value)


@pytest.mark.parametrize("left_out", ["KEY", "CERT", "CERT_STORE"])
def test_message_signing_needs_all_three_settings(left_out: str, tmp_path: Path) -> None:
    env = {f"EXPORT_MESSAGE_SIGNING_{name}": str(tmp_path / name) for name in ("KEY", "CERT", "CERT_STORE")}
    del env[f"EXPORT_MESSAGE_SIGNING_{left_out}"]
    with pytest.raises(ValueError, match="all of EXPORT_MESSAGE_SIGNING_KEY"):
        settings_with(**env)


def test_message_signing_is_off_by_default() -> None:
    settings = settings_with()
    assert settings.message_signing_key is None
    conf = create_app(settings).conf
    assert conf.task_serializer == "json" and conf.accept_content == ["json"]


def test_message_signing_names_a_missing_file(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "cert.pem").write_text("not read")
    settings = settings_with(
        EXPORT_MESSAGE_SIGNING_KEY=str(tmp_path / "missing.key"),
        EXPORT_MESSAGE_SIGNING_CERT=str(tmp_path / "cert.pem"),
        EXPORT_MESSAGE_SIGNING_CERT_STORE=str(tmp_path / "store"),
    )
    with pytest.raises(ValueError, match=r"EXPORT_MESSAGE_SIGNING_KEY=.*missing\.key: no such file"):
        use_message_signing(Celery("signing", set_as_current=False), settings)
