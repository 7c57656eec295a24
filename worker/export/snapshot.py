"""What a builder takes from the snapshot its spec's weights name: the config, and the
files carried into the archive.

A spec whose ``weights`` is a snapshot prefix (``s3://bucket/models/bert/``) and whose
builder has a snapshot use (:class:`worker.zoo.SnapshotUse`; the transformers builder has
one) gets, from that prefix, what the team copied there from the hub:

- the snapshot's ``config.json``, parsed, as the builder's config argument, unless the
  spec's ``kwargs`` give one (the spec's word wins);
- the snapshot's config and tokenizer files (the use's ``carried`` names that exist there)
  as extra files of the archive, under their own names, unless the spec names the same
  extra file itself.  A ``.pt2`` holds text extra files only: a binary one (a
  sentencepiece model) is left out of a ``.pt2``, with a warning.

Every file is listed and read within the read scopes, and each is bounded by
``EXPORT_MAX_EXTRA_FILE_BYTES``, like a spec's own extra files.  Nothing else of the
snapshot is read (its weights are loaded by :mod:`worker.weights`).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from serializer.s3.client import S3Client

from ..builders import snapshot_use
from ..errors import BuildFailed
from ..scopes import check_read
from ..settings import Settings
from ..spec import ExportSpec
from ..weights import snapshot_files, weights_kind
from .extras import fetch_bounded

log = logging.getLogger(__name__)

#: A snapshot's config, read when the builder takes one.
CONFIG_FILE = "config.json"


@dataclass(frozen=True)
class SnapshotInputs:
    """What the build takes from a snapshot: keyword arguments for the builder, and files to
    carry into the archive."""

    kwargs: dict[str, Any] = field(default_factory=dict)
    carried: dict[str, bytes] = field(default_factory=dict)


def snapshot_inputs(spec: ExportSpec, settings: Settings, client: S3Client) -> SnapshotInputs:
    """The config and carried files of the spec's snapshot (empty unless its weights are a
    snapshot prefix and its builder has a snapshot use).

    Raises:
        ScopeError: the snapshot lies outside the read scopes; nothing is read.
        BuildFailed: the snapshot cannot be listed, or its ``config.json`` is not a JSON object.
        SpecError: a file cannot be read, or is over ``EXPORT_MAX_EXTRA_FILE_BYTES``.
    """
    if not spec.weights or weights_kind(spec.weights) != "snapshot":
        return SnapshotInputs()
    use = snapshot_use(spec.builder, settings.allowed_builders)
    if use is None:
        return SnapshotInputs()
    files = snapshot_files(client, spec.weights, read_scopes=settings.read_scopes)
    wants_config = use.config_argument not in spec.kwargs and CONFIG_FILE in files
    carried_names = [n for n in use.carried if n in files and n not in spec.extra_files]
    # Each file once, though the config may be both parsed and carried.
    fetched: dict[str, bytes] = {}
    for name in dict.fromkeys([*([CONFIG_FILE] if wants_config else []), *carried_names]):
        check_read(settings.read_scopes, files[name], "weights")
        fetched[name] = fetch_bounded(client, f"weights ({name})", files[name], settings.max_extra_file_bytes)
    kwargs = {use.config_argument: _config(fetched[CONFIG_FILE], files[CONFIG_FILE])} if wants_config else {}
    return SnapshotInputs(kwargs, {name: fetched[name] for name in carried_names})


def carry_into(extras: dict[str, bytes], carried: Mapping[str, bytes], fmt: str) -> list[str]:
    """Add the carried files to ``extras`` (the spec's own names win); for a ``.pt2``, only
    those that are UTF-8 text.  Returns the names left out."""
    left_out = []
    for name, data in carried.items():
        if name in extras:
            continue
        if fmt == "pt2" and not _is_text(data):
            left_out.append(name)
            continue
        extras[name] = data
    if left_out:
        log.warning("snapshot files left out of the .pt2 archive (not UTF-8 text): %s", ", ".join(left_out))
    return left_out


def _config(raw: bytes, uri: str) -> dict[str, Any]:
    try:
        config = json.loads(raw)
    except (UnicodeDecodeError, ValueError) as exc:
        raise BuildFailed(f"weights: the snapshot's {CONFIG_FILE} ({uri}) is not JSON: {exc}") from None
    if not isinstance(config, dict):
        raise BuildFailed(f"weights: the snapshot's {CONFIG_FILE} ({uri}) is not a JSON object")
    return config


def _is_text(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


__all__ = ["CONFIG_FILE", "SnapshotInputs", "carry_into", "snapshot_inputs"]
