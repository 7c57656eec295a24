"""Bundled example builders: the default allow-list, and the demo's model.

Each builder is registered (:func:`~worker.allowlist.register_builder`): the module is allowed
as a whole by default, and offers only those.
"""

from __future__ import annotations

import torch
from torch import nn

from .allowlist import register_builder


class TinyClassifier(nn.Module):
    """A two-layer MLP: features -> hidden (ReLU) -> class logits."""

    def __init__(self, in_features: int = 16, hidden: int = 32, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.body(x)
        return out


@register_builder
def tiny_classifier(in_features: int = 16, hidden: int = 32, classes: int = 4, seed: int = 0) -> nn.Module:
    """A :class:`TinyClassifier` with weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return TinyClassifier(in_features, hidden, classes)
