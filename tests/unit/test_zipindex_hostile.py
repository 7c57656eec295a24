"""Central directories, end records and local headers that lie: each is refused with an
ArchiveError naming the cause, and nothing past the given tail is read or allocated."""

from __future__ import annotations

import io
import struct
import zipfile

import pytest

from serializer.archive.info import format_version, read_int_record
from serializer.archive.zipindex import (
    CentralDirectoryTooLarge,
    ZipStreamIndexer,
    parse_central_directory,
    parse_local_header,
)
from serializer.errors import ArchiveError

GiB = 1024**3


def stored_zip(records: dict[str, bytes], *, deflate: frozenset[str] = frozenset()) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in records.items():
            zf.writestr(name, data, compress_type=zipfile.ZIP_DEFLATED if name in deflate else zipfile.ZIP_STORED)
    return buf.getvalue()


RECORDS = {"model/version": b"3\n", "model/extra/labels.txt": b"cat\ndog\n" * 4}


def eocd_of(data: bytes) -> int:
    return data.rindex(b"PK\x05\x06")


def with_eocd(
    data: bytes, *, count: int | None = None, cd_size: int | None = None, cd_offset: int | None = None
) -> bytes:
    """``data`` with its end record's count, directory size or directory offset replaced."""
    end = eocd_of(data)
    old_count, old_size, old_offset = struct.unpack_from("<HII", data, end + 10)
    fields = struct.pack(
        "<HHII",
        old_count if count is None else count,
        old_count if count is None else count,
        old_size if cd_size is None else cd_size,
        old_offset if cd_offset is None else cd_offset,
    )
    return data[: end + 8] + fields + data[end + 20 :]


def patch_central(data: bytes, index: int, fmt: str, at: int, *values: int) -> bytes:
    """``data`` with a field of its ``index``-th central directory entry replaced."""
    pos = -1
    for _ in range(index + 1):
        pos = data.index(b"PK\x01\x02", pos + 1)
    buf = bytearray(data)
    struct.pack_into(fmt, buf, pos + at, *values)
    return bytes(buf)


def test_a_well_formed_zip_parses() -> None:
    data = stored_zip(RECORDS)
    entries = parse_central_directory(data, len(data))
    assert [e.name for e in entries] == list(RECORDS)
    assert [(e.method, e.size, e.compressed_size) for e in entries] == [(0, len(v), len(v)) for v in RECORDS.values()]


@pytest.mark.parametrize("cd_size", [4 * GiB - 2, 2**31, 10_000])
def test_a_directory_claiming_more_bytes_than_the_archive_is_refused(cd_size: int) -> None:
    data = with_eocd(stored_zip(RECORDS), cd_size=cd_size)
    with pytest.raises(ArchiveError, match=r"central directory at offset \d+ of \d+ bytes runs past its end record"):
        parse_central_directory(data, len(data))


@pytest.mark.parametrize("cd_offset", [4 * GiB - 2, 10**6])
def test_an_end_record_pointing_outside_the_object_is_refused(cd_offset: int) -> None:
    data = with_eocd(stored_zip(RECORDS), cd_offset=cd_offset)
    with pytest.raises(ArchiveError, match="runs past its end record") as info:
        parse_central_directory(data, len(data))
    assert not isinstance(info.value, CentralDirectoryTooLarge), "nothing should be re-read for it"


def test_a_directory_claiming_the_whole_object_asks_for_at_most_the_object() -> None:
    data = stored_zip(RECORDS)
    end = eocd_of(data)
    # Consistent geometry, but the directory spans everything before the end record.
    hostile = with_eocd(data, cd_offset=0, cd_size=end)
    with pytest.raises(CentralDirectoryTooLarge) as info:
        parse_central_directory(hostile[-100:], len(hostile))
    assert info.value.needed <= len(hostile)
    # Given the whole of it, its first "entry" is a local header: corrupt, not followed.
    with pytest.raises(ArchiveError, match="corrupt central directory"):
        parse_central_directory(hostile, len(hostile))


def test_more_records_than_the_directory_can_hold_is_refused() -> None:
    data = with_eocd(stored_zip(RECORDS), count=0xFFFE)
    with pytest.raises(ArchiveError, match=r"cannot hold the 65534 records it claims"):
        parse_central_directory(data, len(data))


def test_an_entry_whose_name_runs_past_the_directory_is_refused() -> None:
    data = patch_central(stored_zip(RECORDS), 1, "<H", 28, 60_000)
    with pytest.raises(ArchiveError, match="runs past the directory"):
        parse_central_directory(data, len(data))


@pytest.mark.parametrize("field", ["offset", "size"])
def test_an_entry_pointing_past_the_directory_is_refused(field: str) -> None:
    data = stored_zip(RECORDS)
    if field == "offset":
        data = patch_central(data, 1, "<I", 42, 0x7FFFFFFF)
    else:  # compressed size: a record of 2 GiB before a directory a few hundred bytes in
        data = patch_central(data, 1, "<I", 20, 0x7FFFFFFF)
    with pytest.raises(ArchiveError, match=r"record 'model/extra/labels.txt' at offset \d+ of \d+ bytes runs past"):
        parse_central_directory(data, len(data))


