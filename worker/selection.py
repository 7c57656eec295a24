"""What a bulk re-export would redo, and why: selections streamed from S3, decisions per spec.

A selection is either every manifest under an ``s3://bucket/prefix`` (paging through the
listing) or a catalog of specs (JSON Lines or YAML, on S3 or on disk).  Each candidate is
decided against this worker as a producer (torch version, archive format and its
version, the digest of the builder's source) under a policy:

``if-stale``
    export where this torch has no export of the spec yet, or where its export's producer
    differs from this worker's (another torch, an older archive format, other builder code);
``always``
    export every spec again, replacing what this torch made before;
``missing``
    export only where this torch has no export of the spec yet.

A candidate read from a manifest made by another torch is re-run on this one: the new
export goes next to the old (the torch version is part of the key), so both stay readable.
With a target format (``to_format``), every spec is converted first (a TorchScript spec
becomes a ``.pt2`` one, see :meth:`~worker.spec.ExportSpec.as_format`) and decided as such:
the converted export goes next to the TorchScript one, which stays.
Everything here streams: memory stays flat whatever the selection's size.
"""

from __future__ import annotations

import json
import logging
from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from botocore.exceptions import ClientError

from serializer.errors import InvalidURI, ManifestError, SerializerError
from serializer.formats import FORMATS, Format
from serializer.manifest.model import MANIFEST_SUFFIX, Manifest
from serializer.manifest.store import read_manifest
from serializer.s3.client import S3Client
from serializer.s3.retry import error_code
from serializer.s3.uri import parse_s3_uri

from .errors import ExportError, SpecError
from .settings import JSONL_SUFFIXES, YAML_SUFFIXES, Policy, Settings
from .spec import ExportSpec, parse_spec

log = logging.getLogger(__name__)

#: Targets a dry run remembers to spot two candidates with one target (exact for prefix
#: listings, where they sit side by side; the real run de-duplicates them all in Redis).
DRY_RUN_RECENT_TARGETS = 4096

Action = Literal["export", "replace", "unchanged", "invalid"]


@dataclass(frozen=True)
class Candidate:
    """One spec of a selection: where it was found, and the manifest it was read from."""

    source: str
    spec: ExportSpec | None = None
    manifest_uri: str | None = None
    manifest: Manifest | None = None
    error: str | None = None
    given_name: str | None = None

    @property
    def name(self) -> str:
        """The spec's name, as far as it is known."""
        if self.spec is not None:
            return self.spec.name
        if self.manifest is not None:
            return str(self.manifest.spec.get("name", "?"))
        return self.given_name or "?"


@dataclass(frozen=True)
class Decision:
    """What the run does with one candidate, and why."""

    action: Action
    reason: str
    name: str
    source: str
    spec: dict[str, Any] | None = None
    target: str | None = None

    @property
    def runs(self) -> bool:
        """Whether the candidate is exported (new or replacing)."""
        return self.action in ("export", "replace")

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action, "reason": self.reason, "name": self.name, "source": self.source,
                "target": self.target}  # fmt: skip


def is_catalog(source: str) -> bool:
    """Whether ``source`` names a catalog file rather than an ``s3://`` prefix of manifests."""
    return not source.endswith("/") and source.lower().endswith(JSONL_SUFFIXES + YAML_SUFFIXES)


def check_source(source: str) -> str:
    """Validate a selection: an ``s3://bucket[/prefix]``, or a catalog path or URI.  A
    trailing ``/`` always means a prefix (a folder may be named like a catalog).

    Raises:
        SpecError: naming what is wrong.
    """
    try:
        if is_catalog(source):
            if source.startswith("s3://"):
                parse_s3_uri(source)
            return source
        if not source.startswith("s3://"):
            kinds = ", ".join(JSONL_SUFFIXES + YAML_SUFFIXES)
            raise SpecError(f"selection {source!r} is neither an s3://bucket/prefix nor a catalog ({kinds})")
        parse_s3_uri(source, require_key=False)
    except InvalidURI as exc:
        raise SpecError(f"selection {source!r}: {exc}") from exc
    # Kept with its trailing "/" where the name would read as a catalog.
    stripped = source.rstrip("/")
    return source if is_catalog(stripped) else stripped


