"""MultipartWriter against a real S3 API: a moto server over HTTP.

S3 is never mocked.  Faults (dropped connections, lost replies, errors from the store) come from
fault injection through botocore's event hooks: a hook registered on the client raises
where the network or the store would have failed, and every other request reaches the
server as usual.  Hooks run in the thread that makes the call, so hooks on UploadPart run
in the writer's upload threads.
"""

from __future__ import annotations

import array
import base64
import gc
import hashlib
import io
import math
import random
import threading
import time
import weakref
import zlib
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
import torch
from botocore.config import Config
from botocore.exceptions import ClientError, ConnectionClosedError

from serializer.errors import ObjectExists, UploadFailed
from serializer.s3.client import make_s3_client
from serializer.s3.multipart import NO_SUCH_UPLOAD_RETRIES, MultipartWriter, WriterState
from serializer.s3.parts import MIN_PART_SIZE
from serializer.s3.retry import RetryPolicy
from tests.conftest import object_keys, open_uploads

PART = MIN_PART_SIZE
#: A retry policy that does not wait, so fault tests stay fast.
NO_WAIT = RetryPolicy(attempts=5, base_delay=0.01, sleep=lambda s: None)


# -- helpers ------------------------------------------------------------------------------


def payload(size: int, seed: int = 0) -> bytes:
    return random.Random(seed).randbytes(size)


