"""Parsing and joining s3:// URIs."""

from __future__ import annotations

import pytest

from serializer.errors import InvalidURI, SerializerError
from serializer.s3.uri import S3URI, parse_s3_uri


@pytest.mark.parametrize(
    ("uri", "bucket", "key"),
    [
        ("s3://bucket/key", "bucket", "key"),
        ("s3://my-bucket/models/resnet/model.pt", "my-bucket", "models/resnet/model.pt"),
        ("s3://my.bucket.name/a", "my.bucket.name", "a"),
        ("s3://Bucket_With_Caps/k", "Bucket_With_Caps", "k"),
        ("s3://abc/k", "abc", "k"),
        ("s3://" + "b" * 63 + "/k", "b" * 63, "k"),
        ("s3://bucket/dir/", "bucket", "dir/"),
        ("s3://bucket/a b/ü.pt", "bucket", "a b/ü.pt"),
        ("s3://bucket//double", "bucket", "/double"),
        ("s3://bucket/" + "k" * 1024, "bucket", "k" * 1024),
    ],
)
def test_accepts(uri: str, bucket: str, key: str) -> None:
    parsed = parse_s3_uri(uri)
    assert parsed == S3URI(bucket, key)
    assert parsed.bucket == bucket
    assert parsed.key == key
    assert str(parsed) == uri


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "not an s3:// URI"),
        ("bucket/key", "not an s3:// URI"),
        ("S3://bucket/key", "not an s3:// URI"),
        ("s3:/bucket/key", "not an s3:// URI"),
        ("https://bucket/key", "not an s3:// URI"),
        ("s3://", "bad bucket name"),
        ("s3:///key", "bad bucket name"),
        ("s3://ab/key", "bad bucket name"),
        ("s3://" + "b" * 64 + "/key", "bad bucket name"),
        ("s3://-bucket/key", "bad bucket name"),
        ("s3://bucket-/key", "bad bucket name"),
        ("s3://buck..et/key", "bad bucket name"),
        ("s3://buck et/key", "bad bucket name"),
        ("s3://bucket", "no object key"),
        ("s3://bucket/", "no object key"),
        ("s3://bucket/a\nb", "control characters"),
        ("s3://bucket/a\x00b", "control characters"),
        ("s3://bucket/a\x7fb", "control characters"),
        ("s3://bucket/" + "k" * 1025, "longer than 1024 bytes"),
        ("s3://bucket/" + "ü" * 513, "longer than 1024 bytes"),
    ],
)
def test_rejects(uri: str, message: str) -> None:
    with pytest.raises(InvalidURI, match=message):
        parse_s3_uri(uri)


@pytest.mark.parametrize("value", [None, 42, b"s3://bucket/key"])
def test_rejects_non_strings(value: object) -> None:
    with pytest.raises(InvalidURI):
        parse_s3_uri(value)  # type: ignore[arg-type]


def test_invalid_uri_is_a_value_error_and_a_serializer_error() -> None:
    with pytest.raises(ValueError):
        parse_s3_uri("nope")
    with pytest.raises(SerializerError):
        parse_s3_uri("nope")


@pytest.mark.parametrize("uri", ["s3://bucket", "s3://bucket/"])
def test_key_optional_for_prefixes(uri: str) -> None:
    assert parse_s3_uri(uri, require_key=False) == S3URI("bucket", "")


def test_join_appends_segments() -> None:
    base = parse_s3_uri("s3://bucket/models/", require_key=False)
    assert base.join("resnet", "v1/", "/model.pt") == S3URI("bucket", "models/resnet/v1/model.pt")
    assert str(base.join("x")) == "s3://bucket/models/x"


def test_join_on_bucket_root_and_empty_segments() -> None:
    root = parse_s3_uri("s3://bucket", require_key=False)
    assert root.join("a", "", "/", "b") == S3URI("bucket", "a/b")
    assert root.join() == root


def test_uri_is_a_tuple() -> None:
    bucket, key = parse_s3_uri("s3://bucket/key")
    assert (bucket, key) == ("bucket", "key")
