"""The export task's JSON result."""

from __future__ import annotations

from typing import Any

from serializer.manifest.model import Manifest

from ..keys import Keys


def result_of(manifest: Manifest, keys: Keys, *, skipped: bool) -> dict[str, Any]:
    """The task's JSON result, from a manifest."""
    return {
        "artifact_uri": keys.artifact,
        "manifest_uri": keys.manifest,
        "sha256": manifest.artifact.sha256,
        "size": manifest.artifact.size,
        "spec_hash": manifest.spec_hash,
        "extra_files": [e.name for e in manifest.extra_files],
        "skipped": skipped,
        "format": manifest.artifact.format,
        "format_version": manifest.artifact.format_version,
        "verification": manifest.verification.model_dump() if manifest.verification else None,
        "signature_uri": manifest.signature.uri if manifest.signature else None,
    }