def read_back(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def chunks(data: bytes, sizes: tuple[int, ...] = (1, 777_777, 3_000_001, 65_537, 2_500_000)) -> Iterator[Any]:
    """``data`` in odd-sized pieces, alternating bytes, bytearray and memoryview."""
    kinds = (bytes, bytearray, memoryview)
    pos = i = 0
    while pos < len(data):
        piece = data[pos : pos + sizes[i % len(sizes)]]
        yield kinds[i % len(kinds)](piece)
        pos += len(piece)
        i += 1


def expected_parts(size: int) -> int:
    """Parts the writer uses at PART: none (a single put) up to one part, else ceil(size / PART)."""
    return 0 if size <= PART else math.ceil(size / PART)


def multipart_etag(data: bytes, part_size: int = PART) -> str:
    digests = b"".join(
        hashlib.md5(data[i : i + part_size], usedforsecurity=False).digest() for i in range(0, len(data), part_size)
    )
    count = math.ceil(len(data) / part_size)
    return f'"{hashlib.md5(digests, usedforsecurity=False).hexdigest()}-{count}"'


def client_error(code: str, operation: str, status: int = 400) -> ClientError:
    response: Any = {"Error": {"Code": code, "Message": "injected"}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, operation)


def part_number_of(request: Any) -> int:
    return int(parse_qs(urlsplit(request.url).query)["partNumber"][0])


class Calls:
    """Counts the S3 operations a client makes (a ``before-call`` hook on every operation)."""

    def __init__(self, client: Any) -> None:
        self._lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        client.meta.events.register("before-call.s3", self._hook)

    def _hook(self, model: Any, **kwargs: Any) -> None:
        with self._lock:
            self.counts[model.name] += 1

    def __getitem__(self, operation: str) -> int:
        return self.counts[operation]


class PartSizes:
    """Records PartNumber -> ContentLength of every UploadPart request."""

    def __init__(self, client: Any) -> None:
        self._lock = threading.Lock()
        self.sizes: dict[int, int] = {}
        client.meta.events.register("before-parameter-build.s3.UploadPart", self._hook)

    def _hook(self, params: dict[str, Any], **kwargs: Any) -> None:
        with self._lock:
            self.sizes[params["PartNumber"]] = params["ContentLength"]


@pytest.fixture()
def s3_no_retry(moto_endpoint: str) -> Any:
    """A client with botocore's own retries off, so the writer's retry layer is what retries."""
    config = Config(max_pool_connections=8, retries={"mode": "standard", "total_max_attempts": 1})
    return boto3.Session().client("s3", endpoint_url=moto_endpoint, config=config)


def assert_nothing_left(client: Any, bucket: str) -> None:
    assert object_keys(client, bucket) == []
    assert open_uploads(client, bucket) == []


def assert_committed(client: Any, bucket: str, key: str, w: MultipartWriter, data: bytes) -> None:
    assert read_back(client, bucket, key) == data
    assert w.state is WriterState.COMMITTED
    assert w.closed
    result = w.result
    assert result is not None
    assert (result.bucket, result.key, result.uri) == (bucket, key, f"s3://{bucket}/{key}")
    assert result.size == len(data)
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.parts == expected_parts(len(data))
    assert result.etag == client.head_object(Bucket=bucket, Key=key)["ETag"]
    assert open_uploads(client, bucket) == []


# -- sizes and inputs ---------------------------------------------------------------------


SIZES = [0, 1, PART - 1, PART, PART + 1, 2 * PART, 6 * PART - 12_345]


@pytest.mark.parametrize("size", SIZES, ids=lambda n: f"{n}B")
def test_round_trip_in_odd_chunks(s3: Any, bucket: str, size: int) -> None:
    calls = Calls(s3)
    data = payload(size, seed=size)
    with MultipartWriter(s3, bucket, "obj", part_size=PART) as w:
        total = 0
        for piece in chunks(data):
            assert w.write(piece) == len(piece)
            total += len(piece)
            assert w.tell() == total
        assert w.sha256 == hashlib.sha256(data).hexdigest()
    assert_committed(s3, bucket, "obj", w, data)

    parts = expected_parts(size)
    if parts == 0:
        # Up to one part: a single PutObject, no multipart upload at all.
        assert (calls["PutObject"], calls["CreateMultipartUpload"], calls["UploadPart"]) == (1, 0, 0)
        assert calls["CompleteMultipartUpload"] == 0
        assert w.result is not None
        assert w.result.etag == f'"{hashlib.md5(data, usedforsecurity=False).hexdigest()}"'
    else:
        assert (calls["PutObject"], calls["CreateMultipartUpload"], calls["UploadPart"]) == (0, 1, parts)
        assert calls["CompleteMultipartUpload"] == 1
        assert w.result is not None
        assert w.result.etag == multipart_etag(data)
    assert calls["AbortMultipartUpload"] == 0


@pytest.mark.parametrize("kind", [bytes, bytearray, memoryview], ids=lambda k: k.__name__)
@pytest.mark.parametrize("size", [100, PART + 1], ids=["small", "multipart"])
def test_single_write_of_each_buffer_type(s3: Any, bucket: str, kind: type, size: int) -> None:
    data = payload(size, seed=7)
    with MultipartWriter(s3, bucket, "obj", part_size=PART) as w:
        assert w.write(kind(data)) == size
    assert_committed(s3, bucket, "obj", w, data)


def test_memoryview_of_wider_items_counts_bytes(s3: Any, bucket: str) -> None:
    items = array.array("I", range(2 * PART // 4 + 3))  # just over two parts of 4-byte items
    view = memoryview(items)
    with MultipartWriter(s3, bucket, "obj", part_size=PART) as w:
        assert w.write(view) == view.nbytes
    assert_committed(s3, bucket, "obj", w, items.tobytes())


def test_empty_object_is_an_explicit_empty_put(s3: Any, bucket: str) -> None:
    calls = Calls(s3)
    with MultipartWriter(s3, bucket, "empty", part_size=PART) as w:
        assert w.write(b"") == 0
    assert calls["PutObject"] == 1
    assert calls["CreateMultipartUpload"] == 0
    assert s3.head_object(Bucket=bucket, Key="empty")["ContentLength"] == 0
    assert object_keys(s3, bucket) == ["empty"]
    assert_committed(s3, bucket, "empty", w, b"")


def test_writer_without_any_write_commits_an_empty_object(s3: Any, bucket: str) -> None:
    w = MultipartWriter(s3, bucket, "nothing", part_size=PART)
    w.close()
    assert_committed(s3, bucket, "nothing", w, b"")


def test_parts_are_equal_except_the_last(s3: Any, bucket: str) -> None:
    recorded = PartSizes(s3)
    data = payload(3 * PART + 777, seed=3)
    with MultipartWriter(s3, bucket, "obj", part_size=PART) as w:
        for piece in chunks(data, (999_983, 12_345, 4_000_037)):
            w.write(piece)
    assert recorded.sizes == {1: PART, 2: PART, 3: PART, 4: 777}
    assert_committed(s3, bucket, "obj", w, data)


def test_larger_part_size_is_used(s3: Any, bucket: str) -> None:
    recorded = PartSizes(s3)
    part = 6 * 1024 * 1024
    data = payload(2 * part + 1, seed=4)
    with MultipartWriter(s3, bucket, "obj", part_size=part) as w:
        w.write(data)
    assert recorded.sizes == {1: part, 2: part, 3: 1}
    assert read_back(s3, bucket, "obj") == data


def test_part_size_below_s3_minimum_is_raised_to_it(s3: Any, bucket: str) -> None:
    recorded = PartSizes(s3)
    data = payload(PART + 10, seed=5)
    with MultipartWriter(s3, bucket, "obj", part_size=1024) as w:
        w.write(data)
    assert recorded.sizes == {1: PART, 2: 10}
    assert read_back(s3, bucket, "obj") == data


def test_small_size_hint_that_is_exceeded(s3: Any, bucket: str) -> None:
    recorded = PartSizes(s3)
    data = payload(2 * PART + 5, seed=6)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, size_hint=100) as w:
        for piece in chunks(data):
            w.write(piece)
    assert recorded.sizes == {1: PART, 2: PART, 3: 5}
    assert_committed(s3, bucket, "obj", w, data)


def test_exact_size_hint_for_a_small_object(s3: Any, bucket: str) -> None:
    calls = Calls(s3)
    data = payload(1000, seed=8)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, size_hint=len(data)) as w:
        w.write(data)
    assert calls["PutObject"] == 1
    assert calls["CreateMultipartUpload"] == 0
    assert_committed(s3, bucket, "obj", w, data)


def test_extra_args_reach_the_object(s3: Any, bucket: str) -> None:
    extra = {"ContentType": "application/x-torchscript", "Metadata": {"model": "resnet"}}
    for key, size in (("small", 10), ("multi", PART + 10)):
        with MultipartWriter(s3, bucket, key, part_size=PART, extra_args=extra) as w:
            w.write(payload(size))
        head = s3.head_object(Bucket=bucket, Key=key)
        assert head["ContentType"] == "application/x-torchscript"
        assert head["Metadata"] == {"model": "resnet"}


@pytest.mark.parametrize("size", [0, 100, 3 * PART + 5], ids=["empty", "small", "multipart"])
def test_progress_sums_to_object_size(s3: Any, bucket: str, size: int) -> None:
    reported: list[int] = []
    data = payload(size, seed=9)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, progress=reported.append) as w:
        for piece in chunks(data):
            w.write(piece)
    assert sum(reported) == size
    assert len(reported) == max(expected_parts(size), 1)
    assert read_back(s3, bucket, "obj") == data


