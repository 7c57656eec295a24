"""Selections of a bulk re-export (worker/bulk/) against real exports in in-process moto:
reading prefixes and catalogs, deciding each candidate under a policy, the streamed plan,
dry runs."""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.manifest.model import MANIFEST_SUFFIX
from serializer.manifest.store import read_manifest
from serializer.s3.client import make_s3_client
from serializer.s3.uri import parse_s3_uri
from serializer.torchscript.save import produced_format_version
from tests.conftest import object_keys, open_uploads
from tests.fixtures import settings
from tests.functional.store import export, get_json, put, spec_data
from worker import bulk
from worker.bulk import Candidate, Planner, iter_candidates, plan
from worker.errors import SpecError
from worker.keys import export_keys
from worker.spec import ExportSpec, parse_spec

TORCH = torch.__version__
OLD_TORCH = "2.12.0"
NEVER = "tests.never_import"
#: Objects under the crowded prefix that are not manifests, and keys per listing page there.
JUNK_OBJECTS = 25
PAGE_SIZE = 10


pytestmark = pytest.mark.usefixtures("clean_env")


def delete(client: Any, uri: str) -> None:
    target = parse_s3_uri(uri)
    client.delete_object(Bucket=target.bucket, Key=target.key)


def jsonl(*rows: Any) -> str:
    return "".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows)


# -- iter_candidates: a prefix of manifests ----------------------------------------------------


@pytest.fixture(scope="module")
def crowded(in_process_s3: None) -> Iterator[tuple[str, ExportSpec, list[str]]]:
    """A bucket whose ``models/`` holds several listing pages of objects (see
    :func:`small_pages`), three of them manifests on different pages (an export's, and two
    copies of it at keys its spec does not map to), next to ``models2/``,
    ``models.manifest.json`` and a ``.manifest.json.bak``."""
    client = make_s3_client(max_pool_connections=8)
    name = f"crowd-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    spec, result = export(client, name)
    body = read_manifest(client, result["manifest_uri"]).to_json()

    def put_junk(i: int) -> None:
        client.put_object(Bucket=name, Key=f"models/junk/{i:04d}.json", Body=b"{}")

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(put_junk, range(JUNK_OBJECTS)))
    first, last = f"s3://{name}/models/a/model{MANIFEST_SUFFIX}", f"s3://{name}/models/zz/model{MANIFEST_SUFFIX}"
    for uri in (first, last, f"s3://{name}/models2/x/model{MANIFEST_SUFFIX}", f"s3://{name}/models{MANIFEST_SUFFIX}"):
        put(client, uri, body)
    put(client, f"s3://{name}/models/zz/model.manifest.json.bak", body)
    yield name, spec, [first, result["manifest_uri"], last]


def small_pages(client: Any) -> list[int]:
    """Make the store answer each listing with at most PAGE_SIZE keys (the paging is the
    same as with S3's 1000; the CLI's integration tests list 1,005 objects); returns the
    key count of each page, as they are read."""
    pages: list[int] = []

    def limit(params: dict[str, Any], **_: Any) -> None:
        params["MaxKeys"] = PAGE_SIZE

    client.meta.events.register("before-parameter-build.s3.ListObjectsV2", limit)
    client.meta.events.register("after-call.s3.ListObjectsV2", lambda parsed, **_: pages.append(parsed["KeyCount"]))
    return pages


def test_prefix_pages_through_the_listing_and_keeps_only_manifests(s3: Any, crowded: Any) -> None:
    name, spec, manifests = crowded
    pages = small_pages(s3)
    candidates = list(iter_candidates(s3, f"s3://{name}/models"))
    assert len(pages) >= 3, "the listing fit one page: nothing was paged"
    assert max(pages) == PAGE_SIZE
    assert sum(pages) == JUNK_OBJECTS + 5, "models/ only: not models2/ nor models.manifest.json"
    assert [c.source for c in candidates] == manifests
    assert [c.manifest_uri for c in candidates] == manifests
    copy_a, real, copy_zz = candidates
    assert real.error is None and real.spec == spec
    assert real.manifest is not None and real.manifest.spec_hash == spec.spec_hash
    for copy in (copy_a, copy_zz):
        # A manifest is a candidate only at the keys its spec maps to.
        assert copy.spec is None and copy.error is not None and copy.error.startswith("not trusted: it lies at")
        assert copy.name == "tiny"


