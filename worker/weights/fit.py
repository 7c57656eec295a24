"""Whether a checkpoint fits a module, decided before any tensor is read: missing and
unexpected keys, shape and dtype mismatches, each named (a few, and how many).

Pure: the module's tensors and the checkpoint's headers in, a :class:`Fit` out.

dtype rule: a tensor is loaded only in the dtype of the module's tensor it replaces.  A
floating tensor of another floating dtype (a ``bfloat16`` checkpoint, a ``float32``
module) is cast only where the caller allows it (``cast_floating``); any other difference
is refused, since a cast there would change values (integers, booleans) silently.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

from .safetensors_format import TensorInfo

#: How many names each kind of problem lists before "and N more".
SHOWN_NAMES = 5

_FLOATING = frozenset({"float64", "float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2"})


@dataclass(frozen=True)
class Located:
    """A checkpoint tensor and the file (shard) that holds it."""

    info: TensorInfo
    shard: str


@dataclass
class Fit:
    """What loading a checkpoint into a module would do, and what stops it."""

    #: Checkpoint tensor name -> the module tensor it is copied into.
    load: dict[str, torch.Tensor] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    #: "name in shard: checkpoint X, module Y" lines.
    shapes: list[str] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    #: Names cast from another floating dtype (allowed by the caller).
    cast: list[str] = field(default_factory=list)

    def problems(self, *, strict: bool) -> str | None:
        """The refusal, naming each kind of problem, or None when the checkpoint fits
        (``strict``: missing and unexpected keys are problems too)."""
        parts = []
        if strict and self.missing:
            parts.append(_named(self.missing, "missing key"))
        if strict and self.unexpected:
            parts.append(_named(self.unexpected, "unexpected key"))
        if self.shapes:
            parts.append(_named(self.shapes, "shape mismatch", "es"))
        if self.dtypes:
            parts.append(_named(self.dtypes, "dtype mismatch", "es") + " (a dtype is never cast but between floats)")
        return "; ".join(parts) or None


def module_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state_dict entries as the tensors themselves (parameters, persistent buffers)."""
    return dict(module.state_dict(keep_vars=True))


def fit_checkpoint(
    expected: Mapping[str, torch.Tensor], found: Mapping[str, Located], *, cast_floating: bool = False
) -> Fit:
    """Compare a checkpoint's tensors (``found``, from its headers) with a module's.

    A key the checkpoint leaves out is not missing when a tied key (the same parameter
    under another name, as ``lm_head.weight`` and ``embed_tokens.weight``) is there.
    """
    fit = Fit()
    for name, where in found.items():
        target = expected.get(name)
        if target is None:
            fit.unexpected.append(name)
            continue
        got, want = where.info, _dtype_name(target.dtype)
        if got.shape != tuple(target.shape):
            fit.shapes.append(f"{name} in {where.shard}: checkpoint {list(got.shape)}, module {list(target.shape)}")
        elif got.dtype != want:
            if cast_floating and got.dtype in _FLOATING and want in _FLOATING:
                fit.cast.append(name)
                fit.load[name] = target
            else:
                fit.dtypes.append(f"{name} in {where.shard}: checkpoint {got.dtype}, module {want}")
        else:
            fit.load[name] = target
    loaded = {id(t) for t in fit.load.values()}
    fit.missing = [n for n, t in expected.items() if n not in found and id(t) not in loaded]
    return fit


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _named(items: Iterable[str], noun: str, plural: str = "s") -> str:
    items = list(items)
    shown = ", ".join(items[:SHOWN_NAMES])
    more = f", and {len(items) - SHOWN_NAMES} more" if len(items) > SHOWN_NAMES else ""
    return f"{len(items)} {noun}{'' if len(items) == 1 else plural} ({shown}{more})"
