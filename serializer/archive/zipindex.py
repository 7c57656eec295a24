"""Index a zip archive from its bytes as they stream past, in one pass and bounded memory.

TorchScript archives are zips whose local headers carry zero sizes (the sizes follow each
record in a data descriptor), so record boundaries are only known from the central
directory at the very end.  :class:`ZipStreamIndexer` therefore keeps two small things as
bytes pass: the last ``tail_limit`` bytes (where the central directory and the small
``version`` records live) and the position, name length and extra length of every local
file header it sees.  After the last byte, the central directory gives each record's
header offset and the local header gives where its data starts.
"""

from __future__ import annotations

import struct
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from ..errors import ArchiveError

_LOCAL_SIG = b"PK\x03\x04"
_CENTRAL_SIG = b"PK\x01\x02"
_EOCD_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_EOCD_SIG = b"PK\x06\x06"
_LOCAL_LEN = 30
_CENTRAL_LEN = 46
_EOCD_LEN = 22
#: Longest name / extra field a local header may carry for us to record it; longer ones
#: only occur as false matches inside record data.
_MAX_FIELD = 4096
_HEADER_WINDOW = _LOCAL_LEN + 2 * _MAX_FIELD
#: Default tail kept: the central directory needs ~100 bytes a record, so 4 MiB indexes
#: archives of ~40,000 records (a model of 10,000 tensors needs ~1 MiB).  A larger one
#: raises :class:`CentralDirectoryTooLarge`, whose ``needed`` says how much tail to re-read
#: from a seekable source (the spool path does).
DEFAULT_TAIL_LIMIT = 4 * 1024**2


class CentralDirectoryTooLarge(ArchiveError):
    """Raised when the central directory starts before the kept tail."""

    def __init__(self, message: str, needed: int) -> None:
        super().__init__(message)
        #: Bytes from the archive's end that hold the whole central directory.
        self.needed = needed


@dataclass(frozen=True)
class ZipRecord:
    """One record of the archive: where its header and data are, and its sizes."""

    name: str
    header_offset: int
    data_offset: int
    compressed_size: int
    size: int
    crc32: int
    method: int


#: Stored records up to this size that lie in the tail are kept whole (``version``,
#: ``byteorder``, ``.data/serialization_id``), so they can be read without the archive.
SMALL_RECORD = 256


@dataclass(frozen=True)
class ZipIndex:
    """The records of a streamed archive, and the contents of its small tail records."""

    records: tuple[ZipRecord, ...]
    small: dict[str, bytes]
    total: int

    @property
    def by_name(self) -> dict[str, ZipRecord]:
        return {r.name: r for r in self.records}

    def read_small(self, name: str) -> bytes | None:
        """The bytes of small stored record ``name`` if the tail held it, else None (also
        for a compressed record: :func:`~serializer.archive.info.format_version` refuses those)."""
        return self.small.get(name)


