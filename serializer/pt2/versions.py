"""The PT2 versions this torch writes and reads (torch is imported on first call)."""

from __future__ import annotations


def export_schema_version() -> tuple[int, int]:
    """The export schema version this torch serializes programs with ``(major, minor)``."""
    from torch._export.serde.schema import SCHEMA_VERSION

    return int(SCHEMA_VERSION[0]), int(SCHEMA_VERSION[1])


def archive_version() -> int:
    """The PT2 archive version this torch writes (and the only one it loads)."""
    from torch.export.pt2_archive.constants import ARCHIVE_VERSION_VALUE

    return int(ARCHIVE_VERSION_VALUE)
