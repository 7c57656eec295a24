"""A dead job's upload (worker/export/dead_uploads.py) against in-process moto: the export that
holds its lock aborts every other upload open on its own keys, and nothing else; one without
the lock aborts nothing, and waits for the holder when the holder aborted its upload."""

from __future__ import annotations

from typing import Any

import pytest
from botocore.exceptions import ClientError

from serializer.producer import current_producer
from serializer.s3.uri import parse_s3_uri
from tests.conftest import object_keys, open_uploads
from worker.builders import builder_digest
from worker.export import run_export
from worker.keys import Keys, export_keys
from worker.settings import Settings
from worker.spec import ExportSpec, parse_spec

ALLOWED = ("worker.examples",)


def settings() -> Settings:
    return Settings(allowed_builders=ALLOWED, read_scopes=("*",), write_scopes=("*",))


def tiny(bucket: str, name: str = "tiny") -> ExportSpec:
    return parse_spec(
        {
            "name": name,
            "builder": "worker.examples:tiny_classifier",
            "kwargs": {"in_features": 8, "hidden": 4, "classes": 2},
            "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
            "destination": f"s3://{bucket}/models",
        }
    )


def keys_of(spec: ExportSpec) -> Keys:
    producer = current_producer(spec.device, builder_digest(spec.builder, ALLOWED))
    return export_keys(spec, producer.torch)


def key(uri: str) -> str:
    return parse_s3_uri(uri).key


def start_upload(s3: Any, bucket: str, object_key: str) -> str:
    """An upload with one part sent, as a job killed mid-upload leaves it."""
    upload_id = str(s3.create_multipart_upload(Bucket=bucket, Key=object_key)["UploadId"])
    s3.upload_part(Bucket=bucket, Key=object_key, UploadId=upload_id, PartNumber=1, Body=b"p" * 1024)
    return upload_id


@pytest.fixture()
def dead(s3: Any, bucket: str) -> tuple[ExportSpec, list[str], list[str]]:
    """A spec; keys of uploads dead jobs left on its keys; keys of uploads that are not its."""
    spec = tiny(bucket)
    artifact = key(keys_of(spec).artifact)
    own = [artifact, artifact, f"{artifact}.staging-0a1b2c3d4e5f"]
    others = [
        f"{artifact}.bak",  # a longer key sharing the prefix, outside the layout
        f"{artifact}2",  # the other format's archive in the same folder
        f"{artifact}.staging-x",  # not a staging key of the layout
        key(keys_of(tiny(bucket, "other")).artifact),  # another export
    ]
    for object_key in [*own, *others]:
        start_upload(s3, bucket, object_key)
    return spec, own, others


def test_the_lock_holder_aborts_the_uploads_dead_jobs_left_on_its_keys(
    s3: Any, bucket: str, dead: tuple[ExportSpec, list[str], list[str]]
) -> None:
    spec, _, others = dead
    result = run_export(spec, settings=settings(), client=s3, exclusive=True)
    assert result["skipped"] is False
    assert sorted(u["Key"] for u in open_uploads(s3, bucket)) == sorted(others)
    keys = keys_of(spec)
    assert {key(keys.artifact), key(keys.manifest)} <= set(object_keys(s3, bucket))


def test_an_export_without_the_lock_aborts_nothing(
    s3: Any, bucket: str, dead: tuple[ExportSpec, list[str], list[str]]
) -> None:
    spec, own, others = dead
    before = sorted(u["UploadId"] for u in open_uploads(s3, bucket))
    result = run_export(spec, settings=settings(), client=s3, exclusive=False)
    assert result["skipped"] is False
    assert sorted(u["UploadId"] for u in open_uploads(s3, bucket)) == before
    assert len(before) == len(own) + len(others)


def test_a_skipped_export_aborts_nothing(s3: Any, bucket: str) -> None:
    spec = tiny(bucket)
    run_export(spec, settings=settings(), client=s3, exclusive=True)
    artifact = key(keys_of(spec).artifact)
    upload_id = start_upload(s3, bucket, artifact)  # a duplicate delivery still at work, say
    assert run_export(spec, settings=settings(), client=s3, exclusive=True)["skipped"] is True
    assert [u["UploadId"] for u in open_uploads(s3, bucket)] == [upload_id]


def test_a_job_whose_upload_the_holder_aborted_waits_for_the_holders_manifest(
    s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The same spec delivered twice: the job without the lock has its upload open when the
    # holder gets going; the holder aborts that upload and publishes; the first job's next
    # part meets NoSuchUpload, and it adopts the holder's export instead of failing.
    chosen = Settings(
        allowed_builders=("tests.fixtures",),
        read_scopes=("*",),
        write_scopes=("*",),
        part_size="5MiB",
        max_in_flight=1,
    )
    spec = parse_spec(
        {
            "name": "blob",
            "builder": "tests.fixtures:param_blob",
            "kwargs": {"total_bytes": 12 * 1024**2, "seed": 1},
            "destination": f"s3://{bucket}/models",
        }
    )
    real_upload_part = s3.upload_part
    holder: list[dict[str, Any]] = []

    def holder_starts_meanwhile(**kwargs: Any) -> Any:
        if not holder:
            holder.append({})
            holder[0] = run_export(spec, settings=chosen, client=s3, exclusive=True)
        try:
            return real_upload_part(**kwargs)
        except KeyError as exc:  # in-process moto's answer to a part of an aborted upload
            error = {"Error": {"Code": "NoSuchUpload", "Message": "The specified upload does not exist."}}
            raise ClientError(error, "UploadPart") from exc  # S3's answer

    monkeypatch.setattr(s3, "upload_part", holder_starts_meanwhile)
    result = run_export(spec, settings=chosen, client=s3, exclusive=False)
    assert holder[0]["skipped"] is False
    assert result["skipped"] is True
    assert result["sha256"] == holder[0]["sha256"]
    assert result["artifact_uri"] == holder[0]["artifact_uri"]
    assert open_uploads(s3, bucket) == []
