"""The sweeper against in-process moto: stale uploads aborted, stale staging objects and orphan
archives deleted, everything young or not in the service's layout left alone."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.conftest import object_keys, open_uploads
from worker.sweeper import sweep

HOUR = 3600.0
LATER = datetime.now(UTC) + timedelta(hours=2)
FOLDER = "models/m/0123456789abcdef/torch-2.13.0_cpu"


def _put(s3: Any, bucket: str, key: str) -> None:
    s3.put_object(Bucket=bucket, Key=key, Body=b"x")


def _layout(s3: Any, bucket: str, uploads: bool = True) -> None:
    _put(s3, bucket, f"{FOLDER}/model.manifest.json")  # a complete export
    _put(s3, bucket, f"{FOLDER}/model.pt")
    _put(s3, bucket, f"{FOLDER}/model.pt.staging-0a1b2c3d4e5f")  # a replacement that died
    _put(s3, bucket, "models/n/fedcba9876543210/torch-2.13.0_cpu/model.pt")  # no manifest: orphan
    _put(s3, bucket, "models/weights/model.pt")  # not the service's layout
    _put(s3, bucket, "models/notes/model.pt.staging-x")  # not the service's layout either
    _put(s3, bucket, "other/x/0/torch-1/model.pt")  # outside the prefix
    if uploads:
        s3.create_multipart_upload(Bucket=bucket, Key=f"{FOLDER}/big/model.pt")
        s3.create_multipart_upload(Bucket=bucket, Key="other/upload.bin")


def test_stale_uploads_staging_objects_and_orphans_go(s3: Any, bucket: str) -> None:
    _layout(s3, bucket)
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR, now=LATER)
    assert report.as_dict() == {"aborted_uploads": 1, "deleted_staging": 1, "deleted_orphans": 1, "recent_kept": 0}
    assert sorted(object_keys(s3, bucket)) == sorted(
        [
            f"{FOLDER}/model.manifest.json",
            f"{FOLDER}/model.pt",
            "models/weights/model.pt",
            "models/notes/model.pt.staging-x",
            "other/x/0/torch-1/model.pt",
        ]
    )
    assert [u["Key"] for u in open_uploads(s3, bucket)] == ["other/upload.bin"]


def test_nothing_young_is_touched(s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    _layout(s3, bucket, uploads=False)
    before = sorted(object_keys(s3, bucket))
    # (moto dates every upload in 2010: a young one is listed by hand)
    young = {"Uploads": [{"Key": f"{FOLDER}/model.pt", "UploadId": "u", "Initiated": datetime.now(UTC)}]}
    _listed_uploads(s3, monkeypatch, young)
    report = sweep(s3, [f"s3://{bucket}/models/"], older_than=HOUR)
    assert report.as_dict() == {"aborted_uploads": 0, "deleted_staging": 0, "deleted_orphans": 0, "recent_kept": 3}
    assert sorted(object_keys(s3, bucket)) == before


def _listed_uploads(s3: Any, monkeypatch: pytest.MonkeyPatch, page: dict[str, Any]) -> None:
    class Pages:
        def paginate(self, **_: Any) -> list[dict[str, Any]]:
            return [page]

    real = s3.get_paginator
    monkeypatch.setattr(s3, "get_paginator", lambda name: Pages() if name == "list_multipart_uploads" else real(name))


def test_a_dry_run_counts_and_removes_nothing(s3: Any, bucket: str) -> None:
    _layout(s3, bucket)
    before = sorted(object_keys(s3, bucket))
    report = sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR, now=LATER, dry_run=True)
    assert (report.aborted_uploads, report.deleted_staging, report.deleted_orphans) == (1, 1, 1)
    assert sorted(object_keys(s3, bucket)) == before
    assert len(open_uploads(s3, bucket)) == 2


def test_an_upload_finished_meanwhile_is_not_an_error(s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=f"{FOLDER}/model.pt")
    s3.abort_multipart_upload(Bucket=bucket, Key=f"{FOLDER}/model.pt", UploadId=upload["UploadId"])
    old = {"Key": f"{FOLDER}/model.pt", "UploadId": upload["UploadId"], "Initiated": LATER - timedelta(hours=5)}
    _listed_uploads(s3, monkeypatch, {"Uploads": [old]})
    assert sweep(s3, [f"s3://{bucket}/models"], older_than=HOUR, now=LATER).aborted_uploads == 1
