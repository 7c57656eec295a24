"""Downloads into place through a throttling store: the fault proxy (tests/faultproxy.py)
answers a share of the GETs with 503 SlowDown in front of the moto server; the download
still completes byte for byte, the tuner backs off, and the ranges in flight never exceed
its cap."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from serializer.s3.client import make_s3_client
from serializer.s3.ranged import default_tuner, download_checked
from serializer.s3.tuner import ConcurrencyTuner
from tests.faultproxy import ProxyHandle, fault_proxy
from tests.fixtures import randbytes

MiB = 1024**2
#: Ranges of the object: enough GETs for a share of them to be throttled.
RANGES = 32
RANGE = 512 * 1024
#: The tuner's cap, under the client's pool.
CAP = 6
POOL = 16


class InFlight:
    """The most GetObject calls of a client outstanding at once."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.now = self.peak = self.calls = 0
        client.meta.events.register("before-call.s3.GetObject", self._before)
        client.meta.events.register("after-call.s3.GetObject", self._after)
        client.meta.events.register("after-call-error.s3.GetObject", self._after)

    def _before(self, **_: Any) -> None:
        with self.lock:
            self.now += 1
            self.calls += 1
            self.peak = max(self.peak, self.now)

    def _after(self, **_: Any) -> None:
        with self.lock:
            self.now -= 1


@pytest.fixture()
def proxy(moto_endpoint: str) -> Iterator[ProxyHandle]:
    with fault_proxy(moto_endpoint, rate=0.0, faults="slowdown", ops="GetObject", seed=5) as handle:
        yield handle


def download_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("s3-download")]


def test_a_download_survives_throttling_and_stays_within_the_cap(
    s3: Any, bucket: str, proxy: ProxyHandle, tmp_path: Any
) -> None:
    data = randbytes(RANGES * RANGE + 17, seed=21)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=data)
    proxy.configure(rate=0.15, reset=True)
    client = make_s3_client(endpoint_url=proxy.url, max_pool_connections=POOL)
    in_flight = InFlight(client)
    # A short window, so that the tuner moves within a download of a second or two.
    tuner = ConcurrencyTuner(start=2, cap=CAP, window=0.05)
    path = tmp_path / "big.bin"
    download_checked(
        client,
        f"s3://{bucket}/big.bin",
        str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        size=len(data),
        tuner=tuner,
        range_size=RANGE,
    )
    assert path.read_bytes() == data
    stats = proxy.stats()
    throttled = stats["faults"].get("GetObject", {}).get("slowdown", 0)
    assert throttled > 0, stats
    assert stats["requests"]["GetObject"] == RANGES + 1 + throttled, "each throttled GET was tried again"
    assert tuner.throttles >= 1, "the tuner heard of the SlowDowns"
    assert tuner.peak <= CAP
    assert in_flight.peak <= CAP
    assert tuner.in_flight == 0
    assert download_threads() == []


def test_the_default_width_never_passes_the_client_pool(
    s3: Any, bucket: str, proxy: ProxyHandle, tmp_path: Any
) -> None:
    data = randbytes(RANGES * RANGE, seed=22)
    s3.put_object(Bucket=bucket, Key="big.bin", Body=data)
    proxy.configure(rate=0.1, reset=True)
    client = make_s3_client(endpoint_url=proxy.url, max_pool_connections=4)
    in_flight = InFlight(client)
    tuner = default_tuner(client)
    assert tuner.cap == 4
    path = tmp_path / "big.bin"
    download_checked(
        client,
        f"s3://{bucket}/big.bin",
        str(path),
        sha256=hashlib.sha256(data).hexdigest(),
        tuner=tuner,
        range_size=RANGE,
    )
    assert path.read_bytes() == data
    assert in_flight.peak <= 4
    assert proxy.stats()["faults"].get("GetObject", {}).get("slowdown", 0) > 0


def test_a_slowdown_botocore_retried_itself_still_tells_the_tuner(
    s3: Any, bucket: str, proxy: ProxyHandle, tmp_path: Any
) -> None:
    data = randbytes(4 * RANGE, seed=23)
    s3.put_object(Bucket=bucket, Key="obj.bin", Body=data)
    proxy.configure(rate=1.0, limit=1, reset=True)
    client = make_s3_client(endpoint_url=proxy.url, max_pool_connections=POOL)
    tuner = ConcurrencyTuner(start=4, cap=CAP)
    path = tmp_path / "obj.bin"
    download_checked(client, f"s3://{bucket}/obj.bin", str(path), sha256=hashlib.sha256(data).hexdigest(), tuner=tuner)
    assert path.read_bytes() == data
    assert proxy.stats()["faults"]["GetObject"] == {"slowdown": 1}
    assert tuner.throttles == 1, "botocore's own retry hid the SlowDown from the tuner"
    assert tuner.limit == 2
