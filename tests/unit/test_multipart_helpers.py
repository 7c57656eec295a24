"""MultipartWriter's pure parts: the multipart ETag, results, argument checks (no S3 needed)."""

from __future__ import annotations

import hashlib
import logging
from types import SimpleNamespace

import pytest

from serializer.s3.multipart import MultipartWriter, UploadResult, WriterState, _multipart_etag


def md5(data: bytes) -> str:
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def test_multipart_etag_is_md5_of_part_md5s() -> None:
    parts = [b"a" * 10, b"b" * 20, b"c"]
    etags = [f'"{md5(p)}"' for p in parts]
    joined = b"".join(hashlib.md5(p, usedforsecurity=False).digest() for p in parts)
    assert _multipart_etag(etags) == f'"{md5(joined)}-3"'


def test_multipart_etag_accepts_unquoted_etags() -> None:
    parts = [b"x", b"y"]
    assert _multipart_etag([md5(p) for p in parts]) == _multipart_etag([f'"{md5(p)}"' for p in parts])


def test_multipart_etag_of_non_md5_etags_is_empty() -> None:
    assert _multipart_etag(['"not-hex"', f'"{md5(b"x")}"']) == ""


def test_upload_result_uri() -> None:
    result = UploadResult(bucket="bkt", key="a/b.pt", size=3, sha256="s", etag='"e"', parts=0)
    assert result.uri == "s3://bkt/a/b.pt"
    assert result.version_id is None


def fake_client(pool: int | None = None) -> object:
    return SimpleNamespace(meta=SimpleNamespace(config=SimpleNamespace(max_pool_connections=pool)))


@pytest.mark.parametrize("max_in_flight", [0, -1])
def test_max_in_flight_must_be_positive(max_in_flight: int) -> None:
    with pytest.raises(ValueError, match="max_in_flight"):
        MultipartWriter(fake_client(), "bkt", "key", max_in_flight=max_in_flight)


def test_warns_when_client_pool_is_smaller_than_parallelism(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serializer.s3.multipart"):
        w = MultipartWriter(fake_client(pool=2), "bkt", "key", max_in_flight=4)
    assert "max_pool_connections>=4" in caplog.text
    w.abort()


def test_no_warning_when_pool_is_large_enough(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="serializer.s3.multipart"):
        w = MultipartWriter(fake_client(pool=8), "bkt", "key", max_in_flight=4)
    assert caplog.records == []
    w.abort()


def test_file_like_surface_before_any_request() -> None:
    w = MultipartWriter(fake_client(), "bkt", "key")
    assert w.state is WriterState.OPEN
    assert w.writable()
    assert not w.readable()
    assert not w.seekable()
    assert not w.closed
    assert w.tell() == 0
    assert w.sha256 == hashlib.sha256().hexdigest()
    w.flush()
    # Data below one part stays in memory: no request is made until close.
    assert w.write(b"abc") == 3
    assert w.tell() == 3
    assert w.sha256 == hashlib.sha256(b"abc").hexdigest()
    w.abort()
    assert w.closed
    assert w.state.value == "aborted"
    assert w.result is None
    with pytest.raises(ValueError, match="aborted writer"):
        w.write(b"more")
    with pytest.raises(ValueError):
        w.flush()