class ZipStreamIndexer:
    """Feed it every byte of a zip, in order, then call :meth:`finish`."""

    def __init__(self, tail_limit: int = DEFAULT_TAIL_LIMIT, *, scan_headers: bool = True) -> None:
        """``scan_headers=False`` skips the search for local headers (about 0.6 s of CPU per
        GiB); :meth:`finish` then needs ``read_at`` to read them from a seekable source."""
        self._scan_headers = scan_headers
        self._tail_limit = max(tail_limit, _HEADER_WINDOW)
        # The tail is kept as the chunks fed (no copies): at most tail_limit plus one chunk.
        self._chunks: deque[bytes] = deque()
        self._kept = 0
        self._carry = b""
        self._offset = 0
        self._headers: dict[int, tuple[bytes, int]] = {}

    @property
    def offset(self) -> int:
        """Bytes fed so far."""
        return self._offset

    def feed(self, data: bytes) -> None:
        """Take the next bytes of the archive."""
        if not data:
            return
        data = bytes(data)
        # Headers that straddle the previous chunk's end: search the seam.
        if self._scan_headers:
            seam = self._carry + data[:_HEADER_WINDOW]
            self._scan(seam, self._offset - len(self._carry), limit=len(self._carry))
            self._scan(data, self._offset, limit=len(data))
        self._offset += len(data)
        self._carry = data[-_HEADER_WINDOW:] if len(data) >= _HEADER_WINDOW else (self._carry + data)[-_HEADER_WINDOW:]
        self._chunks.append(data)
        self._kept += len(data)
        while self._kept - len(self._chunks[0]) >= self._tail_limit:
            self._kept -= len(self._chunks.popleft())

    def _scan(self, buf: bytes, base: int, *, limit: int) -> None:
        """Record local headers that start in ``buf[:limit]`` and are complete in ``buf``."""
        pos = buf.find(_LOCAL_SIG)
        while 0 <= pos < limit:
            if pos + _LOCAL_LEN <= len(buf):
                name_len, extra_len = struct.unpack_from("<HH", buf, pos + 26)
                end = pos + _LOCAL_LEN + name_len
                if name_len <= _MAX_FIELD and extra_len <= _MAX_FIELD and end <= len(buf):
                    self._headers[base + pos] = (buf[pos + _LOCAL_LEN : end], extra_len)
            pos = buf.find(_LOCAL_SIG, pos + 1)

    def finish(self, tail: bytes | None = None, read_at: Callable[[int, int], bytes] | None = None) -> ZipIndex:
        """Parse the central directory from the kept tail, or from ``tail`` (the archive's
        last ``len(tail)`` bytes, re-read from a seekable source).  ``read_at(offset, n)``
        reads local headers from a seekable source when they were not scanned.

        Raises:
            CentralDirectoryTooLarge: the central directory starts before the tail.
            ArchiveError: not a zip.
        """
        if tail is None:
            tail = b"".join(self._chunks)
            self._chunks.clear()
            self._kept = 0
        tail_start = self._offset - len(tail)
        records = []
        for entry in parse_central_directory(tail, self._offset):
            name_bytes = entry.name.encode("utf-8")
            local = self._headers.get(entry.header_offset)
            if local is None and read_at is not None:
                raw = read_at(entry.header_offset, _LOCAL_LEN + len(name_bytes))
                if raw[:4] == _LOCAL_SIG and len(raw) == _LOCAL_LEN + len(name_bytes):
                    local = (raw[_LOCAL_LEN:], struct.unpack_from("<H", raw, 28)[0])
            if local is None or local[0] != name_bytes:
                raise ArchiveError(f"local header of {name_bytes!r} not found at offset {entry.header_offset}")
            data_offset = entry.header_offset + _LOCAL_LEN + len(name_bytes) + local[1]
            records.append(
                ZipRecord(
                    entry.name,
                    entry.header_offset,
                    data_offset,
                    entry.compressed_size,
                    entry.size,
                    entry.crc32,
                    entry.method,
                )
            )
        small = {
            r.name: tail[r.data_offset - tail_start : r.data_offset - tail_start + r.size]
            for r in records
            if r.method == 0
            and r.compressed_size == r.size <= SMALL_RECORD
            and tail_start <= r.data_offset
            and r.data_offset + r.size <= self._offset
        }
        return ZipIndex(tuple(records), small, self._offset)


@dataclass(frozen=True)
class CentralEntry:
    """A central-directory entry: where a record's local header is, and its sizes."""

    name: str
    header_offset: int
    compressed_size: int
    size: int
    crc32: int
    method: int