def test_prefix_listing_is_streamed(s3: Any, crowded: Any) -> None:
    name, _, manifests = crowded
    pages = small_pages(s3)
    candidates = iter_candidates(s3, f"s3://{name}/models")
    assert next(candidates).source == manifests[0]
    assert len(pages) == 1, "the first candidate came before the rest of the listing was read"
    assert [c.source for c in candidates] == manifests[1:]
    assert len(pages) >= 3


def test_prefix_is_a_folder_not_a_string_prefix(s3: Any, crowded: Any) -> None:
    name, _, _ = crowded
    assert [c.source for c in iter_candidates(s3, f"s3://{name}/models2")] == [
        f"s3://{name}/models2/x/model{MANIFEST_SUFFIX}"
    ]
    assert list(iter_candidates(s3, f"s3://{name}/model")) == []


def test_a_bad_manifest_under_the_prefix_is_an_invalid_candidate(s3: Any, bucket: str) -> None:
    put(s3, f"s3://{bucket}/models/broken/model{MANIFEST_SUFFIX}", b"{not json")
    spec, result = export(s3, bucket)
    doc = get_json(s3, result["manifest_uri"])
    doc["spec"]["builder"] = "not a builder"
    put(s3, f"s3://{bucket}/models/odd/model{MANIFEST_SUFFIX}", json.dumps(doc))
    by_source = {c.source: c for c in iter_candidates(s3, f"s3://{bucket}/models")}
    broken = by_source[f"s3://{bucket}/models/broken/model{MANIFEST_SUFFIX}"]
    assert broken.spec is None and broken.error is not None and "not JSON" in broken.error
    odd = by_source[f"s3://{bucket}/models/odd/model{MANIFEST_SUFFIX}"]
    assert odd.spec is None and odd.error is not None and odd.error.startswith("recorded spec:")
    assert odd.name == "tiny", "the name comes from the manifest's recorded spec"
    assert by_source[result["manifest_uri"]].spec == spec


# -- iter_candidates: catalogs -----------------------------------------------------------------


def catalog_at(where: str, client: Any, bucket: str, tmp_path: Path, filename: str, text: str | bytes) -> str:
    """Store a catalog on disk or in S3; its path or URI."""
    data = text.encode() if isinstance(text, str) else text
    if where == "disk":
        path = tmp_path / filename
        path.write_bytes(data)
        return str(path)
    uri = f"s3://{bucket}/catalogs/{filename}"
    put(client, uri, data)
    return uri


