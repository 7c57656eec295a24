"""The manifest: building it, canonical JSON, strict reading, its URI, its committed JSON Schema."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from serializer.errors import InvalidURI, ManifestError
from serializer.manifest.model import (
    SCHEMA_VERSION,
    TORCHSCRIPT_SCHEMA_VERSION,
    Manifest,
    Verification,
    build_manifest,
    canonical_json,
    json_schema,
    manifest_uri_for,
)
from serializer.producer import current_producer
from tests.fixtures import CREATED, PRODUCER, SPEC, fake_archive, make_manifest

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "schemas" / "manifest.schema.json"
REGENERATE = "python -m serializer.manifest > schemas/manifest.schema.json"


def assert_sorted_keys(value: Any) -> None:
    if isinstance(value, dict):
        assert list(value) == sorted(value)
        for v in value.values():
            assert_sorted_keys(v)
    elif isinstance(value, list):
        for v in value:
            assert_sorted_keys(v)


# -- building -----------------------------------------------------------------------------


def test_build_manifest_copies_the_archive() -> None:
    archive = fake_archive()
    m = make_manifest(archive)
    # A TorchScript manifest keeps version 2's layout, so readers of version 2 still read it.
    assert m.schema_version == TORCHSCRIPT_SCHEMA_VERSION == 2
    assert "pt2" not in json.loads(m.to_json())["artifact"]
    a = m.artifact
    assert (a.uri, a.size, a.sha256, a.etag) == (archive.uri, archive.size, archive.sha256, archive.etag)
    assert (a.format, a.format_version, a.archive_root) == ("torchscript", 3, "archive")
    assert [(e.name, e.size, e.sha256, e.offset) for e in m.extra_files] == [
        (e.name, e.size, e.sha256, e.offset) for e in archive.extra_files
    ]
    assert m.spec == SPEC
    assert m.producer == PRODUCER
    assert m.created_at == CREATED
    assert m.verification is None
    assert m.metadata == {}


def test_build_manifest_with_verification_and_metadata() -> None:
    verification = Verification(passed=True, max_abs_diff=1e-7, max_rel_diff=2e-6, atol=1e-5, rtol=1e-4)
    m = make_manifest(verification=verification, metadata={"job": "42", "priority": 1})
    assert m.verification == verification
    assert m.metadata == {"job": "42", "priority": 1}
    assert Manifest.from_json(m.to_json()) == m


def test_created_at_defaults_to_now_in_utc() -> None:
    before = datetime.now(UTC)
    m = build_manifest(fake_archive(), spec={}, spec_hash="h", producer=PRODUCER)
    assert m.created_at.tzinfo is not None
    assert before - timedelta(seconds=1) <= m.created_at <= datetime.now(UTC) + timedelta(seconds=1)


def test_current_producer_describes_this_process() -> None:
    import torch

    p = current_producer("cpu")
    assert (p.torch, p.device) == (torch.__version__, "cpu")
    assert p.python.count(".") == 2
    assert p.export_worker and p.host


def test_manifests_are_frozen() -> None:
    m = make_manifest()
    with pytest.raises(ValueError):
        m.spec_hash = "other"


# -- canonical JSON -----------------------------------------------------------------------


def test_to_json_is_canonical() -> None:
    data = make_manifest().to_json()
    parsed = json.loads(data)
    assert data == json.dumps(parsed, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    assert data == canonical_json(parsed)
    assert_sorted_keys(parsed)
    assert b"\n" not in data
    assert b'": ' not in data and b'", "' not in data
    # Text is UTF-8, not \\u escapes.
    with_text = make_manifest(spec={"title": "modèle"}).to_json()
    assert "modèle".encode() in with_text
    assert b"\\u" not in with_text


def test_identical_exports_differ_only_in_created_at() -> None:
    a = make_manifest()
    b = make_manifest()
    assert a.to_json() == b.to_json()
    later = make_manifest(created_at=CREATED + timedelta(hours=1))
    ja, jl = json.loads(a.to_json()), json.loads(later.to_json())
    assert {k for k in ja.keys() | jl.keys() if ja.get(k) != jl.get(k)} == {"created_at"}
    assert a.to_json() != later.to_json()


def test_created_at_is_iso_8601_with_zone() -> None:
    parsed = json.loads(make_manifest().to_json())
    assert datetime.fromisoformat(parsed["created_at"].replace("Z", "+00:00")) == CREATED


def test_canonical_json_refuses_nan() -> None:
    with pytest.raises(ValueError):
        canonical_json({"x": float("nan")})


# -- reading ------------------------------------------------------------------------------


def test_from_json_round_trip() -> None:
    m = make_manifest()
    assert Manifest.from_json(m.to_json()) == m
    assert Manifest.from_json(m.to_json().decode()) == m
    assert Manifest.from_json(m.to_json()).to_json() == m.to_json()


def _doc(**changes: Any) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(make_manifest().to_json())
    doc.update(changes)
    return doc


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"", "not JSON"),
        (b"{not json", "not JSON"),
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'"manifest"', "not a JSON object"),
        (b"null", "not a JSON object"),
    ],
    ids=["empty", "broken", "not-utf8", "array", "string", "null"],
)
def test_from_json_rejects_what_is_not_a_json_object(data: bytes, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        Manifest.from_json(data)


def test_from_json_rejects_a_newer_schema_version() -> None:
    doc = _doc(schema_version=SCHEMA_VERSION + 1)
    with pytest.raises(ManifestError, match="upgrade export-worker") as info:
        Manifest.from_json(json.dumps(doc))
    assert str(SCHEMA_VERSION + 1) in str(info.value)


@pytest.mark.parametrize("version", [None, "1", 1.0, True, 0, -1])
def test_from_json_rejects_a_schema_version_that_is_not_one(version: Any) -> None:
    doc = _doc(schema_version=version)
    with pytest.raises(ManifestError, match="schema_version must be a positive integer"):
        Manifest.from_json(json.dumps(doc))


def test_from_json_rejects_a_missing_schema_version() -> None:
    doc = _doc()
    del doc["schema_version"]
    with pytest.raises(ManifestError, match="schema_version"):
        Manifest.from_json(json.dumps(doc))


@pytest.mark.parametrize(
    "mutate",
    [
        lambda d: d.update(unexpected=1),
        lambda d: d["artifact"].update(unexpected=1),
        lambda d: d["extra_files"][0].update(unexpected=1),
        lambda d: d["producer"].update(gpu="none"),
        lambda d: d.pop("artifact"),
        lambda d: d["artifact"].update(sha256="not-a-digest"),
        lambda d: d["artifact"].update(size=-1),
        lambda d: d["artifact"].update(format="onnx"),
        lambda d: d["extra_files"][0].update(offset=-5),
        lambda d: d.update(created_at="yesterday"),
    ],
    ids=[
        "unknown-field",
        "unknown-artifact-field",
        "unknown-extra-field",
        "unknown-producer-field",
        "missing-artifact",
        "bad-sha256",
        "negative-size",
        "other-format",
        "negative-offset",
        "bad-date",
    ],
)
def test_from_json_rejects_invalid_fields(mutate: Any) -> None:
    doc = _doc()
    mutate(doc)
    with pytest.raises(ManifestError, match="invalid manifest"):
        Manifest.from_json(json.dumps(doc))


# -- URIs ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("artifact", "manifest"),
    [
        ("s3://bkt/p/model.pt", "s3://bkt/p/model.manifest.json"),
        ("s3://bkt/model.pt", "s3://bkt/model.manifest.json"),
        ("s3://my-bucket/a/b/c/resnet.v2.pt", "s3://my-bucket/a/b/c/resnet.v2.manifest.json"),
    ],
)
def test_manifest_uri_for(artifact: str, manifest: str) -> None:
    assert manifest_uri_for(artifact) == manifest


@pytest.mark.parametrize(
    "artifact",
    [
        "s3://bkt/p/model.onnx",
        "s3://bkt/p/model.pt.bak",
        "s3://bkt/p/model.PT",
        "s3://bkt/p/",
        "https://bkt/p/model.pt",
    ],
)
def test_manifest_uri_for_refuses_what_is_not_a_pt_object(artifact: str) -> None:
    with pytest.raises(InvalidURI):
        manifest_uri_for(artifact)


# -- JSON Schema --------------------------------------------------------------------------


def test_committed_schema_is_current() -> None:
    with SCHEMA_PATH.open(encoding="utf-8") as f:
        committed = json.load(f)
    assert json_schema() == committed, (
        f"{SCHEMA_PATH.name} is out of date with serializer/manifest/model.py; regenerate it with `{REGENERATE}`"
    )


def test_module_prints_the_schema() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "serializer.manifest"],
        capture_output=True,
        check=True,
        text=True,
        cwd=SCHEMA_PATH.parents[1],
    ).stdout
    assert json.loads(out) == json_schema()
    assert out == SCHEMA_PATH.read_text(encoding="utf-8"), f"regenerate the schema with `{REGENERATE}`"


def test_committed_schema_validates_a_manifest() -> None:
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))
    validator = jsonschema.Draft202012Validator(schema)
    verified = make_manifest(verification=Verification(passed=False, max_abs_diff=0.5, atol=1e-5, rtol=1e-4))
    for m in (make_manifest(), verified):
        validator.validate(json.loads(m.to_json()))
    doc = _doc(unexpected=1)
    assert not validator.is_valid(doc)
    bad_digest = _doc()
    bad_digest["artifact"]["sha256"] = "ABC"
    assert not validator.is_valid(bad_digest)
