"""safetensors checkpoints as the tests store them: one file, or shards and their
``model.safetensors.index.json`` (the layout ``transformers`` writes)."""

from __future__ import annotations

import json
from collections.abc import Mapping

import torch
from safetensors.torch import save

INDEX = "model.safetensors.index.json"


def one_file(state: Mapping[str, torch.Tensor]) -> bytes:
    """The whole state_dict as one safetensors file's bytes."""
    return save({k: v.detach().contiguous() for k, v in state.items()})


def sharded(state: Mapping[str, torch.Tensor], shards: int, index: str = INDEX) -> dict[str, bytes]:
    """``shards`` safetensors files (tensors dealt in order, as evenly as they go) and their
    index: file name -> bytes."""
    names = list(state)
    files: dict[str, bytes] = {}
    weight_map: dict[str, str] = {}
    for i in range(shards):
        part = names[len(names) * i // shards : len(names) * (i + 1) // shards]
        name = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        files[name] = one_file({k: state[k] for k in part})
        weight_map.update(dict.fromkeys(part, name))
    files[index] = index_bytes(weight_map)
    return files


def index_bytes(weight_map: Mapping[str, str]) -> bytes:
    return json.dumps({"metadata": {"total_size": 0}, "weight_map": dict(weight_map)}).encode()