@pytest.mark.parametrize("where", ["disk", "s3"])
@pytest.mark.parametrize("suffix", [".jsonl", ".ndjson"])
def test_jsonl_catalog_skips_blanks_and_comments_and_names_bad_lines(
    s3: Any, bucket: str, tmp_path: Path, where: str, suffix: str
) -> None:
    a, b = spec_data(bucket, "a"), spec_data(bucket, "b")
    text = jsonl(
        "# specs of the nightly re-export",  # 1
        a,  # 2
        "",  # 3
        "   # an indented comment",  # 4
        "   ",  # 5
        '{"name": "half", ',  # 6: not JSON
        {"name": "bad", "builder": "no colon", "destination": f"s3://{bucket}/models"},  # 7: not a spec
        b,  # 8
        '["a list"]',  # 9: JSON, not an object
    )
    source = catalog_at(where, s3, bucket, tmp_path, f"specs{suffix}", text)
    candidates = list(iter_candidates(s3, source, catalog_dir=str(tmp_path)))
    assert [c.source for c in candidates] == [f"{source}:{n}" for n in (2, 6, 7, 8, 9)]
    assert candidates[0].spec == parse_spec(a) and candidates[0].error is None
    assert candidates[3].spec == parse_spec(b) and candidates[3].error is None
    half, bad, listed = candidates[1], candidates[2], candidates[4]
    assert half.spec is None and half.error is not None and half.error.startswith(f"{source}:6: not JSON")
    assert bad.spec is None and bad.error is not None and bad.error.startswith(f"{source}:7: ")
    assert "builder" in bad.error
    assert bad.name == "bad" and bad.given_name == "bad"
    assert listed.spec is None and listed.error is not None and listed.error.startswith(f"{source}:9: ")
    assert listed.name == "?"


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_jsonl_catalog_line_numbers_hold_across_read_chunks_and_crlf(
    s3: Any, bucket: str, tmp_path: Path, where: str
) -> None:
    # Lines of ~300 bytes with CRLF endings: longer than one chunk of the S3 body's line reader.
    rows = [spec_data(bucket, f"m{i}", metadata={"pad": "x" * 200}) for i in range(12)]
    rows[9] = {"name": "nine", "destination": f"s3://{bucket}/models"}  # line 10: no builder
    text = "".join(json.dumps(row) + "\r\n" for row in rows)
    assert len(text) > 3000
    source = catalog_at(where, s3, bucket, tmp_path, "big.jsonl", text)
    candidates = list(iter_candidates(s3, source, catalog_dir=str(tmp_path)))
    assert [c.source for c in candidates] == [f"{source}:{n}" for n in range(1, 13)]
    assert [c.name for c in candidates] == [f"m{i}" for i in range(9)] + ["nine", "m10", "m11"]
    assert [c.error is None for c in candidates] == [i != 9 for i in range(12)]


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_yaml_catalog_as_a_list(s3: Any, bucket: str, tmp_path: Path, where: str) -> None:
    import yaml

    a, b = spec_data(bucket, "a"), spec_data(bucket, "b")
    bad = {"name": "bad", "builder": "worker.examples:tiny_classifier"}  # no destination
    text = "# nightly\n" + yaml.safe_dump([a, bad, b])
    source = catalog_at(where, s3, bucket, tmp_path, "specs.yaml", text)
    candidates = list(iter_candidates(s3, source, catalog_dir=str(tmp_path)))
    assert [c.source for c in candidates] == [f"{source}#1", f"{source}#2", f"{source}#3"]
    assert [c.spec for c in candidates] == [parse_spec(a), None, parse_spec(b)]
    assert candidates[1].error is not None and candidates[1].error.startswith(f"{source}#2: ")
    assert "destination" in candidates[1].error
    assert candidates[1].name == "bad"


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_yaml_catalog_as_documents(s3: Any, bucket: str, tmp_path: Path, where: str) -> None:
    import yaml

    a, b, c = (spec_data(bucket, n) for n in "abc")
    # One spec per document, an empty document in between, and a document holding a list.
    text = yaml.safe_dump(a) + "---\n# nothing here\n---\n" + yaml.safe_dump(b) + "---\n" + yaml.safe_dump([c])
    source = catalog_at(where, s3, bucket, tmp_path, "specs.yml", text)
    candidates = list(iter_candidates(s3, source, catalog_dir=str(tmp_path)))
    assert [x.source for x in candidates] == [f"{source}#1", f"{source}#2", f"{source}#3"]
    assert [x.spec for x in candidates] == [parse_spec(a), parse_spec(b), parse_spec(c)]


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_yaml_catalog_that_is_not_yaml(s3: Any, bucket: str, tmp_path: Path, where: str) -> None:
    source = catalog_at(where, s3, bucket, tmp_path, "specs.yaml", "- name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML") as info:
        list(iter_candidates(s3, source, catalog_dir=str(tmp_path)))
    assert source in str(info.value)


@pytest.mark.parametrize("filename", ["missing.jsonl", "missing.yaml"])
def test_missing_catalog_on_disk(s3: Any, tmp_path: Path, filename: str) -> None:
    source = str(tmp_path / filename)
    with pytest.raises(SpecError, match="cannot be read") as info:
        list(iter_candidates(s3, source, catalog_dir=str(tmp_path)))
    assert source in str(info.value)


@pytest.mark.parametrize("filename", ["missing.jsonl", "missing.yml"])
def test_missing_catalog_in_s3(s3: Any, bucket: str, filename: str) -> None:
    for source in (f"s3://{bucket}/catalogs/{filename}", f"s3://no-such-{uuid.uuid4().hex[:8]}/{filename}"):
        with pytest.raises(SpecError, match="cannot be read") as info:
            list(iter_candidates(s3, source))
        assert source in str(info.value)


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_catalog_that_is_not_utf8(s3: Any, bucket: str, tmp_path: Path, where: str) -> None:
    source = catalog_at(where, s3, bucket, tmp_path, "specs.jsonl", b'{"name": "caf\xe9"}\n')
    with pytest.raises(SpecError, match="cannot be read"):
        list(iter_candidates(s3, source, catalog_dir=str(tmp_path)))


# -- Planner.decide ----------------------------------------------------------------------------