def test_a_name_that_is_not_utf8_is_refused() -> None:
    data = stored_zip(RECORDS)
    pos = data.index(b"PK\x01\x02")
    data = data[: pos + 46] + b"\xff" + data[pos + 47 :]
    with pytest.raises(ArchiveError, match="is not UTF-8"):
        parse_central_directory(data, len(data))


def test_a_zip64_locator_pointing_outside_the_tail_is_refused() -> None:
    data = stored_zip(RECORDS)
    end = eocd_of(data)
    locator = b"PK\x06\x07" + struct.pack("<IQI", 0, 2**62, 1)
    hostile = with_eocd(data[:end] + locator + data[end:], cd_size=0xFFFFFFFF)
    with pytest.raises(ArchiveError, match="zip64 end-of-central-directory record not found"):
        parse_central_directory(hostile, len(hostile))


def test_a_zip64_extra_field_cut_short_is_refused() -> None:
    data = stored_zip(RECORDS)
    pos = data.index(b"PK\x01\x02")
    nlen, elen = struct.unpack_from("<HH", data, pos + 28)
    assert elen == 0
    # Sizes marked zip64 and an extra field (in place of the name's last 4 bytes) of id 1
    # that says it holds 16 bytes but ends at once.
    buf = bytearray(data)
    struct.pack_into("<II", buf, pos + 20, 0xFFFFFFFF, 0xFFFFFFFF)
    struct.pack_into("<HH", buf, pos + 28, nlen - 4, 4)
    struct.pack_into("<HH", buf, pos + 46 + nlen - 4, 1, 16)
    with pytest.raises(ArchiveError, match="extra field runs past its entry"):
        parse_central_directory(bytes(buf), len(buf))


def test_a_tail_longer_than_the_archive_is_refused() -> None:
    data = stored_zip(RECORDS)
    with pytest.raises(ArchiveError, match="longer than the"):
        parse_central_directory(data, len(data) - 1)


@pytest.mark.parametrize("value", [0x00, 0xFF, 0x7F])
def test_any_byte_of_the_directory_changed_is_parsed_within_bounds_or_refused(value: int) -> None:
    data = stored_zip({f"model/r{i}": bytes([i]) * i for i in range(8)})
    start = data.index(b"PK\x01\x02")
    refused = 0
    for pos in range(start, len(data)):
        hostile = bytearray(data)
        hostile[pos] = value
        try:
            entries = parse_central_directory(bytes(hostile), len(hostile))
        except ArchiveError:
            refused += 1
            continue
        # What parses points only at bytes before the directory it came from.
        for e in entries:
            assert e.header_offset + 30 + e.compressed_size <= start + 1, (pos, e)
    assert refused > 0


# -- local headers -----------------------------------------------------------------------


def test_local_header_fields() -> None:
    data = stored_zip(RECORDS, deflate=frozenset({"model/extra/labels.txt"}))
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        info = zf.getinfo("model/extra/labels.txt")
    local = parse_local_header(data[info.header_offset :], info.header_offset)
    assert local.name == b"model/extra/labels.txt"
    assert local.method == zipfile.ZIP_DEFLATED
    assert (local.compressed_size, local.size) == (info.compress_size, info.file_size)
    assert not local.sizes_follow
    assert data[local.data_offset : local.data_offset + info.compress_size] != RECORDS["model/extra/labels.txt"]


@pytest.mark.parametrize("header", [b"", b"PK\x03\x04" + bytes(20), b"XXXX" + bytes(40)], ids=["empty", "short", "sig"])
def test_not_a_local_header(header: bytes) -> None:
    with pytest.raises(ArchiveError, match="no local file header at offset 7"):
        parse_local_header(header, 7)


def test_a_local_header_whose_name_is_cut_short() -> None:
    data = stored_zip(RECORDS)
    with pytest.raises(ArchiveError, match="cut short"):
        parse_local_header(data[:35], 0)


# -- small records and what the index says of them --------------------------------------------


def index(data: bytes) -> object:
    indexer = ZipStreamIndexer()
    indexer.feed(data)
    return indexer.finish()


def test_a_compressed_version_record_is_refused_not_inflated() -> None:
    data = stored_zip({"model/version": b"3" * 64, "model/data.pkl": b"x"}, deflate=frozenset({"model/version"}))
    idx = index(data)
    assert idx.read_small("model/version") is None  # type: ignore[attr-defined]
    with pytest.raises(ArchiveError, match=r"record 'model/version' is compressed \(method 8"):
        format_version(idx)  # type: ignore[arg-type]
    with pytest.raises(ArchiveError, match="refused rather than inflated"):
        read_int_record(idx, "version")  # type: ignore[arg-type]


def test_a_stored_record_whose_sizes_differ_is_not_kept_and_refused() -> None:
    data = stored_zip({"model/version": b"3\n", "model/data.pkl": b"x"})
    # The central directory says 2 bytes uncompressed, 1 stored.
    data = patch_central(data, 0, "<I", 20, 1)
    idx = index(data)
    assert idx.read_small("model/version") is None  # type: ignore[attr-defined]
    with pytest.raises(ArchiveError, match=r"1 bytes stored for 2"):
        format_version(idx)  # type: ignore[arg-type]