# -- bounded memory and concurrency -------------------------------------------------------


def test_parts_in_flight_are_bounded(s3: Any, bucket: str) -> None:
    max_in_flight = 2
    lock = threading.Lock()
    state = {"active": 0, "max_active": 0, "acked": 0}

    def started(**kwargs: Any) -> None:
        with lock:
            state["active"] += 1
            state["max_active"] = max(state["max_active"], state["active"])
        time.sleep(0.25)  # a slow store

    def finished(**kwargs: Any) -> None:
        with lock:
            state["active"] -= 1
            state["acked"] += 1

    s3.meta.events.register("before-call.s3.UploadPart", started)
    s3.meta.events.register("after-call.s3.UploadPart", finished)

    data = payload(8 * PART + 99, seed=10)
    bound = PART * (max_in_flight + 1)
    written = max_ahead = 0
    w = MultipartWriter(s3, bucket, "obj", part_size=PART, max_in_flight=max_in_flight)
    for piece in chunks(data, (1_000_003,)):
        written += w.write(piece)
        with lock:
            ahead = written - state["acked"] * PART
        # The producer never holds more than one part filling plus max_in_flight uploading.
        assert ahead <= bound
        max_ahead = max(max_ahead, ahead)
    w.close()

    assert state["max_active"] == max_in_flight
    # It did run ahead of the uploads (the bound is reached, not just respected).
    assert max_ahead > PART * max_in_flight
    assert state["acked"] == 9
    assert_committed(s3, bucket, "obj", w, data)


