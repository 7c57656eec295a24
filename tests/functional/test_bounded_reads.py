"""Ranged reads against in-process moto: capped by ReadLimits and checked against the
object's size before anything is allocated, compressed records refused, and the GETs
after the first of an object bound to its first ETag (IfMatch), so a replaced object is
refused instead of mixing two objects' bytes."""

from __future__ import annotations

import io
import struct
import threading
import zipfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from botocore.exceptions import ClientError

from serializer.consumer.extras import TAIL_READ, read_extra_file
from serializer.errors import ArchiveError, ManifestError
from serializer.manifest.model import Manifest, build_manifest, manifest_uri_for
from serializer.manifest.store import read_manifest, read_manifest_raw, write_manifest
from serializer.producer import current_producer
from serializer.s3.limits import InvalidReadLimit, ReadLimits
from serializer.s3.ranged import download_checked, iter_object, read_checked
from serializer.s3.uri import parse_s3_uri
from serializer.torchscript.export import export_torchscript
from tests.fixtures import ALL_BYTES, TinyLinear, randbytes, scripted

LABELS = b"cat\ndog\nbird\nfish\n"
EXTRAS = {"labels.txt": LABELS, "bin/all.bin": ALL_BYTES}


class Gets:
    """Every GetObject of a client: its key, Range and IfMatch, the bytes the reply
    declared, and a hook run before the n-th call (to replace the object in between)."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.calls: list[dict[str, Any]] = []
        self.declared: list[int] = []
        self.before: dict[int, Callable[[], None]] = {}
        events = client.meta.events
        events.register("provide-client-params.s3.GetObject", self._params)
        events.register("after-call.s3.GetObject", self._after)

    def _params(self, params: dict[str, Any], **_: Any) -> None:
        with self.lock:
            n = len(self.calls)
            self.calls.append({k: params.get(k) for k in ("Key", "Range", "IfMatch")})
            hook = self.before.pop(n, None)
        if hook is not None:
            hook()

    def _after(self, parsed: dict[str, Any], **_: Any) -> None:
        with self.lock:
            self.declared.append(int(parsed.get("ContentLength", 0)))

    def of(self, key: str) -> list[dict[str, Any]]:
        return [c for c in self.calls if c["Key"] == key]


def put(s3: Any, uri: str, data: bytes) -> str:
    target = parse_s3_uri(uri)
    return str(s3.put_object(Bucket=target.bucket, Key=target.key, Body=data)["ETag"])


def key_of(uri: str) -> str:
    return parse_s3_uri(uri).key


@pytest.fixture()
def exported(s3: Any, bucket: str) -> Iterator[tuple[str, Manifest]]:
    """A real TorchScript export with extra files, and its manifest."""
    uri = f"s3://{bucket}/real/model.pt"
    info = export_torchscript(scripted(TinyLinear()), uri, client=s3, extra_files=EXTRAS)
    manifest = build_manifest(info, spec={"name": "real"}, spec_hash="0" * 64, producer=current_producer("cpu"))
    write_manifest(s3, manifest_uri_for(uri), manifest)
    yield uri, manifest


def export_like_zip(records: dict[str, bytes], *, deflate: frozenset[str] = frozenset()) -> bytes:
    """A zip named like an export's records (``model/...``), stored unless named in ``deflate``."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            method = zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED
            zf.writestr(f"model/{name}", data, compress_type=method)
    return buf.getvalue()


def with_listed(manifest: Manifest, name: str, **update: int) -> Manifest:
    extras = [e.model_copy(update=update) if e.name == name else e for e in manifest.extra_files]
    return manifest.model_copy(update={"extra_files": extras})


# -- moto itself ---------------------------------------------------------------------------


def test_moto_answers_a_stale_if_match_with_412(s3: Any, bucket: str) -> None:
    etag = put(s3, f"s3://{bucket}/k", b"first")
    assert s3.get_object(Bucket=bucket, Key="k", Range="bytes=0-1", IfMatch=etag)["Body"].read() == b"fi"
    put(s3, f"s3://{bucket}/k", b"second")
    with pytest.raises(ClientError) as info:
        s3.get_object(Bucket=bucket, Key="k", Range="bytes=0-1", IfMatch=etag)
    assert info.value.response["Error"]["Code"] == "PreconditionFailed"
    assert info.value.response["ResponseMetadata"]["HTTPStatusCode"] == 412


