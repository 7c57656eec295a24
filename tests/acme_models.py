"""A team's builder module, as a deployment would allow it (``tests.acme_models``): builders
it registers, a function it defines without registering, and names it only imports.

The imports are what an attacker names: ``tests.acme_models:load_state_dict_from_url`` with a
``url`` would download and unpickle whatever that URL serves (torch.hub's loader defaults to
``weights_only=False``), and ``tests.acme_models:leave_marker`` would run another module's
builder.  None of them is a builder of this module.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.hub import load_state_dict_from_url  # noqa: F401  (imported, never a builder here)
from torch.nn import Linear  # noqa: F401  (a class defined elsewhere)

from tests.acme_tools import leave_marker  # noqa: F401  (registered there, imported here)
from worker.allowlist import register_builder


@register_builder
def build_classifier(in_features: int = 4, classes: int = 3, seed: int = 0) -> nn.Module:
    """A linear classifier with weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return nn.Linear(in_features, classes)


@register_builder
class Classifier(nn.Module):
    """A registered class: calling it with the spec's kwargs builds the module."""

    def __init__(self, in_features: int = 4, classes: int = 3) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self.linear(x)
        return out


def unregistered(in_features: int = 4) -> nn.Module:
    """Defined here but not registered: allowed only by an exact entry naming it."""
    return nn.Linear(in_features, 2)
