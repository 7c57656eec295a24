"""Tuned uploads through the fault proxy (tests/faultproxy.py) in front of a moto server:
the parts in flight never exceed the tuner's cap, and SlowDown replies make it back off.

Requests in flight are counted in the client, per HTTP attempt (botocore's ``before-send``
to its ``needs-retry``, which follows every reply), so botocore's own retries count too.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from serializer.s3.client import make_s3_client
from serializer.s3.multipart import MultipartWriter
from serializer.s3.options import UploadOptions
from serializer.s3.parts import MIN_PART_SIZE
from serializer.s3.tuner import ConcurrencyTuner, TunerPhase
from tests.faultproxy import ProxyHandle, fault_proxy

PART = MIN_PART_SIZE
#: Parts per upload: enough for several windows of a fast tuner on loopback.
PARTS = 16


class InFlight:
    """The most UploadPart requests a client had on the wire at once."""

    def __init__(self, client: Any) -> None:
        self._lock = threading.Lock()
        self.now = 0
        self.most = 0
        self.sent = 0
        self._client = client
        client.meta.events.register("before-send.s3.UploadPart", self._start, unique_id="test-in-flight-start")
        client.meta.events.register("needs-retry.s3.UploadPart", self._end, unique_id="test-in-flight-end")

    def _start(self, **_: Any) -> None:
        with self._lock:
            self.now += 1
            self.sent += 1
            self.most = max(self.most, self.now)

    def _end(self, **_: Any) -> None:
        with self._lock:
            self.now -= 1


@pytest.fixture(scope="module")
def proxy(moto_endpoint: str) -> Iterator[ProxyHandle]:
    with fault_proxy(moto_endpoint, rate=0.0, faults="slowdown", ops="UploadPart", seed=11) as handle:
        yield handle


@pytest.fixture()
def client(proxy: ProxyHandle) -> Any:
    proxy.configure(rate=0.0, ops="UploadPart", faults="slowdown", reset=True)
    return make_s3_client(endpoint_url=proxy.url, max_pool_connections=32)


@pytest.fixture()
def spool(tmp_path: Path) -> Path:
    path = tmp_path / "spool.bin"
    block = hashlib.sha256(b"tuned").digest() * (PART // 32)
    with path.open("wb") as f:
        for i in range(PARTS):
            f.write(i.to_bytes(4, "big") + block[4:])
    return path


def send(client: Any, bucket: str, path: Path, writer: MultipartWriter) -> None:
    with path.open("rb") as f, writer:
        writer.send_file(f)
    stored = client.get_object(Bucket=bucket, Key=writer.key)["Body"].read()
    assert stored == path.read_bytes()


def test_a_growing_tuner_stays_within_its_cap(client: Any, bucket: str, spool: Path) -> None:
    in_flight = InFlight(client)
    tuner = ConcurrencyTuner(start=1, cap=5, window=0.02)
    send(client, bucket, spool, MultipartWriter(client, bucket, "grown", part_size=PART, tuner=tuner))
    assert tuner.peak <= 5
    assert in_flight.most <= 5
    assert in_flight.sent == PARTS


def test_the_default_tuner_stays_within_the_configured_connections(client: Any, bucket: str, spool: Path) -> None:
    in_flight = InFlight(client)
    opts = UploadOptions(part_size=PART, max_connections=3)
    writer = opts.writer(client, bucket, "capped", content_type="application/octet-stream")
    send(client, bucket, spool, writer)
    assert writer.tuner.cap == 3
    assert in_flight.most <= 3


def test_slowdown_replies_make_the_tuner_back_off(proxy: ProxyHandle, client: Any, bucket: str, spool: Path) -> None:
    proxy.configure(rate=0.3, ops="UploadPart", faults="slowdown", seed=5, reset=True)
    in_flight = InFlight(client)
    tuner = ConcurrencyTuner(start=8, cap=8, window=0.05, probe_after=60.0)
    send(client, bucket, spool, MultipartWriter(client, bucket, "throttled", part_size=PART, tuner=tuner))
    stats = proxy.stats()
    assert sum(stats["faults"].get("UploadPart", {}).values()) > 0
    assert tuner.throttles >= 1
    assert tuner.limit <= 4  # halved at least once, and held
    assert tuner.phase is TunerPhase.HOLDING
    assert in_flight.most <= 8


def test_a_fixed_count_ignores_throttling_but_keeps_its_bound(
    proxy: ProxyHandle, client: Any, bucket: str, spool: Path
) -> None:
    proxy.configure(rate=0.3, ops="UploadPart", faults="slowdown", seed=6, reset=True)
    in_flight = InFlight(client)
    writer = MultipartWriter(client, bucket, "fixed", part_size=PART, max_in_flight=3)
    send(client, bucket, spool, writer)
    assert writer.tuner.limit == 3
    assert in_flight.most <= 3
