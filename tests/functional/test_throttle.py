"""Throttling replies reach the tuner even when botocore's own retries hide them from us."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

from botocore.awsrequest import AWSResponse

from serializer.s3.multipart import MultipartWriter
from serializer.s3.parts import MIN_PART_SIZE
from serializer.s3.tuner import ConcurrencyTuner

SLOW_DOWN = b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>"


class Raw(io.BytesIO):
    def stream(self, **_: Any) -> Any:
        yield self.getvalue()


def test_a_slowdown_botocore_retried_still_lowers_the_limit(s3: Any, bucket: str, tmp_path: Path) -> None:
    answered = []

    def slow_down_once(request: Any, **_: Any) -> AWSResponse | None:
        if answered:
            return None
        answered.append(request.url)
        return AWSResponse(request.url, 503, {}, Raw(SLOW_DOWN))

    path = tmp_path / "f"
    path.write_bytes(b"x" * (3 * MIN_PART_SIZE))
    tuner = ConcurrencyTuner(start=4, cap=8)
    s3.meta.events.register("before-send.s3.UploadPart", slow_down_once, unique_id="test-slowdown")
    try:
        with path.open("rb") as f, MultipartWriter(s3, bucket, "k", part_size=MIN_PART_SIZE, tuner=tuner) as w:
            w.send_file(f)
    finally:
        s3.meta.events.unregister("before-send.s3.UploadPart", unique_id="test-slowdown")
    assert len(answered) == 1  # one 503, retried by botocore: the writer never saw an error
    assert w.result is not None and w.result.parts == 3
    assert tuner.throttles == 1
    assert tuner.limit == 2


def test_only_the_matching_transfers_throttling_is_reported(s3: Any, bucket: str, tmp_path: Path) -> None:
    from serializer.s3.throttle import watch_throttling

    answered: list[str] = []

    def slow_down_once(request: Any, **_: Any) -> AWSResponse | None:
        if answered:
            return None
        answered.append(request.url)
        return AWSResponse(request.url, 503, {}, Raw(SLOW_DOWN))

    ours: list[str] = []
    theirs: list[str] = []
    stop_ours = watch_throttling(
        s3, "UploadPart", lambda: ours.append("x"), match=lambda r: "uploadId" in r.get("query_string", {})
    )
    stop_theirs = watch_throttling(s3, "UploadPart", lambda: theirs.append("x"), match=lambda r: False)
    s3.meta.events.register("before-send.s3.UploadPart", slow_down_once, unique_id="test-slowdown")
    try:
        path = tmp_path / "f"
        path.write_bytes(b"x" * (2 * MIN_PART_SIZE))
        with path.open("rb") as f, MultipartWriter(s3, bucket, "k", part_size=MIN_PART_SIZE) as w:
            w.send_file(f)
    finally:
        s3.meta.events.unregister("before-send.s3.UploadPart", unique_id="test-slowdown")
        stop_ours()
        stop_theirs()
    assert len(answered) == 1
    assert ours == ["x"]
    assert theirs == []
