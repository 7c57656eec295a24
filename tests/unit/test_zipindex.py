"""ZipStreamIndexer: records, offsets and small tail records of zips fed in pieces of any size.

Every archive is checked against :mod:`zipfile`: the same names, header offsets, sizes,
CRCs and methods, and each record's ``data_offset`` slices the archive to its stored bytes.
"""

from __future__ import annotations

import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from serializer.archive.zipindex import SMALL_RECORD, CentralDirectoryTooLarge, ZipIndex, ZipRecord, ZipStreamIndexer
from serializer.errors import ArchiveError
from serializer.torchscript.save import quiet_torchscript_deprecation
from tests.fixtures import ALL_BYTES, RepeatInt, TinyLinear, randbytes, scripted

#: 1 and 7 split every header and signature; 4096 is a typical read; 0 means "all at once".
CHUNK_SIZES = [1, 7, 4096, 0]
_LOCAL_HEADER_LEN = 30


def pieces(data: bytes, chunk: int) -> Iterator[bytes]:
    """``data`` in ``chunk``-byte pieces (the whole of it for 0)."""
    if chunk == 0:
        yield data
        return
    for pos in range(0, len(data), chunk):
        yield data[pos : pos + chunk]


def index_of(data: bytes, chunk: int, **kwargs: int) -> ZipIndex:
    indexer = ZipStreamIndexer(**kwargs)
    for piece in pieces(data, chunk):
        indexer.feed(piece)
    assert indexer.offset == len(data)
    return indexer.finish()


def assert_matches_zipfile(index: ZipIndex, data: bytes) -> None:
    """The index agrees with zipfile's reading of ``data``, record by record."""
    assert index.total == len(data)
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        infos = zf.infolist()
        expected = [(i.filename, i.header_offset, i.compress_size, i.file_size, i.CRC, i.compress_type) for i in infos]
        got = [(r.name, r.header_offset, r.compressed_size, r.size, r.crc32, r.method) for r in index.records]
        assert got == expected
        for rec, info in zip(index.records, infos, strict=True):
            # The local header ends where the data starts, and the data is the record's.
            assert data[rec.header_offset : rec.header_offset + 4] == b"PK\x03\x04"
            assert rec.data_offset >= rec.header_offset + _LOCAL_HEADER_LEN + len(info.filename.encode())
            stored = data[rec.data_offset : rec.data_offset + rec.compressed_size]
            content = zf.read(info)
            if rec.method == zipfile.ZIP_STORED:
                assert stored == content, rec.name
            else:
                assert zlib.decompressobj(-15).decompress(stored) == content, rec.name
    assert set(index.by_name) == {r.name for r in index.records}


# -- archives -----------------------------------------------------------------------------


#: Extra files of the torch archive: text, every byte value, empty, nested.
TORCH_EXTRAS = {"notes.txt": "héllo\n".encode(), "dir/sub/all.bin": ALL_BYTES, "empty": b""}


@pytest.fixture(scope="module")
def torch_archive(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A TorchScript archive saved to a path (as the exporter saves it), with extra files."""
    path = tmp_path_factory.mktemp("torch") / "archive.pt"
    module = scripted(TinyLinear())
    with quiet_torchscript_deprecation():
        torch.jit.save(module, str(path), _extra_files=TORCH_EXTRAS)
    return path.read_bytes()


def _names() -> list[str]:
    return [
        "a",
        "ab/c",
        "x" * 100,
        "dir/" + "n" * 250,
        "héllo/wörld.txt",
        "日本語/ファイル.bin",
        "empty",
    ]


def _contents(i: int) -> bytes:
    if i == 0:
        # Signatures inside record data must not be taken for headers or the directory end.
        return (b"PK\x03\x04\x00\x00" + b"PK\x05\x06" + b"PK\x01\x02") * 40
    if i == 6:
        return b""
    return randbytes(37 * i * i, seed=i) + b"text " * (50 * i)


def python_zip(compression: int, *, force_zip64: bool = False, comment: bytes = b"") -> bytes:
    """A zip written by zipfile with names of many lengths (ASCII and not)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=compression) as zf:
        for i, name in enumerate(_names()):
            with zf.open(name, "w", force_zip64=force_zip64) as f:
                f.write(_contents(i))
        zf.comment = comment
    return buf.getvalue()


def record_names(n: int) -> list[str]:
    return [f"records/{i:05d}-{'r' * (i % 17)}" for i in range(n)]


