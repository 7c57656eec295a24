"""The sweeper's schedule (beat sweeps only where prefixes are set, the sweep age above the
hard time limit), what a sweep message may ask for, and the key layout it recognises."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from serializer.s3.uri import parse_s3_uri
from worker.celery import beat_schedule
from worker.errors import SweepRefused
from worker.keys import LayoutKey, export_keys, is_upload_of, layout_of, staging_uri
from worker.settings import Settings
from worker.spec import parse_spec
from worker.sweeper import sweep_scope


def test_beat_sweeps_only_where_prefixes_are_set() -> None:
    assert "sweep-stale-uploads" not in beat_schedule(Settings())
    entry = beat_schedule(Settings(sweep_prefixes="s3://a/models,s3://b/x", sweep_every=600))["sweep-stale-uploads"]
    assert entry["task"] == "worker.tasks.sweep_stale"
    assert entry["schedule"] == timedelta(seconds=600)


def test_sweep_after_must_exceed_the_hard_time_limit() -> None:
    with pytest.raises(ValueError, match="EXPORT_SWEEP_AFTER > EXPORT_TIME_LIMIT"):
        Settings(sweep_after=100, time_limit=200, soft_time_limit=100, visibility_timeout=300)
    assert Settings().stale_after == Settings().visibility_timeout


# -- what a sweep message may ask for (worker.sweeper.sweep_scope) --------------------------------

CONFIGURED = ("s3://models/exports", "s3://shared/team-a/models")
AFTER = 7200


@pytest.mark.parametrize(
    "asked",
    [
        ["s3://models/exports"],
        ["s3://models/exports/"],
        ["s3://models/exports/resnet"],
        ["s3://shared/team-a/models/x/y", "s3://models/exports/a"],
        [],
    ],
)
def test_a_message_may_narrow_the_configured_prefixes(asked: list[str]) -> None:
    assert sweep_scope(CONFIGURED, AFTER, asked, None) == (asked, float(AFTER))


def test_without_arguments_the_configured_prefixes_and_age_apply() -> None:
    assert sweep_scope(CONFIGURED, AFTER) == (list(CONFIGURED), float(AFTER))
    assert sweep_scope((), AFTER) == ([], float(AFTER))


@pytest.mark.parametrize(
    ("asked", "reason"),
    [
        (["s3://other-team/exports"], "outside EXPORT_SWEEP_PREFIXES"),
        (["s3://models"], "outside EXPORT_SWEEP_PREFIXES"),  # the whole bucket: wider
        (["s3://models/export"], "outside"),  # a prefix of the configured name
        (["s3://models/exports-old"], "outside"),  # a longer name
        (["s3://shared/team-a"], "outside"),
        (["s3://shared/team-b/models"], "outside"),
        (["s3://models/exports/../secrets"], "'..' segment"),
        (["s3://models/exports//x"], "empty segment"),
        (["s3://models/exports", "s3://other-team/exports"], "other-team"),
        (["/etc"], "not an s3:// URI"),
        ([42], "not an s3://bucket/prefix URI"),
        ("s3://models/exports", "a list of"),
        ({"s3://models/exports": 1}, "a list of"),
    ],
)
def test_a_message_may_not_widen_the_prefixes(asked: Any, reason: str) -> None:
    with pytest.raises(SweepRefused, match=reason):
        sweep_scope(CONFIGURED, AFTER, asked, None)


def test_nothing_configured_means_no_prefix_may_be_asked_for() -> None:
    with pytest.raises(SweepRefused, match="outside EXPORT_SWEEP_PREFIXES"):
        sweep_scope((), AFTER, ["s3://models/exports"], None)


def test_a_message_may_lengthen_the_age() -> None:
    assert sweep_scope(CONFIGURED, AFTER, None, AFTER) == (list(CONFIGURED), float(AFTER))
    assert sweep_scope(CONFIGURED, AFTER, None, 10 * AFTER) == (list(CONFIGURED), float(10 * AFTER))


@pytest.mark.parametrize(
    ("older_than", "reason"),
    [
        (0.0, "under EXPORT_SWEEP_AFTER"),
        (AFTER - 0.5, "under EXPORT_SWEEP_AFTER"),
        (-1, "under EXPORT_SWEEP_AFTER"),
        (float("nan"), "a number of seconds"),
        (float("-inf"), "a number of seconds"),
        (True, "a number of seconds"),
        ("9999", "a number of seconds"),
    ],
)
def test_a_message_may_not_shorten_the_age(older_than: Any, reason: str) -> None:
    with pytest.raises(SweepRefused, match=reason):
        sweep_scope(CONFIGURED, AFTER, None, older_than)


# -- the layout the sweeper recognises (worker.keys.layout_of) ------------------------------------

NAMES = st.from_regex(r"[A-Za-z0-9._-]{1,128}", fullmatch=True)
VERSIONS = st.from_regex(
    r"[0-9]{1,2}\.[0-9]{1,2}\.[0-9]{1,2}((a|rc)[0-9])?(\+(cpu|cu124|git[0-9a-f]{7}))?", fullmatch=True
)


@given(name=NAMES, version=VERSIONS, fmt=st.sampled_from(["torchscript", "pt2"]))
def test_every_key_an_export_writes_is_in_the_layout(name: str, version: str, fmt: str) -> None:
    assume(name not in (".", ".."))  # refused by the spec
    spec = parse_spec(
        {
            "name": name,
            "builder": "worker.examples:tiny_classifier",
            "destination": "s3://models/exports/team",
            "format": fmt,
            "example_inputs": [{"shape": [1, 8], "dtype": "float32"}],
        }
    )
    artifact = parse_s3_uri(export_keys(spec, version).artifact).key
    assert layout_of(artifact) == LayoutKey(artifact, staging=False)
    staging = parse_s3_uri(staging_uri(export_keys(spec, version))).key
    assert layout_of(staging) == LayoutKey(artifact, staging=True)
    assert is_upload_of(artifact, staging) and is_upload_of(artifact, artifact)
    assert not is_upload_of(artifact, artifact + ".bak")


@given(key=st.text(max_size=80))
def test_text_without_the_layouts_shape_is_never_in_it(key: str) -> None:
    # Four segments at the end, the second 16 lowercase hex digits, the third torch-{version}.
    parts = key.split("/")
    shaped = (
        len(parts) >= 4
        and len(parts[-3]) == 16
        and set(parts[-3]) <= set("0123456789abcdef")
        and parts[-2].startswith("torch-")
        and parts[-1].startswith(("model.pt", "model.pt2"))
    )
    if not shaped:
        assert layout_of(key) is None
