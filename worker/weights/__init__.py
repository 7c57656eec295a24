"""A spec's ``weights``: a ``torch.save`` state_dict, safetensors (one file, or an index and
its shards), or a Hugging Face snapshot prefix, loaded from S3 into the module."""

from __future__ import annotations

from .fit import Fit, fit_checkpoint
from .load import MAX_SNAPSHOT_FILES, SNAPSHOT_WEIGHTS, load_weights, snapshot_files, weights_kind
from .safetensors_format import (
    MAX_HEADER_BYTES,
    MAX_INDEX_BYTES,
    MAX_SHARDS,
    TensorInfo,
    check_shard_name,
    header_length,
    parse_header,
    parse_index,
)

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_INDEX_BYTES",
    "MAX_SHARDS",
    "MAX_SNAPSHOT_FILES",
    "SNAPSHOT_WEIGHTS",
    "Fit",
    "TensorInfo",
    "check_shard_name",
    "fit_checkpoint",
    "header_length",
    "load_weights",
    "parse_header",
    "parse_index",
    "snapshot_files",
    "weights_kind",
]