# -- real exports still read -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(EXTRAS))
def test_extra_files_of_a_real_export_read_with_and_without_the_manifest(
    s3: Any, exported: tuple[str, Manifest], name: str
) -> None:
    uri, manifest = exported
    gets = Gets(s3)
    assert read_extra_file(s3, uri, name, manifest=manifest) == EXTRAS[name]
    (one,) = gets.calls
    assert one["IfMatch"] is None
    gets.calls.clear()
    assert read_extra_file(s3, uri, name) == EXTRAS[name]
    tail, record = gets.calls
    assert tail["Range"] == f"bytes=-{TAIL_READ}" and tail["IfMatch"] is None
    etag = s3.head_object(Bucket=parse_s3_uri(uri).bucket, Key=key_of(uri))["ETag"]
    assert record["IfMatch"] == etag, "the record's GET is bound to the tail's object"


def test_a_real_export_downloads_checked(s3: Any, exported: tuple[str, Manifest], tmp_path: Any) -> None:
    uri, manifest = exported
    gets = Gets(s3)
    path = tmp_path / "model.pt"
    download_checked(s3, uri, str(path), sha256=manifest.artifact.sha256, size=manifest.artifact.size)
    assert path.stat().st_size == manifest.artifact.size
    etag = s3.head_object(Bucket=parse_s3_uri(uri).bucket, Key=key_of(uri))["ETag"]
    assert [c["IfMatch"] for c in gets.calls] == [etag] * len(gets.calls)


def test_manifests_read_and_are_capped(s3: Any, exported: tuple[str, Manifest], monkeypatch: Any) -> None:
    uri, manifest = exported
    got, raw = read_manifest_raw(s3, uri)
    assert got == manifest and Manifest.from_json(raw) == manifest
    assert len(raw) > 256
    gets = Gets(s3)
    with pytest.raises(ManifestError, match=r"is \d+ bytes, larger than 256 bytes .*EXPORT_READ_MAX_MANIFEST_BYTES"):
        read_manifest(s3, uri, limits=ReadLimits(max_manifest_bytes=256))
    assert [c["Range"] for c in gets.calls] == ["bytes=0-256"]
    monkeypatch.setenv("EXPORT_READ_MAX_MANIFEST_BYTES", "256b")
    with pytest.raises(ManifestError, match="larger than 256 bytes"):
        read_manifest_raw(s3, uri)
    monkeypatch.setenv("EXPORT_READ_MAX_MANIFEST_BYTES", "lots")
    with pytest.raises(InvalidReadLimit, match="EXPORT_READ_MAX_MANIFEST_BYTES='lots'"):
        read_manifest(s3, uri)


# -- hostile manifests --------------------------------------------------------------------


def test_an_extra_file_entry_of_2_40_bytes_is_refused_before_any_get(s3: Any, exported: tuple[str, Manifest]) -> None:
    uri, manifest = exported
    hostile = with_listed(manifest, "labels.txt", size=2**40)
    gets = Gets(s3)
    with pytest.raises(ArchiveError, match=r"is 1099511627776 bytes, more than the \d+-byte read limit") as info:
        read_extra_file(s3, uri, "labels.txt", manifest=hostile)
    assert "EXPORT_READ_MAX_EXTRA_BYTES" in str(info.value)
    # With a cap that allows it, the manifest's own archive size still refuses it.
    with pytest.raises(ArchiveError, match=r"outside the \d+-byte archive"):
        read_extra_file(s3, uri, "labels.txt", manifest=hostile, limits=ReadLimits(max_extra_bytes=2**41))
    assert gets.calls == [], "nothing was requested"


def test_the_extra_file_cap_comes_from_the_environment(
    s3: Any, exported: tuple[str, Manifest], monkeypatch: Any
) -> None:
    uri, manifest = exported
    monkeypatch.setenv("EXPORT_READ_MAX_EXTRA_BYTES", str(len(LABELS) - 1))
    for listed in (manifest, None):
        with pytest.raises(ArchiveError, match="EXPORT_READ_MAX_EXTRA_BYTES"):
            read_extra_file(s3, uri, "labels.txt", manifest=listed)
    monkeypatch.setenv("EXPORT_READ_MAX_EXTRA_BYTES", str(len(LABELS)))
    assert read_extra_file(s3, uri, "labels.txt", manifest=manifest) == LABELS
    assert read_extra_file(s3, uri, "labels.txt") == LABELS


