"""Parts read from their ranges of the spool file: the object is the file, hashed and
indexed in one pass, no part buffered, and a failing part or range leaves nothing behind."""

from __future__ import annotations

import hashlib
import os
import types
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from serializer.archive import upload as archive_upload
from serializer.archive.upload import upload_file
from serializer.errors import UploadFailed
from serializer.s3 import multipart
from serializer.s3._body import FileRangeBody, MemoryBody
from serializer.s3.multipart import MultipartWriter
from serializer.s3.options import UploadOptions
from serializer.s3.parts import MIN_PART_SIZE

PART = MIN_PART_SIZE
EXTRA = b'{"built": "by the test"}'


def spool_archive(path: Path, size: int) -> Path:
    """A zip laid out as a TorchScript archive, of about ``size`` bytes, stored (not deflated)."""
    block = hashlib.sha256(b"seed").digest() * 4096  # 128 KiB that do not repeat within a part
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", b"pickle")
        z.writestr("archive/data/0", (block * (size // len(block) + 1))[:size])
        z.writestr("archive/extra/build.json", EXTRA)
    return path


def parts_of(s3: Any, bucket: str, key: str) -> int:
    etag = s3.head_object(Bucket=bucket, Key=key)["ETag"].strip('"')
    return int(etag.split("-")[1]) if "-" in etag else 0


def leftovers(s3: Any, bucket: str) -> tuple[list[str], list[str]]:
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=bucket).get("Contents", [])]
    uploads = [u["Key"] for u in s3.list_multipart_uploads(Bucket=bucket).get("Uploads", [])]
    return keys, uploads


@pytest.fixture()
def bodies(s3: Any) -> Iterator[list[type]]:
    """The body type of every UploadPart and PutObject the client sends."""
    seen: list[type] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(type(params["Body"]))

    s3.meta.events.register("provide-client-params.s3.UploadPart", record, unique_id="test-bodies-part")
    s3.meta.events.register("provide-client-params.s3.PutObject", record, unique_id="test-bodies-put")
    yield seen
    s3.meta.events.unregister("provide-client-params.s3.UploadPart", unique_id="test-bodies-part")
    s3.meta.events.unregister("provide-client-params.s3.PutObject", unique_id="test-bodies-put")


def test_the_object_is_the_spool_file_sent_from_its_ranges(
    s3: Any, bucket: str, tmp_path: Path, bodies: list[type]
) -> None:
    path = spool_archive(tmp_path / "model.pt", 4 * PART + 12345)
    data = path.read_bytes()
    result, index = upload_file(
        str(path), s3, bucket, "m/model.pt", UploadOptions(part_size=PART), None, {"build.json": EXTRA}
    )
    stored = s3.get_object(Bucket=bucket, Key="m/model.pt")["Body"].read()
    assert stored == data
    assert result.sha256 == hashlib.sha256(data).hexdigest()
    assert result.size == len(data)
    assert result.parts == parts_of(s3, bucket, "m/model.pt") == 5
    with zipfile.ZipFile(path) as z:
        assert {r.name: r.size for r in index.records} == {i.filename: i.file_size for i in z.infolist()}
    # Every part was a range of the file, none a buffer.
    assert bodies == [FileRangeBody] * 5
    assert leftovers(s3, bucket) == (["m/model.pt"], [])


def test_the_sha256_and_the_index_are_computed_in_one_pass(
    s3: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = spool_archive(tmp_path / "model.pt", 3 * PART + 999)
    size = path.stat().st_size
    hashed: list[int] = []
    hashers: list[Any] = []

    class CountingSha:
        def __init__(self) -> None:
            self._h = hashlib.sha256()
            hashers.append(self)

        def update(self, data: Any) -> None:
            hashed.append(len(memoryview(data)))
            self._h.update(data)

        def hexdigest(self) -> str:
            return self._h.hexdigest()

    # Only the writer's hashlib is replaced: botocore's own digests are untouched.
    monkeypatch.setattr(multipart, "hashlib", types.SimpleNamespace(sha256=CountingSha, md5=hashlib.md5))
    fed: list[tuple[int, int]] = []
    real = archive_upload.ZipStreamIndexer

    class CountingIndexer(real):  # type: ignore[misc, valid-type]
        def feed(self, data: bytes) -> None:
            fed.append((self.offset, len(data)))
            super().feed(data)

    monkeypatch.setattr(archive_upload, "ZipStreamIndexer", CountingIndexer)
    result, index = upload_file(
        str(path), s3, bucket, "m/model.pt", UploadOptions(part_size=PART), None, {"build.json": EXTRA}
    )
    assert len(hashers) == 1
    assert sum(hashed) == size  # each byte hashed once
    assert sum(n for _, n in fed) == size  # and fed to the indexer once, in order
    assert [offset for offset, _ in fed] == [sum(n for _, n in fed[:i]) for i in range(len(fed))]
    assert result.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert index.total == size


def test_a_file_smaller_than_a_part_is_one_put_from_the_file(
    s3: Any, bucket: str, tmp_path: Path, bodies: list[type]
) -> None:
    path = spool_archive(tmp_path / "small.pt", 1000)
    result, _ = upload_file(str(path), s3, bucket, "small.pt", UploadOptions(), None, {"build.json": EXTRA})
    assert s3.get_object(Bucket=bucket, Key="small.pt")["Body"].read() == path.read_bytes()
    assert result.parts == 0
    assert bodies == [FileRangeBody]


def test_an_empty_file_is_an_empty_object(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "empty"
    path.write_bytes(b"")
    with path.open("rb") as f, MultipartWriter(s3, bucket, "empty") as w:
        w.send_file(f)
    assert s3.get_object(Bucket=bucket, Key="empty")["Body"].read() == b""
    assert w.result is not None and w.result.sha256 == hashlib.sha256(b"").hexdigest()


def test_streamed_parts_stay_in_memory(s3: Any, bucket: str, bodies: list[type]) -> None:
    with MultipartWriter(s3, bucket, "stream", part_size=PART) as w:
        w.write(os.urandom(PART + 1))
    assert bodies == [MemoryBody, MemoryBody]
    # A stream's tuner stays within today's fixed default: its parts are buffers.
    assert w.tuner.cap == 4


def test_a_failing_part_aborts_the_upload_and_leaves_nothing(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = spool_archive(tmp_path / "model.pt", 4 * PART)
    sent: list[int] = []

    def refuse_third(params: dict[str, Any], **_: Any) -> None:
        sent.append(params["PartNumber"])
        if params["PartNumber"] == 3:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "no"}}, "UploadPart")

    s3.meta.events.register("provide-client-params.s3.UploadPart", refuse_third, unique_id="test-refuse")
    try:
        with pytest.raises(UploadFailed, match="part 3"):
            upload_file(str(path), s3, bucket, "m/model.pt", UploadOptions(part_size=PART), None, {})
    finally:
        s3.meta.events.unregister("provide-client-params.s3.UploadPart", unique_id="test-refuse")
    assert 3 in sent
    assert leftovers(s3, bucket) == ([], [])


def test_a_file_that_ends_early_aborts_the_upload(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = spool_archive(tmp_path / "model.pt", 4 * PART)
    seen = [0]

    def truncate_midway(chunk: bytes) -> None:
        seen[0] += len(chunk)
        if seen[0] == 2 * PART:  # two parts read and shipped: the rest of the file goes
            os.truncate(path, 2 * PART + 100)

    with (
        path.open("rb") as f,
        pytest.raises(UploadFailed, match="file ended"),
        MultipartWriter(s3, bucket, "m/model.pt", part_size=PART) as w,
    ):
        w.send_file(f, on_chunk=truncate_midway)
    assert leftovers(s3, bucket) == ([], [])


def test_tuned_parts_stay_within_the_cap(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = spool_archive(tmp_path / "model.pt", 12 * PART)
    opts = UploadOptions(part_size=PART, max_connections=3)
    with path.open("rb") as f, opts.writer(s3, bucket, "m/model.pt", content_type="application/zip") as w:
        w.send_file(f)
    assert 1 <= w.tuner.peak <= 3
    assert s3.get_object(Bucket=bucket, Key="m/model.pt")["Body"].read() == path.read_bytes()


def test_a_fixed_count_is_kept(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = spool_archive(tmp_path / "model.pt", 6 * PART)
    with path.open("rb") as f, MultipartWriter(s3, bucket, "m/model.pt", part_size=PART, max_in_flight=2) as w:
        w.send_file(f)
    assert w.tuner.cap == w.tuner.limit == 2
    assert w.tuner.peak <= 2


def test_a_file_after_a_write_is_refused(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x")
    w = MultipartWriter(s3, bucket, "k")
    w.write(b"abc")
    with path.open("rb") as f, pytest.raises(ValueError, match="only write"):
        w.send_file(f)
    w.abort()
    assert leftovers(s3, bucket) == ([], [])


def test_parts_are_sized_to_the_file_unless_set(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "sparse"
    with path.open("wb") as f:
        f.truncate(300 * 1024**3)  # 300 GiB, sparse: only its planning is looked at
    w = MultipartWriter(s3, bucket, "k")
    # Only the size is read before the first part: stop the pass at once.
    with path.open("rb") as f, pytest.raises(RuntimeError, match="stop"):
        w.send_file(f, on_chunk=lambda _: (_ for _ in ()).throw(RuntimeError("stop")))
    # 300 GiB in 64 MiB parts would be 4,800 parts: within 10,000, so 64 MiB.
    assert w.part_size == 64 * 1024**2
    assert leftovers(s3, bucket) == ([], [])
