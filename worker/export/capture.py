"""Building the eager module and capturing it for its format (TorchScript or torch.export)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from serializer.s3.client import S3Client

from ..builders import build_module, example_inputs, load_weights, to_exported_program, to_torchscript
from ..errors import BuildFailed
from ..settings import Settings
from ..spec import ExportSpec
from .progress import Progress, Stage


@dataclass(frozen=True)
class Built:
    """An eager module in eval mode, its example inputs and its outputs on them."""

    module: torch.nn.Module
    inputs: tuple[torch.Tensor, ...]
    #: The eager module's outputs on ``inputs``; None without example inputs.
    reference: Any


def build(spec: ExportSpec, settings: Settings, client: S3Client, device: torch.device) -> Built:
    """Build the spec's module on ``device``, load its weights, and run it once on the
    example inputs.

    Raises:
        BuilderNotAllowed, BuildFailed: the builder, its weights, or the eager module on
            the example inputs.
    """
    module = build_module(spec, settings.allowed_builders, device)
    if spec.weights:
        load_weights(module, client, spec.weights, settings.spool_dir)
    module = module.to(device).eval()
    inputs = example_inputs(spec.example_inputs or [], spec.seed, device)
    try:
        with torch.no_grad():
            reference = module(*inputs) if inputs else None
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # not a time limit
        raise BuildFailed(f"example_inputs: the eager module fails on them: {exc}") from exc
    return Built(module=module, inputs=inputs, reference=reference)


def capture(spec: ExportSpec, built: Built, report: Progress) -> Any:
    """The module as its format stores it: an ``ExportedProgram`` (pt2) or a ``ScriptModule``.

    Raises:
        TorchExportFailed, ScriptingFailed: torch could not capture the module.
    """
    if spec.format == "pt2":
        report(Stage.EXPORTING, {})
        return to_exported_program(built.module, built.inputs, spec.dynamic_shapes)
    report(Stage.SCRIPTING, {})
    return to_torchscript(built.module, spec.method, built.inputs)