def test_an_entry_whose_archive_size_also_lies_is_refused_by_the_store_size(
    s3: Any, exported: tuple[str, Manifest]
) -> None:
    uri, manifest = exported
    real = manifest.artifact.size
    lying = manifest.model_copy(update={"artifact": manifest.artifact.model_copy(update={"size": 2**50})})
    gets = Gets(s3)
    # Past the end: the store refuses the range.
    with pytest.raises(ArchiveError, match=r"lies outside the object \(\d+ bytes\)"):
        read_extra_file(s3, uri, "labels.txt", manifest=with_listed(lying, "labels.txt", offset=2**40))
    # Across the end: the reply's Content-Range says the object is shorter; its body is not taken.
    with pytest.raises(ArchiveError, match=rf"lies outside the object \({real} bytes\).*shorter than expected"):
        read_extra_file(s3, uri, "labels.txt", manifest=with_listed(lying, "labels.txt", offset=real - 4))
    assert len(gets.calls) == 2


# -- hostile zips, read without a manifest -------------------------------------------------------


def test_a_central_directory_claiming_more_bytes_than_the_object_is_refused(s3: Any, bucket: str) -> None:
    data = bytearray(export_like_zip({"version": b"3", "extra/x.txt": b"hello"}))
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<I", data, end + 12, 0xFFFFFFF0)  # a directory of ~4 GiB
    uri = f"s3://{bucket}/cd/model.pt"
    put(s3, uri, bytes(data))
    gets = Gets(s3)
    with pytest.raises(ArchiveError, match=r"central directory at offset \d+ of \d+ bytes runs past its end record"):
        read_extra_file(s3, uri, "x.txt")
    assert len(gets.calls) == 1 and gets.declared[0] <= TAIL_READ


def test_an_end_record_pointing_outside_the_object_is_refused(s3: Any, bucket: str) -> None:
    data = bytearray(export_like_zip({"version": b"3", "extra/x.txt": b"hello"}))
    end = data.rindex(b"PK\x05\x06")
    struct.pack_into("<I", data, end + 16, 2**31)
    uri = f"s3://{bucket}/eocd/model.pt"
    put(s3, uri, bytes(data))
    gets = Gets(s3)
    with pytest.raises(ArchiveError, match="runs past its end record"):
        read_extra_file(s3, uri, "x.txt")
    assert len(gets.calls) == 1


def test_a_central_directory_over_the_cap_is_refused_without_reading_it(s3: Any, bucket: str) -> None:
    records = {f"data/{i:05d}": b"x" for i in range(3000)}  # ~190 KB of directory
    records["extra/x.txt"] = b"found"
    uri = f"s3://{bucket}/many/model.pt"
    put(s3, uri, export_like_zip(records))
    gets = Gets(s3)
    with pytest.raises(ArchiveError, match=r"needs its last \d+ bytes, more than the 98304-byte .*MAX_TAIL_BYTES"):
        read_extra_file(s3, uri, "x.txt", limits=ReadLimits(max_tail_bytes=96 * 1024))
    assert len(gets.calls) == 1
    gets.calls.clear()
    assert read_extra_file(s3, uri, "x.txt") == b"found"
    tail, *rest = gets.calls
    assert tail["IfMatch"] is None and len(rest) == 2 and all(c["IfMatch"] for c in rest)


def test_a_compressed_extra_file_is_refused_not_inflated(s3: Any, bucket: str) -> None:
    bomb = bytes(64 * 1024**2)  # 64 MiB of zeros, ~64 KiB deflated
    data = export_like_zip({"version": b"3", "extra/x.txt": bomb}, deflate=frozenset({"extra/x.txt"}))
    assert len(data) < 1024**2
    uri = f"s3://{bucket}/deflated/model.pt"
    put(s3, uri, data)
    gets = Gets(s3)
    with pytest.raises(ArchiveError, match=r"'x\.txt' .* is compressed \(method 8\).*refused rather than inflated"):
        read_extra_file(s3, uri, "x.txt", limits=ReadLimits(max_extra_bytes=128 * 1024**2))
    assert sum(gets.declared) <= TAIL_READ, "only the tail was read"


def test_a_local_header_saying_deflated_under_a_stored_entry_is_refused(s3: Any, bucket: str) -> None:
    data = bytearray(export_like_zip({"version": b"3", "extra/x.txt": b"hello"}))
    with zipfile.ZipFile(io.BytesIO(bytes(data))) as zf:
        offset = zf.getinfo("model/extra/x.txt").header_offset
    struct.pack_into("<H", data, offset + 8, zipfile.ZIP_DEFLATED)
    uri = f"s3://{bucket}/local/model.pt"
    put(s3, uri, bytes(data))
    with pytest.raises(ArchiveError, match=r"'x\.txt' .* is compressed in its local header \(method 8\)"):
        read_extra_file(s3, uri, "x.txt")