def catalog_candidate(spec: ExportSpec) -> Candidate:
    return Candidate(source="catalog.jsonl:1", spec=spec)


def listed(client: Any, bucket: str) -> dict[str, Candidate]:
    return {c.source: c for c in iter_candidates(client, f"s3://{bucket}/models")}


def edit_manifest(client: Any, uri: str, edit: Any) -> None:
    """Rewrite the stored manifest at ``uri`` through ``edit(doc)`` (its JSON, changed in place)."""
    doc = get_json(client, uri)
    edit(doc)
    put(client, uri, json.dumps(doc))


@pytest.mark.parametrize("policy", ["if-stale", "always", "missing"])
def test_no_export_yet_is_exported(s3: Any, bucket: str, policy: Any) -> None:
    spec = parse_spec(spec_data(bucket))
    decision = Planner(s3, settings(), policy).decide(catalog_candidate(spec))
    assert decision.action == "export"
    assert decision.runs
    assert decision.reason == f"no export by torch {TORCH} yet"
    assert decision.target == export_keys(spec, TORCH).artifact
    assert decision.spec == spec.to_json_dict()
    assert (decision.name, decision.source) == ("tiny", "catalog.jsonl:1")


@pytest.mark.parametrize("origin", ["listing", "catalog"])
@pytest.mark.parametrize(
    ("policy", "action", "reason"),
    [
        ("if-stale", "unchanged", "up to date"),
        ("missing", "unchanged", "already exported"),
        ("always", "replace", "policy always"),
    ],
)
def test_an_up_to_date_export(s3: Any, bucket: str, origin: str, policy: Any, action: str, reason: str) -> None:
    spec, result = export(s3, bucket)
    candidate = listed(s3, bucket)[result["manifest_uri"]] if origin == "listing" else catalog_candidate(spec)
    decision = Planner(s3, settings(), policy).decide(candidate)
    assert (decision.action, decision.reason) == (action, reason)
    assert decision.target == result["artifact_uri"]


@pytest.mark.parametrize("policy", ["if-stale", "missing", "always"])
def test_a_manifest_naming_another_torch_at_this_torchs_keys(s3: Any, bucket: str, policy: Any) -> None:
    # Another torch writes at its own keys: a manifest here that names one was not made here.
    spec, result = export(s3, bucket)

    def older(doc: dict[str, Any]) -> None:
        doc["producer"]["torch"] = OLD_TORCH

    edit_manifest(s3, result["manifest_uri"], older)
    candidate = listed(s3, bucket)[result["manifest_uri"]]
    listed_decision = Planner(s3, settings(), policy).decide(candidate)
    assert listed_decision.action == "invalid"
    assert listed_decision.reason.startswith("not trusted: it lies at ")
    # From a catalog, the spec is the catalog's: the export replaces what is at its keys.
    from_catalog = Planner(s3, settings(), policy).decide(catalog_candidate(spec))
    assert from_catalog.action == "replace"
    assert from_catalog.reason.startswith("the manifest at the target is not trusted: it lies at ")
    assert from_catalog.target == result["artifact_uri"]


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda doc: doc["producer"].update(builder="sha256:" + "0" * 64), "builder source changed"),
        (lambda doc: doc["producer"].update(builder=None), "builder source not recorded"),
        # A schema version 1 manifest: no producer.builder at all.
        (lambda doc: (doc["producer"].pop("builder"), doc.update(schema_version=1)), "builder source not recorded"),
        (
            lambda doc: doc["artifact"].update(format_version=produced_format_version() - 1),
            f"archive format version {produced_format_version() - 1} < {produced_format_version()}",
        ),
    ],
    ids=["builder-changed", "builder-null", "schema-v1", "format-version"],
)
def test_a_stale_producer_is_replaced_if_stale(s3: Any, bucket: str, edit: Any, reason: str) -> None:
    _, result = export(s3, bucket)
    edit_manifest(s3, result["manifest_uri"], edit)
    candidate = listed(s3, bucket)[result["manifest_uri"]]
    decision = Planner(s3, settings(), "if-stale").decide(candidate)
    assert (decision.action, decision.reason) == ("replace", reason)
    assert Planner(s3, settings(), "missing").decide(candidate).action == "unchanged"