def test_several_writers_at_once(s3: Any, bucket: str) -> None:
    sizes = [PART // 2, PART + 1, 2 * PART + 3, 3 * PART - 1]
    datas = [payload(n, seed=100 + i) for i, n in enumerate(sizes)]

    def produce(i: int) -> MultipartWriter:
        with MultipartWriter(s3, bucket, f"obj-{i}", part_size=PART, max_in_flight=2) as w:
            for piece in chunks(datas[i]):
                w.write(piece)
        return w

    with ThreadPoolExecutor(len(sizes)) as pool:
        writers = list(pool.map(produce, range(len(sizes))))

    assert sorted(object_keys(s3, bucket)) == [f"obj-{i}" for i in range(len(sizes))]
    for i, w in enumerate(writers):
        assert_committed(s3, bucket, f"obj-{i}", w, datas[i])


# -- failures -----------------------------------------------------------------------------


def test_part_that_fails_twice_is_retried(s3_no_retry: Any, bucket: str) -> None:
    s3 = s3_no_retry
    lock = threading.Lock()
    attempts: Counter[int] = Counter()

    def drop_part_two(request: Any, **kwargs: Any) -> None:
        number = part_number_of(request)
        with lock:
            attempts[number] += 1
            fail = number == 2 and attempts[number] <= 2
        if fail:
            raise ConnectionClosedError(endpoint_url=request.url)

    s3.meta.events.register("before-send.s3.UploadPart", drop_part_two)
    delays: list[float] = []
    retry = RetryPolicy(attempts=5, base_delay=0.01, sleep=delays.append)
    data = payload(3 * PART + 11, seed=11)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, retry=retry) as w:
        for piece in chunks(data):
            w.write(piece)

    assert attempts == {1: 1, 2: 3, 3: 1, 4: 1}
    assert len(delays) == 2
    assert_committed(s3, bucket, "obj", w, data)


def test_part_that_always_fails_aborts_the_upload(s3_no_retry: Any, bucket: str) -> None:
    s3 = s3_no_retry
    calls = Calls(s3)
    attempts: Counter[int] = Counter()

    def drop_part_two(request: Any, **kwargs: Any) -> None:
        number = part_number_of(request)
        attempts[number] += 1
        if number == 2:
            raise ConnectionClosedError(endpoint_url=request.url)

    s3.meta.events.register("before-send.s3.UploadPart", drop_part_two)
    retry = RetryPolicy(attempts=3, base_delay=0.01, sleep=lambda s: None)
    # The failure may surface in a later write or at close: either way it leaves the block.
    with (
        pytest.raises(UploadFailed) as info,
        MultipartWriter(s3, bucket, "obj", part_size=PART, retry=retry) as w,
    ):
        for piece in chunks(payload(4 * PART, seed=12)):
            w.write(piece)

    message = str(info.value)
    assert "part 2" in message
    assert "s3://" + bucket + "/obj" in message
    assert "Connection was closed" in message
    assert isinstance(info.value.__cause__, ConnectionClosedError)
    assert attempts[2] == 3
    assert w.state is WriterState.ABORTED
    assert w.result is None
    assert calls["AbortMultipartUpload"] == 1
    assert calls["CompleteMultipartUpload"] == 0
    assert_nothing_left(s3, bucket)
    with pytest.raises(ValueError, match="aborted"):
        w.write(b"x")


def test_exception_in_with_block_propagates_and_aborts(s3: Any, bucket: str) -> None:
    calls = Calls(s3)
    error = ValueError("model exploded")
    with (
        pytest.raises(ValueError, match="model exploded") as info,
        MultipartWriter(s3, bucket, "obj", part_size=PART) as w,
    ):
        w.write(payload(2 * PART + 10, seed=13))
        raise error
    assert info.value is error
    assert type(info.value) is ValueError
    assert calls["CreateMultipartUpload"] == 1
    assert calls["UploadPart"] == 2
    assert calls["AbortMultipartUpload"] == 1
    assert calls["CompleteMultipartUpload"] == 0
    assert w.state is WriterState.ABORTED
    assert_nothing_left(s3, bucket)


