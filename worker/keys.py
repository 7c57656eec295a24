"""Where exports live in S3: the one definition of the key layout.

An export of a spec by a given torch is written to::

    {destination}/{name}/{spec_hash[:16]}/torch-{version}/model.pt    (model.pt2 for format pt2)
    {destination}/{name}/{spec_hash[:16]}/torch-{version}/model.manifest.json
    {destination}/{name}/{spec_hash[:16]}/torch-{version}/model.sig    (where exports are signed)

and a replacement's new archive is staged next to it, at ``model.pt.staging-{12 hex}``
(``model.pt2.staging-...``) until it is verified and copied over.  The export writes these
keys (:func:`export_keys`, :func:`staging_uri`); the sweeper and a job cleaning up after a
dead one recognise them (:func:`layout_of`, :func:`is_archive_key`, :func:`is_staging_key`,
:func:`is_upload_of`, :func:`manifest_key_of`) and touch nothing else.  Recognising is exact:
the last four segments of the key are a name by the spec's rule, 16 lowercase hex digits,
``torch-`` and a torch version (``+`` written ``_``), and an archive's or staging object's
file name; ``.../torch-x/model.pt`` or ``.../notes/torch-2/model.pt.staging-x`` are not ours.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import NamedTuple

from serializer.errors import SerializerError
from serializer.formats import ARTIFACT_SUFFIXES
from serializer.manifest.model import MANIFEST_SUFFIX, Manifest, artifact_suffix, manifest_uri_for, spec_digest
from serializer.s3.uri import parse_s3_uri
from serializer.signing.store import signature_uri_for

from .spec import ExportSpec
from .spec.model import NAME_PATTERN

#: Leading hex digits of the spec's hash in a key: one folder per spec, short enough to read.
HASH_DIGITS = 16
#: Prefix of the folder named after the producing torch: torches write next to, not over, each other.
TORCH_FOLDER = "torch-"
#: The last key segment of every archive the service writes, per format.
ARTIFACT_NAMES = tuple("model" + suffix for suffix in ARTIFACT_SUFFIXES.values())
#: Between an archive's name and a random suffix: a replacement's staging object.
STAGING_MARK = ".staging-"
#: Random hex digits that keep concurrent staging objects of one export apart.
STAGING_DIGITS = 12
#: A torch version as a key segment writes it (PEP 440, its local part after ``_``, not ``+``):
#: ``2.13.0_cpu``, ``2.6.0a0_git1234abc``, ``2.7.0.dev20250101_cu124``.
TORCH_VERSION_PATTERN = (
    r"[0-9]+(?:\.[0-9]+)*(?:(?:a|b|rc)[0-9]+)?(?:\.post[0-9]+)?(?:\.dev[0-9]+)?(?:_[A-Za-z0-9]+(?:\.[A-Za-z0-9]+)*)?"
)
#: The end of every key the service writes: name (never ``.`` or ``..``, which the spec
#: refuses), hash folder, torch folder, archive, and a staging object's random suffix.
#: Anything may come before (the destination's prefix).
_LAYOUT_RE = re.compile(
    rf"(?:.*/)?(?!\.\.?/){NAME_PATTERN}/[0-9a-f]{{{HASH_DIGITS}}}/{re.escape(TORCH_FOLDER)}{TORCH_VERSION_PATTERN}/"
    rf"(?P<archive>{'|'.join(re.escape(name) for name in ARTIFACT_NAMES)})"
    rf"(?P<staging>{re.escape(STAGING_MARK)}[0-9a-f]{{{STAGING_DIGITS}}})?"
)


@dataclass(frozen=True)
class Keys:
    """Where an export goes: derived from the spec's hash and the producing torch."""

    artifact: str
    manifest: str

    @property
    def signature(self) -> str:
        """``.../model.sig``: the export's signature, next to its archive and manifest."""
        return signature_uri_for(self.artifact)


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


def manifest_mismatch(manifest: Manifest, spec: ExportSpec, manifest_uri: str) -> str | None:
    """Why ``manifest``, read at ``manifest_uri``, is not the export of ``spec`` by the torch
    it names, or None where it is: its ``spec_hash`` recomputes from its ``spec`` and is
    ``spec``'s, it lies at the keys that spec and torch map to, and its artifact is that
    key's.  Pure; the reason names keys and hashes, never the manifest's values.
    """
    try:
        recorded = spec_digest(manifest.spec)
        keys = export_keys(spec, manifest.producer.torch)
    except (TypeError, ValueError, SerializerError):  # not JSON data (a lone surrogate), no key
        return "its spec or torch cannot be hashed or mapped to a key"
    if recorded != manifest.spec_hash:
        return "its spec_hash does not recompute from its spec"
    if spec.spec_hash != manifest.spec_hash:
        return "its spec_hash is not the hash of the spec it records, once validated"
    if keys.manifest != manifest_uri:
        return f"it lies at {manifest_uri}, not at {keys.manifest} where its spec and torch map"
    return None if manifest.artifact.uri == keys.artifact else f"its artifact is not {keys.artifact}"


def staging_uri(keys: Keys) -> str:
    """A key of its own, next to the artifact, for a replacement's new archive."""
    return f"{keys.artifact}{STAGING_MARK}{uuid.uuid4().hex[:STAGING_DIGITS]}"


class LayoutKey(NamedTuple):
    """A key of the service's layout: the archive's key, and whether this is its staging object."""

    archive: str
    staging: bool


def layout_of(key: str) -> LayoutKey | None:
    """What ``key`` is in the service's layout (an archive or a staging object), or None for
    any key the service does not write."""
    found = _LAYOUT_RE.fullmatch(key)
    if found is None:
        return None
    staging = found.group("staging")
    return LayoutKey(archive=key[: len(key) - len(staging)] if staging else key, staging=staging is not None)


def is_archive_key(key: str) -> bool:
    """Whether ``key`` is an archive in the layout (``.../{name}/{16 hex}/torch-{version}/model.pt[2]``)."""
    found = layout_of(key)
    return found is not None and not found.staging


def is_staging_key(key: str) -> bool:
    """Whether ``key`` is a replacement's staging object (``...model.pt[2].staging-{12 hex}``)."""
    found = layout_of(key)
    return found is not None and found.staging


def is_upload_of(archive_key: str, key: str) -> bool:
    """Whether ``key`` is ``archive_key`` itself or one of its staging objects, both in the layout."""
    found = layout_of(key)
    return found is not None and found.archive == archive_key


def manifest_key_of(archive_key: str) -> str:
    """The key of an archive's manifest: ``.../model.pt`` (or ``.pt2``) -> ``.../model.manifest.json``."""
    suffix = artifact_suffix(archive_key) or ""
    return archive_key[: len(archive_key) - len(suffix)] + MANIFEST_SUFFIX