def test_reasons_add_up(s3: Any, bucket: str) -> None:
    _, result = export(s3, bucket)

    def everything(doc: dict[str, Any]) -> None:
        doc["producer"].update(builder=None)
        doc["artifact"]["format_version"] = 1

    edit_manifest(s3, result["manifest_uri"], everything)
    decision = Planner(s3, settings(), "if-stale").decide(listed(s3, bucket)[result["manifest_uri"]])
    assert decision.action == "replace"
    assert decision.reason.split("; ") == [
        f"archive format version 1 < {produced_format_version()}",
        "builder source not recorded",
    ]


def copy_to_old_torch(client: Any, spec: ExportSpec, result: dict[str, Any]) -> str:
    """The export's manifest, as if another torch had made it at its own keys; its URI."""
    old = export_keys(spec, OLD_TORCH)
    assert f"/torch-{OLD_TORCH}/" in old.manifest and old.manifest != result["manifest_uri"]
    doc = get_json(client, result["manifest_uri"])
    doc["producer"]["torch"] = OLD_TORCH
    doc["artifact"]["uri"] = old.artifact
    put(client, old.manifest, json.dumps(doc))
    return old.manifest


@pytest.mark.parametrize("policy", ["if-stale", "missing", "always"])
def test_a_listed_export_by_another_torch_is_redone_on_this_one(s3: Any, bucket: str, policy: Any) -> None:
    spec, result = export(s3, bucket)
    old_manifest = copy_to_old_torch(s3, spec, result)
    delete(s3, result["manifest_uri"])
    delete(s3, result["artifact_uri"])
    (candidate,) = listed(s3, bucket).values()
    assert candidate.manifest_uri == old_manifest
    decision = Planner(s3, settings(), policy).decide(candidate)
    assert decision.action == "export"
    assert decision.reason == f"no export by torch {TORCH} yet (listed one: torch {OLD_TORCH})"
    assert decision.target == result["artifact_uri"], "next to the old export, at this torch's keys"


@pytest.mark.parametrize(
    ("policy", "action"), [("if-stale", "unchanged"), ("missing", "unchanged"), ("always", "replace")]
)
def test_a_listed_export_by_another_torch_when_this_one_has_one(s3: Any, bucket: str, policy: Any, action: str) -> None:
    spec, result = export(s3, bucket)
    old_manifest = copy_to_old_torch(s3, spec, result)
    candidate = listed(s3, bucket)[old_manifest]
    decision = Planner(s3, settings(), policy).decide(candidate)
    assert decision.action == action
    assert decision.target == result["artifact_uri"]
    assert OLD_TORCH not in decision.reason, "decided on this torch's export, not on the listed one"


def test_an_invalid_candidate_is_invalid(s3: Any) -> None:
    candidate = Candidate(source="specs.jsonl:7", error="specs.jsonl:7: invalid spec: builder: ...", given_name="m7")
    decision = Planner(s3, settings(), "if-stale").decide(candidate)
    assert (decision.action, decision.reason) == ("invalid", candidate.error)
    assert (decision.name, decision.source, decision.target) == ("m7", "specs.jsonl:7", None)
    assert not decision.runs


