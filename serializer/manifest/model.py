"""The manifest: a JSON record stored next to each artifact, written after it is complete.

Its presence means the archive is complete and checked.  It says what was exported, by
which torch, every extra file with its size, sha256 and offset, and what a consumer needs
to know before loading (the archive's file-format version).  Serialized as canonical JSON
(sorted keys, no insignificant space), so two identical exports differ only in
``created_at``.  ``python -m serializer.manifest`` prints its JSON Schema
(``schemas/manifest.schema.json``).
"""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ..archive.extras import MANIFEST_NAME, ExtraFileInfo, validate_extra_name
from ..archive.info import ArchiveInfo
from ..errors import InvalidURI, ManifestError
from ..formats import ARTIFACT_SUFFIX, ARTIFACT_SUFFIXES, DEFAULT_FORMAT, PT2_SUFFIX, Format
from ..s3.uri import parse_s3_uri

#: Version of the manifest's layout; readers refuse versions newer than they know.
#: 2 added ``producer.builder``; 3 added the ``pt2`` format (``artifact.format: "pt2"``
#: and ``artifact.pt2``); 4 added ``signature``; 5 added ``capture``.  Earlier versions are
#: still read.
SCHEMA_VERSION = 5
#: What a TorchScript manifest carries: its layout is version 2's, so readers that know
#: version 2 keep reading unsigned TorchScript manifests.
TORCHSCRIPT_SCHEMA_VERSION = 2
#: What an unsigned ``.pt2`` manifest carries: version 3's layout.
PT2_SCHEMA_VERSION = 3
#: What a signed manifest of either format carries: a reader that cannot check the
#: signature is told to upgrade rather than shown a field it does not know.
SIGNED_SCHEMA_VERSION = 4
#: What a manifest that records how its module was captured (``capture``) carries.
CAPTURE_SCHEMA_VERSION = 5
#: Longest error message kept per failed capture attempt, in characters.
MAX_ATTEMPT_ERROR_CHARS = 2000
#: How a module was captured: torch.jit.script, torch.jit.trace, or torch.export.export.
CaptureMethod = Literal["script", "trace", "export"]
#: Suffix of a manifest's key: ``model.pt`` -> ``model.manifest.json``.
MANIFEST_SUFFIX = "." + MANIFEST_NAME
#: Largest manifest read, in bytes.  Most are a few KiB; the largest a job can make holds
#: its spec's inline extra files (up to 16 MiB) and JSON fields (1 MiB each) and a few
#: hundred bytes per extra-file entry.  Anything larger is refused without being read whole.
MAX_MANIFEST_BYTES = 32 * 1024**2
#: Deepest JSON nesting of a manifest: its spec may nest 32 levels below the spec's own, the
#: rest is a few levels; deeper is refused before anything recurses through it.
MAX_MANIFEST_DEPTH = 64
_SHA256 = r"^[0-9a-f]{64}$"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ExportSchemaVersion(_Model):
    """Version of the serialized program's schema (``torch._export.serde.schema``)."""

    major: int = Field(ge=0, description="torch.export.load refuses another major version")
    minor: int = Field(ge=0, description="a newer minor version may use fields an older torch does not know")


class Pt2Entry(_Model):
    """What a consumer of a ``.pt2`` archive checks before loading it."""

    archive_version: int = Field(
        ge=0, description="PT2 archive version (the archive_version record); torch.export.load reads only its own"
    )
    schema_version: ExportSchemaVersion = Field(description="export schema version of the serialized program")


class ArtifactEntry(_Model):
    """The stored archive."""

    uri: str = Field(description="s3:// URI of the archive")
    size: int = Field(ge=0, description="bytes, as stored")
    sha256: str = Field(pattern=_SHA256, description="hex sha256 of the bytes as stored")
    format: Format = Field(
        default=DEFAULT_FORMAT, description="torchscript (torch.jit.load) or pt2 (torch.export.load)"
    )
    format_version: int = Field(ge=0, description="the zip's file-format version (its version record)")
    archive_root: str = Field(description="top folder of the zip's records")
    etag: str = Field(default="", description="the store's ETag (not a content hash for multipart objects)")
    pt2: Pt2Entry | None = Field(
        default=None, description="format pt2 only (absent otherwise): what to check before torch.export.load"
    )

    @model_validator(mode="after")
    def _pt2_facts(self) -> ArtifactEntry:
        if (self.format == "pt2") != (self.pt2 is not None):
            raise ValueError("artifact.pt2 is given for format pt2, and only for it")
        return self


class ExtraFileEntry(_Model):
    """An extra file inside the archive (stored uncompressed, readable by range)."""

    name: str
    size: int = Field(ge=0)
    sha256: str = Field(pattern=_SHA256)
    offset: int = Field(ge=0, description="byte offset of the file's data in the archive")

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str) -> str:
        # A consumer may write extra files out by these names: none may leave its folder.
        return validate_extra_name(v)


