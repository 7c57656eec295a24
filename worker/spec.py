"""The export spec: exactly the fields of docs/contract.md, validated before sending and on the worker."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError, field_validator, model_validator

from serializer.archive.extras import decode_base64, validate_extra_name
from serializer.formats import DEFAULT_FORMAT, Format
from serializer.manifest.model import canonical_json, spec_digest
from serializer.s3.uri import parse_s3_uri

from .errors import SpecError

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
#: Largest JSON size of ``kwargs`` / ``metadata`` / inline extra files / given values, in bytes.
MAX_JSON_BYTES = 1024**2
#: Deepest nesting of JSON in a spec (kwargs, metadata, values): a deeper job is refused
#: before anything (Celery's pool, pydantic, the hash) recurses through it.
MAX_JSON_DEPTH = 32
#: Most elements of all synthesized example inputs of a spec together.
MAX_TOTAL_ELEMENTS = 64 * 1024**2
#: Extra-file sources.
Name = Annotated[str, StringConstraints(pattern=r"^[A-Za-z0-9._-]{1,128}$")]
_BUILDER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d{1,2})$")


class _Strict(BaseModel):
    # Strict types: JSON's true is not 1, "5" is not 5; no infinities or NaNs.
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True, allow_inf_nan=False)


class TensorSpec(_Strict):
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


class ExtraText(_Strict):
    text: str


class ExtraBase64(_Strict):
    base64: str


class ExtraURI(_Strict):
    uri: str

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        parse_s3_uri(v)
        return v


ExtraSource = str | ExtraText | ExtraBase64 | ExtraURI

#: Spec fields added after the first release, left out of the spec's JSON (and so of its
#: hash and keys) while they hold their default: every earlier spec keeps its hash.
_OMITTED_AT_DEFAULT = {"format": DEFAULT_FORMAT, "dynamic_shapes": None}
_DIM_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")


class DimSpec(_Strict):
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


class ExportSpec(_Strict):
    """What to export, where to: the spec of docs/contract.md, plus tolerances and a seed."""

    name: Name
    builder: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    method: Literal["script", "trace"] = "script"
    example_inputs: list[TensorSpec] | None = None
    device: str = "cpu"
    extra_files: dict[str, ExtraSource] = Field(default_factory=dict)
    destination: str
    verify: bool | None = None
    metadata: dict[str, Any] = Field(default_factory=dict)
    atol: float = Field(default=1e-5, ge=0, description="absolute tolerance of the verification")
    rtol: float = Field(default=1e-4, ge=0, description="relative tolerance of the verification")
    seed: int = Field(default=0, ge=0, lt=2**63, description="seed of synthesized example inputs")
    format: Format = Field(default=DEFAULT_FORMAT, description="archive format: torchscript or pt2 (torch.export)")
    dynamic_shapes: list[InputDims | None] | None = Field(
        default=None, description="pt2 only: per example input, its dynamic dimensions"
    )

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        # The name becomes a key segment; "." and ".." would read as path navigation.
        if v in (".", ".."):
            raise ValueError(f"name {v!r} is not allowed (it names a directory, not an export)")
        return v

    @field_validator("builder")
    @classmethod
    def _builder(cls, v: str) -> str:
        if not _BUILDER_RE.fullmatch(v):
            raise ValueError(f"builder must look like 'package.module:callable', got {v!r}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.fullmatch(v):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {v!r}")
        return v

    @field_validator("weights")
    @classmethod
    def _weights(cls, v: str | None) -> str | None:
        if v is not None:
            parse_s3_uri(v)
        return v

    @field_validator("destination")
    @classmethod
    def _destination(cls, v: str) -> str:
        parse_s3_uri(v, require_key=False)
        return v.rstrip("/")

    @field_validator("kwargs", "metadata")
    @classmethod
    def _small_json(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(canonical_json(v)) > MAX_JSON_BYTES:
            raise ValueError(f"larger than {MAX_JSON_BYTES} bytes of JSON")
        return v

    @field_validator("extra_files")
    @classmethod
    def _extras(cls, v: dict[str, ExtraSource]) -> dict[str, ExtraSource]:
        for name, source in v.items():
            validate_extra_name(name)
            if isinstance(source, ExtraBase64):
                decode_base64(name, source.base64)
        if len(canonical_json({k: _dump(s) for k, s in v.items()})) > 16 * MAX_JSON_BYTES:
            raise ValueError("inline extra files are larger than 16 MiB; store them in S3 and give a 'uri'")
        return v

    @model_validator(mode="after")
    def _needs_inputs(self) -> ExportSpec:
        if self.method == "trace" and not self.example_inputs:
            raise ValueError("method 'trace' needs example_inputs")
        if self.verify and not self.example_inputs:
            raise ValueError("verify needs example_inputs")
        total = sum(math.prod(t.shape) for t in self.example_inputs or [] if t.shape is not None)
        if total > MAX_TOTAL_ELEMENTS:
            raise ValueError(f"example_inputs hold {total} elements together, more than {MAX_TOTAL_ELEMENTS}")
        if self.format == "pt2":
            self._check_pt2()
        elif self.dynamic_shapes is not None:
            raise ValueError("dynamic_shapes apply to format 'pt2' only")
        return self

    def _check_pt2(self) -> None:
        if not self.example_inputs:
            raise ValueError("format 'pt2' needs example_inputs: torch.export.export captures the module with them")
        if self.method != "script":
            raise ValueError(
                f"method {self.method!r} applies to format 'torchscript'; format 'pt2' always captures with "
                "torch.export.export (leave method out)"
            )
        for name, source in self.extra_files.items():
            if isinstance(source, ExtraBase64):
                try:
                    decode_base64(name, source.base64).decode("utf-8")
                except UnicodeDecodeError:
                    raise ValueError(
                        f"extra_files.{name}: not UTF-8 text; a .pt2 archive carries text extra files only "
                        "(torch.export.load decodes them as UTF-8)"
                    ) from None
        if self.dynamic_shapes is None:
            return
        if len(self.dynamic_shapes) != len(self.example_inputs):
            raise ValueError(
                f"dynamic_shapes has {len(self.dynamic_shapes)} entries, example_inputs {len(self.example_inputs)}: "
                "give one per input (null for a static one)"
            )
        named: dict[str, DimSpec] = {}
        for i, (dims, tensor) in enumerate(zip(self.dynamic_shapes, self.example_inputs, strict=True)):
            shape = tensor.shape if tensor.shape is not None else _value_shape(tensor.value)
            for key, dim in (dims or {}).items():
                if not (key.isascii() and key.isdigit() and key == str(int(key))) or int(key) >= len(shape):
                    raise ValueError(
                        f"dynamic_shapes.{i}: {key!r} is not a dimension index (input {i} has {len(shape)} dimensions)"
                    )
                if isinstance(dim, DimSpec):
                    seen = named.setdefault(dim.name, dim)
                    if (seen.min, seen.max) != (dim.min, dim.max):
                        raise ValueError(f"dynamic_shapes.{i}.{key}: dimension {dim.name!r} is given other bounds")
                    size = shape[int(key)]
                    if not (dim.min or 0) <= size <= (dim.max if dim.max is not None else size):
                        raise ValueError(
                            f"dynamic_shapes.{i}.{key}: the example's size {size} is outside {dim.name!r}'s "
                            f"[{dim.min}, {dim.max}]"
                        )

    @property
    def should_verify(self) -> bool:
        """``verify``, defaulting to true where example inputs are given."""
        return bool(self.example_inputs) if self.verify is None else self.verify

    @property
    def queue(self) -> str:
        """The queue this spec runs on: ``gpu`` for CUDA devices, else ``cpu``."""
        return "gpu" if self.device.startswith("cuda") else "cpu"

    def to_json_dict(self) -> dict[str, Any]:
        """The spec as plain JSON data (what is hashed, stored and sent).  Fields added
        later are left out while at their default, so earlier specs keep their hashes."""
        data = self.model_dump(mode="json")
        if data.get("dynamic_shapes") is not None and not any(data["dynamic_shapes"]):
            data["dynamic_shapes"] = None  # no dynamic dimension at all: the same export as none
        for key, default in _OMITTED_AT_DEFAULT.items():
            if data.get(key, default) == default:
                data.pop(key, None)
        return data

    def as_format(self, target: Format) -> ExportSpec:
        """This spec for another archive format (a bulk run's ``to_format``): ``method`` goes
        back to its default for ``pt2``, and ``dynamic_shapes`` for ``torchscript``.

        Raises:
            SpecError: the spec cannot be exported in ``target`` (naming why).
        """
        if target == self.format:
            return self
        data = self.to_json_dict()
        data["format"] = target
        if target == "pt2":
            data.pop("method", None)
        else:
            data.pop("dynamic_shapes", None)
        return parse_spec(data)

    @property
    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the spec: equal specs, equal hashes."""
        return spec_digest(self.to_json_dict())


def _value_shape(value: Any) -> list[int]:
    """The shape of a nested list as torch.tensor reads it (from its first elements)."""
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        value = value[0] if value else None
    return shape


def _dump(source: ExtraSource) -> Any:
    return source if isinstance(source, str) else source.model_dump()


def parse_spec(data: Any) -> ExportSpec:
    """Validate a JSON-able dict as an :class:`ExportSpec`.

    Raises:
        SpecError: naming every field that is wrong and why.
    """
    if isinstance(data, ExportSpec):
        return data
    if not isinstance(data, dict):
        raise SpecError(f"a spec is a JSON object, got {type(data).__name__}")
    check_depth(data)
    try:
        # Validated as JSON text, strictly: a dict made in Python is held to what JSON means.
        text = json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise SpecError(f"invalid spec: not JSON data: {exc}") from None
    try:
        return ExportSpec.model_validate_json(text)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'spec'}: {err['msg']}" for err in exc.errors(include_url=False)
        )
        raise SpecError(f"invalid spec: {problems}") from None


def json_depth_exceeds(data: Any, limit: int = MAX_JSON_DEPTH) -> str | None:
    """The path of the first value nested deeper than ``limit`` levels, or None (iterative:
    deep input cannot exhaust the stack)."""
    stack: list[tuple[Any, int, str]] = [(data, 0, "spec")]
    while stack:
        value, depth, path = stack.pop()
        if isinstance(value, dict | list | tuple):
            if depth >= limit:
                return path
            items = value.items() if isinstance(value, dict) else enumerate(value)
            stack.extend((v, depth + 1, f"{path}.{k}") for k, v in items)
    return None


def check_depth(data: Any) -> None:
    """Refuse JSON nested deeper than MAX_JSON_DEPTH.

    Raises:
        SpecError: naming where.
    """
    where = json_depth_exceeds(data)
    if where is not None:
        raise SpecError(f"invalid spec: {where}: JSON nested deeper than {MAX_JSON_DEPTH} levels")