def test_exception_in_with_block_before_first_part(s3: Any, bucket: str) -> None:
    calls = Calls(s3)
    with pytest.raises(KeyError), MultipartWriter(s3, bucket, "obj", part_size=PART) as w:
        w.write(b"partial")
        raise KeyError("stop")
    assert sum(calls.counts.values()) == 0
    assert w.state is WriterState.ABORTED
    assert_nothing_left(s3, bucket)


def test_create_failure_raises_upload_failed(s3: Any, bucket: str) -> None:
    def deny(**kwargs: Any) -> None:
        raise client_error("AccessDenied", "CreateMultipartUpload", 403)

    s3.meta.events.register("before-call.s3.CreateMultipartUpload", deny)
    w = MultipartWriter(s3, bucket, "obj", part_size=PART, retry=NO_WAIT)
    with pytest.raises(UploadFailed, match="AccessDenied") as info:
        w.write(payload(PART + 1))
    assert isinstance(info.value.__cause__, ClientError)
    assert w.state is WriterState.ABORTED
    assert_nothing_left(s3, bucket)


def test_put_failure_raises_upload_failed(s3: Any, bucket: str) -> None:
    def deny(**kwargs: Any) -> None:
        raise client_error("AccessDenied", "PutObject", 403)

    s3.meta.events.register("before-call.s3.PutObject", deny)
    w = MultipartWriter(s3, bucket, "obj", part_size=PART, retry=NO_WAIT)
    w.write(b"small")
    with pytest.raises(UploadFailed, match="AccessDenied"):
        w.close()
    assert w.state is WriterState.ABORTED
    assert_nothing_left(s3, bucket)


def test_abort_is_retried_when_the_connection_drops(s3_no_retry: Any, bucket: str) -> None:
    s3 = s3_no_retry
    tries = []

    def drop_once(request: Any, **kwargs: Any) -> None:
        tries.append(request.url)
        if len(tries) == 1:
            raise ConnectionClosedError(endpoint_url=request.url)

    s3.meta.events.register("before-send.s3.AbortMultipartUpload", drop_once)
    w = MultipartWriter(s3, bucket, "obj", part_size=PART, retry=NO_WAIT)
    w.write(payload(PART + 1))
    assert len(open_uploads(s3, bucket)) == 1
    w.abort()
    assert len(tries) == 2
    assert_nothing_left(s3, bucket)


# -- conditional publish ------------------------------------------------------------------


@pytest.mark.parametrize("size", [10, 2 * PART + 3], ids=["single-put", "multipart"])
def test_if_none_match_refuses_an_existing_key(s3: Any, bucket: str, size: int) -> None:
    s3.put_object(Bucket=bucket, Key="taken", Body=b"original")
    w = MultipartWriter(s3, bucket, "taken", part_size=PART, if_none_match=True, retry=NO_WAIT)
    with pytest.raises(ObjectExists, match="already exists") as info, w:
        for piece in chunks(payload(size, seed=14)):
            w.write(piece)
    assert isinstance(info.value, UploadFailed)
    assert w.state is WriterState.ABORTED
    assert read_back(s3, bucket, "taken") == b"original"
    assert object_keys(s3, bucket) == ["taken"]
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize("size", [10, 2 * PART + 3], ids=["single-put", "multipart"])
def test_if_none_match_publishes_a_new_key(s3: Any, bucket: str, size: int) -> None:
    conditional: list[str] = []

    def record(request: Any, **kwargs: Any) -> None:
        if request.method in ("PUT", "POST") and "If-None-Match" in request.headers:
            conditional.append(request.headers["If-None-Match"])

    s3.meta.events.register("before-send.s3", record)
    data = payload(size, seed=15)
    with MultipartWriter(s3, bucket, "fresh", part_size=PART, if_none_match=True) as w:
        w.write(data)
    # Exactly the publishing request (PutObject or Complete) is conditional.
    assert conditional in ([b"*"], ["*"])
    assert_committed(s3, bucket, "fresh", w, data)