# -- torch archives -----------------------------------------------------------------------


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_torch_archive(torch_archive: bytes, chunk: int) -> None:
    index = index_of(torch_archive, chunk)
    assert_matches_zipfile(index, torch_archive)
    for name, content in TORCH_EXTRAS.items():
        rec = index.by_name[f"archive/extra/{name}"]
        assert rec.method == zipfile.ZIP_STORED
        assert torch_archive[rec.data_offset : rec.data_offset + rec.size] == content


def test_torch_archive_of_a_module_with_int_input(tmp_path: Path) -> None:
    path = tmp_path / "archive.pt"
    with quiet_torchscript_deprecation():
        torch.jit.save(scripted(RepeatInt()), str(path))
    data = path.read_bytes()
    assert_matches_zipfile(index_of(data, 4096), data)


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
def test_read_small_returns_the_version_record(torch_archive: bytes, chunk: int) -> None:
    index = index_of(torch_archive, chunk)
    with zipfile.ZipFile(io.BytesIO(torch_archive)) as zf:
        version = zf.read("archive/version")
        serialization_id = zf.read("archive/.data/serialization_id")
    assert index.read_small("archive/version") == version
    assert int(version) > 0
    assert index.read_small("archive/.data/serialization_id") == serialization_id
    # Small stored records only: the byte-valued extra is 256 bytes (kept), code is deflated.
    assert index.read_small("archive/extra/dir/sub/all.bin") == ALL_BYTES
    assert index.read_small("archive/code/__torch__.py") is None
    assert index.read_small("archive/no-such-record") is None


# -- zips written by Python ---------------------------------------------------------------


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_python_zip(chunk: int, compression: int) -> None:
    data = python_zip(compression, comment=b"an archive comment")
    index = index_of(data, chunk)
    assert_matches_zipfile(index, data)
    assert [r.name for r in index.records] == _names()
    assert {r.method for r in index.records} == {compression}


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED], ids=["stored", "deflated"])
def test_zip64_local_headers(chunk: int, compression: int) -> None:
    # force_zip64 gives every local header a zip64 extra field, which moves the data.
    data = python_zip(compression, force_zip64=True)
    index = index_of(data, chunk)
    assert_matches_zipfile(index, data)
    for rec in index.records:
        (extra_len,) = struct.unpack_from("<H", data, rec.header_offset + 28)
        assert extra_len >= 20
        assert rec.data_offset == rec.header_offset + _LOCAL_HEADER_LEN + len(rec.name.encode()) + extra_len


@pytest.mark.parametrize("chunk", CHUNK_SIZES)
@pytest.mark.parametrize("masked", [False, True], ids=["end-values", "end-masked"])
def test_zip64_directory(monkeypatch: pytest.MonkeyPatch, chunk: int, masked: bool) -> None:
    # Lowered limits make zipfile write a real zip64 layout on a small archive: directory
    # entries with 0xFFFFFFFF fields and zip64 extras (sizes and offset, or the offset only),
    # a zip64 end-of-directory record and its locator.
    monkeypatch.setattr(zipfile, "ZIP64_LIMIT", 300)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i in range(8):
            method = zipfile.ZIP_STORED if i % 2 else zipfile.ZIP_DEFLATED
            zf.writestr(f"f{i}/{'n' * i}", randbytes(90 * i, seed=i) + bytes(40 * i), compress_type=method)
        zf.writestr("small", b"small at a zip64 offset")
    data = buf.getvalue()
    monkeypatch.undo()
    end = data.rindex(b"PK\x05\x06")
    assert data[end - 20 : end - 16] == b"PK\x06\x07"
    if masked:
        # zipfile leaves the real values in the classic end record where they fit; other
        # writers put 0xFFFF/0xFFFFFFFF there and the values only in the zip64 record.
        data = data[: end + 10] + b"\xff" * 12 + data[end + 22 :]
    index = index_of(data, chunk)
    assert len(index.records) == 9
    assert_matches_zipfile(index, data)
    assert any(r.header_offset > 300 and r.size < 300 for r in index.records)
    assert any(r.size > 300 for r in index.records)


@pytest.fixture(scope="module")
def many_records() -> tuple[list[str], bytes]:
    """Names and bytes of a zip of 65,540 one-byte records (the count needs zip64)."""
    names = record_names(65_540)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for i, name in enumerate(names):
            zf.writestr(name, bytes([i % 256]))
    return names, buf.getvalue()


