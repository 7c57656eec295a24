"""Pure parts of the consumer side: the compatibility pre-check and central-directory parsing."""

from __future__ import annotations

import io
import zipfile
import zlib
from datetime import UTC, datetime
from typing import Any

import pytest
import torch

from serializer.archive.zipindex import CentralDirectoryTooLarge, local_data_offset, parse_central_directory
from serializer.consumer.compat import check_compatibility
from serializer.errors import ArchiveError
from serializer.manifest.model import ArtifactEntry, Manifest, Producer
from serializer.torchscript.save import quiet_torchscript_deprecation
from tests.fixtures import ALL_BYTES, TinyLinear, scripted


def manifest(*, torch_version: str = "2.13.0", format_version: int = 8) -> Manifest:
    return Manifest(
        artifact=ArtifactEntry(
            uri="s3://bucket/m/model.pt",
            size=1,
            sha256="0" * 64,
            format_version=format_version,
            archive_root="archive",
        ),
        spec={"name": "m"},
        spec_hash="0" * 64,
        extra_files=[],
        producer=Producer(torch=torch_version, python="3.12", export_worker="0", device="cpu", host="h"),
        created_at=datetime(2025, 1, 1, tzinfo=UTC),
    )


def test_newer_format_version_is_refused_with_the_reason() -> None:
    got = check_compatibility(
        manifest(torch_version="3.1.0", format_version=12), local_torch="2.13.0", max_format_version=10
    )
    assert not got.ok
    assert "made by torch 3.1.0 with format version 12; this torch (2.13.0) reads up to 10" in got.reason


def test_format_version_at_the_limit_is_readable() -> None:
    got = check_compatibility(manifest(format_version=10), local_torch="2.13.0", max_format_version=10)
    assert got.ok


def test_newer_producer_with_a_readable_format_is_ok_with_a_warning() -> None:
    got = check_compatibility(
        manifest(torch_version="2.14.1+cu128", format_version=8), local_torch="2.13.0+cpu", max_format_version=10
    )
    assert got.ok
    assert "newer" in got.reason
    assert "2.14.1+cu128" in got.reason


@pytest.mark.parametrize("producer", ["2.13.0", "2.13.0+cu128", "2.1.0", "1.13.1"])
def test_same_or_older_producer_is_ok(producer: str) -> None:
    got = check_compatibility(manifest(torch_version=producer), local_torch="2.13.0+cpu", max_format_version=10)
    assert got.ok
    assert "newer" not in got.reason


@pytest.mark.parametrize(
    ("producer", "local"),
    [("", "2.13.0"), ("garbage", "2.13.0"), ("2.13.0", "nightly"), ("+", "+"), ("2.x.y", ""), ("v2", "2.13.0")],
)
def test_odd_version_strings_do_not_crash(producer: str, local: str) -> None:
    got = check_compatibility(manifest(torch_version=producer), local_torch=local, max_format_version=10)
    assert got.ok
    refused = check_compatibility(
        manifest(torch_version=producer, format_version=11), local_torch=local, max_format_version=10
    )
    assert not refused.ok


@pytest.fixture(scope="module")
def torch_archive() -> bytes:
    buf = io.BytesIO()
    with quiet_torchscript_deprecation():
        torch.jit.save(
            scripted(TinyLinear()),
            buf,
            _extra_files={"labels.txt": "a\nb\n", "bin/all.bin": ALL_BYTES, "empty": ""},
        )
    return buf.getvalue()


def as_tuples(entries: list[Any]) -> list[tuple[Any, ...]]:
    return [(e.name, e.header_offset, e.compressed_size, e.size, e.crc32, e.method) for e in entries]


def zipfile_tuples(data: bytes) -> list[tuple[Any, ...]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [
            (i.filename, i.header_offset, i.compress_size, i.file_size, i.CRC, i.compress_type) for i in zf.infolist()
        ]


@pytest.mark.parametrize("tail_len", [None, 4096])
def test_central_directory_agrees_with_zipfile(torch_archive: bytes, tail_len: int | None) -> None:
    tail = torch_archive if tail_len is None else torch_archive[-tail_len:]
    entries = parse_central_directory(tail, len(torch_archive))
    assert as_tuples(entries) == zipfile_tuples(torch_archive)
    assert "archive/extra/labels.txt" in [e.name for e in entries]


def test_local_data_offset_slices_each_record(torch_archive: bytes) -> None:
    with zipfile.ZipFile(io.BytesIO(torch_archive)) as zf:
        for entry in parse_central_directory(torch_archive, len(torch_archive)):
            start = local_data_offset(
                torch_archive[entry.header_offset : entry.header_offset + 2048], entry.header_offset
            )
            raw = torch_archive[start : start + entry.compressed_size]
            data = raw if entry.method == zipfile.ZIP_STORED else zlib.decompress(raw, -15)
            assert data == zf.read(entry.name), entry.name
            if entry.name.startswith("archive/data/"):
                assert start % 64 == 0, "torch aligns tensor data"


def test_short_tail_says_how_much_is_needed(torch_archive: bytes) -> None:
    with pytest.raises(CentralDirectoryTooLarge) as caught:
        parse_central_directory(torch_archive[-30:], len(torch_archive))
    needed = caught.value.needed
    entries = parse_central_directory(torch_archive[-needed:], len(torch_archive))
    assert as_tuples(entries) == zipfile_tuples(torch_archive)


def test_not_a_zip_and_not_a_header() -> None:
    with pytest.raises(ArchiveError, match="not a zip"):
        parse_central_directory(b"x" * 100, 100)
    with pytest.raises(ArchiveError, match="no local file header at offset 7"):
        local_data_offset(b"PK\x01\x02" + b"\0" * 40, 7)
