"""One extra file of a stored archive, read by HTTP ranges without downloading the archive.

Every read is bounded (:class:`~serializer.s3.limits.ReadLimits`) and checked before it is
made: a manifest entry or a central directory cannot make the reader fetch or hold more
than the caps, whatever sizes and offsets it claims.  Records are only read as stored: a
compressed one is refused, never inflated.  The GETs after the first carry the first
reply's ETag (``IfMatch``), so an archive replaced in between is refused.
"""

from __future__ import annotations

import hashlib
import zlib

from ..archive.extras import validate_extra_name
from ..archive.zipindex import CentralDirectoryTooLarge, CentralEntry, parse_central_directory, parse_local_header
from ..errors import ArchiveError
from ..manifest.model import Manifest
from ..s3.client import S3Client
from ..s3.limits import ReadLimits, env_name, resolve_limits
from ..s3.ranged import read_range, read_tail

#: First read from an archive's end when no manifest gives the offsets: the end record
#: and the central directory of a typical model (~100 bytes a record) fit in it.
TAIL_READ = 64 * 1024
#: Local header slack read with a record's data: name and PyTorch's alignment padding.
HEADER_SLACK = 30 + 1024 + 128
#: A zip64 size or offset in a local header: the real value is in its extra field.
_ZIP64_MARK = 0xFFFFFFFF

_EXTRA_CAP = env_name("max_extra_bytes")
_TAIL_CAP = env_name("max_tail_bytes")


def read_extra_file(
    client: S3Client,
    uri: str,
    name: str,
    *,
    manifest: Manifest | None = None,
    limits: ReadLimits | None = None,
) -> bytes:
    """One extra file of an archive, by HTTP range requests, without downloading the archive.

    With the manifest, one GET at the recorded offset (checked against its sha256);
    without, the zip's end is read to find the record (2 GETs, 3 for a central directory
    over 64 KiB), checked against its CRC.  ``limits`` caps what may be read (default:
    :meth:`ReadLimits.from_env`): at most ``max_extra_bytes`` of file and
    ``max_tail_bytes`` of central directory.

    Raises:
        InvalidExtraFile: ``name`` is not a safe relative name (no ``..``, no absolute path).
        ArchiveError: no such extra file, its bytes do not match, it is larger than the cap,
            its record lies outside the archive or is compressed, or the archive was
            replaced while being read.
        InvalidReadLimit: an ``EXPORT_READ_*`` variable is invalid.
    """
    validate_extra_name(name)
    caps = resolve_limits(limits)
    if manifest is not None:
        return _read_listed(client, uri, name, manifest, caps)
    return _read_from_central_directory(client, uri, name, caps)


def _over_cap(uri: str, name: str, size: int, caps: ReadLimits) -> ArchiveError:
    return ArchiveError(
        f"extra file {name!r} of {uri} is {size} bytes, more than the {caps.max_extra_bytes}-byte "
        f"read limit ({_EXTRA_CAP}); raise it to read this file"
    )


def _read_listed(client: S3Client, uri: str, name: str, manifest: Manifest, caps: ReadLimits) -> bytes:
    listed = next((e for e in manifest.extra_files if e.name == name), None)
    if listed is None:
        raise ArchiveError(f"{uri} has no extra file {name!r} (it has {[e.name for e in manifest.extra_files]})")
    if listed.size > caps.max_extra_bytes:
        raise _over_cap(uri, name, listed.size, caps)
    if listed.offset + listed.size > manifest.artifact.size:
        raise ArchiveError(
            f"extra file {name!r} of {uri}: the manifest puts it at bytes {listed.offset}.."
            f"{listed.offset + listed.size}, outside the {manifest.artifact.size}-byte archive"
        )
    if listed.size == 0:
        return b""
    reply = read_range(
        client,
        uri,
        listed.offset,
        listed.size,
        max_bytes=caps.max_extra_bytes,
        what=f"extra file {name!r}",
        cap_name=f"read limit ({_EXTRA_CAP})",
    )
    if hashlib.sha256(reply.data).hexdigest() != listed.sha256:
        raise ArchiveError(f"extra file {name!r} of {uri} differs from its manifest sha256")
    return reply.data


