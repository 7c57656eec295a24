"""Building the module a spec names: the allowed builder, weights, device, example inputs, scripting."""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from celery.exceptions import SoftTimeLimitExceeded
from torch.export import Dim

from serializer.pt2.pytree import foreign_types, to_plain
from serializer.torchscript.save import quiet_torchscript_deprecation

from .allowlist import builder_name, check_allowed, resolve_builder
from .errors import BuildFailed, DeviceUnavailable, ScriptingFailed, TorchExportFailed
from .spec import INT_DTYPES, DimSpec, ExportSpec, InputDims, TensorSpec
from .weights import load_weights as load_weights  # noqa: PLC0414  (re-exported for existing callers)
from .zoo import SNAPSHOT_USES, SnapshotUse

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


def snapshot_use(builder: str, allowed: Sequence[str]) -> SnapshotUse | None:
    """What the allowed ``builder`` takes from a snapshot its spec's weights name (None: nothing).

    Raises:
        BuilderNotAllowed, BuildFailed: as :func:`worker.allowlist.resolve_builder`.
    """
    return SNAPSHOT_USES.get(builder_name(resolve_builder(builder, allowed)))


def build_module(
    spec: ExportSpec, allowed: Sequence[str], device: torch.device, defaults: Mapping[str, Any] | None = None
) -> torch.nn.Module:
    """Find the allowed builder (:func:`worker.allowlist.resolve_builder`), call it with
    ``kwargs`` (over ``defaults``: arguments the worker found, such as a snapshot's
    config), return the module.

    Raises:
        BuilderNotAllowed: refused by the allow-list; the builder has not been called.
        BuildFailed: cannot be imported, fails, or returns something other than a module.
    """
    factory = resolve_builder(spec.builder, allowed)
    try:
        module = factory(**{**(defaults or {}), **spec.kwargs})
    except SoftTimeLimitExceeded:
        raise  # the job's time is up: not the module's fault
    except Exception as exc:
        raise BuildFailed(f"builder {spec.builder!r} failed with kwargs {spec.kwargs}: {exc!r}") from exc
    if not isinstance(module, torch.nn.Module):
        raise BuildFailed(f"builder {spec.builder!r} returned {type(module).__name__}, not a torch.nn.Module")
    return module


@dataclass(frozen=True)
class ExampleInputs:
    """A module's example inputs as it is called with them: ``module(*args, **kwargs)``;
    each is a tensor, or a list or dict of them (nested)."""

    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.args) or bool(self.kwargs)

    def to(self, device: torch.device | str) -> ExampleInputs:
        """These inputs, every tensor detached and moved to ``device``."""
        return ExampleInputs(
            args=tuple(map_tensors(a, lambda t: t.detach().to(device)) for a in self.args),
            kwargs={k: map_tensors(v, lambda t: t.detach().to(device)) for k, v in self.kwargs.items()},
        )

    def bound(self, module: torch.nn.Module) -> dict[str, Any]:
        """All the inputs by the names of ``module.forward``'s parameters (what
        ``torch.jit.trace`` takes where some are given by keyword).

        Raises:
            ScriptingFailed: they do not bind to the parameters of ``forward``, or it takes
                ``*args`` or ``**kwargs``.
        """
        try:
            signature = inspect.signature(module.forward)
            bound = signature.bind(*self.args, **self.kwargs)
        except (TypeError, ValueError) as exc:
            raise ScriptingFailed(f"example inputs do not fit {type(module).__name__}.forward: {exc}") from exc
        variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        if any(signature.parameters[name].kind in variadic for name in bound.arguments):
            raise ScriptingFailed(
                f"{type(module).__name__}.forward takes *args or **kwargs: torch.jit.trace cannot take inputs by "
                "keyword for it; give them all positionally (example_inputs)"
            )
        return dict(bound.arguments)


