"""Replacing an export (``run_export(..., replace=True)``, as a bulk re-export does) against
in-process moto, and the builder's digest recorded in new manifests."""

from __future__ import annotations

import hashlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from serializer.archive.extras import BUILD_JSON
from serializer.consumer.extras import read_extra_file
from serializer.manifest.model import TORCHSCRIPT_SCHEMA_VERSION, Manifest, Verification
from serializer.manifest.store import read_manifest
from serializer.producer import current_producer
from serializer.s3.uri import parse_s3_uri
from tests.conftest import object_keys, open_uploads
from worker.builders import builder_digest
from worker.errors import BuildFailed, VerificationFailed
from worker.export import capture, job, publish, run_export
from worker.export import verify as export_verify
from worker.settings import Settings
from worker.spec import ExportSpec, parse_spec

ALLOWED = ("worker.examples",)
STAGING = ".staging-"


def settings(**changes: Any) -> Settings:
    return Settings(allowed_builders=ALLOWED, **changes)


def tiny(bucket: str, **fields: Any) -> ExportSpec:
    return parse_spec(
        {
            "name": "tiny",
            "builder": "worker.examples:tiny_classifier",
            "kwargs": {"in_features": 8, "hidden": 4, "classes": 2},
            "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
            "destination": f"s3://{bucket}/models",
            **fields,
        }
    )


def read(client: Any, uri: str) -> bytes:
    target = parse_s3_uri(uri)
    return bytes(client.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())


def key(uri: str) -> str:
    return parse_s3_uri(uri).key


@pytest.fixture()
def other_host(monkeypatch: pytest.MonkeyPatch) -> str:
    """Exports from here on are made by a producer on another host: the archive's build record
    names it, so a replacement's bytes differ from the archive it replaces."""
    host = f"replacement-{uuid.uuid4().hex[:6]}"

    def producer(device: str, builder: str | None = None) -> Any:
        return current_producer(device, builder).model_copy(update={"host": host})

    monkeypatch.setattr(job, "current_producer", producer)
    return host


def snapshot(client: Any, result: dict[str, Any]) -> tuple[bytes, bytes]:
    return read(client, result["artifact_uri"]), read(client, result["manifest_uri"])


# -- replacing -------------------------------------------------------------------------------


def test_replace_rewrites_artifact_and_manifest_at_the_same_keys(s3: Any, bucket: str, request: Any) -> None:
    spec = tiny(bucket)
    first = run_export(spec, settings=settings(), client=s3)
    old_bytes, _ = snapshot(s3, first)
    old = read_manifest(s3, first["manifest_uri"])
    host = request.getfixturevalue("other_host")

    again = run_export(spec, settings=settings(), client=s3, replace=True)

    assert again["skipped"] is False
    assert (again["artifact_uri"], again["manifest_uri"]) == (first["artifact_uri"], first["manifest_uri"])
    new = read_manifest(s3, again["manifest_uri"])
    assert new.created_at > old.created_at
    assert new.producer.host == host != old.producer.host
    stored = read(s3, again["artifact_uri"])
    assert stored != old_bytes, "the archive was rewritten"
    assert hashlib.sha256(stored).hexdigest() == new.artifact.sha256 == again["sha256"]
    assert len(stored) == new.artifact.size
    assert new.artifact.uri == again["artifact_uri"], "the manifest names the artifact, not the staging key"
    head = s3.head_object(Bucket=bucket, Key=key(again["artifact_uri"]))
    assert new.artifact.etag == head["ETag"]
    # The manifest's extra-file offsets hold for the promoted archive.
    record = json.loads(read_extra_file(s3, again["artifact_uri"], BUILD_JSON, manifest=new))
    assert record["producer"]["host"] == host
    assert new.verification is not None and new.verification.passed
    assert sorted(object_keys(s3, bucket)) == sorted([key(again["artifact_uri"]), key(again["manifest_uri"])])
    assert open_uploads(s3, bucket) == []


