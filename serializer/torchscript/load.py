"""Load a stored TorchScript archive back: downloaded to a file, checked, ``torch.jit.load``."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ArchiveError
from ..formats import PT2_SUFFIX
from ..s3.client import S3Client
from ..s3.ranged import download_checked
from ..s3.uri import parse_s3_uri
from ..signing.keys import TrustedKeys
from ..signing.store import resolve_trusted, signed_digest
from .check import check_torchscript_archive
from .save import ARCHIVE_FILE, quiet_torchscript_deprecation


def load_torchscript_file(
    path: str,
    *,
    map_location: str | torch.device | None = "cpu",
    extra_names: Iterable[str] = (),
    source: str | None = None,
) -> tuple[torch.jit.ScriptModule, dict[str, bytes]]:
    """``torch.jit.load`` a local archive with the extra files named (absent ones read as
    empty), once :func:`~serializer.torchscript.check.check_torchscript_archive` passed it;
    torch's ``RuntimeError`` goes to the caller, who names the archive.

    Raises:
        ArchiveError: refused by the operator check (naming ``source``, else ``path``),
            before torch reads it.
    """
    check_torchscript_archive(path, source=source)
    extras: dict[str, Any] = dict.fromkeys(extra_names, "")
    with quiet_torchscript_deprecation():
        module = torch.jit.load(path, map_location=map_location, _extra_files=extras)  # type: ignore[no-untyped-call]
    return module, {k: v if isinstance(v, bytes) else str(v).encode() for k, v in extras.items()}


def load_artifact(
    client: S3Client,
    uri: str,
    *,
    map_location: str | torch.device | None = "cpu",
    extra_names: Iterable[str] = (),
    sha256: str | None = None,
    size: int | None = None,
    spool_dir: str | None = None,
    trusted_keys: TrustedKeys | None = None,
) -> tuple[torch.jit.ScriptModule, dict[str, bytes]]:
    """Download (to a temporary file, not memory), check and ``torch.jit.load`` an archive.

    With trusted keys (``trusted_keys``, else those ``EXPORT_TRUSTED_KEYS`` names) the
    export's signature is checked first, and the archive checked against the signed
    manifest's size and sha256 (which ``sha256`` and ``size``, if given, must equal).

    ``torch.jit.load`` puts every module on the CPU unless ``map_location`` says otherwise,
    whatever device it was saved from.

    Returns:
        The module and the requested extra files' bytes.

    Raises:
        SignatureError: keys are trusted, and the export is unsigned, altered or foreign-signed.
        ArchiveError: digest mismatch, or torch could not load it.
    """
    if parse_s3_uri(uri).key.endswith(PT2_SUFFIX):
        raise ArchiveError(
            f"{uri} is a .pt2 archive, not TorchScript: load it with open_artifact or serializer.load_pt2_artifact"
        )
    sha256, size = signed_digest(client, uri, sha256, size, resolve_trusted(trusted_keys))
    return load_downloaded(
        client, uri, sha256=sha256, size=size, map_location=map_location, extra_names=extra_names, spool_dir=spool_dir
    )


def load_downloaded(
    client: S3Client,
    uri: str,
    *,
    sha256: str | None,
    size: int | None,
    map_location: str | torch.device | None = "cpu",
    extra_names: Iterable[str] = (),
    spool_dir: str | None = None,
) -> tuple[torch.jit.ScriptModule, dict[str, bytes]]:
    """:func:`load_artifact` after its signature check: download (checked against ``size``
    and ``sha256``), then the archive checks and ``torch.jit.load``.  For a caller that has
    already checked the signed manifest these digests come from (``open_artifact``).

    Raises:
        ArchiveError: digest mismatch, or torch could not load it.
    """
    with tempfile.TemporaryDirectory(prefix="export-worker-load-", dir=spool_dir) as tmp:
        path = os.path.join(tmp, ARCHIVE_FILE)
        download_checked(client, uri, path, sha256=sha256, size=size)
        try:
            return load_torchscript_file(path, map_location=map_location, extra_names=extra_names, source=uri)
        except RuntimeError as exc:
            raise ArchiveError(f"torch.jit.load of {uri} failed: {exc}") from exc