@pytest.mark.parametrize("chunk", [65_537, 0])
def test_zip64_with_more_than_65535_records(many_records: tuple[list[str], bytes], chunk: int) -> None:
    names, data = many_records
    end = data.rindex(b"PK\x05\x06")
    assert data[end + 10 : end + 12] == b"\xff\xff"  # the count is only in the zip64 record
    # ~5.7 MB of central directory: more than the default tail, so keep a larger one.
    index = index_of(data, chunk, tail_limit=16 * 1024**2)
    assert [r.name for r in index.records] == names
    last = index.records[-1]
    assert data[last.data_offset : last.data_offset + 1] == bytes([(len(names) - 1) % 256])
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        offsets = [i.header_offset for i in zf.infolist()]
    assert [r.header_offset for r in index.records] == offsets


# -- limits and errors --------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [b"", b"not a zip at all", randbytes(100_000, seed=1), b"PK\x03\x04" + bytes(100)],
    ids=["empty", "text", "random", "local-header-only"],
)
def test_not_a_zip(data: bytes) -> None:
    with pytest.raises(ArchiveError, match="not a zip archive"):
        index_of(data, 4096)


def test_truncated_zip() -> None:
    data = python_zip(zipfile.ZIP_STORED)
    with pytest.raises(ArchiveError, match="not a zip archive"):
        index_of(data[:-10], 4096)
    # Cut inside the central directory: the end record is gone as well.
    with pytest.raises(ArchiveError):
        index_of(data[: len(data) - 60], 7)


def test_central_directory_larger_than_tail_limit() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in record_names(400):
            zf.writestr(name, b"x")
    data = buf.getvalue()
    with pytest.raises(ArchiveError, match=r"central directory of \d+ bytes is larger than the \d+-byte tail") as info:
        index_of(data, 4096, tail_limit=16 * 1024)
    assert "raise tail_limit" in str(info.value)
    # With room for the directory it indexes.
    assert_matches_zipfile(index_of(data, 4096, tail_limit=64 * 1024), data)


def test_small_records_outside_the_tail_are_not_kept() -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("early", b"1\n")
        zf.writestr("padding", randbytes(200_000, seed=2))
        zf.writestr("late", b"2\n")
        zf.writestr("deflated", b"3" * 100, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("large", bytes(SMALL_RECORD + 1))
    data = buf.getvalue()
    index = index_of(data, 4096, tail_limit=32 * 1024)
    assert_matches_zipfile(index, data)
    assert index.read_small("early") is None  # passed long before the end
    assert index.read_small("late") == b"2\n"
    assert index.read_small("deflated") is None
    assert index.read_small("large") is None


def test_feeding_nothing_changes_nothing(torch_archive: bytes) -> None:
    indexer = ZipStreamIndexer()
    for piece in pieces(torch_archive, 1000):
        indexer.feed(b"")
        indexer.feed(piece)
    assert indexer.finish() == index_of(torch_archive, 0)


def test_records_are_frozen() -> None:
    rec = ZipRecord("a", 0, 31, 1, 1, 0, 0)
    with pytest.raises(AttributeError):
        rec.name = "b"  # type: ignore[misc]


def test_too_large_central_directory_says_how_much_tail_to_reread(many_records: tuple[list[str], bytes]) -> None:
    names, data = many_records
    indexer = ZipStreamIndexer(tail_limit=1024**2)
    for piece in pieces(data, 65_537):
        indexer.feed(piece)
    with pytest.raises(CentralDirectoryTooLarge) as info:
        indexer.finish()
    cd_start = data.index(b"PK\x01\x02")
    assert info.value.needed == len(data) - cd_start
    # Given the tail re-read from a seekable source, the same indexer completes.
    index = indexer.finish(tail=data[-info.value.needed :])
    assert [r.name for r in index.records] == names


@pytest.mark.parametrize("chunk", [4096, 0])
def test_without_scanning_headers_are_read_back_from_the_source(torch_archive: bytes, chunk: int) -> None:
    scanned = index_of(torch_archive, chunk)
    indexer = ZipStreamIndexer(scan_headers=False)
    for piece in pieces(torch_archive, chunk):
        indexer.feed(piece)
    reads: list[tuple[int, int]] = []

    def read_at(offset: int, n: int) -> bytes:
        reads.append((offset, n))
        return torch_archive[offset : offset + n]

    index = indexer.finish(read_at=read_at)
    assert index.records == scanned.records
    assert len(reads) == len(index.records)


def test_without_scanning_and_no_source_the_headers_are_missing(torch_archive: bytes) -> None:
    indexer = ZipStreamIndexer(scan_headers=False)
    indexer.feed(torch_archive)
    with pytest.raises(ArchiveError, match="local header of"):
        indexer.finish()
