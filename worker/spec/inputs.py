"""Example inputs and the dynamic dimensions of a ``.pt2`` export."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator
from typing_extensions import TypeAliasType

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


#: Deepest nesting of lists and dicts in one example input (a list of dicts of tensors is 2).
MAX_INPUT_DEPTH = 3
#: Most tensors of a spec's example inputs (positional and keyword together).
MAX_INPUT_TENSORS = 256
#: The fields of a :class:`TensorSpec`: an object holding only these keys is read as one.
TENSOR_FIELDS = frozenset(TensorSpec.model_fields)
_INPUT_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")


def _entry_kind(value: Any) -> str:
    """Which form an example input takes: a list of inputs (a JSON array); a tensor (an
    object with a ``shape`` or ``value`` that holds no object, or with only
    :class:`TensorSpec` fields and no object in them, or empty); else a dict of named inputs."""
    if isinstance(value, TensorSpec):
        return TENSOR_TAG
    if isinstance(value, list | tuple):
        return LIST_TAG
    if isinstance(value, dict):
        if not value:  # {}: an input missing its shape or value, not an empty dict
            return TENSOR_TAG
        given = [value[k] for k in ("shape", "value") if k in value]
        if given and not any(_holds_object(v) for v in given):
            return TENSOR_TAG
        if set(value) <= TENSOR_FIELDS and not any(_holds_object(v) for v in value.values()):
            return TENSOR_TAG
    return DICT_TAG


def _holds_object(value: Any) -> bool:
    """Whether a JSON value is, or holds in its arrays, an object (iterative)."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict | TensorSpec):
            return True
        if isinstance(item, list | tuple):
            stack.extend(item)
    return False


#: Tags of the three forms of an input; validation errors name them in their location,
#: which :func:`~worker.spec.model.parse_spec` leaves out (no input name can take them).
TENSOR_TAG, LIST_TAG, DICT_TAG = "<tensor>", "<list>", "<dict>"
INPUT_TAGS = frozenset({TENSOR_TAG, LIST_TAG, DICT_TAG})


#: One example input: a tensor, a list of inputs (``list[Tensor]``), or a dict of named
#: inputs (``dict[str, Tensor]``), nested at most MAX_INPUT_DEPTH levels.
InputEntry = TypeAliasType(  # type: ignore[misc]
    "InputEntry",
    Annotated[
        Annotated[TensorSpec, Tag(TENSOR_TAG)]
        | Annotated[list["InputEntry"], Tag(LIST_TAG)]  # type: ignore[misc]
        | Annotated[dict[str, "InputEntry"], Tag(DICT_TAG)],  # type: ignore[misc]
        Discriminator(_entry_kind),
    ],
)


def input_tensors(entry: Any) -> list[TensorSpec]:
    """The tensors of an example input (or of a list or dict of them), in the order they are
    synthesized: list order, dict entries by sorted name."""
    if isinstance(entry, TensorSpec):
        return [entry]
    if isinstance(entry, dict):
        return [t for name in sorted(entry) for t in input_tensors(entry[name])]
    return [t for item in entry for t in input_tensors(item)]


def check_entry(entry: Any, where: str, depth: int = 0) -> None:
    """Refuse an example input nested deeper than MAX_INPUT_DEPTH, or a dict input with a
    name that is not a Python identifier.

    Raises:
        ValueError: naming where.
    """
    if isinstance(entry, TensorSpec):
        return
    if depth >= MAX_INPUT_DEPTH:
        raise ValueError(f"{where}: lists and dicts nested deeper than {MAX_INPUT_DEPTH} levels")
    if isinstance(entry, dict):
        for name in entry:
            if not _INPUT_NAME_RE.fullmatch(name):
                raise ValueError(f"{where}: input name {name!r} is not a Python identifier of at most 128 characters")
    items = sorted(entry.items()) if isinstance(entry, dict) else enumerate(entry)
    for key, item in items:
        check_entry(item, f"{where}.{key}", depth + 1)


def check_input_name(name: str) -> str:
    """A keyword input's name, checked to be a Python identifier.

    Raises:
        ValueError: it is not.
    """
    if not _INPUT_NAME_RE.fullmatch(name):
        raise ValueError(f"keyword input name {name!r} is not a Python identifier of at most 128 characters")
    return name
