"""Storing the manifest in S3 (in-process moto): writing and reading it, conditional writes,
missing and invalid manifests."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from serializer.errors import ManifestError, ObjectExists
from serializer.manifest.model import (
    manifest_uri_for,
)
from serializer.manifest.store import read_manifest, write_manifest
from tests.conftest import object_keys
from tests.fixtures import CREATED, fake_archive, make_manifest

# -- S3 -----------------------------------------------------------------------------------


def test_write_and_read_manifest(s3: Any, bucket: str) -> None:
    artifact = f"s3://{bucket}/team/model.pt"
    uri = manifest_uri_for(artifact)
    m = make_manifest(fake_archive(bucket, "team/model.pt"))
    write_manifest(s3, uri, m)
    assert object_keys(s3, bucket) == ["team/model.manifest.json"]
    obj = s3.get_object(Bucket=bucket, Key="team/model.manifest.json")
    assert obj["ContentType"] == "application/json"
    assert obj["Body"].read() == m.to_json()
    assert read_manifest(s3, uri) == m
    assert read_manifest(s3, artifact) == m  # the artifact's URI finds its manifest


def test_write_manifest_if_none_match(s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/model.manifest.json"
    first = make_manifest()
    write_manifest(s3, uri, first, if_none_match=True)
    second = make_manifest(created_at=CREATED + timedelta(days=1))
    with pytest.raises(ObjectExists):
        write_manifest(s3, uri, second, if_none_match=True)
    assert read_manifest(s3, uri) == first
    write_manifest(s3, uri, second)  # an unconditional write replaces it
    assert read_manifest(s3, uri) == second


def test_read_manifest_of_a_missing_key(s3: Any, bucket: str) -> None:
    with pytest.raises(ManifestError, match="no manifest at"):
        read_manifest(s3, f"s3://{bucket}/absent.manifest.json")
    with pytest.raises(ManifestError, match=r"absent\.manifest\.json"):
        read_manifest(s3, f"s3://{bucket}/absent.pt")


def test_read_manifest_that_is_not_valid(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="broken.manifest.json", Body=b"{half")
    with pytest.raises(ManifestError, match="not JSON"):
        read_manifest(s3, f"s3://{bucket}/broken.manifest.json")
