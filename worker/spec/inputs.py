"""Example inputs and the dynamic dimensions of a ``.pt2`` export."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from serializer.manifest.model import canonical_json

from .base import Strict
from .limits import MAX_JSON_BYTES

#: dtypes an example input may have (names as torch spells them).
DTYPES = frozenset({"float16", "bfloat16", "float32", "float64", "int8", "uint8", "int16", "int32", "int64", "bool"})
INT_DTYPES = frozenset({"int8", "uint8", "int16", "int32", "int64"})
#: Smallest and largest value of each integer dtype.
INT_RANGES = {
    "int8": (-(2**7), 2**7 - 1),
    "uint8": (0, 2**8 - 1),
    "int16": (-(2**15), 2**15 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "int64": (-(2**63), 2**63 - 1),
}
#: Bounds ``[low, high)`` of synthesized integer inputs where the spec gives none, clipped to the dtype.
DEFAULT_INT_BOUNDS = (0, 100)
#: Largest synthesized example input, in elements (64 Mi floats = 256 MiB): an example
#: input is for tracing and checking, not a data set.
MAX_INPUT_ELEMENTS = 64 * 1024**2
#: Most dimensions of one example input.
MAX_DIMS = 8
_DIM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class TensorSpec(Strict):
    """An example input: synthesized from ``shape``/``dtype`` (seeded), or given as ``value``."""

    dtype: str = "float32"
    shape: list[Annotated[int, Field(ge=0, le=2**31)]] | None = None
    value: Any = None
    # int first: a bound above 2**53 stays exact.
    low: int | float | None = None
    high: int | float | None = None

    @field_validator("dtype")
    @classmethod
    def _dtype(cls, v: str) -> str:
        if v not in DTYPES:
            raise ValueError(f"unknown dtype {v!r}; use one of {', '.join(sorted(DTYPES))}")
        return v

    @model_validator(mode="after")
    def _shape_or_value(self) -> TensorSpec:
        if (self.shape is None) == (self.value is None):
            raise ValueError("give exactly one of 'shape' (synthesized) or 'value' (nested list)")
        if self.value is not None and (self.low is not None or self.high is not None):
            raise ValueError("'low'/'high' apply to synthesized inputs, not to a given 'value'")
        if self.shape is not None:
            if len(self.shape) > MAX_DIMS:
                raise ValueError(f"at most {MAX_DIMS} dimensions, got {len(self.shape)}")
            if math.prod(self.shape) > MAX_INPUT_ELEMENTS:
                raise ValueError(f"shape {self.shape} has more than {MAX_INPUT_ELEMENTS} elements")
        if self.value is not None and len(canonical_json(self.value)) > MAX_JSON_BYTES:
            raise ValueError(f"'value' is larger than {MAX_JSON_BYTES} bytes of JSON")
        if (self.low is not None or self.high is not None) and self.dtype not in INT_DTYPES:
            raise ValueError("'low'/'high' apply to integer dtypes only")
        if self.low is not None and self.high is not None and not self.low < self.high:
            raise ValueError("'low' must be below 'high'")
        if self.dtype in INT_DTYPES and self.shape is not None:
            for field in ("low", "high"):
                bound = getattr(self, field)
                if bound is not None and not float(bound).is_integer():
                    raise ValueError(f"{field!r} must be a whole number for {self.dtype}, got {bound}")
            low, high = self.int_bounds()
            smallest, largest = INT_RANGES[self.dtype]
            # torch.randint's high is exclusive, and must itself fit in an int64.
            if not smallest <= low < high <= min(largest + 1, INT_RANGES["int64"][1]):
                raise ValueError(
                    f"'low'/'high' give [{low}, {high}), which is empty or outside {self.dtype} "
                    f"([{smallest}, {largest}]); the defaults are [{DEFAULT_INT_BOUNDS[0]}, {DEFAULT_INT_BOUNDS[1]})"
                )
        return self

    def int_bounds(self) -> tuple[int, int]:
        """``[low, high)`` of a synthesized integer input: the given bounds, else the defaults
        clipped to the dtype."""
        smallest, largest = INT_RANGES[self.dtype]
        low = int(self.low) if self.low is not None else max(smallest, DEFAULT_INT_BOUNDS[0])
        high = int(self.high) if self.high is not None else min(largest, DEFAULT_INT_BOUNDS[1])
        return low, high


class DimSpec(Strict):
    """A dynamic dimension of a ``.pt2`` export (``torch.export.Dim``); dimensions that
    share a name are one symbol: torch.export keeps them equal."""

    name: str
    min: int | None = Field(default=None, ge=0, le=2**62)
    # torch.export treats sizes 0 and 1 as static: a dynamic dimension spans at least 2.
    max: int | None = Field(default=None, ge=2, le=2**62)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _DIM_NAME_RE.fullmatch(v):
            raise ValueError(f"dimension name must be a Python identifier of at most 64 characters, got {v!r}")
        return v

    @model_validator(mode="after")
    def _bounds(self) -> DimSpec:
        if self.min is not None and self.max is not None and self.min > self.max:
            raise ValueError(f"min {self.min} is above max {self.max}")
        return self


#: One input's dynamic dimensions: dimension index (as a JSON key) -> a named dimension,
#: or ``"auto"`` (torch.export decides, ``Dim.AUTO``).
InputDims = dict[str, DimSpec | Literal["auto"]]


def value_shape(value: Any) -> list[int]:
    """The shape of a nested list as torch.tensor reads it (from its first elements)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape
