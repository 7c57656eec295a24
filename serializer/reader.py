"""The consumer side: checked downloads, extra files by range reads, compatibility pre-checks.

Nothing here needs Celery; only :func:`self_check` needs torch.
"""

from __future__ import annotations

import hashlib
import zlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from packaging.version import InvalidVersion, Version

from .errors import ArchiveError, ManifestError
from .extras import validate_extra_name
from .manifest import Manifest
from .s3uri import parse_s3_uri
from .zipindex import CentralDirectoryTooLarge, local_data_offset, parse_central_directory

#: Bytes per ranged GET when downloading an archive.
RANGE_SIZE = 8 * 1024**2
#: Ranged GETs in flight; memory is at most ``RANGE_SIZE * (RANGE_IN_FLIGHT + 1)``.
RANGE_IN_FLIGHT = 4
#: First read from an archive's end when no manifest gives the offsets: the end record
#: and the central directory of a typical model (~100 bytes a record) fit in it.
TAIL_READ = 64 * 1024
#: Local header slack read with a record's data: name and PyTorch's alignment padding.
HEADER_SLACK = 30 + 1024 + 128


def iter_object(
    client: Any,
    uri: str,
    size: int,
    *,
    range_size: int = RANGE_SIZE,
    max_in_flight: int = RANGE_IN_FLIGHT,
) -> Iterator[bytes]:
    """The bytes of an object of ``size`` bytes, in order, fetched by parallel ranged GETs.

    At most ``max_in_flight`` ranges are fetched ahead of the consumer.
    """
    target = parse_s3_uri(uri)

    def fetch(start: int) -> bytes:
        end = min(size, start + range_size) - 1
        resp = client.get_object(Bucket=target.bucket, Key=target.key, Range=f"bytes={start}-{end}")
        return bytes(resp["Body"].read())

    if size == 0:
        return
    with ThreadPoolExecutor(max_in_flight, thread_name_prefix="s3-range") as pool:
        starts = iter(range(0, size, range_size))
        # islice, not zip(starts, range(n)): zip would draw one start too many and drop it.
        window: deque[Future[bytes]] = deque(pool.submit(fetch, s) for s in islice(starts, max_in_flight))
        try:
            while window:
                chunk = window.popleft().result()
                nxt = next(starts, None)
                if nxt is not None:
                    window.append(pool.submit(fetch, nxt))
                yield chunk
        finally:
            for future in window:
                future.cancel()


