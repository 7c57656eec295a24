"""Building the module a spec names: the allowed builder, weights, device, example inputs, scripting."""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from typing import Any

import torch
from celery.exceptions import SoftTimeLimitExceeded
from torch.export import Dim

from serializer.torchscript.save import quiet_torchscript_deprecation

from .allowlist import check_allowed, resolve_builder
from .errors import BuildFailed, DeviceUnavailable, ScriptingFailed, TorchExportFailed
from .spec import INT_DTYPES, DimSpec, ExportSpec, InputDims, TensorSpec
from .weights import load_weights as load_weights  # noqa: PLC0414  (re-exported for existing callers)

log = logging.getLogger(__name__)


def builder_digest(builder: str, allowed: Sequence[str]) -> str | None:
    """``sha256:<hex>`` of the source file of the builder's module, as it is on disk.

    Recorded in each manifest's producer, so a bulk re-export (``if-stale``) sees when a
    builder's code changed.  Only the name is checked against the allow-list here
    (:func:`worker.allowlist.check_allowed`); whether the module really offers that builder is
    checked when it is built.  Only the module that defines the builder is hashed, not what it
    imports; workers are expected to run the code on disk (restart them on deploy).  Finding
    the file imports the module's parent packages, so the allow-list is checked first.

    Returns:
        The digest, or None where the module has no source file (built-in, missing).

    Raises:
        BuilderNotAllowed: outside the allow-list.
    """
    module_name = check_allowed(builder, allowed)
    try:
        found = importlib.util.find_spec(module_name)
    except (ImportError, ValueError):
        return None
    origin = found.origin if found is not None else None
    if found is None or not origin:
        return None
    digest = hashlib.sha256()
    if os.path.isfile(origin):
        with open(origin, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        return "sha256:" + digest.hexdigest()
    # A module without a file of its own (in a zip, say): its source, where the loader has it.
    get_source = getattr(found.loader, "get_source", None)
    try:
        source = get_source(module_name) if get_source is not None else None
    except ImportError:
        source = None
    if source is None:
        return None
    digest.update(source.encode("utf-8"))
    return "sha256:" + digest.hexdigest()


#: The GPU this worker process owns (set per pool process on GPU hosts, one process per
#: GPU); a spec's plain ``"cuda"`` means this one.
assigned_gpu: int | None = None


def resolve_device(name: str) -> torch.device:
    """The torch device for a spec's ``device``; plain ``"cuda"`` is this process's GPU.

    Raises:
        DeviceUnavailable: CUDA asked for on a worker without it (or without that index).
    """
    device = torch.device(name)
    if device.type == "cuda" and device.index is None and assigned_gpu is not None:
        device = torch.device("cuda", assigned_gpu)
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceUnavailable(f"device {name!r} asked for, but this worker has no CUDA")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise DeviceUnavailable(f"device {name!r} asked for, but this worker has {torch.cuda.device_count()} GPUs")
    return device


def build_module(spec: ExportSpec, allowed: Sequence[str], device: torch.device) -> torch.nn.Module:
    """Find the allowed builder (:func:`worker.allowlist.resolve_builder`), call it with
    ``kwargs``, return the module.

    Raises:
        BuilderNotAllowed: refused by the allow-list; the builder has not been called.
        BuildFailed: cannot be imported, fails, or returns something other than a module.
    """
    factory = resolve_builder(spec.builder, allowed)
    try:
        module = factory(**spec.kwargs)
    except SoftTimeLimitExceeded:
        raise  # the job's time is up: not the module's fault
    except Exception as exc:
        raise BuildFailed(f"builder {spec.builder!r} failed with kwargs {spec.kwargs}: {exc!r}") from exc
    if not isinstance(module, torch.nn.Module):
        raise BuildFailed(f"builder {spec.builder!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


def example_inputs(specs: Sequence[TensorSpec], seed: int, device: torch.device) -> tuple[torch.Tensor, ...]:
    """Tensors for the spec's example inputs: given values, or synthesized from a seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for item in specs:
        dtype = getattr(torch, item.dtype)
        if item.value is not None:
            try:
                tensor = torch.tensor(item.value, dtype=dtype)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise BuildFailed(f"example input value is not a {item.dtype} tensor: {exc}") from exc
        elif item.dtype in INT_DTYPES:
            low, high = item.int_bounds()
            tensor = torch.randint(low, high, tuple(item.shape or ()), generator=gen, dtype=dtype)
        elif item.dtype == "bool":
            tensor = torch.randint(0, 2, tuple(item.shape or ()), generator=gen).bool()
        else:
            tensor = torch.randn(tuple(item.shape or ()), generator=gen, dtype=torch.float32).to(dtype)
        out.append(tensor.to(device))
    return tuple(out)


def to_torchscript(module: torch.nn.Module, method: str, inputs: tuple[torch.Tensor, ...]) -> torch.jit.ScriptModule:
    """Script (or trace with ``inputs``) an eval-mode module.

    Raises:
        ScriptingFailed: with TorchScript's own message.
    """
    try:
        with quiet_torchscript_deprecation():
            if method == "trace":
                traced = torch.jit.trace(module, inputs, check_trace=False)  # type: ignore[no-untyped-call]
                assert isinstance(traced, torch.jit.ScriptModule)
                return traced
            return torch.jit.script(module)
    except SoftTimeLimitExceeded:
        raise  # the job's time is up: not the module's fault
    except Exception as exc:
        raise ScriptingFailed(f"torch.jit.{method} failed: {exc}") from exc


def dynamic_shapes_for(entries: Sequence[InputDims | None] | None) -> tuple[Any, ...] | None:
    """The spec's ``dynamic_shapes`` as ``torch.export`` takes them: one entry per positional
    input, ``{dim: torch.export.Dim}``; dimensions sharing a name share one ``Dim``."""
    if entries is None:
        return None
    dims: dict[str, Any] = {}

    def dim(value: DimSpec | str) -> Any:
        if isinstance(value, str):
            return Dim.AUTO
        if value.name not in dims:
            dims[value.name] = Dim(value.name, min=value.min, max=value.max)
        return dims[value.name]

    return tuple(None if entry is None else {int(k): dim(v) for k, v in entry.items()} for entry in entries)


def to_exported_program(
    module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], dynamic_shapes: Sequence[InputDims | None] | None = None
) -> torch.export.ExportedProgram:
    """Capture an eval-mode module with ``torch.export.export`` on ``inputs``.

    Raises:
        TorchExportFailed: with torch.export's own message (graph breaks, data-dependent
            control flow, a dynamic dimension that specializes).
    """
    try:
        return torch.export.export(module, inputs, dynamic_shapes=dynamic_shapes_for(dynamic_shapes))
    except SoftTimeLimitExceeded:
        raise  # the job's time is up: not the module's fault
    except Exception as exc:
        message = str(exc).strip().splitlines()
        summary = " ".join(message[:6]) if message else type(exc).__name__
        raise TorchExportFailed(f"torch.export.export failed: {type(exc).__name__}: {summary}") from exc
