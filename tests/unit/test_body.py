"""MemoryBody: the zero-copy, seekable request body the writer hands botocore."""

from __future__ import annotations

import hashlib
import io

import pytest

from serializer.s3._body import MemoryBody

DATA = bytes(range(256)) * 4  # 1 KiB


def body(data: bytes = DATA) -> MemoryBody:
    return MemoryBody(memoryview(data))


def test_capabilities() -> None:
    b = body()
    assert b.readable()
    assert b.seekable()
    assert not b.writable()
    assert len(b) == len(DATA)
    assert b.tell() == 0


def test_read_all() -> None:
    b = body()
    assert b.read() == DATA
    assert b.tell() == len(DATA)
    assert b.read() == b""


@pytest.mark.parametrize("size", [None, -1, -5])
def test_read_without_size_reads_the_rest(size: int | None) -> None:
    b = body()
    b.seek(10)
    assert b.read(size) == DATA[10:]


def test_readall() -> None:
    b = body()
    b.seek(1000)
    assert b.readall() == DATA[1000:]


def test_read_in_chunks() -> None:
    b = body()
    chunks = []
    while chunk := b.read(300):
        assert isinstance(chunk, bytes)
        chunks.append(chunk)
    assert [len(c) for c in chunks] == [300, 300, 300, 124]
    assert b"".join(chunks) == DATA


def test_read_zero() -> None:
    b = body()
    assert b.read(0) == b""
    assert b.tell() == 0


def test_readinto_bytearray() -> None:
    b = body()
    buf = bytearray(700)
    assert b.readinto(buf) == 700
    assert buf == DATA[:700]
    assert b.tell() == 700
    buf = bytearray(700)
    assert b.readinto(buf) == len(DATA) - 700
    assert buf[: len(DATA) - 700] == DATA[700:]
    assert buf[len(DATA) - 700 :] == bytes(700 - (len(DATA) - 700))
    assert b.readinto(buf) == 0


def test_readinto_memoryview() -> None:
    b = body()
    target = bytearray(64)
    view = memoryview(target)[16:48]
    assert b.readinto(view) == 32
    assert target[16:48] == DATA[:32]
    assert target[:16] == bytes(16)
    assert target[48:] == bytes(16)


def test_seek_and_tell() -> None:
    b = body()
    assert b.seek(100) == 100
    assert b.tell() == 100
    assert b.read(4) == DATA[100:104]
    assert b.seek(-4, io.SEEK_CUR) == 100
    assert b.seek(10, io.SEEK_CUR) == 110
    assert b.read(1) == DATA[110:111]
    assert b.seek(-24, io.SEEK_END) == len(DATA) - 24
    assert b.read() == DATA[-24:]
    assert b.seek(0) == 0
    assert b.read() == DATA


def test_seek_before_start_clamps_to_zero() -> None:
    b = body()
    b.seek(50)
    assert b.seek(-100, io.SEEK_CUR) == 0
    assert b.seek(-(len(DATA) + 10), io.SEEK_END) == 0
    assert b.read(3) == DATA[:3]


def test_seek_past_end_reads_nothing_and_keeps_position() -> None:
    b = body()
    assert b.seek(len(DATA) + 100) == len(DATA) + 100
    assert b.read(5) == b""
    assert b.read() == b""
    assert b.readinto(bytearray(5)) == 0
    assert b.tell() == len(DATA) + 100


def test_seek_rejects_bad_whence() -> None:
    with pytest.raises(ValueError, match="whence"):
        body().seek(0, 7)


def test_rewind_after_partial_read_gives_the_same_bytes() -> None:
    # botocore rewinds a body before resending it on a retry.
    b = body()
    first = hashlib.md5(b.read(333), usedforsecurity=False).digest()
    b.seek(0)
    assert hashlib.md5(b.read(333), usedforsecurity=False).digest() == first


def test_views_the_buffer_without_copying() -> None:
    buf = bytearray(b"hello world")
    b = MemoryBody(memoryview(buf)[:5])
    buf[0:5] = b"HELLO"
    assert len(b) == 5
    assert b.read() == b"HELLO"


def test_empty_body() -> None:
    b = body(b"")
    assert len(b) == 0
    assert b.read() == b""
    assert b.readinto(bytearray(4)) == 0
    assert b.seek(0, io.SEEK_END) == 0


def test_works_under_buffered_reader() -> None:
    reader = io.BufferedReader(body(), buffer_size=100)
    assert reader.read(10) == DATA[:10]
    assert reader.read() == DATA[10:]
