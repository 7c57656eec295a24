"""Small models and helpers for tests that save, export and reload TorchScript archives.

Everything here is deterministic: parameters come from seeded generators, so two modules
built with the same arguments hold the same values.
"""

from __future__ import annotations

import io
import random
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import torch
from torch import nn
from torch._export.serde.schema import SCHEMA_VERSION as EXPORT_SCHEMA

from serializer.archive.extras import ExtraFileInfo, sha256_hex
from serializer.archive.info import ArchiveInfo
from serializer.manifest.model import Manifest, Producer, build_manifest, canonical_json
from serializer.torchscript.save import quiet_torchscript_deprecation
from worker.allowlist import register_builder
from worker.settings import Settings

#: Every byte value once, in order: extra-file contents that text handling would damage.
ALL_BYTES = bytes(range(256))
#: float32 parameters: bytes per element.
_FLOAT_BYTES = 4


def scripted(module: nn.Module) -> torch.jit.ScriptModule:
    """``torch.jit.script(module)`` with torch's TorchScript deprecation warning silenced."""
    with quiet_torchscript_deprecation():
        return torch.jit.script(module)


def load_archive(data: bytes, extra_names: Iterable[str] = ()) -> tuple[torch.jit.ScriptModule, dict[str, bytes]]:
    """Load a TorchScript archive from bytes; returns the module and the named extra files as bytes."""
    extra: dict[str, bytes | str] = dict.fromkeys(extra_names, "")
    with quiet_torchscript_deprecation():
        module = torch.jit.load(io.BytesIO(data), _extra_files=extra)  # type: ignore[no-untyped-call]
    return module, {k: v.encode() if isinstance(v, str) else bytes(v) for k, v in extra.items()}


def randbytes(size: int, seed: int = 0) -> bytes:
    """``size`` reproducible pseudo-random bytes."""
    return random.Random(seed).randbytes(size)


class TinyLinear(nn.Module):
    """One ``Linear(in_features, out_features)`` layer: the smallest useful model."""

    def __init__(self, in_features: int = 4, out_features: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(out_features, in_features, generator=generator))
            self.linear.bias.copy_(torch.randn(out_features, generator=generator))
        self.in_features = in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.linear(x))

    def example_input(self, batch: int = 2, seed: int = 1) -> torch.Tensor:
        """A batch of inputs of the right width."""
        return torch.randn(batch, self.in_features, generator=torch.Generator().manual_seed(seed))


class _Scale(nn.Module):
    """Multiplies its input by the mean of one flat parameter."""

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.mean()


