"""The build record: extra files describing the export itself, written into every archive."""

from __future__ import annotations

import base64
import io
from typing import Any

import torch

from serializer.archive.extras import (
    BUILD_JSON,
    EXAMPLE_INPUTS,
    EXAMPLE_INPUTS_TEXT,
    REFERENCE_OUTPUTS,
    REFERENCE_OUTPUTS_TEXT,
)
from serializer.consumer.verify import RECORD_ARGS, RECORD_KWARGS
from serializer.manifest.model import canonical_json

from ..builders import ExampleInputs
from ..spec import ExportSpec


def build_json(spec: ExportSpec, producer: dict[str, Any]) -> bytes:
    """``build.json``: the spec and the producer, as canonical JSON."""
    return canonical_json({"spec": spec.to_json_dict(), "producer": producer})


def build_record(
    spec: ExportSpec, producer: dict[str, Any], inputs: ExampleInputs | tuple[Any, ...], outputs: Any
) -> dict[str, bytes]:
    """Extra files describing the export itself, so a consumer can check the archive without
    the model's code: the spec and producer (JSON), and the example inputs and the eager
    module's outputs (``torch.save``, loadable with ``weights_only=True``; base64 text in a
    ``.pt2``, whose extra files are text only).

    The inputs are stored as a list of tensors where they are positional tensors only (as
    every earlier archive has them), else as :func:`recorded_inputs` says."""
    cpu_out = to_cpu(outputs)
    tensors = {
        EXAMPLE_INPUTS: _tensor_file(recorded_inputs(inputs)),
        REFERENCE_OUTPUTS: _tensor_file(cpu_out),
    }
    if spec.format == "pt2":
        tensors = {
            EXAMPLE_INPUTS_TEXT: base64.b64encode(tensors[EXAMPLE_INPUTS]),
            REFERENCE_OUTPUTS_TEXT: base64.b64encode(tensors[REFERENCE_OUTPUTS]),
        }
    return {BUILD_JSON: build_json(spec, producer), **tensors}


def recorded_inputs(inputs: ExampleInputs | tuple[Any, ...]) -> Any:
    """The example inputs as the build record stores them, on the CPU: a list of tensors
    where all are positional tensors, else ``{"args": [...], "kwargs": {...}}`` (the
    module is called ``module(*args, **kwargs)``; each a tensor, or a list or dict of them)."""
    examples = inputs if isinstance(inputs, ExampleInputs) else ExampleInputs(args=tuple(inputs))
    args = [to_cpu(a) for a in examples.args]
    if not examples.kwargs and all(isinstance(a, torch.Tensor) for a in args):
        return args
    return {RECORD_ARGS: args, RECORD_KWARGS: {k: to_cpu(v) for k, v in examples.kwargs.items()}}


def record_files(
    spec: ExportSpec, producer: dict[str, Any], inputs: ExampleInputs | tuple[Any, ...], outputs: Any
) -> dict[str, bytes]:
    """The build record for an export: the full :func:`build_record` where there are example
    inputs, ``build.json`` alone where there are none."""
    if inputs:
        return build_record(spec, producer, inputs, outputs)
    return {BUILD_JSON: build_json(spec, producer)}


def to_cpu(value: Any) -> Any:
    """``value`` with every tensor in it (also in lists, tuples and dicts) detached and on the CPU."""
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, list | tuple):
        return type(value)(to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: to_cpu(v) for k, v in value.items()}
    return value


def _tensor_file(value: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()