class Producer(_Model):
    """What made the archive; a consumer with an older torch may not load it."""

    torch: str
    python: str
    export_worker: str
    device: str
    host: str
    builder: str | None = Field(
        default=None,
        description="sha256 of the builder module's source file ('sha256:<hex>'); null where unknown",
    )


class Verification(_Model):
    """Outcome of reloading the stored archive and comparing it with the eager module."""

    passed: bool
    max_abs_diff: float = Field(ge=0)
    max_rel_diff: float = Field(default=0.0, ge=0)
    atol: float = Field(ge=0)
    rtol: float = Field(ge=0)


class SignatureEntry(_Model):
    """Where an export's signature is, and which key made it; absent (or null) in the
    manifest of an export made without a signing key."""

    uri: str = Field(description="s3:// URI of the signature (a Sigstore bundle), always model.sig next to the archive")
    key_id: str = Field(pattern=_SHA256, description="sha256 (hex) of the signing key's PEM public key")
    predicate_type: str = Field(description="the in-toto predicate signed: OpenSSF model signing's")


class CaptureAttempt(_Model):
    """A way of capturing the module that was tried and failed (capture, or verification)."""

    method: CaptureMethod
    strict: bool | None = Field(default=None, description="torch.export's strict mode (export only)")
    error: str = Field(max_length=MAX_ATTEMPT_ERROR_CHARS, description="why it failed")


class CaptureEntry(_Model):
    """How the module was captured, where the spec left it to the worker (``method: auto``)
    or the capture needed more than the method's defaults; absent otherwise."""

    method: CaptureMethod = Field(description="the way that captured the module and passed verification")
    strict: bool | None = Field(
        default=None,
        description="export: torch.export's strict mode; trace: false where lists or dicts are returned "
        "(torch.jit.trace strict=False); null: the default",
    )
    plain_outputs: bool = Field(
        default=False,
        description="outputs of a library's container types were turned into dicts, lists and tuples",
    )
    attempts: list[CaptureAttempt] = Field(
        default_factory=list, description="the ways tried before, in order, and why each failed"
    )


class Manifest(_Model):
    """The manifest stored next to an artifact."""

    schema_version: int = SCHEMA_VERSION
    artifact: ArtifactEntry
    spec: dict[str, Any]
    spec_hash: str
    extra_files: list[ExtraFileEntry]
    producer: Producer
    created_at: datetime
    verification: Verification | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    signature: SignatureEntry | None = Field(
        default=None, description="the export's signature; absent or null: exported without a signing key"
    )
    capture: CaptureEntry | None = Field(
        default=None, description="how the module was captured; absent or null: as the spec's method says"
    )

    @model_validator(mode="after")
    def _schema(self) -> Manifest:
        if self.artifact.format == "pt2" and self.schema_version < PT2_SCHEMA_VERSION:
            raise ValueError(
                f"a pt2 manifest is schema version {PT2_SCHEMA_VERSION} or later, not {self.schema_version}"
            )
        if self.signature is not None and self.schema_version < SIGNED_SCHEMA_VERSION:
            raise ValueError(
                f"a signed manifest is schema version {SIGNED_SCHEMA_VERSION} or later, not {self.schema_version}"
            )
        if self.capture is not None and self.schema_version < CAPTURE_SCHEMA_VERSION:
            raise ValueError(
                f"a manifest with capture is schema version {CAPTURE_SCHEMA_VERSION} or later, "
                f"not {self.schema_version}"
            )
        return self

    def to_json(self) -> bytes:
        """Canonical JSON: sorted keys, compact, UTF-8.  ``artifact.pt2`` is left out of
        a TorchScript manifest, ``signature`` out of an unsigned one and ``capture`` out of
        one without it, whose layouts stay those of versions 2 to 4."""
        data = self.model_dump(mode="json")
        if data["artifact"].get("pt2") is None:
            data["artifact"].pop("pt2", None)
        for optional in ("signature", "capture"):
            if data.get(optional) is None:
                data.pop(optional, None)
        return canonical_json(data)

    @classmethod
    def from_json(cls, data: bytes | str) -> Manifest:
        """Parse and validate a manifest.

        The error's ``summary`` names the position or field and the kind of error, never the
        manifest's text or values; its message may quote them (a reader needs to see which).

        Raises:
            ManifestError: larger than MAX_MANIFEST_BYTES, not UTF-8 JSON, nested deeper than
                MAX_MANIFEST_DEPTH, a newer schema version, or fields that do not validate.
        """
        if len(data) > MAX_MANIFEST_BYTES:
            raise ManifestError(f"manifest is larger than {MAX_MANIFEST_BYTES} bytes")
        try:
            raw = json.loads(data)
        except UnicodeDecodeError as exc:
            raise ManifestError(f"manifest is not JSON: not UTF-8 at byte {exc.start}") from None
        except RecursionError:
            raise ManifestError(f"manifest is nested deeper than {MAX_MANIFEST_DEPTH} levels") from None
        except ValueError as exc:
            raise ManifestError(f"manifest is not JSON: {exc}") from None
        if not isinstance(raw, dict):
            raise ManifestError("manifest is not a JSON object")
        if _nested_deeper(raw, MAX_MANIFEST_DEPTH):
            raise ManifestError(f"manifest is nested deeper than {MAX_MANIFEST_DEPTH} levels")
        version = raw.get("schema_version")
        if type(version) is not int or version < 1:  # a bool is not a version either
            raise ManifestError(f"manifest schema_version must be a positive integer, got {version!r}")
        if version > SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version {version!r} is not one this export-worker reads (up to {SCHEMA_VERSION}); "
                "upgrade export-worker"
            )
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'manifest'}: {err['type']}"
                for err in exc.errors(include_url=False, include_input=False, include_context=False)
            )
            raise ManifestError(f"invalid manifest: {exc}", summary=f"invalid manifest: {problems}") from None


