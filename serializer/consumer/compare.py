"""Comparing a reloaded model's outputs with the eager module's, as ``torch.allclose`` does."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch

from ..errors import ArchiveError


def flatten_outputs(value: Any) -> list[torch.Tensor]:
    """The tensors of a model output (a tensor, or nested tuples, lists and dicts of them)."""
    return [t for _, t in output_leaves(value)]


def output_leaves(value: Any, path: str = "") -> list[tuple[str, torch.Tensor]]:
    """The tensors of a model output with where each sits (``.logits``, ``[0]``): dict
    entries by sorted key, list and tuple items in order; a number is a 0-d tensor, None
    holds none.

    Raises:
        ArchiveError: the output holds something else.
    """
    if isinstance(value, torch.Tensor):
        return [(path, value)]
    if isinstance(value, Mapping):
        return [leaf for k in sorted(value) for leaf in output_leaves(value[k], f"{path}.{k}")]
    if isinstance(value, list | tuple):
        return [leaf for i, v in enumerate(value) for leaf in output_leaves(v, f"{path}[{i}]")]
    if isinstance(value, int | float | bool):
        return [(path, torch.tensor(value))]
    if value is None:
        return []
    raise ArchiveError(f"cannot compare outputs of type {type(value).__name__}")


def compare_outputs(expected: Any, actual: Any, *, atol: float, rtol: float) -> tuple[bool, float, float]:
    """Compare two model outputs elementwise, as ``torch.allclose`` does.

    Nested outputs are compared entry by entry: dicts by key, lists and tuples by position
    (a tuple and a list of the same tensors are equal, as TorchScript may return either).

    Returns:
        ``(passed, max_abs_diff, max_rel_diff)``; a different structure (other keys, other
        lengths), shapes or dtypes fail with an infinite difference.
    """
    exp, act = output_leaves(expected), output_leaves(actual)
    if [p for p, _ in exp] != [p for p, _ in act]:
        return False, math.inf, math.inf
    passed, max_abs, max_rel = True, 0.0, 0.0
    for (_, want), (_, got) in zip(exp, act, strict=True):
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