def test_if_none_match_between_two_racing_writers(s3: Any, bucket: str) -> None:
    first, second = payload(PART + 100, seed=16), payload(PART + 200, seed=17)
    a = MultipartWriter(s3, bucket, "model.pt", part_size=PART, if_none_match=True, retry=NO_WAIT)
    b = MultipartWriter(s3, bucket, "model.pt", part_size=PART, if_none_match=True, retry=NO_WAIT)
    a.write(first)
    b.write(second)
    a.close()
    with pytest.raises(ObjectExists):
        b.close()
    assert read_back(s3, bucket, "model.pt") == first
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize("size", [PART // 2, PART + 100], ids=["put", "multipart"])
def test_two_writers_of_identical_bytes_one_wins_the_other_is_refused(s3: Any, bucket: str, size: int) -> None:
    # Two processes saving one module the same way write identical archives: the loser must
    # not take the winner's object for its own (it would go on to publish a manifest too).
    data = payload(size, seed=19)
    a = MultipartWriter(s3, bucket, "model.pt", part_size=PART, if_none_match=True, retry=NO_WAIT)
    b = MultipartWriter(s3, bucket, "model.pt", part_size=PART, if_none_match=True, retry=NO_WAIT)
    a.write(data)
    b.write(data)
    a.close()
    with pytest.raises(ObjectExists):
        b.close()
    assert read_back(s3, bucket, "model.pt") == data
    assert open_uploads(s3, bucket) == []


# -- Complete and NoSuchUpload ------------------------------------------------------------


def test_no_such_upload_at_complete_is_retried(s3: Any, bucket: str) -> None:
    calls = Calls(s3)
    completes: list[int] = []

    def forget_once(**kwargs: Any) -> None:
        completes.append(1)
        if len(completes) == 1:
            raise client_error("NoSuchUpload", "CompleteMultipartUpload", 404)

    s3.meta.events.register("before-call.s3.CompleteMultipartUpload", forget_once)
    delays: list[float] = []
    data = payload(2 * PART + 1, seed=18)
    retry = RetryPolicy(base_delay=0.01, sleep=delays.append)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, retry=retry) as w:
        w.write(data)
    assert len(completes) == 2
    # Before trying again, the writer checked whether the object was already committed.
    assert calls["HeadObject"] == 1
    assert len(delays) == 1
    assert_committed(s3, bucket, "obj", w, data)


def test_lost_complete_reply_is_recognised_by_etag(s3_no_retry: Any, bucket: str) -> None:
    s3 = s3_no_retry
    completes: list[int] = []

    def reply_lost(**kwargs: Any) -> None:
        # The store committed the object, then the connection dropped before the reply.
        if len(completes) == 1:
            raise ConnectionClosedError(endpoint_url="injected")

    def upload_gone(**kwargs: Any) -> None:
        # The store no longer knows the (completed) upload id.
        completes.append(1)
        if len(completes) == 2:
            raise client_error("NoSuchUpload", "CompleteMultipartUpload", 404)

    s3.meta.events.register("after-call.s3.CompleteMultipartUpload", reply_lost)
    s3.meta.events.register("before-call.s3.CompleteMultipartUpload", upload_gone)
    data = payload(2 * PART + 2, seed=19)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, retry=NO_WAIT) as w:
        w.write(data)
    assert len(completes) == 2
    assert w.result is not None
    assert w.result.etag == multipart_etag(data)
    assert_committed(s3, bucket, "obj", w, data)


def test_no_such_upload_for_good_fails_and_leaves_nothing(s3: Any, bucket: str) -> None:
    completes: list[int] = []

    def always_forget(**kwargs: Any) -> None:
        completes.append(1)
        raise client_error("NoSuchUpload", "CompleteMultipartUpload", 404)

    s3.meta.events.register("before-call.s3.CompleteMultipartUpload", always_forget)
    w = MultipartWriter(s3, bucket, "obj", part_size=PART, retry=NO_WAIT)
    w.write(payload(PART + 1))
    with pytest.raises(UploadFailed, match="NoSuchUpload"):
        w.close()
    assert len(completes) == NO_SUCH_UPLOAD_RETRIES + 1
    assert_nothing_left(s3, bucket)


# -- torch --------------------------------------------------------------------------------


