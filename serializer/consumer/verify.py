"""Verifying a stored artifact without the model's code: manifest, compatibility, checksum,
load, extra files, and a run on the example inputs stored in the archive."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from botocore.exceptions import BotoCoreError, ClientError

from ..archive.extras import BUILD_JSON, EXAMPLE_INPUTS, EXAMPLE_INPUTS_TEXT, REFERENCE_OUTPUTS, REFERENCE_OUTPUTS_TEXT
from ..errors import ArchiveError, SerializerError
from ..manifest.model import Manifest
from ..pt2.load import load_pt2_file, program_device
from ..s3.client import S3Client
from ..s3.ranged import download_checked
from ..signing.keys import TrustedKeys
from ..signing.store import check_signed, read_manifest_in_place, resolve_trusted
from ..torchscript.load import load_torchscript_file
from .compare import compare_outputs
from .compat import check_compatibility, local_reader

#: Tolerances of the self-check when the build record does not state them.
DEFAULT_ATOL = 1e-5
DEFAULT_RTOL = 1e-4
#: Keys of the build record's example inputs where they are more than positional tensors:
#: ``{"args": [...], "kwargs": {...}}``, the module called ``module(*args, **kwargs)``.
#: Where they are positional tensors only, the record is a plain list of them.
RECORD_ARGS = "args"
RECORD_KWARGS = "kwargs"


@dataclass
class Step:
    """One check and its outcome."""

    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    """Every check run on an artifact, in order; ``ok`` when all passed."""

    uri: str
    steps: list[Step] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(s.ok for s in self.steps)

    def add(self, name: str, ok: bool, detail: str) -> bool:
        self.steps.append(Step(name, ok, detail))
        return ok


def _record(extras: dict[str, bytes], name: str, text_name: str) -> bytes | None:
    if extras.get(name):
        return extras[name]
    if extras.get(text_name):
        try:
            return base64.b64decode(extras[text_name], validate=True)
        except ValueError as exc:
            raise ArchiveError(f"build record {text_name} is not base64: {exc}") from exc
    return None


def has_build_inputs(extras: dict[str, bytes]) -> bool:
    """Whether ``extras`` carry the build record's example inputs (either encoding)."""
    return bool(extras.get(EXAMPLE_INPUTS) or extras.get(EXAMPLE_INPUTS_TEXT))


def stored_inputs(raw: bytes, device: torch.device | str = "cpu") -> tuple[list[Any], dict[str, Any]]:
    """The example inputs of a build record (``torch.load`` with ``weights_only=True``) on
    ``device``, as ``(args, kwargs)``: a plain list of tensors (every earlier archive) is
    the positional inputs; ``{"args": [...], "kwargs": {...}}`` both.

    Raises:
        ArchiveError: the record holds something else.
    """
    record = torch.load(io.BytesIO(raw), weights_only=True)
    if isinstance(record, list | tuple):
        args, kwargs = list(record), {}
    elif isinstance(record, dict) and set(record) <= {RECORD_ARGS, RECORD_KWARGS}:
        args, kwargs = list(record.get(RECORD_ARGS, [])), dict(record.get(RECORD_KWARGS, {}))
    else:
        raise ArchiveError(
            f"the build record's example inputs are a {type(record).__name__}, not a list of inputs "
            f"or {{{RECORD_ARGS!r}: [...], {RECORD_KWARGS!r}: {{...}}}}"
        )
    return [_to_device(a, device) for a in args], {k: _to_device(v, device) for k, v in kwargs.items()}


def _to_device(value: Any, device: torch.device | str) -> Any:
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, list | tuple):
        return type(value)(_to_device(v, device) for v in value)
    if isinstance(value, dict):
        return {k: _to_device(v, device) for k, v in value.items()}
    raise ArchiveError(f"the build record's example inputs hold a {type(value).__name__}, not tensors")


def self_check(
    module: Any, extras: dict[str, bytes], device: torch.device | str = "cpu"
) -> tuple[bool, float, float, float, float]:
    """Run ``module`` on the example inputs stored in its build record
    (``module(*args, **kwargs)``, :func:`stored_inputs`) and compare with the stored
    reference outputs, under the tolerances the export used.  The records are
    ``torch.save`` files (base64 text in ``.pt2`` archives), loaded with ``weights_only=True``;
    the inputs go to ``device`` (where a loaded program's weights are).

    Returns:
        ``(passed, max_abs_diff, max_rel_diff, atol, rtol)``.

    Raises:
        ArchiveError: the archive has no build record with example inputs.
    """
    raw_inputs = _record(extras, EXAMPLE_INPUTS, EXAMPLE_INPUTS_TEXT)
    raw_reference = _record(extras, REFERENCE_OUTPUTS, REFERENCE_OUTPUTS_TEXT)
    if not raw_inputs or not raw_reference:
        raise ArchiveError("the archive has no example inputs and reference outputs to check against")
    args, kwargs = stored_inputs(raw_inputs, device)
    reference = torch.load(io.BytesIO(raw_reference), weights_only=True)
    atol, rtol = DEFAULT_ATOL, DEFAULT_RTOL
    if extras.get(BUILD_JSON):
        spec = json.loads(extras[BUILD_JSON]).get("spec", {})
        atol, rtol = float(spec.get("atol", atol)), float(spec.get("rtol", rtol))
    with torch.no_grad():
        actual = module(*args, **kwargs)
    passed, max_abs, max_rel = compare_outputs(reference, actual, atol=atol, rtol=rtol)
    return passed, max_abs, max_rel, atol, rtol