def parse_central_directory(tail: bytes, total: int) -> list[CentralEntry]:
    """The central directory of a zip of ``total`` bytes, from its last ``len(tail)`` bytes.

    Every offset and size is checked against the archive before it is used: the directory
    must lie before its end record, hold its record count, and each entry must lie inside
    it and point at a record before it.  What is read is bounded by ``len(tail)``.

    Raises:
        CentralDirectoryTooLarge: the directory starts before ``tail``; ``needed`` says how
            many bytes from the end hold it (at most ``total``).
        ArchiveError: not a zip, or a directory whose offsets or sizes lie outside it.
    """
    tail_start = total - len(tail)
    if tail_start < 0:
        raise ArchiveError(f"a tail of {len(tail)} bytes is longer than the {total}-byte archive")
    try:
        return _parse_central_directory(tail, total, tail_start)
    except struct.error as exc:  # a field cut short: the checks below should make this rare
        raise ArchiveError(f"corrupt central directory: {exc}") from None


def _parse_central_directory(tail: bytes, total: int, tail_start: int) -> list[CentralEntry]:
    eocd = tail.rfind(_EOCD_SIG, max(0, len(tail) - _EOCD_LEN - 65535))
    if eocd < 0 or eocd + _EOCD_LEN > len(tail):
        raise ArchiveError("not a zip archive: no end-of-central-directory record")
    count, cd_size, cd_offset = struct.unpack_from("<HII", tail, eocd + 10)
    cd_limit = tail_start + eocd  # the directory ends before the record that points at it
    if 0xFFFFFFFF in (cd_size, cd_offset) or count == 0xFFFF:
        count, cd_size, cd_offset, cd_limit = _zip64_eocd(tail, eocd, tail_start)
    if cd_offset + cd_size > cd_limit:
        raise ArchiveError(
            f"central directory at offset {cd_offset} of {cd_size} bytes runs past its end record "
            f"at {cd_limit} (the archive has {total} bytes)"
        )
    if count * _CENTRAL_LEN > cd_size:
        raise ArchiveError(f"central directory of {cd_size} bytes cannot hold the {count} records it claims")
    if cd_offset < tail_start:
        raise CentralDirectoryTooLarge(
            f"central directory of {cd_size} bytes is larger than the {len(tail)}-byte tail kept; raise tail_limit",
            needed=total - cd_offset,
        )
    pos = cd_offset - tail_start
    cd_end = pos + cd_size
    entries = []
    for _ in range(count):
        if pos + _CENTRAL_LEN > cd_end or tail[pos : pos + 4] != _CENTRAL_SIG:
            raise ArchiveError(f"corrupt central directory at offset {pos + tail_start}")
        (method, crc, csize, usize, nlen, elen, clen) = struct.unpack_from("<10xH4xIIIHHH", tail, pos)
        (header_offset,) = struct.unpack_from("<I", tail, pos + 42)
        end = pos + _CENTRAL_LEN + nlen + elen + clen
        if end > cd_end:
            raise ArchiveError(f"central directory entry at offset {pos + tail_start} runs past the directory")
        name_bytes = tail[pos + _CENTRAL_LEN : pos + _CENTRAL_LEN + nlen]
        extra = tail[pos + _CENTRAL_LEN + nlen : pos + _CENTRAL_LEN + nlen + elen]
        usize, csize, header_offset = _apply_zip64(extra, usize, csize, header_offset)
        try:
            name = name_bytes.decode("utf-8")
        except UnicodeDecodeError:
            raise ArchiveError(f"record name {name_bytes[:64]!r} is not UTF-8") from None
        if header_offset + _LOCAL_LEN + nlen + csize > cd_offset:
            raise ArchiveError(
                f"record {name!r} at offset {header_offset} of {csize} bytes runs past the start of "
                f"the central directory at {cd_offset}"
            )
        entries.append(CentralEntry(name, header_offset, csize, usize, crc, method))
        pos = end
    return entries


@dataclass(frozen=True)
class LocalHeader:
    """A record's local file header: its name, method, sizes (zero when a data descriptor
    follows the data, ``flags`` bit 3) and where its data starts."""

    name: bytes
    method: int
    flags: int
    compressed_size: int
    size: int
    data_offset: int

    @property
    def sizes_follow(self) -> bool:
        """Whether the sizes are in a data descriptor after the data, not in this header."""
        return bool(self.flags & 0x08)