def _read_from_central_directory(client: S3Client, uri: str, name: str, caps: ReadLimits) -> bytes:
    tail = read_tail(
        client,
        uri,
        min(TAIL_READ, caps.max_tail_bytes),
        max_bytes=caps.max_tail_bytes,
        what="zip tail",
        cap_name=f"read limit ({_TAIL_CAP})",
    )
    etag, total = tail.etag or None, tail.total
    try:
        entries = parse_central_directory(tail.data, total)
    except CentralDirectoryTooLarge as exc:
        if exc.needed > caps.max_tail_bytes:
            raise ArchiveError(
                f"the central directory of {uri} needs its last {exc.needed} bytes, more than the "
                f"{caps.max_tail_bytes}-byte read limit ({_TAIL_CAP})"
            ) from exc
        tail = read_range(
            client,
            uri,
            total - exc.needed,
            exc.needed,
            max_bytes=caps.max_tail_bytes,
            what="central directory",
            etag=etag,
            total=total,
            cap_name=f"read limit ({_TAIL_CAP})",
        )
        entries = parse_central_directory(tail.data, total)
    entry = _find_stored_entry(uri, name, entries)
    if entry.size > caps.max_extra_bytes:
        raise _over_cap(uri, name, entry.size, caps)
    return _read_record(client, uri, name, entry, etag=etag, total=total, caps=caps)


def _find_stored_entry(uri: str, name: str, entries: list[CentralEntry]) -> CentralEntry:
    """The one central-directory entry of extra file ``name``, stored as is."""
    found = [e for e in entries if e.name.split("/", 1)[-1] == f"extra/{name}"]
    if not found:
        raise ArchiveError(f"{uri} has no extra file {name!r}")
    if len(found) > 1:
        raise ArchiveError(f"{uri} holds extra file {name!r} {len(found)} times; it is not an archive we wrote")
    (entry,) = found
    if entry.method != 0:
        raise ArchiveError(
            f"extra file {name!r} of {uri} is compressed (method {entry.method}); archives store extra "
            "files as is, so it is refused rather than inflated"
        )
    if entry.compressed_size != entry.size:
        raise ArchiveError(
            f"extra file {name!r} of {uri} is compressed ({entry.compressed_size} bytes stored for "
            f"{entry.size}); it is refused rather than inflated"
        )
    return entry


def _read_record(
    client: S3Client, uri: str, name: str, entry: CentralEntry, *, etag: str | None, total: int, caps: ReadLimits
) -> bytes:
    """The data of a stored record: its local header and data in one GET (two when the
    header is longer than the slack), checked against the central directory and its CRC."""
    length = min(total - entry.header_offset, HEADER_SLACK + entry.size)
    what = f"record of extra file {name!r}"
    raw = read_range(
        client,
        uri,
        entry.header_offset,
        length,
        max_bytes=caps.max_extra_bytes + HEADER_SLACK,
        what=what,
        etag=etag,
        total=total,
    ).data
    local = parse_local_header(raw, entry.header_offset)
    if local.name != entry.name.encode("utf-8"):
        raise ArchiveError(f"{what} of {uri}: its local header names {local.name[:64]!r}")
    if local.method != 0:
        raise ArchiveError(
            f"extra file {name!r} of {uri} is compressed in its local header (method {local.method}); "
            "it is refused rather than inflated"
        )
    sizes = (local.compressed_size, local.size)
    # Sizes in a data descriptor (bit 3, as torch writes) or in a zip64 field are not here.
    if not local.sizes_follow and _ZIP64_MARK not in sizes and sizes != (entry.size, entry.size):
        raise ArchiveError(
            f"{what} of {uri}: its local header says {local.compressed_size} bytes stored for "
            f"{local.size}, the central directory {entry.size}"
        )
    start = local.data_offset - entry.header_offset
    if start + entry.size <= len(raw):
        data = raw[start : start + entry.size]
    else:  # a local header longer than the slack: read the data alone
        data = read_range(
            client,
            uri,
            local.data_offset,
            entry.size,
            max_bytes=caps.max_extra_bytes,
            what=f"extra file {name!r}",
            etag=etag,
            total=total,
        ).data
    if len(data) != entry.size or zlib.crc32(data) != entry.crc32:
        raise ArchiveError(f"extra file {name!r} of {uri} does not match its CRC")
    return data
