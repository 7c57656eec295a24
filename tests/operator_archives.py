"""Hostile archives that call file operators, built the way a bucket writer would, and the
common architectures every format's operator check must pass.

- :func:`from_file_torchscript`: a scripted module whose ``__setstate__`` (run by
  ``torch.jit.load``) maps ``target`` with ``torch.from_file(path, shared=True, size=N)``
  and copies :data:`PAYLOAD` into it.
- :func:`from_file_pt2`: a real ``torch.export`` archive whose program JSON gains two nodes,
  ``aten.from_file`` (shared, mapping ``target``) and ``aten.copy_`` of the input into it:
  ``torch.export.load(...).module()(PAYLOAD)`` writes the file.

Both write only where ``target`` says: the tests pass a path under ``tmp_path``.
:func:`torch_writes` runs torch's own loader on an archive in a fresh interpreter.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serializer.torchscript.save import quiet_torchscript_deprecation

#: What the hostile archives write: a ``.pth`` line Python would run at its next start.
PAYLOAD = b"import sys  # written by a model archive\n"


class _SetstateWrites(nn.Module):
    """Loading it maps ``self.path`` as a shared file and copies its buffer into it."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self.register_buffer("payload", torch.tensor(list(PAYLOAD), dtype=torch.uint8))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, str, bool]:
        return (self.payload, self.path, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, str, bool]) -> None:
        self.path = state[1]
        self.training = state[2]
        mapped = torch.from_file(state[1], shared=True, size=state[0].numel(), dtype=torch.uint8)
        mapped.copy_(state[0])
        self.payload = mapped


def from_file_torchscript(out: Path, target: Path) -> Path:
    """A TorchScript archive whose ``__setstate__`` writes :data:`PAYLOAD` to ``target``."""
    with quiet_torchscript_deprecation():
        torch.jit.save(torch.jit.script(_SetstateWrites(str(target))), str(out))
    return out


class _PlusOne(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + 1


def payload_input() -> torch.Tensor:
    """The input the hostile ``.pt2`` copies into the file it maps."""
    return torch.tensor(list(PAYLOAD), dtype=torch.uint8)


def rewrite_program(path: Path, out: Path, change: Callable[[dict[str, Any]], None]) -> Path:
    """A copy of a ``.pt2`` at ``out`` whose program JSON ``change`` edited in place."""
    with zipfile.ZipFile(path) as src:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst:
        for name, data in entries:
            if name.endswith("models/model.json"):
                program = json.loads(data)
                change(program)
                dst.writestr(name, json.dumps(program).encode())
            else:
                dst.writestr(name, data)
    return out


def plain_pt2(out: Path) -> Path:
    """A real ``torch.export`` archive of ``x + 1`` on a uint8 vector as long as :data:`PAYLOAD`."""
    torch.export.save(torch.export.export(_PlusOne(), (payload_input(),)), str(out))
    return out


def add_from_file(target: Path, op: str = "torch.ops.aten.from_file.default") -> Callable[[dict[str, Any]], None]:
    """An edit of a program JSON: map ``target`` (shared) with ``op`` and copy the input into it."""

    def change(program: dict[str, Any]) -> None:
        graph = program["graph_module"]["graph"]
        meta = graph["tensor_values"]["x"]
        graph["tensor_values"]["mapped"] = meta
        graph["tensor_values"]["copied"] = meta
        mapped = {
            "name": "mapped",
            "target": op,
            "inputs": [
                {"name": "filename", "arg": {"as_string": str(target)}, "kind": 1},
                {"name": "shared", "arg": {"as_bool": True}, "kind": 1},
                {"name": "size", "arg": {"as_int": len(PAYLOAD)}, "kind": 1},
                {"name": "dtype", "arg": {"as_scalar_type": meta["dtype"]}, "kind": 2},
            ],
            "outputs": [{"as_tensor": {"name": "mapped"}}],
            "metadata": {},
            "is_hop_single_tensor_return": None,
        }
        copied = {
            "name": "copied",
            "target": "torch.ops.aten.copy_.default",
            "inputs": [
                {"name": "self", "arg": {"as_tensor": {"name": "mapped"}}, "kind": 1},
                {"name": "src", "arg": {"as_tensor": {"name": "x"}}, "kind": 1},
            ],
            "outputs": [{"as_tensor": {"name": "copied"}}],
            "metadata": {},
            "is_hop_single_tensor_return": None,
        }
        graph["nodes"][:0] = [mapped, copied]

    return change


def from_file_pt2(out: Path, target: Path) -> Path:
    """A ``.pt2`` whose graph maps ``target`` and writes its input (:data:`PAYLOAD`) there."""
    plain = plain_pt2(out.with_name(out.stem + "-plain.pt2"))
    return rewrite_program(plain, out, add_from_file(target))


_TORCH_LOADS = {
    "torchscript": "import sys, torch; torch.jit.load(sys.argv[1])",
    "pt2": (
        "import sys, torch; program = torch.export.load(sys.argv[1]); "
        f"program.module()(torch.tensor(list({PAYLOAD!r}), dtype=torch.uint8))"
    ),
}


def torch_writes(archive: Path, kind: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """torch's own loader on ``archive`` in a fresh interpreter (for a ``.pt2``, also a run
    on :data:`PAYLOAD`, as a consumer's self-check does)."""
    return subprocess.run(
        [sys.executable, "-W", "ignore", "-c", _TORCH_LOADS[kind], str(archive)],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


# -- common architectures --------------------------------------------------------------------


class ConvNet(nn.Module):
    """Conv, batch norm, pooling, SiLU, dropout, interpolation, a classifier head."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, stride=2, groups=2),
            nn.SiLU(),
            nn.AdaptiveAvgPool2d((1, 1)),
        )
        self.drop = nn.Dropout(0.1)
        self.fc = nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.features(x), 1)
        x = nn.functional.interpolate(x[:, :, None, None], scale_factor=2.0, mode="bilinear").mean((2, 3))
        out: torch.Tensor = self.fc(self.drop(x)).softmax(-1)
        return out


class Recurrent(nn.Module):
    """Embedding, embedding bag, a bidirectional two-layer LSTM, a GRU, layer norm."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(20, 8)
        self.bag = nn.EmbeddingBag(20, 8, mode="mean")
        self.lstm = nn.LSTM(8, 16, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(32, 8, batch_first=True)
        self.norm = nn.LayerNorm(8)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out, _ = self.lstm(self.emb(tokens))
        out, _ = self.gru(out)
        normed: torch.Tensor = self.norm(out[:, -1] + self.bag(tokens))
        return normed


class Attention(nn.Module):
    """``nn.MultiheadAttention`` as self-attention."""

    def __init__(self) -> None:
        super().__init__()
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.attn(x, x, x)
        return out


class StaticQuant(nn.Module):
    """Eager static quantization: quantized conv and linear (packed-parameter custom classes)."""

    def __init__(self) -> None:
        super().__init__()
        self.quant = torch.ao.quantization.QuantStub()
        self.conv = nn.Conv2d(3, 4, 3)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(4 * 6 * 6, 2)
        self.dequant = torch.ao.quantization.DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.conv(self.quant(x)))
        out: torch.Tensor = self.dequant(self.fc(torch.flatten(x, 1)))
        return out


def _static_quant() -> nn.Module:
    with warnings.catch_warnings():
        # torch 2.13 deprecates quantized tensors and reduce_range: its notes, not the test's.
        warnings.simplefilter("ignore")
        module = StaticQuant().eval()
        module.qconfig = torch.ao.quantization.get_default_qconfig("fbgemm")
        prepared = torch.ao.quantization.prepare(module)
        prepared(torch.randn(2, 3, 8, 8))
        return torch.ao.quantization.convert(prepared)


def _dynamic_quant() -> nn.Module:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.ao.quantization.quantize_dynamic(
            nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4)), {nn.Linear}, dtype=torch.qint8
        )


def _transformer() -> nn.Module:
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True, activation="gelu")
    return nn.TransformerEncoder(layer, 2, enable_nested_tensor=False).eval()