def parse_local_header(header: bytes, header_offset: int) -> LocalHeader:
    """The local file header at the start of ``header`` (read from ``header_offset``); its
    name must be within ``header``.

    Raises:
        ArchiveError: ``header`` does not start with a whole local file header.
    """
    if len(header) < _LOCAL_LEN or header[:4] != _LOCAL_SIG:
        raise ArchiveError(f"no local file header at offset {header_offset}")
    flags, method, csize, usize, name_len, extra_len = struct.unpack_from("<6xHH8xIIHH", header)
    if len(header) < _LOCAL_LEN + name_len:
        raise ArchiveError(f"local file header at offset {header_offset} is cut short")
    name = header[_LOCAL_LEN : _LOCAL_LEN + name_len]
    return LocalHeader(name, method, flags, csize, usize, header_offset + _LOCAL_LEN + name_len + extra_len)


def local_data_offset(header: bytes, header_offset: int) -> int:
    """Where a record's data starts, from the first bytes of its local header.

    Raises:
        ArchiveError: ``header`` is not a local file header.
    """
    if len(header) < _LOCAL_LEN or header[:4] != _LOCAL_SIG:
        raise ArchiveError(f"no local file header at offset {header_offset}")
    name_len, extra_len = struct.unpack_from("<HH", header, 26)
    return int(header_offset + _LOCAL_LEN + name_len + extra_len)


_ZIP64_EOCD_LEN = 56
_ZIP64_LOCATOR_LEN = 20


def _zip64_eocd(tail: bytes, eocd: int, tail_start: int) -> tuple[int, int, int, int]:
    """Count, size and offset of the central directory from the zip64 end record, and
    where that record starts (the directory ends before it)."""
    loc = eocd - _ZIP64_LOCATOR_LEN
    if loc < 0 or tail[loc : loc + 4] != _ZIP64_LOCATOR_SIG:
        raise ArchiveError("zip64 archive without a zip64 end-of-central-directory locator")
    (record_offset,) = struct.unpack_from("<Q", tail, loc + 8)
    rec = record_offset - tail_start
    if rec < 0 or rec + _ZIP64_EOCD_LEN > loc or tail[rec : rec + 4] != _ZIP64_EOCD_SIG:
        raise ArchiveError("zip64 end-of-central-directory record not found")
    count, cd_size, cd_offset = struct.unpack_from("<QQQ", tail, rec + 32)
    return count, cd_size, cd_offset, record_offset


def _apply_zip64(extra: bytes, usize: int, csize: int, offset: int) -> tuple[int, int, int]:
    """Replace 0xFFFFFFFF fields with the values of the zip64 extra field (id 0x0001)."""
    pos = 0
    while pos + 4 <= len(extra):
        tag, size = struct.unpack_from("<HH", extra, pos)
        if pos + 4 + size > len(extra):
            raise ArchiveError("corrupt central directory: an extra field runs past its entry")
        if tag == 1:
            vals = iter(struct.unpack_from(f"<{size // 8}Q", extra, pos + 4))
            try:
                if usize == 0xFFFFFFFF:
                    usize = next(vals)
                if csize == 0xFFFFFFFF:
                    csize = next(vals)
                if offset == 0xFFFFFFFF:
                    offset = next(vals)
            except StopIteration:
                raise ArchiveError("corrupt central directory: a zip64 extra field lacks a value") from None
            break
        pos += 4 + size
    return usize, csize, offset


def index_to_json(index: ZipIndex) -> dict[str, Any]:
    """A ZipIndex as JSON-able data."""
    return {
        "records": [asdict(r) for r in index.records],
        "small": {k: v.decode("latin-1") for k, v in index.small.items()},
        "total": index.total,
    }


def index_from_json(data: Mapping[str, Any]) -> ZipIndex:
    """The ZipIndex that :func:`index_to_json` described."""
    return ZipIndex(
        records=tuple(ZipRecord(**r) for r in data["records"]),
        small={k: v.encode("latin-1") for k, v in data["small"].items()},
        total=int(data["total"]),
    )
