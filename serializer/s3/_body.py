"""Seekable, read-only request bodies: over a memoryview (parts held in memory) and over a
byte range of an open file (parts of a spool file, read while they are sent)."""

from __future__ import annotations

import io
import os


class _SeekableBody(io.RawIOBase):
    """What both bodies share: ``_length`` bytes, read from position ``_pos``, which
    ``seek`` moves (botocore rewinds a body to retry or to compute a checksum)."""

    def __init__(self, length: int) -> None:
        super().__init__()
        self._length = length
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def __len__(self) -> int:
        return self._length

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        bases = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}
        if whence not in bases:
            raise ValueError(f"invalid whence ({whence}, should be 0, 1 or 2)")
        self._pos = max(0, bases[whence] + offset)
        return self._pos

    def tell(self) -> int:
        return self._pos


class MemoryBody(_SeekableBody):
    """Reads ``view`` without copying it whole; seekable so botocore can rewind on retry."""

    def __init__(self, view: memoryview) -> None:
        super().__init__(len(view))
        self._view = view

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = min(len(b), len(self._view) - self._pos)
        if n <= 0:
            return 0
        memoryview(b).cast("B")[:n] = self._view[self._pos : self._pos + n]
        self._pos += n
        return n

    def read(self, size: int | None = -1) -> bytes:
        if self._pos >= len(self._view):
            return b""
        end = len(self._view) if size is None or size < 0 else min(len(self._view), self._pos + size)
        chunk = self._view[self._pos : end].tobytes()
        self._pos = end
        return chunk

    def readall(self) -> bytes:
        return self.read(-1)


#: Most bytes one sized ``read(n)`` / ``readinto`` of a :class:`FileRangeBody` returns, so
#: a part being sent costs a chunk of memory, not a part (botocore and http.client read
#: bodies in chunks of 8 KiB to 1 MiB; only ``read()`` with no size reads the whole rest).
FILE_READ_CHUNK = 1024**2


class FileRangeBody(_SeekableBody):
    """Reads bytes ``offset..offset+length`` of the open file ``fd`` with ``pread``.

    Positions are relative to the range (``seek(0)`` is its start), so botocore can rewind
    it on a retry and compute checksums; ``pread`` leaves the file's own position alone, so
    any number of bodies may read one descriptor from as many threads.  The descriptor is
    the caller's: it must stay open while the body is read, and is never closed here.
    """

    def __init__(self, fd: int, offset: int, length: int) -> None:
        if offset < 0 or length < 0:
            raise ValueError(f"bad range: offset {offset}, length {length}")
        super().__init__(length)
        self._fd = fd
        self._offset = offset

    def _want(self, size: int) -> int:
        return max(0, min(self._length - self._pos, size, FILE_READ_CHUNK))

    def readinto(self, b: bytearray | memoryview) -> int:  # type: ignore[override]
        n = self._want(len(b))
        if n <= 0:
            return 0
        got = os.preadv(self._fd, [memoryview(b).cast("B")[:n]], self._offset + self._pos)
        if got == 0:
            raise OSError(f"file ended {self._length - self._pos} bytes before the range's end")
        self._pos += got
        return got

    def read(self, size: int | None = -1) -> bytes:
        if size is None or size < 0:
            return self.readall()
        n = self._want(size)
        if n <= 0:
            return b""
        chunk = os.pread(self._fd, n, self._offset + self._pos)
        if not chunk:
            raise OSError(f"file ended {self._length - self._pos} bytes before the range's end")
        self._pos += len(chunk)
        return chunk

    def readall(self) -> bytes:
        chunks = []
        while chunk := self.read(FILE_READ_CHUNK):
            chunks.append(chunk)
        return b"".join(chunks)