class Branches(nn.Module):
    """``torch.cond``: two sub-graphs (a higher-order operator in a ``.pt2``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = torch.cond(x.sum() > 0, lambda x: self.lin(x).relu(), lambda x: x.cos(), (x,))
        return out


Architecture = tuple[str, Callable[[], nn.Module], Callable[[], tuple[torch.Tensor, ...]]]

#: (name, module builder, inputs builder) of each architecture; :data:`TORCHSCRIPT_ONLY` and
#: :data:`PT2_ONLY` name those one format cannot hold.
ARCHITECTURES: list[Architecture] = [
    ("convnet", lambda: ConvNet().eval(), lambda: (torch.randn(2, 3, 16, 16),)),
    ("lstm-gru-embedding-bag", lambda: Recurrent().eval(), lambda: (torch.randint(0, 20, (2, 5)),)),
    ("transformer-encoder", _transformer, lambda: (torch.randn(2, 5, 16),)),
    ("multihead-attention", lambda: Attention().eval(), lambda: (torch.randn(2, 5, 16),)),
    ("dynamic-quantized-linear", _dynamic_quant, lambda: (torch.randn(2, 8),)),
    ("static-quantized-conv", _static_quant, lambda: (torch.randn(2, 3, 8, 8),)),
    ("cond", lambda: Branches().eval(), lambda: (torch.randn(3, 4),)),
]
#: torch.export cannot export quantized modules' packed parameters; TorchScript has no cond.
TORCHSCRIPT_ONLY = frozenset({"dynamic-quantized-linear", "static-quantized-conv"})
PT2_ONLY = frozenset({"cond"})


def architectures(kind: str) -> Iterator[Architecture]:
    skip = PT2_ONLY if kind == "torchscript" else TORCHSCRIPT_ONLY
    return (entry for entry in ARCHITECTURES if entry[0] not in skip)


def save_architecture(kind: str, how: str, module: nn.Module, inputs: tuple[torch.Tensor, ...], out: Path) -> Path:
    """``module`` saved at ``out``: scripted or traced (TorchScript) or exported (``.pt2``)."""
    with warnings.catch_warnings(), quiet_torchscript_deprecation():
        # torch's own notes while tracing and exporting (LSTM flat weights, traced branches).
        warnings.simplefilter("ignore")
        if kind == "pt2":
            torch.export.save(torch.export.export(module, inputs), str(out))
        elif how == "script":
            torch.jit.save(torch.jit.script(module), str(out))
        else:
            torch.jit.save(torch.jit.trace(module, inputs, check_trace=False), str(out))
    return out
