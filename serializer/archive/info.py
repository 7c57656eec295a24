"""What a stored archive (TorchScript or .pt2) holds, read from its zip index (no torch needed)."""

from __future__ import annotations

import zlib
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import ArchiveError
from ..s3.multipart import UploadResult
from .extras import ExtraFileInfo, sha256_hex
from .zipindex import ZipIndex


@dataclass(frozen=True)
class Pt2Info:
    """What a consumer of a ``.pt2`` archive must know before loading it: the PT2 archive
    version (``torch.export.load`` refuses any other than its own) and the export schema
    version of the serialized program (a different major version is refused)."""

    archive_version: int
    schema_major: int
    schema_minor: int

    @property
    def schema(self) -> str:
        return f"{self.schema_major}.{self.schema_minor}"


@dataclass(frozen=True)
class ArchiveInfo:
    """What was stored: location, size, digests, the zip's format version and its extra files."""

    uri: str
    size: int
    sha256: str
    etag: str
    format_version: int
    archive_root: str
    extra_files: tuple[ExtraFileInfo, ...]
    version_id: str | None = None
    format: str = "torchscript"
    pt2: Pt2Info | None = None


def archive_root(index: ZipIndex) -> str:
    """The zip's top folder (torch puts every record under one)."""
    if not index.records:
        raise ArchiveError("archive has no records")
    return index.records[0].name.split("/", 1)[0]


def check_extras(index: ZipIndex, extras: Mapping[str, bytes]) -> None:
    """Check that every extra file is stored in the zip with the given bytes (size and CRC).

    Raises:
        ArchiveError: an extra file is missing or differs.
    """
    root = archive_root(index)
    by_name = index.by_name
    for name, content in extras.items():
        rec = by_name.get(f"{root}/extra/{name}")
        if rec is None:
            raise ArchiveError(f"extra file {name!r} missing from the saved archive")
        if (
            rec.size != len(content)
            or rec.compressed_size != rec.size
            or rec.crc32 != zlib.crc32(content)
            or rec.method != 0
        ):
            raise ArchiveError(f"extra file {name!r} was stored altered (size, CRC or compression)")


def read_stored_small(index: ZipIndex, name: str) -> bytes | None:
    """A small record's bytes from the index's tail (None if absent or not in the tail).

    Raises:
        ArchiveError: the record is compressed (export-worker stores every record as is;
            a compressed one is refused, never inflated).
    """
    rec = index.by_name.get(name)
    if rec is not None and (rec.method != 0 or rec.compressed_size != rec.size):
        raise ArchiveError(
            f"record {name!r} is compressed (method {rec.method}, {rec.compressed_size} bytes stored for "
            f"{rec.size}); archives are stored uncompressed, so it is refused rather than inflated"
        )
    return index.read_small(name)


def format_version(index: ZipIndex) -> int:
    """The archive's file-format version (``.data/version``, else ``version``)."""
    root = archive_root(index)
    for name in (f"{root}/.data/version", f"{root}/version"):
        raw = read_stored_small(index, name)
        if raw is not None:
            try:
                return int(raw.decode("ascii").strip())
            except ValueError as exc:
                raise ArchiveError(f"unreadable format version {raw!r} in {name}") from exc
    raise ArchiveError("archive has no version record")


def read_int_record(index: ZipIndex, name: str) -> int:
    """A small record holding one integer (``{root}/{name}``), from the index's tail.

    Raises:
        ArchiveError: the record is missing, compressed or not an integer.
    """
    path = f"{archive_root(index)}/{name}"
    raw = read_stored_small(index, path)
    if raw is None:
        raise ArchiveError(f"archive has no {name} record")
    try:
        return int(raw.decode("ascii").strip())
    except ValueError as exc:
        raise ArchiveError(f"unreadable {name} {raw!r} in {path}") from exc


def describe_archive(
    result: UploadResult,
    index: ZipIndex,
    extras: Mapping[str, bytes],
    *,
    format: str = "torchscript",
    pt2: Pt2Info | None = None,
) -> ArchiveInfo:
    """Combine the upload's result and the zip index into an :class:`ArchiveInfo`."""
    root = archive_root(index)
    by_name = index.by_name
    infos = tuple(
        ExtraFileInfo(
            name=name,
            size=len(content),
            sha256=sha256_hex(content),
            offset=by_name[f"{root}/extra/{name}"].data_offset,
        )
        for name, content in sorted(extras.items())
    )
    return ArchiveInfo(
        uri=result.uri,
        size=result.size,
        sha256=result.sha256,
        etag=result.etag,
        format_version=format_version(index),
        archive_root=root,
        extra_files=infos,
        version_id=result.version_id,
        format=format,
        pt2=pt2,
    )
