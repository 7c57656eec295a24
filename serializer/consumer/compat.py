"""Whether this torch can load an archive, decided from its manifest before any download."""

from __future__ import annotations

from dataclasses import dataclass

from packaging.version import InvalidVersion, Version

from ..manifest.model import Manifest
from ..pt2.versions import archive_version, export_schema_version


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
    return archive_version(), export_schema_version()


def local_reader() -> tuple[str, int]:
    """This process's torch version and the highest archive format version it reads."""
    # Imported here: reading manifests (exportctl ls, show) needs no torch.
    import torch

    return torch.__version__, int(torch._C._get_max_operator_version())
