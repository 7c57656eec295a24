"""Building the eager module and capturing it for its format (TorchScript or torch.export).

``method: auto`` tries each way of the spec's format in turn (TorchScript: script, then
trace; pt2: torch.export strict, then non-strict), checks each capture by saving, reloading
and running it on the example inputs, and keeps the first that passes; the manifest records
which it was and why the others failed.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

from serializer.consumer.compare import compare_outputs
from serializer.errors import SerializerError
from serializer.manifest.model import MAX_ATTEMPT_ERROR_CHARS, CaptureAttempt, CaptureEntry, CaptureMethod
from serializer.pt2.export import save_pt2
from serializer.pt2.load import load_pt2_file, program_device
from serializer.pt2.pytree import is_plain, to_plain
from serializer.s3.client import S3Client
from serializer.torchscript.load import load_torchscript_file
from serializer.torchscript.save import save_archive

from ..builders import ExampleInputs, build_module, example_args, load_weights, to_exported_program, to_torchscript
from ..errors import BuildFailed, CaptureFailed, ExportError
from ..settings import Settings
from ..spec import ExportSpec
from .progress import Progress, Stage
from .record import to_cpu

#: What a tried capture may fail with (torch's errors, this project's); anything else (a
#: job's time limit) ends the job.
_ATTEMPT_ERRORS = (ExportError, SerializerError, RuntimeError, TypeError, ValueError, AssertionError, IndexError)


@dataclass(frozen=True)
class Built:
    """An eager module in eval mode, its example inputs and its outputs on them."""

    module: torch.nn.Module
    inputs: ExampleInputs
    #: The eager module's outputs on ``inputs``, in builtin containers
    #: (:func:`serializer.pt2.pytree.to_plain`); None without example inputs.
    reference: Any
    #: The eager outputs used containers of a library's own (a transformers ``ModelOutput``,
    #: a dataclass): a ``.pt2`` is exported returning them as builtin ones.
    plain_outputs: bool = False


@dataclass(frozen=True)
class Way:
    """One way of capturing a module: the method, and its ``strict`` flag (None: torch's default)."""

    method: CaptureMethod
    strict: bool | None = None

    def __str__(self) -> str:
        mode = "" if self.strict is None else (" (strict)" if self.strict else " (non-strict)")
        return self.method + mode


@dataclass(frozen=True)
class Captured:
    """The module as its format stores it (``artifact``: a ``ScriptModule`` or an
    ``ExportedProgram``), and how it was captured (``entry``: None where the manifest
    need not say)."""

    artifact: Any
    way: Way
    entry: CaptureEntry | None


def build(
    spec: ExportSpec,
    settings: Settings,
    client: S3Client,
    device: torch.device,
    defaults: Mapping[str, Any] | None = None,
) -> Built:
    """Build the spec's module on ``device`` (the builder called with the spec's ``kwargs``
    over ``defaults``), load its weights, and run it once on the example inputs.

    Raises:
        BuilderNotAllowed, BuildFailed: the builder, its weights, or the eager module on
            the example inputs.
    """
    module = build_module(spec, settings.allowed_builders, device, defaults)
    if spec.weights:
        load_weights(module, client, spec.weights, settings.spool_dir, read_scopes=settings.read_scopes)
    module = module.to(device).eval()
    inputs = example_args(spec.example_inputs, spec.example_kwargs, spec.seed, device)
    try:
        with torch.no_grad():
            outputs = module(*inputs.args, **inputs.kwargs) if inputs else None
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # not a time limit
        raise BuildFailed(f"example_inputs: the eager module fails on them: {exc}") from exc
    return Built(module=module, inputs=inputs, reference=to_plain(outputs), plain_outputs=not is_plain(outputs))


def ways(spec: ExportSpec, built: Built) -> list[Way]:
    """The ways to try, in order, for the spec's format and method (pure)."""
    if spec.format == "pt2":
        return [Way("export", True), Way("export", False)] if spec.method == "auto" else [Way("export")]
    # torch.jit.trace refuses list and dict outputs unless strict=False.
    trace = Way("trace", None if _tuples_only(built.reference) else False)
    if spec.method == "auto":
        return [Way("script"), trace]
    return [trace] if spec.method == "trace" else [Way("script")]


def capture(spec: ExportSpec, built: Built, report: Progress, *, spool_dir: str | None = None) -> Captured:
    """The module as its format stores it, and how it was captured.  With ``method: auto``
    each way is tried in turn, and a capture is kept only once it passes
    :func:`check_capture` (in a temporary folder of ``spool_dir``).

    Raises:
        TorchExportFailed, ScriptingFailed: torch could not capture the module (one way).
        CaptureFailed: ``auto``, and no way both captured the module and passed (naming
            each attempt's reason).
    """
    report(Stage.EXPORTING if spec.format == "pt2" else Stage.SCRIPTING, {})
    candidates = ways(spec, built)
    if spec.method != "auto":
        (way,) = candidates
        artifact = _capture_one(spec, built, way)
        return Captured(artifact, way, _entry(way, built, []))
    failed: list[CaptureAttempt] = []
    for way in candidates:
        try:
            artifact = _capture_one(spec, built, way)
            check_capture(spec, built, artifact, spool_dir=spool_dir)
        except _ATTEMPT_ERRORS as exc:
            failed.append(CaptureAttempt(method=way.method, strict=way.strict, error=_reason(exc)))
            continue
        return Captured(artifact, way, _entry(way, built, failed, auto=True))
    reasons = "; ".join(f"{Way(a.method, a.strict)}: {a.error}" for a in failed)
    raise CaptureFailed(f"method 'auto': no way of capturing the module passed ({reasons})")


def check_capture(spec: ExportSpec, built: Built, artifact: Any, *, spool_dir: str | None = None) -> None:
    """Save a capture, load it back as a consumer does (with the archive checks), run it on
    the example inputs and compare with the eager outputs.

    Raises:
        CaptureFailed: the outputs differ beyond the spec's tolerances.
        ArchiveError, RuntimeError: saving, loading or running it failed.
    """
    with tempfile.TemporaryDirectory(prefix="export-worker-capture-", dir=spool_dir) as tmp:
        if spec.format == "pt2":
            path = os.path.join(tmp, "archive.pt2")
            save_pt2(artifact, path, {})
            program, _ = load_pt2_file(path)
            inputs = built.inputs.to(program_device(program))
            loaded: Any = program.module()
        else:
            path = os.path.join(tmp, "archive.pt")
            save_archive(artifact, path, {})
            loaded, _ = load_torchscript_file(path, map_location="cpu")
            inputs = built.inputs.to("cpu")
        with torch.no_grad():
            actual = loaded(*inputs.args, **inputs.kwargs)
    passed, max_abs, max_rel = compare_outputs(to_cpu(built.reference), actual, atol=spec.atol, rtol=spec.rtol)
    if not passed:
        raise CaptureFailed(
            f"the reloaded capture differs from the eager module: max abs diff {max_abs:g}, "
            f"max rel diff {max_rel:g} (atol {spec.atol:g}, rtol {spec.rtol:g})"
        )


def _capture_one(spec: ExportSpec, built: Built, way: Way) -> Any:
    if way.method == "export":
        return to_exported_program(
            built.module, built.inputs, spec.dynamic_shapes, strict=way.strict, plain_outputs=built.plain_outputs
        )
    return to_torchscript(built.module, way.method, built.inputs, strict=way.strict is not False)


def _entry(way: Way, built: Built, failed: list[CaptureAttempt], *, auto: bool = False) -> CaptureEntry | None:
    """What the manifest records of a capture: everything for ``auto``; otherwise only what
    differs from the method's defaults (a non-strict trace, outputs made plain), else nothing."""
    plain = built.plain_outputs and way.method == "export"
    if not auto and way.strict is None and not plain:
        return None
    return CaptureEntry(method=way.method, strict=way.strict, plain_outputs=plain, attempts=failed)


def _reason(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    if not isinstance(exc, ExportError | SerializerError):
        text = f"{type(exc).__name__}: {text}"
    return text if len(text) <= MAX_ATTEMPT_ERROR_CHARS else text[: MAX_ATTEMPT_ERROR_CHARS - 3] + "..."


def _tuples_only(value: Any) -> bool:
    """Whether an output holds no list or dict (what a strict ``torch.jit.trace`` returns)."""
    if isinstance(value, list | dict):
        return False
    if isinstance(value, tuple):
        return all(_tuples_only(v) for v in value)
    return True
