"""ReadLimits: the caps of ranged reads, from EXPORT_READ_* variables or given."""

from __future__ import annotations

import pytest

from serializer.errors import SerializerError
from serializer.manifest.model import MAX_MANIFEST_BYTES
from serializer.s3.limits import (
    DEFAULT_MAX_EXTRA_BYTES,
    DEFAULT_MAX_MANIFEST_BYTES,
    DEFAULT_MAX_TAIL_BYTES,
    InvalidReadLimit,
    ReadLimits,
    env_name,
    parse_size,
    resolve_limits,
)
from worker.settings import Settings

MiB = 1024**2


def test_defaults_without_variables() -> None:
    limits = ReadLimits.from_env({})
    assert limits == ReadLimits()
    assert (limits.max_extra_bytes, limits.max_tail_bytes, limits.max_manifest_bytes) == (
        DEFAULT_MAX_EXTRA_BYTES,
        DEFAULT_MAX_TAIL_BYTES,
        DEFAULT_MAX_MANIFEST_BYTES,
    )


def test_the_manifest_cap_is_the_models_and_a_reader_takes_what_a_default_worker_writes() -> None:
    assert DEFAULT_MAX_MANIFEST_BYTES == MAX_MANIFEST_BYTES
    assert Settings().max_extra_file_bytes <= DEFAULT_MAX_EXTRA_BYTES


def test_variable_names() -> None:
    assert [env_name(f) for f in ("max_extra_bytes", "max_tail_bytes", "max_manifest_bytes")] == [
        "EXPORT_READ_MAX_EXTRA_BYTES",
        "EXPORT_READ_MAX_TAIL_BYTES",
        "EXPORT_READ_MAX_MANIFEST_BYTES",
    ]


def test_values_from_the_environment() -> None:
    limits = ReadLimits.from_env(
        {
            "EXPORT_READ_MAX_EXTRA_BYTES": "16MiB",
            "EXPORT_READ_MAX_TAIL_BYTES": "1048576",
            "EXPORT_READ_MAX_MANIFEST_BYTES": " 2 kib ",
            "EXPORT_READ_OTHER": "ignored",
        }
    )
    assert limits == ReadLimits(max_extra_bytes=16 * MiB, max_tail_bytes=MiB, max_manifest_bytes=2048)


def test_an_empty_variable_is_the_default() -> None:
    assert ReadLimits.from_env({"EXPORT_READ_MAX_EXTRA_BYTES": ""}) == ReadLimits()


@pytest.mark.parametrize(
    ("raw", "value"), [("1", 1), ("3GiB", 3 * 1024**3), ("2MB", 2_000_000), ("5 KiB", 5120), ("7b", 7)]
)
def test_sizes(raw: str, value: int) -> None:
    assert parse_size(raw, "X") == value


@pytest.mark.parametrize("raw", ["0", "-5", "abc", "12 parsecs", "1.5MiB", "0MiB", "MiB"])
@pytest.mark.parametrize("field", ["max_extra_bytes", "max_tail_bytes", "max_manifest_bytes"])
def test_an_invalid_variable_is_an_error_naming_it(raw: str, field: str) -> None:
    name = env_name(field)
    with pytest.raises(InvalidReadLimit) as info:
        ReadLimits.from_env({name: raw})
    assert name in str(info.value) and repr(raw) in str(info.value)
    assert isinstance(info.value, SerializerError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("value", [0, -1, True, 1.5, "10"])
def test_given_values_are_checked(value: object) -> None:
    with pytest.raises(InvalidReadLimit, match="max_tail_bytes must be a positive number of bytes"):
        ReadLimits(max_tail_bytes=value)  # type: ignore[arg-type]


def test_limits_are_frozen() -> None:
    limits = ReadLimits()
    with pytest.raises(AttributeError):
        limits.max_extra_bytes = 1  # type: ignore[misc]


def test_resolve_reads_the_environment_at_each_call(monkeypatch: pytest.MonkeyPatch) -> None:
    given = ReadLimits(max_extra_bytes=5)
    monkeypatch.setenv("EXPORT_READ_MAX_EXTRA_BYTES", "nope")
    assert resolve_limits(given) is given, "given limits need no environment"
    with pytest.raises(InvalidReadLimit, match="EXPORT_READ_MAX_EXTRA_BYTES"):
        resolve_limits(None)
    monkeypatch.setenv("EXPORT_READ_MAX_EXTRA_BYTES", "9")
    assert resolve_limits(None).max_extra_bytes == 9
