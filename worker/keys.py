"""Where exports live in S3: the one definition of the key layout.

An export of a spec by a given torch is written to::

    {destination}/{name}/{spec_hash[:16]}/torch-{version}/model.pt    (model.pt2 for format pt2)
    {destination}/{name}/{spec_hash[:16]}/torch-{version}/model.manifest.json

and a replacement's new archive is staged next to it, at ``model.pt.staging-{12 hex}``
(``model.pt2.staging-...``) until it is verified and copied over.  The export writes these
keys (:func:`export_keys`, :func:`staging_uri`); the sweeper recognises them
(:func:`is_archive_key`, :func:`is_staging_key`, :func:`manifest_key_of`) and touches nothing else.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass

from serializer.formats import ARTIFACT_SUFFIXES
from serializer.manifest.model import MANIFEST_SUFFIX, artifact_suffix, manifest_uri_for
from serializer.s3.uri import parse_s3_uri

from .spec import ExportSpec

#: Leading hex digits of the spec's hash in a key: one folder per spec, short enough to read.
HASH_DIGITS = 16
#: Prefix of the folder named after the producing torch: torches write next to, not over, each other.
TORCH_FOLDER = "torch-"
#: The last key segment of every archive the service writes, per format.
ARTIFACT_NAMES = tuple("model" + suffix for suffix in ARTIFACT_SUFFIXES.values())
#: Between an archive's name and a random suffix: a replacement's staging object.
STAGING_MARK = ".staging-"
#: How a staging object's last key segment starts, per format.
STAGING_MARKS = tuple(name + STAGING_MARK for name in ARTIFACT_NAMES)
#: Random hex digits that keep concurrent staging objects of one export apart.
STAGING_DIGITS = 12


@dataclass(frozen=True)
class Keys:
    """Where an export goes: derived from the spec's hash and the producing torch."""

    artifact: str
    manifest: str


def export_keys(spec: ExportSpec, torch_version: str) -> Keys:
    """``{destination}/{name}/{spec_hash[:16]}/torch-{version}/model.pt`` (``model.pt2`` for
    format pt2) and its manifest.

    Same spec and same torch: same keys.  A different torch writes next to, not over, the
    artifacts of another.
    """
    dest = parse_s3_uri(spec.destination, require_key=False)
    safe_version = torch_version.replace("+", "_")
    artifact = "model" + ARTIFACT_SUFFIXES[spec.format]
    uri = str(dest.join(spec.name, spec.spec_hash[:HASH_DIGITS], f"{TORCH_FOLDER}{safe_version}", artifact))
    return Keys(artifact=uri, manifest=manifest_uri_for(uri))


def staging_uri(keys: Keys) -> str:
    """A key of its own, next to the artifact, for a replacement's new archive."""
    return f"{keys.artifact}{STAGING_MARK}{uuid.uuid4().hex[:STAGING_DIGITS]}"


def _last_segment(key: str) -> str | None:
    """The file name of a key in a ``.../torch-{version}/`` folder, or None for any other key."""
    parts = key.rsplit("/", 2)
    if len(parts) < 3 or not parts[1].startswith(TORCH_FOLDER):
        return None
    return parts[2]


def is_archive_key(key: str) -> bool:
    """Whether ``key`` is an archive in the layout (``.../torch-{version}/model.pt[2]``)."""
    name = _last_segment(key)
    return name is not None and name in ARTIFACT_NAMES


def is_staging_key(key: str) -> bool:
    """Whether ``key`` is a replacement's staging object (``.../torch-{version}/model.pt[2].staging-*``)."""
    name = _last_segment(key)
    return name is not None and name.startswith(STAGING_MARKS)


def manifest_key_of(archive_key: str) -> str:
    """The key of an archive's manifest: ``.../model.pt`` (or ``.pt2``) -> ``.../model.manifest.json``."""
    suffix = artifact_suffix(archive_key) or ""
    return archive_key[: len(archive_key) - len(suffix)] + MANIFEST_SUFFIX
