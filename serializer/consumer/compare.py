"""Comparing a reloaded model's outputs with the eager module's, as ``torch.allclose`` does."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ArchiveError


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or nested tuples, lists and dicts of them)."""
    if isinstance(value, torch.Tensor):
        return [value]
    if isinstance(value, Mapping):
        return [t for k in sorted(value) for t in flatten_outputs(value[k])]
    if isinstance(value, list | tuple):
        return [t for v in value for t in flatten_outputs(v)]
    if isinstance(value, int | float | bool):
        return [torch.tensor(value)]
    raise ArchiveError(f"cannot compare outputs of type {type(value).__name__}")


def compare_outputs(expected: Any, actual: Any, *, atol: float, rtol: float) -> tuple[bool, float, float]:
    """Compare two model outputs elementwise, as ``torch.allclose`` does.

    Returns:
        ``(passed, max_abs_diff, max_rel_diff)``; shapes or dtypes that differ fail with
        an infinite difference.
    """
    exp, act = flatten_outputs(expected), flatten_outputs(actual)
    if len(exp) != len(act):
        return False, math.inf, math.inf
    passed, max_abs, max_rel = True, 0.0, 0.0
    for want, got in zip(exp, act, strict=True):
        e, a = want.detach().cpu(), got.detach().cpu()
        if e.shape != a.shape or e.dtype != a.dtype:
            return False, math.inf, math.inf
        if e.numel() == 0:
            continue
        if not (e.is_floating_point() or e.is_complex()):
            e, a = e.double(), a.double()
        diff = (e - a).abs()
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / e.abs().clamp_min(1e-12)).max()))
        passed = passed and bool(torch.allclose(a, e, atol=atol, rtol=rtol, equal_nan=True))
    return passed, max_abs, max_rel