def test_torch_save_streams_into_the_writer(s3: Any, bucket: str) -> None:
    generator = torch.Generator().manual_seed(0)
    state = {
        "encoder.weight": torch.randn(1024, 1536, generator=generator),  # 6 MiB
        "encoder.bias": torch.randn(1536, generator=generator),
        "steps": torch.arange(1000, dtype=torch.int64),
        "mask": torch.rand(300, 300, generator=generator) > 0.5,
    }
    with MultipartWriter(s3, bucket, "state.pt", part_size=PART) as w:
        torch.save(state, w)  # type: ignore[arg-type]  # a binary file-like object, not an IO subclass
    assert w.result is not None
    assert w.result.parts >= 2

    data = read_back(s3, bucket, "state.pt")
    assert w.result.size == len(data)
    assert w.result.sha256 == hashlib.sha256(data).hexdigest()
    loaded = torch.load(io.BytesIO(data), weights_only=True)
    assert loaded.keys() == state.keys()
    for name, tensor in state.items():
        assert loaded[name].dtype == tensor.dtype
        assert torch.equal(loaded[name], tensor), name


# -- life cycle ---------------------------------------------------------------------------


def test_write_after_close_raises_and_close_is_idempotent(s3: Any, bucket: str) -> None:
    data = payload(PART + 1)
    w = MultipartWriter(s3, bucket, "obj", part_size=PART)
    w.write(data)
    w.close()
    result = w.result
    calls = Calls(s3)
    w.close()
    w.close()
    assert w.result is result
    with pytest.raises(ValueError, match="committed"):
        w.write(b"more")
    with pytest.raises(ValueError):
        w.flush()
    # Abort after commit does not touch the committed object.
    w.abort()
    assert w.state is WriterState.COMMITTED
    assert sum(calls.counts.values()) == 0
    assert_committed(s3, bucket, "obj", w, data)


@pytest.mark.parametrize("size", [100, 2 * PART + 1], ids=["small", "multipart"])
def test_abort_leaves_nothing(s3: Any, bucket: str, size: int) -> None:
    calls = Calls(s3)
    w = MultipartWriter(s3, bucket, "obj", part_size=PART)
    w.write(payload(size))
    w.abort()
    w.abort()
    assert w.state is WriterState.ABORTED
    assert w.closed
    w.close()  # a no-op on an aborted writer: it must not publish what was written
    assert w.result is None
    with pytest.raises(ValueError, match="aborted"):
        w.write(b"x")
    assert calls["PutObject"] == 0
    assert calls["CompleteMultipartUpload"] == 0
    assert calls["AbortMultipartUpload"] == (1 if size > PART else 0)
    assert_nothing_left(s3, bucket)


@pytest.mark.parametrize("size", [100, 2 * PART + 1], ids=["small", "multipart"])
def test_writer_dropped_without_close_leaves_nothing(s3: Any, bucket: str, size: int) -> None:
    calls = Calls(s3)

    def produce() -> weakref.ref[MultipartWriter]:
        w = MultipartWriter(s3, bucket, "obj", part_size=PART)
        w.write(payload(size))
        return weakref.ref(w)

    ref = produce()
    # Parts still uploading keep the writer alive; once they land it is collectable.
    deadline = time.monotonic() + 20
    while ref() is not None and time.monotonic() < deadline:
        gc.collect()
        time.sleep(0.02)
    assert ref() is None
    assert calls["PutObject"] == 0
    assert calls["CompleteMultipartUpload"] == 0
    assert calls["AbortMultipartUpload"] == (1 if size > PART else 0)
    assert_nothing_left(s3, bucket)


# -- checksums and client modes -----------------------------------------------------------


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


CHECKSUMS = {
    "SHA256": lambda b: _b64(hashlib.sha256(b).digest()),
    "CRC32": lambda b: _b64(zlib.crc32(b).to_bytes(4, "big")),
}


@pytest.mark.parametrize("algorithm", sorted(CHECKSUMS))
def test_checksum_algorithm_on_a_small_object(s3: Any, bucket: str, algorithm: str) -> None:
    data = payload(1000, seed=20)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, checksum_algorithm=algorithm) as w:  # type: ignore[arg-type]
        w.write(data)
    assert_committed(s3, bucket, "obj", w, data)
    head = s3.head_object(Bucket=bucket, Key="obj", ChecksumMode="ENABLED")
    assert head[f"Checksum{algorithm}"] == CHECKSUMS[algorithm](data)


