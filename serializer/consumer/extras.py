"""One extra file of a stored archive, read by HTTP ranges without downloading the archive."""

from __future__ import annotations

import hashlib
import zlib

from ..archive.extras import validate_extra_name
from ..archive.zipindex import CentralDirectoryTooLarge, local_data_offset, parse_central_directory
from ..errors import ArchiveError
from ..manifest.model import Manifest
from ..s3.client import S3Client
from ..s3.uri import parse_s3_uri

#: First read from an archive's end when no manifest gives the offsets: the end record
#: and the central directory of a typical model (~100 bytes a record) fit in it.
TAIL_READ = 64 * 1024
#: Local header slack read with a record's data: name and PyTorch's alignment padding.
HEADER_SLACK = 30 + 1024 + 128


def _get_range(client: S3Client, uri: str, spec: str) -> tuple[bytes, int]:
    target = parse_s3_uri(uri)
    resp = client.get_object(Bucket=target.bucket, Key=target.key, Range=spec)
    total = int(str(resp.get("ContentRange", "/0")).rsplit("/", 1)[-1])
    return bytes(resp["Body"].read()), total


def read_extra_file(client: S3Client, uri: str, name: str, *, manifest: Manifest | None = None) -> bytes:
    """One extra file of an archive, by HTTP range requests, without downloading the archive.

    With the manifest, one GET at the recorded offset (checked against its sha256);
    without, the zip's end is read to find the record (2 GETs, 3 for a central directory
    over 64 KiB), checked against its CRC.

    Raises:
        InvalidExtraFile: ``name`` is not a safe relative name (no ``..``, no absolute path).
        ArchiveError: no such extra file, or its bytes do not match.
    """
    validate_extra_name(name)
    if manifest is not None:
        listed = next((e for e in manifest.extra_files if e.name == name), None)
        if listed is None:
            raise ArchiveError(f"{uri} has no extra file {name!r} (it has {[e.name for e in manifest.extra_files]})")
        if listed.size == 0:
            return b""
        data, _ = _get_range(client, uri, f"bytes={listed.offset}-{listed.offset + listed.size - 1}")
        if hashlib.sha256(data).hexdigest() != listed.sha256:
            raise ArchiveError(f"extra file {name!r} of {uri} differs from its manifest sha256")
        return data

    tail, total = _get_range(client, uri, f"bytes=-{TAIL_READ}")
    try:
        entries = parse_central_directory(tail, total)
    except CentralDirectoryTooLarge as exc:
        tail, total = _get_range(client, uri, f"bytes=-{exc.needed}")
        entries = parse_central_directory(tail, total)
    entry = next((e for e in entries if e.name.split("/", 1)[-1] == f"extra/{name}"), None)
    if entry is None:
        raise ArchiveError(f"{uri} has no extra file {name!r}")
    if entry.method != 0:
        raise ArchiveError(f"extra file {name!r} of {uri} is compressed; cannot range-read it")
    end = min(total, entry.header_offset + HEADER_SLACK + entry.compressed_size) - 1
    raw, _ = _get_range(client, uri, f"bytes={entry.header_offset}-{end}")
    start = local_data_offset(raw, entry.header_offset) - entry.header_offset
    data = raw[start : start + entry.size]
    if len(data) != entry.size or zlib.crc32(data) != entry.crc32:
        raise ArchiveError(f"extra file {name!r} of {uri} does not match its CRC")
    return data
