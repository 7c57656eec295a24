"""Downloads into place against in-process moto: each ranged GET written at its offset of
the target file, byte for byte, in bounded chunks; a corrupted range caught by the
sha256; a failing range aborting the download with no file and no thread left; a range
whose body breaks off resumed where it stopped; a throttled range retried and the tuner
told."""

from __future__ import annotations

import hashlib
import io
import os
import threading
from collections.abc import Callable
from typing import Any

import pytest
from botocore.exceptions import ClientError, ResponseStreamingError
from botocore.response import StreamingBody

from serializer.errors import ArchiveError
from serializer.s3 import inplace
from serializer.s3.inplace import CHUNK_SIZE, MAX_RANGE_SIZE, MIN_RANGE_SIZE, range_size_for
from serializer.s3.ranged import default_tuner, download_checked
from serializer.s3.tuner import ConcurrencyTuner
from tests.fixtures import randbytes

MiB = 1024**2
#: A range of two chunks and a byte, so ranges end inside a chunk.
R = 2 * CHUNK_SIZE + 1


class Gets:
    """The Range of every GetObject of a client, and hooks that may change one: ``fail``
    raises before the request is sent, ``reply`` replaces a reply's body."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.ranges: list[str] = []
        self.if_match: list[str | None] = []
        self.fail: Callable[[str, int], BaseException | None] = lambda spec, n: None
        self.reply: Callable[[str, Any], Any] = lambda spec, body: body
        events = client.meta.events
        events.register("provide-client-params.s3.GetObject", self._params)
        events.register("after-call.s3.GetObject", self._after)

    def _params(self, params: dict[str, Any], **_: Any) -> None:
        spec = str(params.get("Range"))
        with self.lock:
            self.ranges.append(spec)
            self.if_match.append(params.get("IfMatch"))
            n = self.ranges.count(spec)
        exc = self.fail(spec, n)
        if exc is not None:
            raise exc

    def _after(self, parsed: dict[str, Any], model: Any, **_: Any) -> None:
        if "Body" in parsed and "ContentRange" in parsed:
            spec = "bytes=" + str(parsed["ContentRange"]).split(" ", 1)[1].split("/")[0]
            parsed["Body"] = self.reply(spec, parsed["Body"])


def put(s3: Any, bucket: str, key: str, data: bytes) -> str:
    s3.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def download_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("s3-download")]


def error(code: str, status: int) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "GetObject")


def spec_of(start: int, end: int) -> str:
    return f"bytes={start}-{end - 1}"


# -- range sizing (pure) ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (0, MIN_RANGE_SIZE),
        (5 * MiB, MIN_RANGE_SIZE),
        (1024 * MiB, MIN_RANGE_SIZE),
        (4096 * MiB, 16 * MiB),
        (64 * 1024 * MiB, MAX_RANGE_SIZE),
    ],
)
def test_ranges_follow_the_object_size_within_bounds(size: int, expected: int) -> None:
    assert range_size_for(size) == expected


def test_the_default_tuner_is_capped_by_the_client_pool(s3: Any) -> None:
    tuner = default_tuner(s3)
    assert tuner.cap == s3.meta.config.max_pool_connections == 8
    assert tuner.limit <= tuner.cap


# -- bytes in place ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, R - 1, R, R + 1, 5 * R + 123], ids=["0", "1", "r-1", "r", "r+1", "5r+"])
def test_a_download_into_place_is_the_object_byte_for_byte(s3: Any, bucket: str, tmp_path: Any, size: int) -> None:
    data = randbytes(size, seed=size)
    uri = put(s3, bucket, "obj.bin", data)
    etag = s3.head_object(Bucket=bucket, Key="obj.bin")["ETag"]
    gets = Gets(s3)
    path = tmp_path / "obj.bin"
    path.write_bytes(b"x" * (size + 3 * MiB))  # a longer file there before: replaced
    seen: list[int] = []
    tuner = ConcurrencyTuner(fixed=3)
    download_checked(
        s3,
        uri,
        str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        size=size,
        progress=seen.append,
        tuner=tuner,
        range_size=R,
    )
    assert path.read_bytes() == data
    assert sorted(gets.ranges) == sorted(spec_of(s, min(size, s + R)) for s in range(0, size, R))
    assert gets.if_match == [etag] * len(gets.ranges)
    assert sum(seen) == size
    assert tuner.peak <= 3
    assert tuner.in_flight == 0


def test_memory_per_range_is_one_chunk(s3: Any, bucket: str, tmp_path: Any, monkeypatch: Any) -> None:
    size = 4 * (3 * MiB) + 5
    data = randbytes(size, seed=11)
    uri = put(s3, bucket, "big.bin", data)
    gets = Gets(s3)
    asked: list[int] = []
    sizes: dict[str, list[int]] = {"read": [], "pwrite": [], "pread": []}

    class Recording:
        def __init__(self, body: Any) -> None:
            self.body = body

        def read(self, amt: int | None = None) -> bytes:
            asked.append(-1 if amt is None else amt)
            chunk = bytes(self.body.read(amt))
            sizes["read"].append(len(chunk))
            return chunk

        def close(self) -> None:
            self.body.close()

    gets.reply = lambda spec, body: Recording(body)
    real_pwrite, real_pread = os.pwrite, os.pread

    def pwrite(fd: int, buf: Any, offset: int) -> int:
        sizes["pwrite"].append(len(buf))
        return real_pwrite(fd, buf, offset)

    def pread(fd: int, n: int, offset: int) -> bytes:
        sizes["pread"].append(n)
        return real_pread(fd, n, offset)

    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "pread", pread)
    path = tmp_path / "big.bin"
    tuner = ConcurrencyTuner(fixed=4)
    download_checked(
        s3, uri, str(path), sha256=hashlib.sha256(data).hexdigest(), size=size, tuner=tuner, range_size=3 * MiB
    )
    assert path.read_bytes() == data
    assert -1 not in asked, "a body was read whole"
    assert max(asked) <= CHUNK_SIZE
    assert max(sizes["read"]) == max(sizes["pwrite"]) == max(sizes["pread"]) == CHUNK_SIZE
    assert sum(sizes["pwrite"]) == size
    assert sum(sizes["pread"]) == size, "the digest read every byte back once"


# -- corruption, failures, resumption ----------------------------------------------------------


def test_a_corrupted_range_is_caught_and_the_file_removed(s3: Any, bucket: str, tmp_path: Any) -> None:
    size = 4 * R
    data = randbytes(size, seed=7)
    uri = put(s3, bucket, "obj.bin", data)
    gets = Gets(s3)
    bad = spec_of(2 * R, 3 * R)

    def corrupt(spec: str, body: Any) -> Any:
        if spec != bad:
            return body
        raw = bytearray(body.read())
        raw[len(raw) // 2] ^= 0x01
        return StreamingBody(io.BytesIO(bytes(raw)), len(raw))

    gets.reply = corrupt
    path = tmp_path / "obj.bin"
    with pytest.raises(ArchiveError, match=r"sha256 [0-9a-f]{64} differs from the manifest's") as info:
        download_checked(s3, uri, str(path), sha256=hashlib.sha256(data).hexdigest(), size=size, range_size=R)
    assert uri in str(info.value)
    assert bad in gets.ranges
    assert not path.exists()
    assert download_threads() == []


def test_a_failing_range_aborts_the_download_cleanly(s3: Any, bucket: str, tmp_path: Any) -> None:
    ranges = 32
    data = randbytes(ranges * 1024, seed=9)
    uri = put(s3, bucket, "obj.bin", data)
    gets = Gets(s3)
    bad = spec_of(2 * 1024, 3 * 1024)
    gets.fail = lambda spec, n: error("AccessDenied", 403) if spec == bad else None
    path = tmp_path / "obj.bin"
    tuner = ConcurrencyTuner(fixed=4)
    with pytest.raises(ClientError, match="AccessDenied"):
        download_checked(s3, uri, str(path), size=len(data), tuner=tuner, range_size=1024)
    assert gets.ranges.count(bad) == 1, "a non-retryable error is not retried"
    assert len(gets.ranges) < ranges, "the download went on after a range failed"
    assert not path.exists()
    assert download_threads() == []
    assert tuner.in_flight == 0, "every slot was given back"


def test_a_range_replaced_mid_download_aborts_with_no_file(s3: Any, bucket: str, tmp_path: Any) -> None:
    data = randbytes(8 * 1024, seed=10)
    uri = put(s3, bucket, "obj.bin", data)
    gets = Gets(s3)
    replaced = threading.Event()

    def replace(spec: str, n: int) -> BaseException | None:
        if spec == spec_of(4 * 1024, 5 * 1024) and not replaced.is_set():
            replaced.set()
            s3.put_object(Bucket=bucket, Key="obj.bin", Body=randbytes(8 * 1024, seed=11))
        return None

    gets.fail = replace
    path = tmp_path / "obj.bin"
    with pytest.raises(ArchiveError, match="was replaced while being read"):
        download_checked(s3, uri, str(path), size=len(data), tuner=ConcurrencyTuner(fixed=1), range_size=1024)
    assert not path.exists()
    assert download_threads() == []


def test_a_body_that_breaks_off_is_resumed_where_it_stopped(s3: Any, bucket: str, tmp_path: Any) -> None:
    size = 3 * R
    data = randbytes(size, seed=12)
    uri = put(s3, bucket, "obj.bin", data)
    gets = Gets(s3)
    broken = spec_of(R, 2 * R)

    class BreaksAfterOneChunk:
        def __init__(self, body: Any) -> None:
            self.body, self.reads = body, 0

        def read(self, amt: int | None = None) -> bytes:
            self.reads += 1
            if self.reads > 1:
                raise ResponseStreamingError(error="injected: connection broke")
            return bytes(self.body.read(amt))

        def close(self) -> None:
            self.body.close()

    gets.reply = lambda spec, body: BreaksAfterOneChunk(body) if spec == broken else body
    path = tmp_path / "obj.bin"
    seen: list[int] = []
    download_checked(
        s3, uri, str(path), sha256=hashlib.sha256(data).hexdigest(), size=size, progress=seen.append, range_size=R
    )
    assert path.read_bytes() == data
    assert spec_of(R + CHUNK_SIZE, 2 * R) in gets.ranges, "the retry asked only for what was missing"
    assert sum(seen) == size, "no byte counted twice"


def test_a_throttled_range_is_retried_and_tells_the_tuner(s3: Any, bucket: str, tmp_path: Any) -> None:
    size = 6 * 1024
    data = randbytes(size, seed=13)
    uri = put(s3, bucket, "obj.bin", data)
    gets = Gets(s3)
    slow = spec_of(1024, 2048)
    gets.fail = lambda spec, n: error("SlowDown", 503) if spec == slow and n <= 2 else None
    tuner = ConcurrencyTuner(start=4, cap=4)
    path = tmp_path / "obj.bin"
    download_checked(s3, uri, str(path), sha256=hashlib.sha256(data).hexdigest(), tuner=tuner, range_size=1024)
    assert path.read_bytes() == data
    assert gets.ranges.count(slow) == 3
    assert tuner.throttles >= 1
    assert tuner.limit < 4, "the tuner backed off"


def test_a_range_failing_every_try_gives_up(s3: Any, bucket: str, tmp_path: Any) -> None:
    data = randbytes(4 * 1024, seed=14)
    uri = put(s3, bucket, "obj.bin", data)
    gets = Gets(s3)
    bad = spec_of(1024, 2048)
    gets.fail = lambda spec, n: error("InternalError", 500) if spec == bad else None
    path = tmp_path / "obj.bin"
    with pytest.raises(ClientError, match="InternalError"):
        download_checked(s3, uri, str(path), range_size=1024)
    assert gets.ranges.count(bad) == inplace.RANGE_RETRY.attempts
    assert not path.exists()
    assert download_threads() == []