@pytest.mark.parametrize("algorithm", sorted(CHECKSUMS))
def test_checksum_algorithm_on_a_multipart_object(s3: Any, bucket: str, algorithm: str) -> None:
    listed: list[dict[str, Any]] = []

    def record(params: dict[str, Any], **kwargs: Any) -> None:
        listed.extend(params["MultipartUpload"]["Parts"])

    s3.meta.events.register("before-parameter-build.s3.CompleteMultipartUpload", record)
    data = payload(2 * PART + 9, seed=21)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, checksum_algorithm=algorithm) as w:  # type: ignore[arg-type]
        for piece in chunks(data):
            w.write(piece)
    assert_committed(s3, bucket, "obj", w, data)
    # Complete lists every part with the checksum the store computed for it.
    assert [p["PartNumber"] for p in listed] == [1, 2, 3]
    for p in listed:
        start = (p["PartNumber"] - 1) * PART
        assert p[f"Checksum{algorithm}"] == CHECKSUMS[algorithm](data[start : start + PART])


def _checksum_headers(client: Any) -> list[str]:
    seen: list[str] = []

    def record(request: Any, **kwargs: Any) -> None:
        seen.extend(h for h in request.headers if h.lower().startswith(("x-amz-checksum-", "x-amz-trailer")))

    client.meta.events.register("before-send.s3.PutObject", record)
    client.meta.events.register("before-send.s3.UploadPart", record)
    return seen


def test_client_with_checksums_when_required(moto_endpoint: str, bucket: str) -> None:
    client = make_s3_client(endpoint_url=moto_endpoint, checksum_mode="when_required", max_pool_connections=4)
    headers = _checksum_headers(client)
    for key, size in (("small", 1000), ("multi", 2 * PART + 1)):
        data = payload(size, seed=size)
        with MultipartWriter(client, bucket, key, part_size=PART) as w:
            for piece in chunks(data):
                w.write(piece)
        assert_committed(client, bucket, key, w, data)
    # No checksum headers or trailers were added to the uploads.
    assert headers == []


def test_default_client_adds_checksums(s3: Any, bucket: str) -> None:
    # The contrast to the test above: when_supported (the default) sends a checksum per request.
    headers = _checksum_headers(s3)
    with MultipartWriter(s3, bucket, "obj", part_size=PART) as w:
        w.write(payload(PART + 1))
    assert len(headers) >= 2


def test_conditional_put_whose_reply_was_lost_is_ours_not_a_conflict(s3_no_retry: Any, bucket: str) -> None:
    s3 = s3_no_retry
    puts: list[int] = []

    def reply_lost(**kwargs: Any) -> None:
        # The store committed the object, then the connection dropped before the reply: the
        # retried put meets the object it wrote itself (412 under If-None-Match).
        puts.append(1)
        if len(puts) == 1:
            raise ConnectionClosedError(endpoint_url="injected")

    s3.meta.events.register("after-call.s3.PutObject", reply_lost)
    data = payload(1000, seed=23)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, if_none_match=True, retry=NO_WAIT) as w:
        w.write(data)
    assert len(puts) == 2
    assert_committed(s3, bucket, "obj", w, data)


def test_conditional_put_onto_other_bytes_is_still_a_conflict(s3: Any, bucket: str) -> None:
    s3.put_object(Bucket=bucket, Key="obj", Body=b"theirs")
    with pytest.raises(ObjectExists), MultipartWriter(s3, bucket, "obj", if_none_match=True, retry=NO_WAIT) as w:
        w.write(b"ours")
    assert s3.get_object(Bucket=bucket, Key="obj")["Body"].read() == b"theirs"


def test_conditional_complete_whose_reply_was_lost_is_ours(s3_no_retry: Any, bucket: str) -> None:
    s3 = s3_no_retry
    completes: list[int] = []

    def reply_lost(**kwargs: Any) -> None:
        completes.append(1)
        if len(completes) == 1:
            raise ConnectionClosedError(endpoint_url="injected")

    s3.meta.events.register("after-call.s3.CompleteMultipartUpload", reply_lost)
    data = payload(2 * PART + 5, seed=29)
    with MultipartWriter(s3, bucket, "obj", part_size=PART, if_none_match=True, retry=NO_WAIT) as w:
        w.write(data)
    assert w.result is not None
    assert w.result.etag == multipart_etag(data)
    assert_committed(s3, bucket, "obj", w, data)
    assert open_uploads(s3, bucket) == []
