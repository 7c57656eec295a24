"""FileRangeBody (a part's range of the spool file) and part sizes that follow the object's size."""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path

import pytest

from serializer.s3._body import FILE_READ_CHUNK, FileRangeBody
from serializer.s3.parts import DEFAULT_PART_SIZE, MAX_AUTO_PART_SIZE, MAX_PARTS, auto_part_size

DATA = bytes(range(256)) * 16 * 1024  # 4 MiB


@pytest.fixture()
def fd(tmp_path: Path) -> Iterator[int]:
    path = tmp_path / "spool"
    path.write_bytes(DATA)
    with path.open("rb") as f:
        yield f.fileno()


def test_reads_its_range_only(fd: int) -> None:
    body = FileRangeBody(fd, 1000, 3 * FILE_READ_CHUNK)
    assert len(body) == 3 * FILE_READ_CHUNK
    assert body.read() == DATA[1000 : 1000 + 3 * FILE_READ_CHUNK]
    assert body.read(10) == b""


def test_sized_reads_are_at_most_a_chunk(fd: int) -> None:
    body = FileRangeBody(fd, 0, len(DATA))
    assert len(body.read(len(DATA))) == FILE_READ_CHUNK
    buf = bytearray(len(DATA))
    assert body.readinto(buf) == FILE_READ_CHUNK
    assert bytes(buf[:FILE_READ_CHUNK]) == DATA[FILE_READ_CHUNK : 2 * FILE_READ_CHUNK]


def test_rewinds_for_a_retry(fd: int) -> None:
    body = FileRangeBody(fd, 5, 100)
    first = body.read()
    assert body.seek(0) == 0
    assert body.read() == first == DATA[5:105]
    assert body.seek(-10, io.SEEK_END) == 90
    assert body.read() == DATA[95:105]


def test_bodies_share_a_descriptor_without_sharing_a_position(fd: int) -> None:
    a, b = FileRangeBody(fd, 0, 10), FileRangeBody(fd, 100, 10)
    assert a.read(5) == DATA[:5]
    assert b.read(5) == DATA[100:105]
    assert a.read() == DATA[5:10]


def test_a_file_shorter_than_the_range_is_an_error(fd: int) -> None:
    body = FileRangeBody(fd, len(DATA) - 10, 20)
    assert body.read(10) == DATA[-10:]
    with pytest.raises(OSError, match="ended"):
        body.read(10)


@pytest.mark.parametrize(
    ("size", "connections", "expected"),
    [
        (None, 64, DEFAULT_PART_SIZE),  # a stream: unknown size
        (1024**3, 64, DEFAULT_PART_SIZE),  # 1 GiB: 128 parts of 8 MiB
        (1024**3, 4, 64 * 1024**2),  # a fixed 4: 16 parts, 4 per connection
        (100 * 1024**3, 64, MAX_AUTO_PART_SIZE),  # 1,600 parts of 64 MiB
        (5 * 1024**4, 64, 525 * 1024**2),  # 5 TiB: grown to fit 10,000 parts
    ],
)
def test_auto_part_size(size: int | None, connections: int, expected: int) -> None:
    part = auto_part_size(size, connections)
    assert part == expected
    if size is not None:
        assert -(-size // part) <= MAX_PARTS