def map_tensors(value: Any, fn: Callable[[torch.Tensor], torch.Tensor]) -> Any:
    """``value`` with ``fn`` applied to each tensor in it (in lists, tuples and dicts)."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, list | tuple):
        return type(value)(map_tensors(v, fn) for v in value)
    if isinstance(value, dict):
        return {k: map_tensors(v, fn) for k, v in value.items()}
    return value


def example_inputs(specs: Sequence[Any], seed: int, device: torch.device) -> tuple[Any, ...]:
    """The positional example inputs of a spec: given values, or synthesized from a seeded
    generator; a list or dict entry becomes a list or dict of tensors."""
    args: tuple[Any, ...] = example_args(specs, None, seed, device).args
    return args


def example_args(
    positional: Sequence[Any] | None, keyword: Mapping[str, Any] | None, seed: int, device: torch.device
) -> ExampleInputs:
    """A spec's example inputs, positional and by keyword, from one seeded generator: the
    positional ones first, in order, then the keyword ones by sorted name (each dict's
    entries too, so that specs with equal hashes get equal tensors).

    Raises:
        BuildFailed: a given ``value`` is not a tensor of its dtype.
    """
    gen = torch.Generator().manual_seed(seed)
    args = tuple(_synthesize(entry, gen, device) for entry in positional or [])
    kwargs = {name: _synthesize((keyword or {})[name], gen, device) for name in sorted(keyword or {})}
    return ExampleInputs(args=args, kwargs=kwargs)


def _synthesize(entry: Any, gen: torch.Generator, device: torch.device) -> Any:
    if isinstance(entry, list):
        return [_synthesize(item, gen, device) for item in entry]
    if isinstance(entry, dict):
        return {name: _synthesize(entry[name], gen, device) for name in sorted(entry)}
    return _tensor(entry, gen).to(device)


def _tensor(item: TensorSpec, gen: torch.Generator) -> torch.Tensor:
    dtype = getattr(torch, item.dtype)
    if item.value is not None:
        try:
            return torch.tensor(item.value, dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise BuildFailed(f"example input value is not a {item.dtype} tensor: {exc}") from exc
    if item.dtype in INT_DTYPES:
        low, high = item.int_bounds()
        return torch.randint(low, high, tuple(item.shape or ()), generator=gen, dtype=dtype)
    if item.dtype == "bool":
        return torch.randint(0, 2, tuple(item.shape or ()), generator=gen).bool()
    return torch.randn(tuple(item.shape or ()), generator=gen, dtype=torch.float32).to(dtype)


def to_torchscript(
    module: torch.nn.Module, method: str, inputs: ExampleInputs | tuple[Any, ...], *, strict: bool = True
) -> torch.jit.ScriptModule:
    """Script (or trace with ``inputs``) an eval-mode module.  A trace takes inputs given by
    keyword by the names of ``forward``'s parameters; ``strict=False`` lets it return lists
    and dicts (``torch.jit.trace``'s ``strict``).

    Raises:
        ScriptingFailed: with TorchScript's own message.
    """
    examples = inputs if isinstance(inputs, ExampleInputs) else ExampleInputs(args=tuple(inputs))
    try:
        with quiet_torchscript_deprecation():
            if method == "trace":
                if examples.kwargs:
                    traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                        module, example_kwarg_inputs=examples.bound(module), check_trace=False, strict=strict
                    )
                else:
                    traced = torch.jit.trace(  # type: ignore[no-untyped-call]
                        module, examples.args, check_trace=False, strict=strict
                    )
                assert isinstance(traced, torch.jit.ScriptModule)
                return traced
            return torch.jit.script(module)
    except SoftTimeLimitExceeded:
        raise  # the job's time is up: not the module's fault
    except ScriptingFailed:
        raise
    except Exception as exc:
        raise ScriptingFailed(f"torch.jit.{method} failed: {_summary(exc)}") from exc


class PlainOutputs(torch.nn.Module):
    """``inner`` with its outputs turned into builtin dicts, lists and tuples
    (:func:`serializer.pt2.pytree.to_plain`): what a ``.pt2`` consumer with only torch can load."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return to_plain(self.inner(*args, **kwargs))


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
    module: torch.nn.Module,
    inputs: ExampleInputs | tuple[Any, ...],
    dynamic_shapes: Sequence[InputDims | None] | None = None,
    *,
    strict: bool | None = None,
    plain_outputs: bool = False,
) -> torch.export.ExportedProgram:
    """Capture an eval-mode module with ``torch.export.export`` on ``inputs`` (``strict``:
    torch.export's mode, its default where None).  ``plain_outputs`` exports it behind
    :class:`PlainOutputs`, for outputs of a library's pytree type.

    Raises:
        TorchExportFailed: with torch.export's own message (graph breaks, data-dependent
            control flow, a dynamic dimension that specializes), or where the program's
            inputs or outputs use container types a consumer with only torch cannot load.
    """
    examples = inputs if isinstance(inputs, ExampleInputs) else ExampleInputs(args=tuple(inputs))
    target = PlainOutputs(module) if plain_outputs else module
    options: dict[str, Any] = {} if strict is None else {"strict": strict}
    try:
        program = torch.export.export(
            target, examples.args, examples.kwargs or None, dynamic_shapes=dynamic_shapes_for(dynamic_shapes),
            **options,
        )  # fmt: skip
    except SoftTimeLimitExceeded:
        raise  # the job's time is up: not the module's fault
    except Exception as exc:
        raise TorchExportFailed(f"torch.export.export failed: {type(exc).__name__}: {_summary(exc)}") from exc
    foreign = foreign_types(program)
    if foreign:
        raise TorchExportFailed(
            f"the exported program's inputs or outputs use {', '.join(foreign)}: a consumer without the library "
            "that registers them cannot load it; return dicts, lists or tuples of tensors"
        )
    return program


def _summary(exc: BaseException) -> str:
    """The first lines of an exception's message (torch's can run to pages)."""
    message = str(exc).strip().splitlines()
    return " ".join(message[:6]) if message else type(exc).__name__
