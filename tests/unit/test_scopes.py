"""Scopes compared on path segments (worker/scopes.py): properties over generated buckets and
keys (hypothesis), and the cases that string prefixes get wrong, pinned."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from worker.errors import ScopeError
from worker.scopes import UNSCOPED, allows, check_read, check_write, parse_location, parse_scopes
from worker.settings import DEFAULT_SCOPES, Settings

PROPERTY = settings(
    max_examples=200,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)

buckets = st.from_regex(r"[a-z0-9][a-z0-9-]{1,10}[a-z0-9]", fullmatch=True)
#: Segments a key may hold, including look-alikes of navigation (``...``, ``.x``) and case.
segments = st.from_regex(r"[A-Za-z0-9._-]{1,8}", fullmatch=True).filter(lambda s: s not in (".", ".."))
paths = st.lists(segments, min_size=0, max_size=4).map(tuple)


def uri(bucket: str, parts: tuple[str, ...]) -> str:
    return "/".join((f"s3://{bucket}", *parts))


@PROPERTY
@given(buckets, paths, paths)
def test_a_scope_covers_itself_and_everything_below_it(
    bucket: str, scope: tuple[str, ...], below: tuple[str, ...]
) -> None:
    assert allows([uri(bucket, scope)], uri(bucket, scope + below))


@PROPERTY
@given(buckets, paths, st.lists(segments, min_size=1, max_size=4).map(tuple))
def test_a_scope_never_covers_a_location_with_fewer_or_other_segments(
    bucket: str, location: tuple[str, ...], extra: tuple[str, ...]
) -> None:
    # The scope is longer than the location: it names something below it.
    assert not allows([uri(bucket, location + extra)], uri(bucket, location))


@PROPERTY
@given(buckets, st.lists(segments, min_size=1, max_size=3).map(tuple), segments, paths)
def test_a_longer_name_is_never_inside_a_shorter_one(
    bucket: str, scope: tuple[str, ...], suffix: str, below: tuple[str, ...]
) -> None:
    # s3://b/team never covers s3://b/teamx/..., s3://b/team-other/..., s3://b/team.bak/...
    longer = (*scope[:-1], scope[-1] + suffix)
    assert not allows([uri(bucket, scope)], uri(bucket, longer + below))


@PROPERTY
@given(buckets, buckets, paths, paths)
def test_buckets_compare_exactly(bucket: str, other: str, scope: tuple[str, ...], below: tuple[str, ...]) -> None:
    if other != bucket:
        assert not allows([uri(bucket, scope)], uri(other, scope + below))
    # A bucket whose name starts with the scope's bucket is another bucket.
    assert not allows([uri(bucket, ())], uri(bucket + "x", scope))


@PROPERTY
@given(buckets, st.lists(segments, min_size=1, max_size=3).map(tuple), paths)
def test_case_matters(bucket: str, scope: tuple[str, ...], below: tuple[str, ...]) -> None:
    swapped = tuple(s.swapcase() for s in scope)
    assert allows([uri(bucket, scope)], uri(bucket, swapped + below)) == (swapped == scope)


@PROPERTY
@given(buckets, paths, paths)
def test_one_trailing_slash_changes_nothing(bucket: str, scope: tuple[str, ...], below: tuple[str, ...]) -> None:
    target = uri(bucket, scope + below)
    assert allows([uri(bucket, scope) + "/"], target) == allows([uri(bucket, scope)], target) is True
    if scope + below:
        assert allows([uri(bucket, scope)], target + "/")
    assert parse_scopes([uri(bucket, scope) + "/"]) == (uri(bucket, scope),)


@PROPERTY
@given(buckets, paths, paths, st.sampled_from(["..", ".", ""]), paths)
def test_navigation_and_empty_segments_are_refused_wherever_they_stand(
    bucket: str, scope: tuple[str, ...], before: tuple[str, ...], bad: str, after: tuple[str, ...]
) -> None:
    location = uri(bucket, scope + before + (bad,) + after)
    if bad == "" and not after:
        return  # a single trailing "/": a prefix written as a folder, allowed
    with pytest.raises(ScopeError, match="segment"):
        allows([uri(bucket, scope)], location)
    with pytest.raises(ScopeError, match="segment"):
        allows([UNSCOPED], location)  # refused even unscoped: the key is not what it seems
    with pytest.raises(ValueError, match="segment"):
        parse_scopes([location])


@PROPERTY
@given(st.lists(st.tuples(buckets, paths), min_size=1, max_size=4), buckets, paths)
def test_a_list_allows_what_one_of_its_entries_allows(
    entries: list[tuple[str, tuple[str, ...]]], bucket: str, parts: tuple[str, ...]
) -> None:
    scopes = parse_scopes([uri(b, p) for b, p in entries])
    target = uri(bucket, parts)
    assert allows(scopes, target) == any(allows([uri(b, p)], target) for b, p in entries)


def test_the_string_prefix_mistakes_are_refused() -> None:
    scope = ["s3://shared/team"]
    assert allows(scope, "s3://shared/team")
    assert allows(scope, "s3://shared/team/models/w.pt")
    for outside in (
        "s3://shared/teamx/w.pt",
        "s3://shared/team-other/w.pt",
        "s3://shared/tea",
        "s3://shared",
        "s3://sharedx/team/w.pt",
        "s3://other/team/w.pt",
        "s3://shared/Team/w.pt",
    ):
        assert not allows(scope, outside), outside
    for tricky in ("s3://shared/team/../other/w.pt", "s3://shared/team/./w.pt", "s3://shared/team//w.pt"):
        with pytest.raises(ScopeError):
            allows(scope, tricky)


def test_refusals_name_the_field_and_the_rule_and_nothing_else() -> None:
    with pytest.raises(ScopeError) as read:
        check_read(["s3://mine"], "s3://other/x", "extra_files.labels.txt")
    assert str(read.value) == "extra_files.labels.txt: s3://other/x is outside EXPORT_READ_SCOPES"
    with pytest.raises(ScopeError) as write:
        check_write(["s3://mine/team"], "s3://mine/teamx", "destination")
    assert str(write.value) == "destination: s3://mine/teamx is outside EXPORT_WRITE_SCOPES"
    with pytest.raises(ScopeError, match=r"^weights: s3://mine/a/\.\./b has a '\.\.' segment"):
        check_read(["s3://mine"], "s3://mine/a/../b", "weights")


def test_unscoped_is_the_single_entry_star() -> None:
    assert parse_scopes(["*"]) == (UNSCOPED,)
    assert allows(["*"], "s3://anything/at/all")
    with pytest.raises(ValueError, match="only entry"):
        parse_scopes(["*", "s3://mine"])
    assert parse_scopes([]) == ()
    assert not allows([], "s3://mine/x"), "an empty list allows nothing"


def test_a_scope_that_is_not_an_s3_location_is_refused() -> None:
    for bad in ("mine", "http://mine/x", "s3://", "s3://a/x", "s3://mine/\x00"):
        with pytest.raises(ValueError):
            parse_scopes([bad])
    assert parse_location("s3://mine") == ("mine", ())


def test_the_defaults_are_the_demo_bucket_and_never_unscoped(default_scopes: None) -> None:
    s = Settings()
    assert s.read_scopes == s.write_scopes == DEFAULT_SCOPES == ("s3://export-demo",)
    assert not allows(s.read_scopes, "s3://another-team/w.pt")


def test_settings_read_canonical_scopes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_READ_SCOPES", " s3://a-team/models/, s3://shared/a-team ,s3://a-team/models")
    monkeypatch.setenv("EXPORT_WRITE_SCOPES", "s3://a-team/exports")
    s = Settings()
    assert s.read_scopes == ("s3://a-team/models", "s3://shared/a-team")
    assert s.write_scopes == ("s3://a-team/exports",)
    monkeypatch.setenv("EXPORT_WRITE_SCOPES", "s3://a-team/exports/../b-team")
    with pytest.raises(ValueError, match="segment"):
        Settings()