def verify_artifact(
    client: S3Client,
    uri: str,
    *,
    progress: Callable[[int], None] | None = None,
    on_manifest: Callable[[Manifest], None] | None = None,
    spool_dir: str | None = None,
    trusted_keys: TrustedKeys | None = None,
) -> VerifyReport:
    """Check an artifact as a consumer would before trusting it; stops at the first failure.

    Steps: manifest (valid, describes the artifact next to it), signature (with trusted
    keys: ``trusted_keys``, else those ``EXPORT_TRUSTED_KEYS`` names; nothing is downloaded
    or loaded unless one of them signed the manifest and the archive's digest),
    compatibility with this torch (from the manifest, before downloading), sha256 and size
    while downloading, the archive's operators, ``torch.jit.load`` on the CPU
    (``torch.export.load`` for a ``.pt2``), every extra file against the manifest, and the
    self-check.
    """
    report = VerifyReport(uri)
    try:
        trusted = resolve_trusted(trusted_keys)
    except SerializerError as exc:
        report.add("signature", False, str(exc))
        return report
    try:
        manifest, raw_manifest, manifest_uri = read_manifest_in_place(client, uri)
    except SerializerError as exc:
        report.add("manifest", False, str(exc))
        return report
    report.add("manifest", True, f"schema {manifest.schema_version}, {len(manifest.extra_files)} extra files")
    if trusted is None:
        signed = f"by key {manifest.signature.key_id[:16]}..." if manifest.signature else "unsigned"
        report.add("signature", True, f"not checked: no trusted keys given (the manifest says {signed})")
    else:
        try:
            kid = check_signed(client, manifest_uri, manifest, raw_manifest, trusted)
        except SerializerError as exc:
            report.add("signature", False, str(exc))
            return report
        report.add("signature", True, f"signed by trusted key {kid[:16]}...")
    if on_manifest is not None:
        on_manifest(manifest)
    local_torch, max_version = local_reader()
    compat = check_compatibility(manifest, local_torch=local_torch, max_format_version=max_version)
    if not report.add("compatibility", compat.ok, compat.reason):
        return report

    art = manifest.artifact
    pt2 = art.format == "pt2"
    names = [e.name for e in manifest.extra_files]
    with tempfile.TemporaryDirectory(prefix="export-worker-verify-", dir=spool_dir) as tmp:
        path = os.path.join(tmp, "archive.pt2" if pt2 else "archive.pt")
        try:
            download_checked(client, art.uri, path, sha256=art.sha256, size=art.size, progress=progress)
        except (SerializerError, ClientError, BotoCoreError) as exc:
            report.add("checksum", False, str(exc))
            return report
        report.add("checksum", True, f"{art.size} bytes, sha256 {art.sha256}")
        try:
            module, raw, device, how = _load(path, art.uri, pt2, names)
        except ArchiveError as exc:
            report.add("load", False, str(exc))
            return report
        except RuntimeError as exc:
            if pt2:
                raise
            report.add("load", False, f"torch.jit.load failed: {exc}")
            return report
        report.add("load", True, how)
    bad = [e.name for e in manifest.extra_files if hashlib.sha256(raw.get(e.name, b"")).hexdigest() != e.sha256]
    if not report.add("extra files", not bad, f"differ from the manifest: {bad}" if bad else f"{len(names)} match"):
        return report
    _self_check_step(report, module, raw, device)
    return report


def _load(path: str, uri: str, pt2: bool, names: list[str]) -> tuple[Any, dict[str, bytes], torch.device, str]:
    """The loaded module, its extra files (with the build record) and device, and how it
    was loaded.  Raises ArchiveError (a refused ``.pt2``) or torch's RuntimeError."""
    if pt2:
        program, raw = load_pt2_file(path, source=uri)
        device = program_device(program)
        return program.module(), raw, device, f"torch.export.load (weights on {device})"
    wanted = [*names, BUILD_JSON, EXAMPLE_INPUTS, REFERENCE_OUTPUTS]
    module, raw = load_torchscript_file(path, map_location="cpu", extra_names=wanted, source=uri)
    return module, raw, torch.device("cpu"), "torch.jit.load on the CPU"


def _self_check_step(report: VerifyReport, module: Any, raw: dict[str, bytes], device: torch.device) -> None:
    if not has_build_inputs(raw):
        report.add("self-check", True, "skipped: the archive carries no example inputs")
        return
    try:
        passed, max_abs, max_rel, atol, rtol = self_check(module, raw, device)
    except (RuntimeError, ArchiveError) as exc:
        report.add("self-check", False, f"running the stored example inputs failed: {exc}")
        return
    report.add(
        "self-check",
        passed,
        f"max abs diff {max_abs:g}, max rel diff {max_rel:g} against the stored reference "
        f"(atol {atol:g}, rtol {rtol:g})",
    )
