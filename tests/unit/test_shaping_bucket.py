"""The shaping proxy's pure parts: rates as the command line takes them, the token bucket."""

from __future__ import annotations

import pytest

from devtools.shaping_proxy import READ_SIZE, TokenBucket, parse_rate


@pytest.mark.parametrize(
    ("text", "rate"),
    [("25MB", 25e6), ("20MiB", 20 * 1024**2), ("1.5GB/s", 1.5e9), ("0", 0.0), ("4096", 4096.0), ("10kb", 1e4)],
)
def test_parse_rate(text: str, rate: float) -> None:
    assert parse_rate(text) == rate


def test_parse_rate_refuses_other_units() -> None:
    with pytest.raises(ValueError, match="not a rate"):
        parse_rate("10 furlongs")


def test_bucket_without_rate_never_waits() -> None:
    assert TokenBucket(0).reserve(10**9, now=0.0) == 0.0


def test_bucket_waits_for_what_it_lacks() -> None:
    bucket = TokenBucket(1e6)
    start = bucket.stamp
    # The burst goes at once; the next MB waits a second for its tokens.
    assert bucket.reserve(int(bucket.burst), now=start) == 0.0
    assert bucket.reserve(10**6, now=start) == pytest.approx(1.0)
    # Over a long stretch the average is the rate, whatever the chunk sizes.
    now, total = start, 0
    for n in (READ_SIZE, 1000, 3 * READ_SIZE, 17) * 50:
        now += bucket.reserve(n, now)
        total += n
    assert total / (now - start) == pytest.approx(1e6, rel=0.05)


def test_bucket_refills_only_to_its_burst() -> None:
    bucket = TokenBucket(1e6)
    start = bucket.stamp
    assert bucket.reserve(int(bucket.burst), now=start + 3600.0) == 0.0
    assert bucket.reserve(10**6, now=start + 3600.0) == pytest.approx(1.0)