def test_an_unreadable_manifest_under_a_prefix_is_invalid(s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/models/broken/model{MANIFEST_SUFFIX}"
    put(s3, uri, b"[]")
    (candidate,) = listed(s3, bucket).values()
    decision = Planner(s3, settings(), "always").decide(candidate)
    assert decision.action == "invalid"
    assert decision.source == uri
    assert "not a JSON object" in decision.reason


@pytest.mark.parametrize("policy", ["if-stale", "missing", "always"])
def test_an_unreadable_manifest_at_the_target_is_replaced(s3: Any, bucket: str, policy: Any) -> None:
    spec = parse_spec(spec_data(bucket))
    keys = export_keys(spec, TORCH)
    put(s3, keys.manifest, b"{not json")
    decision = Planner(s3, settings(), policy).decide(catalog_candidate(spec))
    assert decision.action == "replace"
    assert decision.reason.startswith(f"the manifest at the target is not trusted ({keys.manifest}: ")
    assert decision.target == keys.artifact


@pytest.fixture()
def never_marker(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The file tests/never_import.py creates if it is ever imported."""
    path = tmp_path / "never_import.marker"
    monkeypatch.setenv("NEVER_IMPORT_MARKER", str(path))
    sys.modules.pop(NEVER, None)
    yield path
    sys.modules.pop(NEVER, None)


def test_a_builder_outside_the_allow_list_is_invalid_and_never_imported(
    s3: Any, bucket: str, never_marker: Path
) -> None:
    spec = parse_spec(spec_data(bucket, builder=f"{NEVER}:build"))
    decision = Planner(s3, settings(), "always").decide(catalog_candidate(spec))
    assert decision.action == "invalid"
    assert "EXPORT_ALLOWED_BUILDERS" in decision.reason and NEVER in decision.reason
    assert not never_marker.exists()
    assert NEVER not in sys.modules


def test_the_builder_digest_is_read_once_per_module(s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from worker import builders

    calls: list[str] = []
    real = builders.builder_digest

    def counting(builder: str, allowed: Any) -> str | None:
        calls.append(builder)
        return real(builder, allowed)

    monkeypatch.setattr(builders, "builder_digest", counting)
    planner = Planner(s3, settings(), "if-stale")
    for name in ("a", "b", "c"):
        assert planner.decide(catalog_candidate(parse_spec(spec_data(bucket, name)))).action == "export"
    assert calls == ["worker.examples:tiny_classifier"]


# -- plan ----------------------------------------------------------------------------------------


def test_plan_streams_decisions(s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    decided: list[str] = []
    real = Planner.decide

    def decide(self: Planner, candidate: Candidate) -> Any:
        decided.append(candidate.source)
        return real(self, candidate)

    monkeypatch.setattr(Planner, "decide", decide)
    path = tmp_path / "specs.jsonl"
    path.write_text(jsonl(*(spec_data(bucket, f"m{i}") for i in range(5))))
    decisions = plan(s3, str(path), "if-stale", settings(catalog_dir=str(tmp_path)))
    first = next(decisions)
    assert first.name == "m0" and first.action == "export"
    assert decided == [f"{path}:1"], "one decision at a time, not the whole selection first"
    assert [d.name for d in decisions] == ["m1", "m2", "m3", "m4"]


def test_plan_checks_the_source(s3: Any) -> None:
    with pytest.raises(SpecError, match="neither"):
        list(plan(s3, "specs.txt", "if-stale", settings()))


def test_plan_runs_one_target_once(s3: Any, bucket: str, tmp_path: Path) -> None:
    a, b = spec_data(bucket, "a"), spec_data(bucket, "b")
    path = tmp_path / "specs.jsonl"
    path.write_text(jsonl(a, b, a, "{bad", a))
    decisions = list(plan(s3, str(path), "if-stale", settings(catalog_dir=str(tmp_path))))
    assert [(d.name, d.action) for d in decisions] == [
        ("a", "export"),
        ("b", "export"),
        ("a", "unchanged"),
        ("?", "invalid"),
        ("a", "unchanged"),
    ]
    assert decisions[2].reason == decisions[4].reason == "same target as another candidate"
    assert decisions[2].target == decisions[0].target
    assert decisions[2].source == f"{path}:3"
    assert decisions[3].reason.startswith(f"{path}:4: not JSON")


def test_plan_over_a_prefix_with_copies_of_one_export(s3: Any, crowded: Any) -> None:
    name, _, manifests = crowded
    decisions = list(plan(s3, f"s3://{name}/models/", "always", settings()))
    assert [d.source for d in decisions] == manifests
    # The copies lie at keys their spec does not map to: invalid, and the run goes on.
    assert [d.action for d in decisions] == ["invalid", "replace", "invalid"]
    assert decisions[0].target is None and decisions[2].target is None
    assert [d.action for d in plan(s3, f"s3://{name}/models", "if-stale", settings())] == [
        "invalid",
        "unchanged",
        "invalid",
    ]


def test_the_same_target_twice_is_run_once(s3: Any, bucket: str) -> None:
    # A TorchScript export and its .pt2 conversion, both listed: converted, one target.
    spec, _ = export(s3, bucket)
    export(s3, bucket, format="pt2")
    decisions = list(plan(s3, f"s3://{bucket}/models", "always", settings(), to_format="pt2"))
    assert [d.action for d in decisions] == ["replace", "unchanged"] or [d.action for d in decisions] == [
        "unchanged",
        "replace",
    ]
    assert "same target as another candidate" in {d.reason for d in decisions}
    assert decisions[0].target == decisions[1].target == export_keys(spec.as_format("pt2"), TORCH).artifact


# -- dry_run -----------------------------------------------------------------------------------


def test_dry_run_writes_the_plan_and_nothing_else(s3: Any, bucket: str) -> None:
    _, done = export(s3, bucket, "done")
    catalog = f"s3://{bucket}/catalogs/nightly.jsonl"
    new = spec_data(bucket, "new")
    put(s3, catalog, jsonl(spec_data(bucket, "done"), new, "# comment", "{bad", new))
    before = sorted(object_keys(s3, bucket))
    report_uri = bulk.report_uri_for(catalog, "run-7", settings())
    assert report_uri == f"s3://{bucket}/catalogs/_reexport/run-7.json"

    summary = bulk.dry_run(s3, catalog, "if-stale", settings(), run_id="run-7", report_uri=report_uri)

    assert summary["would"] == {"export": 1, "replace": 0, "unchanged": 2, "invalid": 1}
    assert summary["selected"] == 4
    assert (summary["run_id"], summary["source"], summary["policy"]) == ("run-7", catalog, "if-stale")
    assert summary["dry_run"] is True and summary["report_uri"] == report_uri
    assert sorted(object_keys(s3, bucket)) == sorted([*before, report_uri.removeprefix(f"s3://{bucket}/")])
    assert open_uploads(s3, bucket) == []
    report = get_json(s3, report_uri)
    assert {k: v for k, v in report.items() if k != "plan"} == summary
    assert [(row["name"], row["action"]) for row in report["plan"]] == [
        ("done", "unchanged"),
        ("new", "export"),
        ("?", "invalid"),
        ("new", "unchanged"),
    ]
    assert report["plan"][0] == {
        "action": "unchanged",
        "reason": "up to date",
        "name": "done",
        "source": f"{catalog}:1",
        "target": done["artifact_uri"],
    }
    assert report["plan"][2]["reason"].startswith(f"{catalog}:4: not JSON")


def test_dry_run_of_an_empty_selection(s3: Any, bucket: str) -> None:
    report_uri = f"s3://{bucket}/reports/empty.json"
    summary = bulk.dry_run(s3, f"s3://{bucket}/models", "always", settings(), run_id="e", report_uri=report_uri)
    assert summary["selected"] == 0
    report = get_json(s3, report_uri)
    assert report["plan"] == [] and report["would"] == summary["would"]
    assert object_keys(s3, bucket) == ["reports/empty.json"]


def test_dry_run_without_a_report_writes_nothing(s3: Any, bucket: str) -> None:
    _, _ = export(s3, bucket)
    before = sorted(object_keys(s3, bucket))
    summary = bulk.dry_run(s3, f"s3://{bucket}/models", "always", settings(), run_id="r", report_uri=None)
    assert summary["would"] == {"export": 0, "replace": 1, "unchanged": 0, "invalid": 0}
    assert sorted(object_keys(s3, bucket)) == before


def test_dry_run_that_fails_leaves_no_report_and_no_upload(s3: Any, bucket: str) -> None:
    report_uri = f"s3://{bucket}/reports/failed.json"
    with pytest.raises(SpecError, match="cannot be read"):
        bulk.dry_run(s3, f"s3://{bucket}/missing.jsonl", "if-stale", settings(), run_id="f", report_uri=report_uri)
    assert object_keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []


def test_dry_run_that_fails_after_a_part_was_sent_aborts_the_upload(s3: Any, bucket: str, tmp_path: Path) -> None:
    # Enough invalid specs for more than one 5 MiB part of plan, then a line that is not
    # UTF-8, so the catalog fails once the upload has begun.
    bad = {"builder": "not a builder", "destination": f"s3://{bucket}/models"}
    path = tmp_path / "specs.jsonl"
    path.write_bytes(jsonl(*({"name": f"m{i}", **bad} for i in range(30000))).encode() + b'{"name": "\xff"}\n')
    started: list[str] = []
    s3.meta.events.register("before-call.s3.CreateMultipartUpload", lambda model, **_: started.append(model.name))
    report_uri = f"s3://{bucket}/reports/big.json"
    with pytest.raises(SpecError, match="cannot be read"):
        bulk.dry_run(
            s3,
            str(path),
            "if-stale",
            settings(part_size=5 * 1024**2, catalog_dir=str(tmp_path)),
            run_id="big",
            report_uri=report_uri,
        )
    assert started, "the plan filled a part before the catalog failed"
    assert open_uploads(s3, bucket) == []
    assert object_keys(s3, bucket) == []