def read_checked(
    client: Any,
    uri: str,
    *,
    size: int,
    sha256: str | None,
    sink: Callable[[bytes], object],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stream the object at ``uri`` into ``sink``, checking size and sha256 (when given) as
    it arrives.

    Raises:
        ArchiveError: the stored bytes differ from the manifest's (size or sha256).
    """
    from botocore.exceptions import ClientError

    from .retry import error_code

    digest = hashlib.sha256()
    got = 0
    try:
        for chunk in iter_object(client, uri, size):
            digest.update(chunk)
            got += len(chunk)
            sink(chunk)
            if progress is not None:
                progress(len(chunk))
    except ClientError as exc:
        if error_code(exc) != "InvalidRange":
            raise
        # A range past the stored end: the object is shorter than the manifest says.
        raise ArchiveError(f"{uri}: shorter than the {size} bytes the manifest says ({error_code(exc)})") from exc
    if got != size:
        raise ArchiveError(f"{uri}: read {got} bytes, the manifest says {size}")
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ArchiveError(
            f"{uri}: sha256 {digest.hexdigest()} differs from the manifest's {sha256}; the object is corrupt"
        )


def _get_range(client: Any, uri: str, spec: str) -> tuple[bytes, int]:
    target = parse_s3_uri(uri)
    resp = client.get_object(Bucket=target.bucket, Key=target.key, Range=spec)
    total = int(str(resp.get("ContentRange", "/0")).rsplit("/", 1)[-1])
    return bytes(resp["Body"].read()), total


def read_extra_file(client: Any, uri: str, name: str, *, manifest: Manifest | None = None) -> bytes:
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


@dataclass(frozen=True)
class Compatibility:
    """Whether this torch can load an archive, and why (not)."""

    ok: bool
    reason: str


def check_compatibility(
    manifest: Manifest,
    *,
    local_torch: str,
    max_format_version: int,
    pt2_archive_version: int | None = None,
    export_schema: tuple[int, int] | None = None,
) -> Compatibility:
    """Decide from the manifest alone, before anything is downloaded, whether an archive loads here.

    ``local_torch`` and ``max_format_version`` describe the reading side (for this process:
    :func:`local_reader`); for a ``.pt2`` archive, so do ``pt2_archive_version`` and
    ``export_schema`` (this process's when not given: :func:`local_pt2_reader`).
    """
    if manifest.artifact.format == "pt2":
        if manifest.artifact.format_version > max_format_version:
            return Compatibility(
                False,
                f"made by torch {manifest.producer.torch} with zip format version {manifest.artifact.format_version}; "
                f"this torch ({local_torch}) reads up to {max_format_version}: upgrade torch to load it",
            )
        if pt2_archive_version is None or export_schema is None:
            local_archive, local_schema = local_pt2_reader()
            pt2_archive_version = local_archive if pt2_archive_version is None else pt2_archive_version
            export_schema = local_schema if export_schema is None else export_schema
        return _pt2_compatibility(manifest, local_torch, pt2_archive_version, export_schema)
    made_by = manifest.producer.torch
    version = manifest.artifact.format_version
    if version > max_format_version:
        return Compatibility(
            False,
            f"made by torch {made_by} with format version {version}; this torch ({local_torch}) reads up to "
            f"{max_format_version}: upgrade torch to load it",
        )
    if _newer(made_by, local_torch):
        return Compatibility(
            True,
            f"made by a newer torch ({made_by}) than this one ({local_torch}); its format version {version} is "
            f"within what this torch reads (up to {max_format_version}), but operators it uses may be unknown here",
        )
    return Compatibility(
        True, f"format version {version} (made by torch {made_by}); this torch reads up to {max_format_version}"
    )


def _newer(made_by: str, local_torch: str) -> bool:
    try:
        return Version(made_by.split("+", maxsplit=1)[0]) > Version(local_torch.split("+", maxsplit=1)[0])
    except InvalidVersion:
        return False


def _pt2_compatibility(
    manifest: Manifest, local_torch: str, local_archive: int, local_schema: tuple[int, int]
) -> Compatibility:
    made_by = manifest.producer.torch
    facts = manifest.artifact.pt2
    if facts is None:  # the manifest's validation rules this out
        return Compatibility(False, "a pt2 manifest without its pt2 facts")
    schema = facts.schema_version
    theirs, ours = f"{schema.major}.{schema.minor}", f"{local_schema[0]}.{local_schema[1]}"
    if facts.archive_version != local_archive:
        return Compatibility(
            False,
            f"made by torch {made_by} as PT2 archive version {facts.archive_version}; this torch ({local_torch}) "
            f"reads archive version {local_archive} only",
        )
    if schema.major != local_schema[0]:
        return Compatibility(
            False,
            f"made by torch {made_by} with export schema {theirs}; this torch ({local_torch}) reads schema "
            f"{local_schema[0]}.x only: "
            + ("upgrade torch to load it" if schema.major > local_schema[0] else "re-export it with this torch"),
        )
    if schema.minor > local_schema[1] or _newer(made_by, local_torch):
        return Compatibility(
            True,
            f"made by a newer torch ({made_by}, export schema {theirs}) than this one ({local_torch}, schema {ours}); "
            "the same major version loads, but fields or operators it uses may be unknown here",
        )
    return Compatibility(
        True,
        f"PT2 archive version {facts.archive_version}, export schema {theirs} (made by torch {made_by}); "
        f"this torch reads schema {ours}",
    )


def local_pt2_reader() -> tuple[int, tuple[int, int]]:
    """The PT2 archive version and export schema version this process's torch reads."""
    from .pt2 import archive_version, export_schema_version

    return archive_version(), export_schema_version()


def local_reader() -> tuple[str, int]:
    """This process's torch version and the highest archive format version it reads."""
    import torch

    return torch.__version__, int(torch._C._get_max_operator_version())


def read_manifest_checked(client: Any, uri: str) -> Manifest:
    """The manifest for ``uri`` (an artifact's or a manifest's), checked to describe its artifact."""
    from .manifest import artifact_suffix, read_manifest

    manifest = read_manifest(client, uri)
    if artifact_suffix(uri) is not None and manifest.artifact.uri != uri:
        raise ManifestError(f"manifest next to {uri} describes {manifest.artifact.uri}")
    return manifest
