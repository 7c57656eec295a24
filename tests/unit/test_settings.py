"""Settings come from the environment, typed and checked."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from worker.settings import DEFAULT_ALLOWED_BUILDERS, Settings

pytestmark = pytest.mark.usefixtures("clean_env")


def test_defaults_are_sane() -> None:
    s = Settings()
    assert s.broker_url == "redis://localhost:6379/0"
    assert s.backend_url == s.broker_url
    assert s.allowed_builders == DEFAULT_ALLOWED_BUILDERS
    assert s.part_size is None  # sized to the archive
    assert s.fixed_in_flight is None  # tuned
    assert s.max_in_flight == 64  # the tuner's cap, what connection pools are sized to
    assert s.soft_time_limit < s.time_limit < s.visibility_timeout
    assert s.upload_strategy == "spool"
    assert s.conditional_publish is True


def test_environment_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://:secret@redis:6380/2")
    monkeypatch.setenv("CELERY_RESULT_BACKEND", "redis://redis:6380/3")
    monkeypatch.setenv("EXPORT_ALLOWED_BUILDERS", "acme.models, acme.vision ,")
    monkeypatch.setenv("EXPORT_PART_SIZE", "16MiB")
    monkeypatch.setenv("EXPORT_MAX_IN_FLIGHT", "6")
    monkeypatch.setenv("EXPORT_UPLOAD_STRATEGY", "fifo")
    monkeypatch.setenv("EXPORT_S3_CHECKSUM_MODE", "when_required")
    s = Settings()
    assert s.broker_url == "redis://:secret@redis:6380/2"
    assert s.backend_url == "redis://redis:6380/3"
    assert s.allowed_builders == ("acme.models", "acme.vision")
    assert s.part_size == 16 * 1024**2
    assert s.max_in_flight == s.fixed_in_flight == 6
    assert s.upload_strategy == "fifo"
    assert s.s3_checksum_mode == "when_required"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("EXPORT_PART_SIZE", "1MiB"),
        ("EXPORT_PART_SIZE", "lots"),
        ("EXPORT_MAX_IN_FLIGHT", "0"),
        ("EXPORT_UPLOAD_STRATEGY", "tape"),
        ("EXPORT_CHECKSUM_ALGORITHM", "MD5"),
        ("EXPORT_TIME_LIMIT", "5000"),
    ],
)
def test_bad_values_are_refused_with_the_setting_named(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    text = str(info.value)
    field = name.removeprefix("EXPORT_").lower()
    assert field in text.lower() or "EXPORT_TIME_LIMIT" in text


def test_visibility_timeout_must_exceed_hard_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_TIME_LIMIT", "100")
    monkeypatch.setenv("EXPORT_SOFT_TIME_LIMIT", "90")
    monkeypatch.setenv("EXPORT_VISIBILITY_TIMEOUT", "100")
    with pytest.raises(ValidationError, match="redelivers"):
        Settings()
    monkeypatch.setenv("EXPORT_VISIBILITY_TIMEOUT", "101")
    assert Settings().visibility_timeout == 101