class ParamBlob(nn.Module):
    """A model whose float32 parameters add up to about ``total_bytes``, split over ``n_params``.

    Use it for archives of a chosen size (multipart uploads, memory bounds); its forward
    takes a tensor of any shape and touches every parameter.
    """

    def __init__(self, total_bytes: int, n_params: int = 3, seed: int = 0) -> None:
        super().__init__()
        numel = max(total_bytes // _FLOAT_BYTES, n_params)
        sizes = [numel // n_params] * n_params
        sizes[-1] += numel % n_params
        generator = torch.Generator().manual_seed(seed)
        self.blocks = nn.ModuleList(_Scale(torch.randn(n, generator=generator)) for n in sizes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return x


def param_bytes(module: nn.Module) -> int:
    """Bytes of parameter data held by ``module``."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


class RepeatInt(nn.Module):
    """A module whose forward takes a Python ``int`` rather than a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.base = nn.Parameter(torch.arange(4, dtype=torch.float32))

    def forward(self, n: int) -> torch.Tensor:
        return self.base.repeat(n) * n


# -- builders named by export specs (module "tests.fixtures", allowed in the worker tests) --


@register_builder
def tiny_linear(in_features: int = 4, out_features: int = 3, seed: int = 0) -> nn.Module:
    """A :class:`TinyLinear`, as a spec's builder."""
    return TinyLinear(in_features, out_features, seed)


class TokenSum(nn.Module):
    """Embeds integer token ids and sums them: fails on ids outside ``[0, vocab)``."""

    def __init__(self, vocab: int = 10, dim: int = 3, seed: int = 0) -> None:
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        with torch.no_grad():
            self.embedding.weight.copy_(torch.randn(vocab, dim, generator=torch.Generator().manual_seed(seed)))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.embedding(ids).sum(dim=-2)


@register_builder
def token_sum(vocab: int = 10, dim: int = 3, seed: int = 0) -> nn.Module:
    """A :class:`TokenSum`, as a spec's builder."""
    return TokenSum(vocab, dim, seed)


class TwoInputs(nn.Module):
    """``x @ w + bias[ids].sum(-1)``: a float input and an integer input."""

    def __init__(self, features: int = 4, vocab: int = 8) -> None:
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.w = nn.Parameter(torch.randn(features, 2, generator=generator))
        self.bias = nn.Parameter(torch.randn(vocab, generator=generator))

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return x @ self.w + self.bias[ids].sum(-1, keepdim=True)


@register_builder
def two_inputs(features: int = 4, vocab: int = 8) -> nn.Module:
    """A :class:`TwoInputs`, as a spec's builder."""
    return TwoInputs(features, vocab)


class Unscriptable(nn.Module):
    """Plain eager Python that TorchScript rejects (``try`` blocks are not supported)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        try:
            return x + 1
        except RuntimeError:
            return x


@register_builder
def unscriptable() -> nn.Module:
    """An :class:`Unscriptable`, as a spec's builder."""
    return Unscriptable()


@register_builder
def param_blob(total_bytes: int, n_params: int = 3, seed: int = 0) -> nn.Module:
    """A :class:`ParamBlob`, as a spec's builder."""
    return ParamBlob(total_bytes, n_params, seed)


@register_builder
def not_a_module() -> object:
    """A builder that returns something other than a module."""
    return {"not": "a module"}


@register_builder
def slow_linear(seconds: float = 1.0, in_features: int = 4, out_features: int = 3, seed: int = 0) -> nn.Module:
    """A builder that takes ``seconds`` to build: keeps a bulk run's jobs in flight a while."""
    import time

    time.sleep(seconds)
    return TinyLinear(in_features, out_features, seed)


# -- manifests -------------------------------------------------------------------------------


#: The fixed creation time of :func:`make_manifest`'s manifests.
CREATED = datetime(2024, 5, 17, 12, 30, 45, 123456, tzinfo=UTC)


def fake_archive(bucket: str = "models-bucket", key: str = "team/resnet/model.pt") -> ArchiveInfo:
    """An :class:`ArchiveInfo` of a three-part TorchScript archive with three extra files."""
    extras = {"config/model.json": b'{"layers": 50}', "labels.txt": "chat\nchién\n".encode(), "empty": b""}
    offsets = {"config/model.json": 64, "empty": 200, "labels.txt": 300}
    return ArchiveInfo(
        uri=f"s3://{bucket}/{key}",
        size=12_345_678,
        sha256=sha256_hex(b"the archive"),
        etag='"0123456789abcdef0123456789abcdef-3"',
        format_version=3,
        archive_root="archive",
        extra_files=tuple(
            ExtraFileInfo(name=n, size=len(c), sha256=sha256_hex(c), offset=offsets[n])
            for n, c in sorted(extras.items())
        ),
        version_id=None,
    )


#: The producer and spec :func:`make_manifest` records.
PRODUCER = Producer(torch="2.13.0", python="3.11.9", export_worker="0.1.0", device="cpu", host="test-host")
SPEC = {"model": "resnet50", "batch": 4, "dtype": "float32", "options": {"strict": True, "tags": ["a", "b"]}}


def make_manifest(archive: ArchiveInfo | None = None, **kwargs: Any) -> Manifest:
    """A manifest of ``archive`` (default :func:`fake_archive`) with fixed spec, producer and time;
    ``kwargs`` override :func:`build_manifest`'s arguments."""
    args: dict[str, Any] = {
        "spec": SPEC,
        "spec_hash": sha256_hex(canonical_json(SPEC)),
        "producer": PRODUCER,
        "created_at": CREATED,
    }
    args.update(kwargs)
    return build_manifest(archive or fake_archive(), **args)


# -- worker settings -------------------------------------------------------------------------


#: The builder allow-list of :func:`settings`.
ALLOWED = ("worker.examples",)


def settings(**changes: Any) -> Settings:
    """Worker settings that allow the bundled example builders, with ``changes`` applied."""
    return Settings(allowed_builders=ALLOWED, **changes)


# -- .pt2 exports -------------------------------------------------------------------------------


#: The export schema version this torch writes, (major, minor).
SCHEMA = (int(EXPORT_SCHEMA[0]), int(EXPORT_SCHEMA[1]))
#: Text extra files as ``export_pt2`` takes them (str or UTF-8 bytes), and their bytes as stored.
EXTRAS: dict[str, str | bytes] = {
    "labels.txt": "chat\nchién\n✓ 🙂\n",
    "docs/README.md": "# tiny\r\nCRLF kept as is\r\n",
    "config.json": b'{"classes": 3}',
    "empty.txt": "",
}
EXTRA_BYTES = {name: v.encode() if isinstance(v, str) else v for name, v in EXTRAS.items()}


def pt2_spec_data(**changes: Any) -> dict[str, Any]:
    """The data of a pt2 export spec of the example classifier; a change to ``...`` drops that field."""
    data = {
        "name": "tiny",
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {"in_features": 8, "hidden": 4, "classes": 2},
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "destination": "s3://models/prod",
        "format": "pt2",
        **changes,
    }
    return {k: v for k, v in data.items() if v is not ...}


#: A BERT far smaller than the default one (random weights build in milliseconds): a build
#: from the class's default config would not fit weights saved from it.
TINY_BERT = {
    "model_type": "bert",
    "vocab_size": 64,
    "hidden_size": 16,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "intermediate_size": 32,
    "max_position_embeddings": 32,
}