def list_manifests(client: S3Client, prefix_uri: str, *, start_after: str | None = None) -> Iterator[str]:
    """URIs of every manifest under ``s3://bucket/prefix``, paging through the listing.

    One page is held at a time: a page's keys are taken and the page dropped before the
    next is asked for, so memory does not depend on the listing's length.
    """
    prefix = parse_s3_uri(prefix_uri, require_key=False)
    # A prefix names a folder: s3://b/models lists models/..., not models2/...
    key = prefix.key if not prefix.key or prefix.key.endswith("/") else prefix.key + "/"
    kwargs: dict[str, Any] = {"Bucket": prefix.bucket, "Prefix": key}
    if start_after:
        kwargs["StartAfter"] = start_after
    while True:
        page = client.list_objects_v2(**kwargs)
        keys = [item["Key"] for item in page.get("Contents", []) if item["Key"].endswith(MANIFEST_SUFFIX)]
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        del page
        for manifest_key in keys:
            yield f"s3://{prefix.bucket}/{manifest_key}"
        del keys
        if not token:
            return
        kwargs["ContinuationToken"] = token


def iter_candidates(client: S3Client, source: str) -> Iterator[Candidate]:
    """Every candidate of a selection, in order, one at a time."""
    if not is_catalog(source):
        for uri in list_manifests(client, source):
            yield _from_manifest(client, uri)
    elif source.lower().endswith(JSONL_SUFFIXES):
        for number, line in enumerate(_catalog_lines(client, source), start=1):
            text = line.strip()
            if not text or text.startswith("#"):
                continue
            where = f"{source}:{number}"
            try:
                data = json.loads(text)
            except ValueError as exc:
                yield Candidate(source=where, error=f"{where}: not JSON: {exc}")
                continue
            yield _from_data(where, data)
    else:
        yield from _yaml_candidates(client, source)


def _from_manifest(client: S3Client, uri: str) -> Candidate:
    try:
        manifest = read_manifest(client, uri)
    except ManifestError as exc:
        return Candidate(source=uri, manifest_uri=uri, error=str(exc))
    try:
        spec = parse_spec(manifest.spec)
    except SpecError as exc:
        return Candidate(source=uri, manifest_uri=uri, manifest=manifest, error=f"recorded spec: {exc}")
    return Candidate(source=uri, spec=spec, manifest_uri=uri, manifest=manifest)


def _from_data(where: str, data: Any) -> Candidate:
    try:
        return Candidate(source=where, spec=parse_spec(data))
    except SpecError as exc:
        name = data.get("name") if isinstance(data, dict) else None
        return Candidate(source=where, error=f"{where}: {exc}", given_name=name if isinstance(name, str) else None)


