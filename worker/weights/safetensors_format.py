"""The safetensors layout, read without trusting it: the header's length and JSON, and a
sharded checkpoint's ``*.safetensors.index.json``.

Pure: bytes in, validated values out (``ValueError`` naming what is wrong); the store and
the files are the caller's.  A safetensors file is an 8-byte little-endian header length,
that many bytes of JSON (``name -> {dtype, shape, data_offsets}``, an optional
``__metadata__`` of strings), then the tensors' bytes.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

#: The largest header read: a real shard's header is about 150 bytes a tensor (a few
#: hundred KiB for thousands of tensors); safetensors itself stops at 100 MB.
MAX_HEADER_BYTES = 16 * 1024**2
#: The largest index read: about 100 bytes a tensor, so 16 MiB is over 100,000 tensors.
MAX_INDEX_BYTES = 16 * 1024**2
#: The most shards one index may name (the largest published checkpoints use a few hundred).
MAX_SHARDS = 10_000
#: The suffixes that name a safetensors file and a sharded checkpoint's index.
SAFETENSORS_SUFFIX = ".safetensors"
INDEX_SUFFIX = ".safetensors.index.json"
#: safetensors dtype -> (torch dtype name, bytes per element).
DTYPES: Mapping[str, tuple[str, int]] = {
    "F64": ("float64", 8),
    "F32": ("float32", 4),
    "F16": ("float16", 2),
    "BF16": ("bfloat16", 2),
    "F8_E4M3": ("float8_e4m3fn", 1),
    "F8_E5M2": ("float8_e5m2", 1),
    "I64": ("int64", 8),
    "I32": ("int32", 4),
    "I16": ("int16", 2),
    "I8": ("int8", 1),
    "U64": ("uint64", 8),
    "U32": ("uint32", 4),
    "U16": ("uint16", 2),
    "U8": ("uint8", 1),
    "BOOL": ("bool", 1),
}


@dataclass(frozen=True)
class TensorInfo:
    """One tensor as a header describes it: its torch dtype name and its shape."""

    dtype: str
    shape: tuple[int, ...]


def header_length(prefix: bytes, size: int) -> int:
    """The header length the first 8 bytes of a ``size``-byte file give.

    Raises:
        ValueError: fewer than 8 bytes, a length of 0, over :data:`MAX_HEADER_BYTES`, or
            past the end of the file.
    """
    if len(prefix) != 8 or size < 8:
        raise ValueError(f"not a safetensors file: {size} bytes, shorter than the 8-byte header length")
    n = int.from_bytes(prefix, "little")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"not a safetensors file: a header of {n} bytes, more than the {MAX_HEADER_BYTES}-byte limit")
    if n < 2 or 8 + n > size:
        raise ValueError(f"not a safetensors file: a header of {n} bytes in a file of {size}")
    return n


def parse_header(data: bytes, data_size: int) -> dict[str, TensorInfo]:
    """The tensors a header describes, checked against the ``data_size`` bytes after it.

    Raises:
        ValueError: not a JSON object, an entry without a known dtype, a shape of
            non-negative integers or ``data_offsets`` inside the data that match the
            shape's byte size.
    """
    try:
        header = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"not a safetensors file: its header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise ValueError("not a safetensors file: its header is not a JSON object")
    metadata = header.pop("__metadata__", None)
    if metadata is not None and not (isinstance(metadata, dict) and all(isinstance(v, str) for v in metadata.values())):
        raise ValueError("invalid safetensors header: __metadata__ is not an object of strings")
    return {name: _tensor_info(name, entry, data_size) for name, entry in header.items()}


def _tensor_info(name: str, entry: Any, data_size: int) -> TensorInfo:
    if not name:
        raise ValueError("invalid safetensors header: a tensor without a name")
    if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
        raise ValueError(f"invalid safetensors header: {name!r} is not {{dtype, shape, data_offsets}}")
    dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
    if not isinstance(dtype, str) or dtype not in DTYPES:
        raise ValueError(f"invalid safetensors header: {name!r} has dtype {dtype!r}, not one of {', '.join(DTYPES)}")
    if not isinstance(shape, list) or not all(_natural(d) for d in shape):
        raise ValueError(f"invalid safetensors header: {name!r} has shape {shape!r}, not a list of sizes")
    if not (isinstance(offsets, list) and len(offsets) == 2 and all(_natural(o) for o in offsets)):
        raise ValueError(f"invalid safetensors header: {name!r} has data_offsets {offsets!r}, not [begin, end]")
    begin, end = offsets
    torch_name, itemsize = DTYPES[dtype]
    if not begin <= end <= data_size or end - begin != math.prod(shape) * itemsize:
        raise ValueError(
            f"invalid safetensors header: {name!r} ({dtype} {shape}) at bytes {begin}..{end} does not fit "
            f"its size or the file's {data_size} bytes of data"
        )
    return TensorInfo(torch_name, tuple(shape))


def _natural(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def check_shard_name(name: Any) -> str:
    """``name`` if it names a safetensors file in the index's own folder.

    Raises:
        ValueError: not a plain file name (a ``/`` or ``\\``, ``.``/``..``, control
            characters) or not ending in ``.safetensors``.
    """
    if (
        not isinstance(name, str)
        or name in ("", ".", "..")
        or "/" in name
        or "\\" in name
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    ):
        raise ValueError(f"shard {name!r} is not a file name in the index's folder")
    if not name.endswith(SAFETENSORS_SUFFIX) or name == SAFETENSORS_SUFFIX:
        raise ValueError(f"shard {name!r} is not a {SAFETENSORS_SUFFIX} file")
    return name


def parse_index(data: bytes) -> dict[str, str]:
    """The ``weight_map`` (tensor name -> shard file name) of a sharded checkpoint's index.

    Raises:
        ValueError: over :data:`MAX_INDEX_BYTES`, not JSON, no ``weight_map`` object of
            strings, no tensors, more than :data:`MAX_SHARDS` shards, or a shard name that is
            not a file in the index's folder (:func:`check_shard_name`).
    """
    if len(data) > MAX_INDEX_BYTES:
        raise ValueError(f"the index is larger than {MAX_INDEX_BYTES} bytes")
    try:
        index = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"the index is not JSON ({exc})") from None
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError('the index has no "weight_map" object naming the shard of each tensor')
    for tensor, shard in weight_map.items():
        if not tensor:
            raise ValueError("the index's weight_map has a tensor without a name")
        check_shard_name(shard)
    shards = set(weight_map.values())
    if len(shards) > MAX_SHARDS:
        raise ValueError(f"the index names {len(shards)} shards, more than {MAX_SHARDS}")
    return dict(weight_map)