def test_replace_of_a_multipart_archive_records_the_etag_of_the_copy(s3: Any, bucket: str, request: Any) -> None:
    # About 8.8 MB of parameters in 5 MiB parts: the staged archive is a multipart object,
    # and its copy over the artifact gets an ETag of its own.
    spec = tiny(bucket, kwargs={"in_features": 8, "hidden": 200_000, "classes": 2})
    multipart = settings(part_size=5 * 1024**2)
    first = run_export(spec, settings=multipart, client=s3)
    assert read_manifest(s3, first["manifest_uri"]).artifact.etag.endswith('-2"')
    request.getfixturevalue("other_host")
    again = run_export(spec, settings=multipart, client=s3, replace=True)
    new = read_manifest(s3, again["manifest_uri"])
    head = s3.head_object(Bucket=bucket, Key=key(again["artifact_uri"]))
    assert new.artifact.etag == head["ETag"]
    assert head["ContentLength"] == new.artifact.size == again["size"]
    assert hashlib.sha256(read(s3, again["artifact_uri"])).hexdigest() == new.artifact.sha256
    assert sorted(object_keys(s3, bucket)) == sorted([key(again["artifact_uri"]), key(again["manifest_uri"])])
    assert open_uploads(s3, bucket) == []


def test_replace_over_a_schema_v1_manifest_writes_the_current_schema(s3: Any, bucket: str) -> None:
    spec = tiny(bucket)
    first = run_export(spec, settings=settings(), client=s3)
    doc = json.loads(read(s3, first["manifest_uri"]))
    del doc["producer"]["builder"]
    doc["schema_version"] = 1
    s3.put_object(Bucket=bucket, Key=key(first["manifest_uri"]), Body=json.dumps(doc).encode())
    assert read_manifest(s3, first["manifest_uri"]).producer.builder is None

    run_export(spec, settings=settings(), client=s3, replace=True)

    new = read_manifest(s3, first["manifest_uri"])
    assert new.schema_version == TORCHSCRIPT_SCHEMA_VERSION
    assert new.producer.builder == builder_digest(spec.builder, ALLOWED)


def test_replace_without_an_export_is_a_plain_export(s3: Any, bucket: str) -> None:
    result = run_export(tiny(bucket), settings=settings(), client=s3, replace=True)
    assert result["skipped"] is False
    assert sorted(object_keys(s3, bucket)) == sorted([key(result["artifact_uri"]), key(result["manifest_uri"])])
    assert hashlib.sha256(read(s3, result["artifact_uri"])).hexdigest() == result["sha256"]


def test_without_replace_an_existing_export_is_skipped(s3: Any, bucket: str, request: Any) -> None:
    spec = tiny(bucket)
    first = run_export(spec, settings=settings(), client=s3)
    before = snapshot(s3, first)
    request.getfixturevalue("other_host")
    writes: list[str] = []
    for operation in ("PutObject", "CreateMultipartUpload", "CopyObject", "DeleteObject"):
        s3.meta.events.register(f"before-call.s3.{operation}", lambda model, **_: writes.append(model.name))

    again = run_export(spec, settings=settings(), client=s3)

    assert again == {**first, "skipped": True}
    assert writes == []
    assert snapshot(s3, first) == before


# -- a replacement that fails leaves the old export ------------------------------------------


@pytest.fixture()
def failing_verification(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, bytes | None]]:
    """Fault injection: the reloaded archive "differs" from the eager module.  Records the URI
    it was asked to check, and what the artifact's key held at that moment."""
    seen: list[tuple[str, bytes | None]] = []

    def verify(
        client: Any, info: Any, inputs: Any, reference: Any, *, atol: float, rtol: float, spool_dir: str | None = None
    ) -> Verification:
        artifact = info.uri.split(STAGING)[0]
        seen.append((info.uri, read(client, artifact) if STAGING in info.uri else None))
        return Verification(passed=False, max_abs_diff=1.0, max_rel_diff=1.0, atol=atol, rtol=rtol)

    monkeypatch.setattr(export_verify, "verify_archive", verify)
    return seen


def assert_untouched(client: Any, bucket: str, result: dict[str, Any], before: tuple[bytes, bytes]) -> None:
    assert snapshot(client, result) == before, "the old archive and manifest are as they were"
    assert sorted(object_keys(client, bucket)) == sorted([key(result["artifact_uri"]), key(result["manifest_uri"])])
    assert not any(STAGING in k for k in object_keys(client, bucket))
    assert open_uploads(client, bucket) == []


def test_failed_verification_of_a_replacement_keeps_the_old_export(s3: Any, bucket: str, request: Any) -> None:
    spec = tiny(bucket)
    first = run_export(spec, settings=settings(), client=s3)
    before = snapshot(s3, first)
    request.getfixturevalue("other_host")
    seen = request.getfixturevalue("failing_verification")

    with pytest.raises(VerificationFailed, match="max abs diff 1"):
        run_export(spec, settings=settings(verify_mismatch="fail"), client=s3, replace=True)

    ((checked, artifact_then),) = seen
    assert checked.startswith(first["artifact_uri"] + STAGING), "the new archive was checked at a staging key"
    assert artifact_then == before[0], "the old archive was still in place while the new one was checked"
    assert_untouched(s3, bucket, first, before)


