"""Builders of modules with structured inputs and outputs: inputs by keyword, a list or a
dict of tensors, dict outputs, and an output of a pytree type registered here (as a
library's ``ModelOutput`` is), which a consumer with only torch cannot rebuild."""

from __future__ import annotations

import dataclasses

import torch
import torch.utils._pytree as pytree
from torch import nn

from worker.allowlist import register_builder


def _linear(seed: int, features: int = 4, out: int = 3) -> nn.Linear:
    layer = nn.Linear(features, out)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(out, features, generator=generator))
        layer.bias.copy_(torch.randn(out, generator=generator))
    return layer


class MaskedEncoder(nn.Module):
    """A transformer's calling convention: ``forward(input_ids, attention_mask=None)``,
    returning a dict of tensors."""

    def __init__(self, vocab: int = 10) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, 4)
        self.proj = _linear(1)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        hidden = self.proj(self.embed(input_ids))
        if attention_mask is not None:
            hidden = hidden * attention_mask.unsqueeze(-1).to(hidden.dtype)
        return {"last_hidden_state": hidden, "pooled": hidden.mean(dim=1)}


class ImageList(nn.Module):
    """A detection model's calling convention: a list of images of their own sizes."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor([0.5, 2.0, -1.0]))

    def forward(self, images: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack([(im.mean(dim=(1, 2)) * self.scale).sum() for im in images])


class DictBatch(nn.Module):
    """A module taking a dict of named tensors."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = _linear(2)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.proj(batch["features"]) + batch["bias"]


@dataclasses.dataclass
class Prediction:
    """A library's own output type, registered as a pytree node (as transformers registers ``ModelOutput``)."""

    logits: torch.Tensor
    probs: torch.Tensor


pytree.register_dataclass(Prediction, serialized_type_name="tests.structured_models.Prediction")


class PredictionHead(nn.Module):
    """Returns a :class:`Prediction`."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = _linear(3)

    def forward(self, x: torch.Tensor) -> Prediction:
        logits = self.proj(x)
        return Prediction(logits=logits, probs=logits.softmax(dim=-1))


class TryExcept(nn.Module):
    """Plain eager Python that TorchScript rejects (``try``), but that traces."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = _linear(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return self.proj(x)
        except RuntimeError:
            return x


class Untraceable(nn.Module):
    """Neither scripts (``try``) nor traces (returns a string), nor exports."""

    def forward(self, x: torch.Tensor) -> str:
        try:
            return str(x.sum().item())
        except RuntimeError:
            return ""


@register_builder
def masked_encoder(vocab: int = 10) -> nn.Module:
    """A :class:`MaskedEncoder`."""
    return MaskedEncoder(vocab)


@register_builder
def image_list() -> nn.Module:
    """An :class:`ImageList`."""
    return ImageList()


@register_builder
def dict_batch() -> nn.Module:
    """A :class:`DictBatch`."""
    return DictBatch()


@register_builder
def prediction_head() -> nn.Module:
    """A :class:`PredictionHead`."""
    return PredictionHead()


@register_builder
def try_except() -> nn.Module:
    """A :class:`TryExcept`."""
    return TryExcept()


@register_builder
def untraceable() -> nn.Module:
    """An :class:`Untraceable`."""
    return Untraceable()


@register_builder
def scriptable() -> nn.Module:
    """A plain linear layer, which scripts."""
    return _linear(5)