def _catalog_lines(client: S3Client, source: str) -> Iterator[str]:
    try:
        if source.startswith("s3://"):
            target = parse_s3_uri(source)
            body = client.get_object(Bucket=target.bucket, Key=target.key)["Body"]
            for raw in body.iter_lines(keepends=True):
                yield raw.decode("utf-8")
        else:
            with Path(source).open(encoding="utf-8") as f:
                yield from f
    except ClientError as exc:
        raise SpecError(f"catalog {source} cannot be read ({error_code(exc) or exc})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"catalog {source} cannot be read: {exc}") from exc


def _yaml_candidates(client: S3Client, source: str) -> Iterator[Candidate]:
    """A YAML catalog: a list of specs, or one spec per document.  Parsed whole (YAML has no
    line-by-line form); JSON Lines is the format for very large catalogs."""
    import yaml

    text = "".join(_catalog_lines(client, source))
    try:
        documents = list(yaml.safe_load_all(text))
    except yaml.YAMLError as exc:
        raise SpecError(f"catalog {source} is not valid YAML: {exc}") from exc
    number = 0
    for doc in documents:
        for data in doc if isinstance(doc, list) else [doc] if doc is not None else []:
            number += 1
            yield _from_data(f"{source}#{number}", data)


@dataclass
class Planner:
    """Decides candidates against this worker as a producer, under a policy."""

    client: S3Client
    settings: Settings
    policy: Policy
    torch_version: str = ""
    format_version: int = 0
    to_format: Format | None = None
    pt2_archive_version: int = -1
    export_schema: tuple[int, int] = (0, 0)
    _digests: dict[str, str | None] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import torch

        from serializer.pt2.versions import archive_version, export_schema_version
        from serializer.torchscript.save import produced_format_version

        self.torch_version = self.torch_version or torch.__version__
        self.format_version = self.format_version or produced_format_version()
        if self.pt2_archive_version < 0:
            self.pt2_archive_version = archive_version()
        self.export_schema = self.export_schema if self.export_schema != (0, 0) else export_schema_version()
        if self.to_format is not None and self.to_format not in FORMATS:
            raise SpecError(f"to_format must be one of {', '.join(FORMATS)}, got {self.to_format!r}")

    def builder_digest(self, builder: str) -> str | None:
        """The digest of a builder's source, read once per run and module."""
        from .builders import builder_digest

        module = builder.partition(":")[0]
        if module not in self._digests:
            self._digests[module] = builder_digest(builder, self.settings.allowed_builders)
        return self._digests[module]

    def stale_reasons(self, manifest: Manifest, builder: str | None, wanted: Format = "torchscript") -> list[str]:
        """How an export made by ``manifest``'s producer differs from one this worker makes
        in format ``wanted``."""
        reasons = []
        art = manifest.artifact
        if manifest.producer.torch != self.torch_version:
            reasons.append(f"made by torch {manifest.producer.torch}, this worker has {self.torch_version}")
        if art.format != wanted:
            reasons.append(f"format {art.format}, wanted {wanted}")
        elif art.pt2 is not None:
            schema, ours = art.pt2.schema_version, self.export_schema
            if art.pt2.archive_version != self.pt2_archive_version:
                reasons.append(
                    f"PT2 archive version {art.pt2.archive_version}, this worker writes {self.pt2_archive_version}"
                )
            if (schema.major, schema.minor) < ours:
                reasons.append(f"export schema {schema.major}.{schema.minor} < {ours[0]}.{ours[1]}")
        elif art.format_version < self.format_version:
            reasons.append(f"archive format version {art.format_version} < {self.format_version}")
        if manifest.producer.builder is None:
            reasons.append("builder source not recorded")
        elif manifest.producer.builder != builder:
            reasons.append("builder source changed")
        return reasons

    def decide(self, candidate: Candidate) -> Decision:
        """The decision for one candidate (reads the target's manifest where needed)."""
        from .job import export_keys

        if candidate.error is not None or candidate.spec is None:
            return Decision("invalid", candidate.error or "no spec", candidate.name, candidate.source)
        spec = candidate.spec
        if self.to_format is not None:
            try:
                spec = spec.as_format(self.to_format)
            except SpecError as exc:
                return Decision("invalid", f"cannot convert to {self.to_format}: {exc}", spec.name, candidate.source)
        try:
            digest = self.builder_digest(spec.builder)
        except ExportError as exc:
            return Decision("invalid", str(exc), spec.name, candidate.source)
        keys = export_keys(spec, self.torch_version)
        spec_json = spec.to_json_dict()

        def decision(action: Action, reason: str) -> Decision:
            return Decision(action, reason, spec.name, candidate.source, spec_json, keys.artifact)

        if candidate.manifest is not None and candidate.manifest_uri == keys.manifest:
            current: Manifest | None = candidate.manifest
        else:
            try:
                current = _read_optional(self.client, keys.manifest)
            except (SerializerError, ClientError) as exc:
                return Decision("invalid", f"{keys.manifest}: {exc}", spec.name, candidate.source)
        if current is None:
            if candidate.manifest is not None:
                old = candidate.manifest.producer.torch
                return decision("export", f"no export by torch {self.torch_version} yet (listed one: torch {old})")
            return decision("export", f"no export by torch {self.torch_version} yet")
        if self.policy == "missing":
            return decision("unchanged", "already exported")
        reasons = self.stale_reasons(current, digest, spec.format)
        if self.policy == "always":
            return decision("replace", "policy always" + (f" ({'; '.join(reasons)})" if reasons else ""))
        if reasons:
            return decision("replace", "; ".join(reasons))
        return decision("unchanged", "up to date")


def _read_optional(client: S3Client, uri: str) -> Manifest | None:
    try:
        return read_manifest(client, uri)
    except ManifestError as exc:
        if "no manifest" in str(exc):
            return None
        raise


class RecentTargets:
    """A bounded memory of targets seen lately (least recently seen forgotten first)."""

    def __init__(self, size: int = DRY_RUN_RECENT_TARGETS) -> None:
        self._size = size
        self._seen: OrderedDict[str, None] = OrderedDict()

    def add(self, target: str) -> bool:
        """Remember ``target``; False where it was already remembered."""
        if target in self._seen:
            self._seen.move_to_end(target)
            return False
        self._seen[target] = None
        if len(self._seen) > self._size:
            self._seen.popitem(last=False)
        return True


def plan(
    client: S3Client, source: str, policy: Policy, settings: Settings, to_format: Format | None = None
) -> Iterator[Decision]:
    """Every candidate's decision, streamed: what a run would do, and why (``--dry-run``)."""
    planner = Planner(client, settings, policy, to_format=to_format)
    recent = RecentTargets()
    for candidate in iter_candidates(client, check_source(source)):
        decision = planner.decide(candidate)
        if decision.runs and decision.target is not None and not recent.add(decision.target):
            decision = Decision("unchanged", "same target as another candidate", decision.name, decision.source,
                                decision.spec, decision.target)  # fmt: skip
        yield decision