def test_replacement_with_a_recorded_mismatch_is_published(s3: Any, bucket: str, request: Any) -> None:
    spec = tiny(bucket)
    first = run_export(spec, settings=settings(), client=s3)
    request.getfixturevalue("failing_verification")
    again = run_export(spec, settings=settings(verify_mismatch="record"), client=s3, replace=True)
    manifest = read_manifest(s3, again["manifest_uri"])
    assert manifest.verification is not None and manifest.verification.passed is False
    assert again["manifest_uri"] == first["manifest_uri"]
    assert not any(STAGING in k for k in object_keys(s3, bucket))


def test_failed_build_of_a_replacement_keeps_the_old_export(
    s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny(bucket)
    first = run_export(spec, settings=settings(), client=s3)
    before = snapshot(s3, first)

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise BuildFailed("the builder broke")

    monkeypatch.setattr(capture, "build_module", broken)
    with pytest.raises(BuildFailed, match="broke"):
        run_export(spec, settings=settings(), client=s3, replace=True)
    assert_untouched(s3, bucket, first, before)


def test_failed_promotion_of_a_replacement_keeps_the_old_export(s3: Any, bucket: str, request: Any) -> None:
    spec = tiny(bucket)
    first = run_export(spec, settings=settings(), client=s3)
    before = snapshot(s3, first)
    request.getfixturevalue("other_host")

    def refuse(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no copies"}}, "CopyObject")

    s3.meta.events.register("before-call.s3.CopyObject", refuse)
    with pytest.raises(ClientError, match="AccessDenied"):
        run_export(spec, settings=settings(), client=s3, replace=True)
    assert_untouched(s3, bucket, first, before)


# -- manifests and builder digests ----------------------------------------------------------


def test_schema_v1_manifest_is_still_read(s3: Any, bucket: str) -> None:
    result = run_export(tiny(bucket), settings=settings(), client=s3)
    doc = json.loads(read(s3, result["manifest_uri"]))
    assert "builder" in doc["producer"] and doc["schema_version"] == TORCHSCRIPT_SCHEMA_VERSION == 2
    del doc["producer"]["builder"]
    doc["schema_version"] = 1
    manifest = Manifest.from_json(json.dumps(doc))
    assert manifest.schema_version == 1
    assert manifest.producer.builder is None
    assert manifest.artifact.sha256 == result["sha256"]


def test_new_manifests_record_the_builder_digest(s3: Any, bucket: str) -> None:
    spec = tiny(bucket)
    result = run_export(spec, settings=settings(), client=s3)
    manifest = read_manifest(s3, result["manifest_uri"])
    expected = builder_digest(spec.builder, ALLOWED)
    assert expected is not None and expected.startswith("sha256:")
    assert manifest.producer.builder == expected
    import worker.examples

    source = Path(worker.examples.__file__).read_bytes()
    assert expected == "sha256:" + hashlib.sha256(source).hexdigest()
    record = json.loads(read_extra_file(s3, result["artifact_uri"], BUILD_JSON, manifest=manifest))
    assert record["producer"]["builder"] == expected


def test_a_manifest_write_failing_after_the_copy_leaves_no_wrong_manifest_and_a_retry_repairs_it(
    s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tiny(bucket)
    first = run_export(spec, settings=settings(), client=s3)
    real_write = publish.write_manifest

    def failing_write(*args: Any, **kwargs: Any) -> None:
        raise ConnectionError("store went away")

    monkeypatch.setattr(publish, "write_manifest", failing_write)
    with pytest.raises(ConnectionError):
        run_export(spec, settings=settings(), client=s3, replace=True)
    # The new archive was copied over the old one; the old manifest, now wrong, is gone.
    assert sorted(object_keys(s3, bucket)) == [key(first["artifact_uri"])]
    assert open_uploads(s3, bucket) == []

    # The retry finds an archive without a manifest and replaces it the same way.
    monkeypatch.setattr(publish, "write_manifest", real_write)
    again = run_export(spec, settings=settings(), client=s3, replace=True)
    assert again["skipped"] is False
    manifest = read_manifest(s3, again["manifest_uri"])
    assert hashlib.sha256(read(s3, again["artifact_uri"])).hexdigest() == manifest.artifact.sha256
    assert sorted(object_keys(s3, bucket)) == sorted([key(first["artifact_uri"]), key(first["manifest_uri"])])