def _nested_deeper(data: Any, limit: int) -> bool:
    """Whether ``data`` holds a list or object nested deeper than ``limit`` (iterative)."""
    stack: list[tuple[Any, int]] = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict | list):
            if depth >= limit:
                return True
            stack.extend((v, depth + 1) for v in (value.values() if isinstance(value, dict) else value))
    return False


def canonical_json(value: Any) -> bytes:
    """``value`` as canonical JSON bytes (sorted keys, compact, UTF-8)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


def spec_digest(spec: dict[str, Any]) -> str:
    """Hex sha256 of a spec's canonical JSON: equal specs, equal digests."""
    return hashlib.sha256(canonical_json(spec)).hexdigest()


def build_manifest(
    archive: ArchiveInfo,
    *,
    spec: dict[str, Any],
    spec_hash: str,
    producer: Producer,
    verification: Verification | None = None,
    metadata: dict[str, Any] | None = None,
    created_at: datetime | None = None,
    signature: SignatureEntry | None = None,
    capture: CaptureEntry | None = None,
) -> Manifest:
    """The manifest of a stored archive (pure: the clock and producer are passed in)."""
    pt2 = None
    if archive.pt2 is not None:
        pt2 = Pt2Entry(
            archive_version=archive.pt2.archive_version,
            schema_version=ExportSchemaVersion(major=archive.pt2.schema_major, minor=archive.pt2.schema_minor),
        )
    return Manifest(
        schema_version=(
            CAPTURE_SCHEMA_VERSION
            if capture is not None
            else SIGNED_SCHEMA_VERSION
            if signature is not None
            else PT2_SCHEMA_VERSION
            if archive.format == "pt2"
            else TORCHSCRIPT_SCHEMA_VERSION
        ),
        artifact=ArtifactEntry(
            uri=archive.uri,
            size=archive.size,
            sha256=archive.sha256,
            format=archive.format,  # type: ignore[arg-type]
            format_version=archive.format_version,
            archive_root=archive.archive_root,
            etag=archive.etag,
            pt2=pt2,
        ),
        spec=spec,
        spec_hash=spec_hash,
        extra_files=[_extra_entry(e) for e in archive.extra_files],
        producer=producer,
        created_at=created_at or datetime.now(UTC),
        verification=verification,
        metadata=metadata or {},
        signature=signature,
        capture=capture,
    )


def _extra_entry(info: ExtraFileInfo) -> ExtraFileEntry:
    return ExtraFileEntry(name=info.name, size=info.size, sha256=info.sha256, offset=info.offset)


def artifact_suffix(key: str) -> str | None:
    """The artifact suffix ``key`` ends in (``.pt`` or ``.pt2``), or None."""
    return next((s for s in ARTIFACT_SUFFIXES.values() if key.endswith(s)), None)


def manifest_uri_for(artifact_uri: str) -> str:
    """The manifest's URI for an artifact: ``.../model.pt`` (or ``.pt2``) -> ``.../model.manifest.json``.

    Raises:
        InvalidURI: not an ``s3://`` URI of an object ending in ``.pt`` or ``.pt2``.
    """
    uri = parse_s3_uri(artifact_uri)
    suffix = artifact_suffix(uri.key)
    if suffix is None:
        raise InvalidURI(f"artifact key must end in {ARTIFACT_SUFFIX!r} or {PT2_SUFFIX!r}: {artifact_uri}")
    return f"s3://{uri.bucket}/{uri.key[: -len(suffix)]}{MANIFEST_SUFFIX}"


def json_schema() -> dict[str, Any]:
    """The manifest's JSON Schema."""
    schema = Manifest.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema
