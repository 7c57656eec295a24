"""What a bulk re-export would redo, and why: a decision per candidate.

Each candidate is decided against this worker as a producer (torch version, archive format
and its version, the digest of the builder's source) under a policy:

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
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from botocore.exceptions import ClientError

from serializer.errors import ManifestError, SerializerError, SignatureError
from serializer.formats import FORMATS, Format
from serializer.manifest.model import Manifest
from serializer.manifest.store import read_manifest_raw
from serializer.s3.client import S3Client
from serializer.signing.keys import TrustedKeys
from serializer.signing.store import check_signed

from ..access import check_spec_scopes
from ..allowlist import check_allowed
from ..errors import ExportError, SpecError
from ..keys import Keys, export_keys, manifest_mismatch
from ..settings import Policy, Settings
from ..signing import deployment_trust, signing_key
from ..spec import ExportSpec
from .selection import Candidate, check_source, iter_candidates
from .status import Action

#: Targets a dry run remembers to spot two candidates with one target (exact for prefix
#: listings, where they sit side by side; the real run de-duplicates them all in Redis).
DRY_RUN_RECENT_TARGETS = 4096


@dataclass(frozen=True)
class Decision:
    """What the run does with one candidate, and why."""

    action: Action
    reason: str
    name: str
    source: str
    spec: dict[str, Any] | None = None
    target: str | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "action", Action(self.action))

    @property
    def runs(self) -> bool:
        """Whether the candidate is exported (new or replacing)."""
        return self.action in (Action.EXPORT, Action.REPLACE)

    def to_json(self) -> dict[str, Any]:
        return {"action": self.action.value, "reason": self.reason, "name": self.name, "source": self.source,
                "target": self.target}  # fmt: skip


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
    #: The keys a manifest must be signed by to count (None: signatures are not checked).
    trusted: TrustedKeys | None = None

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
        if self.trusted is None:
            self.trusted = deployment_trust(self.settings, signing_key(self.settings))

    def builder_digest(self, builder: str) -> str | None:
        """The digest of a builder's source, read once per run and module; the builder
        itself is checked against the allow-list every time (one allowed builder of a
        module does not allow the others).

        Raises:
            BuilderNotAllowed: outside the allow-list.
        """
        from ..builders import builder_digest

        module = check_allowed(builder, self.settings.allowed_builders)
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

    def _target_manifest(
        self, candidate: Candidate, spec: ExportSpec, keys: Keys
    ) -> tuple[Manifest | None, str | None]:
        """What the target's manifest key holds: the manifest where it is this spec's export;
        otherwise None, and why it is not trusted (None too where nothing is there).

        Raises:
            SerializerError, ClientError: it cannot be read for another reason than its content.
        """
        if candidate.manifest is not None and candidate.manifest_uri == keys.manifest:
            return candidate.manifest, None  # checked when it was listed
        try:
            found = _read_optional(self.client, keys.manifest)
        except ManifestError as exc:
            return None, f" ({exc})"
        if found is None:
            return None, None
        current, raw = found
        mismatch = manifest_mismatch(current, spec, keys.manifest)
        if mismatch is None and self.trusted is not None:
            try:
                check_signed(self.client, keys.manifest, current, raw, self.trusted)
            except SignatureError as exc:
                mismatch = f"its signature is not trusted ({exc.kind})"
        return (None, f": {mismatch}") if mismatch is not None else (current, None)

    def decide(self, candidate: Candidate) -> Decision:
        """The decision for one candidate (reads the target's manifest where needed)."""
        if candidate.error is not None or candidate.spec is None:
            return Decision(Action.INVALID, candidate.error or "no spec", candidate.name, candidate.source)
        spec = candidate.spec
        if self.to_format is not None:
            try:
                spec = spec.as_format(self.to_format)
            except SpecError as exc:
                return Decision(
                    Action.INVALID, f"cannot convert to {self.to_format}: {exc}", spec.name, candidate.source
                )
        try:
            check_spec_scopes(spec, self.settings)  # before its destination's manifest is read
            digest = self.builder_digest(spec.builder)
        except ExportError as exc:
            return Decision(Action.INVALID, str(exc), spec.name, candidate.source)
        keys = export_keys(spec, self.torch_version)
        spec_json = spec.to_json_dict()

        def decision(action: Action, reason: str) -> Decision:
            return Decision(action, reason, spec.name, candidate.source, spec_json, keys.artifact)

        try:
            current, distrust = self._target_manifest(candidate, spec, keys)
        except (SerializerError, ClientError) as exc:
            return Decision(Action.INVALID, f"{keys.manifest}: {exc}", spec.name, candidate.source)
        if distrust is not None:
            # Not this spec's export (planted, copied there, unreadable): the export replaces it.
            return decision(Action.REPLACE, f"the manifest at the target is not trusted{distrust}")
        if current is None:
            if candidate.manifest is not None:
                old = candidate.manifest.producer.torch
                return decision(Action.EXPORT, f"no export by torch {self.torch_version} yet (listed one: torch {old})")
            return decision(Action.EXPORT, f"no export by torch {self.torch_version} yet")
        if self.policy == "missing":
            return decision(Action.UNCHANGED, "already exported")
        reasons = self.stale_reasons(current, digest, spec.format)
        if self.policy == "always":
            return decision(Action.REPLACE, "policy always" + (f" ({'; '.join(reasons)})" if reasons else ""))
        if reasons:
            return decision(Action.REPLACE, "; ".join(reasons))
        return decision(Action.UNCHANGED, "up to date")


def _read_optional(client: S3Client, uri: str) -> tuple[Manifest, bytes] | None:
    """The manifest at ``uri`` and its bytes, or None where there is none.

    Raises:
        ManifestError: one that cannot be read or does not validate.
        ClientError: a transient store error.
    """
    try:
        return read_manifest_raw(client, uri)
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
    selection = iter_candidates(client, check_source(source), catalog_dir=settings.catalog_dir, trusted=planner.trusted)
    for candidate in selection:
        decision = planner.decide(candidate)
        if decision.runs and decision.target is not None and not recent.add(decision.target):
            decision = Decision(Action.UNCHANGED, "same target as another candidate", decision.name, decision.source,
                                decision.spec, decision.target)  # fmt: skip
        yield decision
