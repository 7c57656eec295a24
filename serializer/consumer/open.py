"""Loading an artifact the way a consumer should: its manifest first, compatibility decided
from it, then the archive downloaded and checked against the manifest while it arrives."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from ..errors import ArchiveError
from ..manifest.model import Manifest
from ..pt2.load import load_pt2_downloaded
from ..s3.client import S3Client
from ..signing.keys import TrustedKeys
from ..signing.store import read_trusted_manifest, resolve_trusted
from ..torchscript.load import load_downloaded
from .compat import check_compatibility, local_reader


def read_manifest_checked(client: S3Client, uri: str, *, trusted_keys: TrustedKeys | None = None) -> Manifest:
    """The manifest for ``uri`` (an artifact's or a manifest's), checked to describe the
    artifact next to it and, with trusted keys (``trusted_keys``, else those
    ``EXPORT_TRUSTED_KEYS`` names), to be signed by one of them.

    Raises:
        ManifestError: no valid manifest for ``uri``.
        SignatureError: keys are trusted, and the export is unsigned, altered or foreign-signed.
    """
    return read_trusted_manifest(client, uri, resolve_trusted(trusted_keys))


def open_artifact(
    client: S3Client,
    uri: str,
    *,
    map_location: str | torch.device | None = None,
    extra_names: Iterable[str] = (),
    check_compatibility_first: bool = True,
    spool_dir: str | None = None,
    trusted_keys: TrustedKeys | None = None,
) -> tuple[Any, Manifest, dict[str, bytes]]:
    """Load an artifact the way a consumer should: manifest first, compatibility from the
    manifest before downloading, then the archive checked against the manifest's size and
    sha256 while it downloads.  With trusted keys (``trusted_keys``, else those
    ``EXPORT_TRUSTED_KEYS`` names) the export's signature is checked first: nothing is
    downloaded or loaded unless one of them signed the manifest and the archive's digest.

    A TorchScript archive is loaded with ``torch.jit.load``: ``map_location`` goes to it;
    without one, every module is loaded onto the CPU, whatever device it was saved from.
    A ``.pt2`` archive is loaded with ``torch.export.load`` and gives an
    ``ExportedProgram`` (call ``.module()`` to run it); its weights come back on the device
    they were exported from: ``map_location`` may only name that device.

    Returns:
        The module (or program), its manifest, and the requested extra files' bytes.

    Raises:
        ManifestError: no valid manifest for ``uri``.
        SignatureError: keys are trusted, and the export is unsigned, altered or foreign-signed.
        ArchiveError: this torch cannot read the archive (with the reason), or its bytes
            differ from the manifest's.
    """
    manifest = read_manifest_checked(client, uri, trusted_keys=trusted_keys)
    if check_compatibility_first:
        local_torch, max_version = local_reader()
        verdict = check_compatibility(manifest, local_torch=local_torch, max_format_version=max_version)
        if not verdict.ok:
            raise ArchiveError(f"{manifest.artifact.uri}: {verdict.reason}")
    if manifest.artifact.format == "pt2":
        # torch.export.load has no map_location: the weights go back where they were exported.
        if map_location is not None and torch.device(map_location) != torch.device(manifest.producer.device):
            raise ValueError(
                f"map_location {map_location!r}: a .pt2 loads on the device it was exported on "
                f"({manifest.producer.device}); torch.export.load cannot move it"
            )
        # The manifest's signature is checked (or none is asked for): the digests are the
        # ones to hold the download to, and the loader checks no signature again.
        program, stored = load_pt2_downloaded(
            client,
            manifest.artifact.uri,
            sha256=manifest.artifact.sha256,
            size=manifest.artifact.size,
            spool_dir=spool_dir,
        )
        return program, manifest, {name: stored.get(name, b"") for name in extra_names}
    module, extras = load_downloaded(
        client,
        manifest.artifact.uri,
        map_location=map_location,
        extra_names=extra_names,
        sha256=manifest.artifact.sha256,
        size=manifest.artifact.size,
        spool_dir=spool_dir,
    )
    return module, manifest, extras
