"""Selections of a bulk re-export (worker/bulk/) that need no store: checking the source,
recently seen targets, and report locations."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fixtures import settings
from worker import bulk
from worker.bulk import RecentTargets, check_source, is_catalog
from worker.errors import SpecError

pytestmark = pytest.mark.usefixtures("clean_env")


# -- check_source ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("s3://bkt/models", "s3://bkt/models"),
        ("s3://bkt/models/", "s3://bkt/models"),
        ("s3://bkt/team/models//", "s3://bkt/team/models"),
        ("s3://bkt", "s3://bkt"),
        ("s3://bkt/", "s3://bkt"),
    ],
)
def test_prefix_is_accepted_without_trailing_slash(source: str, expected: str) -> None:
    assert check_source(source) == expected


@pytest.mark.parametrize(
    "source",
    [
        "specs.jsonl",
        "/data/catalogs/specs.ndjson",
        "catalog.yaml",
        "catalog.yml",
        "CATALOG.YML",
        "s3://bkt/catalogs/specs.jsonl",
        "s3://bkt/catalogs/specs.ndjson",
        "s3://bkt/catalogs/specs.yaml",
        "s3://bkt/specs.yml",
    ],
)
def test_catalogs_on_disk_or_s3_are_accepted_as_given(source: str) -> None:
    assert check_source(source) == source


@pytest.mark.parametrize(
    "source",
    ["models/", "bkt/models", "specs.json", "/data/specs.txt", "specs.jsonl.bak", "http://bkt/models", ""],
)
def test_anything_else_is_refused_naming_it(source: str) -> None:
    with pytest.raises(SpecError) as info:
        check_source(source)
    assert repr(source) in str(info.value)
    assert ".jsonl" in str(info.value) and "s3://" in str(info.value)


@pytest.mark.parametrize("source", ["s3://x/models", "s3://bkt..x/specs.jsonl", "s3://-bkt/specs.yaml", "s3://"])
def test_bad_s3_selections_are_refused(source: str) -> None:
    with pytest.raises(SpecError, match="bad bucket name") as info:
        check_source(source)
    assert repr(source) in str(info.value)


@pytest.mark.parametrize("source", ["s3://bkt1/exports.yaml/", "s3://bkt1/a/specs.jsonl//"])
def test_a_trailing_slash_makes_a_prefix_even_when_named_like_a_catalog(source: str) -> None:
    assert not is_catalog(check_source(source))
    assert check_source(source).endswith("/")


def test_recent_targets_forget_the_least_recently_seen() -> None:
    recent = RecentTargets(size=2)
    assert recent.add("a") and recent.add("b")
    assert not recent.add("a"), "a is remembered (and now the most recent)"
    assert recent.add("c"), "c is new; b, the least recently seen, is forgotten"
    assert not recent.add("a")
    assert recent.add("b"), "b was forgotten"
    assert not recent.add("b")
    assert recent.add("c"), "c was forgotten when b came back"


def test_recent_targets_default_size() -> None:
    recent = RecentTargets()
    for i in range(bulk.DRY_RUN_RECENT_TARGETS):
        assert recent.add(f"t{i}")
    assert not recent.add("t0")
    assert recent.add("one more")
    assert recent.add("t1"), "the oldest is forgotten beyond the size"


# -- report_uri_for ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("s3://bkt/models", "s3://bkt/models/_reexport/run-1.json"),
        ("s3://bkt/models/", "s3://bkt/models/_reexport/run-1.json"),
        ("s3://bkt", "s3://bkt/_reexport/run-1.json"),
        ("s3://bkt/team/catalogs/nightly.jsonl", "s3://bkt/team/catalogs/_reexport/run-1.json"),
        ("s3://bkt/nightly.yaml", "s3://bkt/_reexport/run-1.json"),
    ],
)
def test_report_goes_under_the_selection(source: str, expected: str) -> None:
    assert bulk.report_uri_for(source, "run-1", settings()) == expected


def test_report_of_a_catalog_on_disk_needs_a_location(tmp_path: Path) -> None:
    source = str(tmp_path / "nightly.jsonl")
    with pytest.raises(SpecError, match="EXPORT_REPORT_PREFIX") as info:
        bulk.report_uri_for(source, "run-1", settings())
    assert source in str(info.value)
    assert bulk.report_uri_for(source, "run-1", settings(report_prefix="s3://rep/x/")) == "s3://rep/x/run-1.json"
    assert bulk.report_uri_for(source, "run-1", settings(), report_to="s3://rep/y") == "s3://rep/y/run-1.json"


@pytest.mark.parametrize("source", ["s3://bkt/models", "s3://bkt/catalogs/nightly.jsonl", "nightly.yaml"])
def test_report_prefix_setting_wins_and_report_to_wins_over_it(source: str) -> None:
    configured = settings(report_prefix="s3://reports/bulk")
    assert bulk.report_uri_for(source, "r2", configured) == "s3://reports/bulk/r2.json"
    assert bulk.report_uri_for(source, "r2", configured, report_to="s3://elsewhere/") == "s3://elsewhere/r2.json"