def test_a_stored_entry_whose_sizes_differ_is_refused(s3: Any, bucket: str) -> None:
    data = bytearray(export_like_zip({"version": b"3", "extra/x.txt": b"hello"}))
    cd = data.rindex(b"PK\x01\x02")  # the last entry: extra/x.txt
    struct.pack_into("<I", data, cd + 20, 4)
    uri = f"s3://{bucket}/sizes/model.pt"
    put(s3, uri, bytes(data))
    with pytest.raises(ArchiveError, match=r"is compressed \(4 bytes stored for 5\)"):
        read_extra_file(s3, uri, "x.txt")


def test_an_extra_file_named_twice_is_refused(s3: Any, bucket: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf, pytest.warns(UserWarning, match="Duplicate name"):
        zf.writestr("model/extra/x.txt", b"first")
        zf.writestr("model/extra/x.txt", b"second")
    uri = f"s3://{bucket}/twice/model.pt"
    put(s3, uri, buf.getvalue())
    with pytest.raises(ArchiveError, match=r"holds extra file 'x\.txt' 2 times"):
        read_extra_file(s3, uri, "x.txt")


def test_a_local_header_longer_than_the_slack_still_reads(s3: Any, bucket: str) -> None:
    content = randbytes(3000, seed=4)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        info = zipfile.ZipInfo("model/extra/x.txt")
        info.extra = struct.pack("<HH", 0xCAFE, 4000) + bytes(4000)  # an unknown field of 4 KB
        zf.writestr(info, content)
    uri = f"s3://{bucket}/slack/model.pt"
    put(s3, uri, buf.getvalue())
    gets = Gets(s3)
    assert read_extra_file(s3, uri, "x.txt") == content
    assert len(gets.calls) == 3, "tail, header with slack, then the data alone"


# -- objects replaced while being read -------------------------------------------------------


def test_an_archive_replaced_between_its_tail_and_its_record_is_refused(s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/swap/model.pt"
    first = put(s3, uri, export_like_zip({"version": b"3", "extra/x.txt": b"hello"}))
    gets = Gets(s3)
    gets.before[1] = lambda: put(s3, uri, export_like_zip({"version": b"3", "extra/x.txt": b"HELLO"}))
    with pytest.raises(ArchiveError, match="was replaced while being read") as info:
        read_extra_file(s3, uri, "x.txt")
    assert gets.calls[1]["IfMatch"] == first
    assert isinstance(info.value.__cause__, ClientError)
    assert info.value.__cause__.response["Error"]["Code"] == "PreconditionFailed"


def test_a_central_directory_reread_after_a_replacement_is_refused(s3: Any, bucket: str) -> None:
    records = {f"data/{i:05d}": b"x" for i in range(3000)}
    uri = f"s3://{bucket}/swap-cd/model.pt"
    put(s3, uri, export_like_zip({**records, "extra/x.txt": b"found"}))
    gets = Gets(s3)
    gets.before[1] = lambda: put(s3, uri, export_like_zip({**records, "extra/x.txt": b"FOUND"}))
    with pytest.raises(ArchiveError, match="was replaced while being read"):
        read_extra_file(s3, uri, "x.txt")


def test_a_download_of_an_object_replaced_after_its_head_is_refused(s3: Any, bucket: str, tmp_path: Any) -> None:
    uri = f"s3://{bucket}/swap/blob.bin"
    etag = put(s3, uri, randbytes(4096, seed=1))
    gets = Gets(s3)
    gets.before[0] = lambda: put(s3, uri, randbytes(4096, seed=2))
    with pytest.raises(ArchiveError, match="was replaced while being read"):
        download_checked(s3, uri, str(tmp_path / "blob.bin"), size=4096)
    assert gets.calls[0]["IfMatch"] == etag


def test_ranges_without_an_etag_are_bound_to_the_first_ones(s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/ranges/blob.bin"
    data = randbytes(4096, seed=3)
    etag = put(s3, uri, data)
    gets = Gets(s3)
    assert b"".join(iter_object(s3, uri, len(data), range_size=1024, max_in_flight=2)) == data
    assert [c["IfMatch"] for c in gets.calls] == [None, etag, etag, etag]
    gets.calls.clear()
    gets.before[1] = lambda: put(s3, uri, randbytes(4096, seed=5))
    with pytest.raises(ArchiveError, match="was replaced while being read"):
        list(iter_object(s3, uri, len(data), range_size=1024, max_in_flight=1))


def test_a_checked_read_of_an_object_shorter_than_the_manifest_says(s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/short/blob.bin"
    put(s3, uri, randbytes(1000))
    sink: list[bytes] = []
    with pytest.raises(ArchiveError, match="1000 bytes stored, shorter than the 5000 bytes expected"):
        read_checked(s3, uri, size=5000, sha256=None, sink=sink.append)
    assert sink == [], "nothing of the shorter object was passed on"
