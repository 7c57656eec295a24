"""The export spec: exactly the fields of docs/contract.md, validated before sending and on the worker."""

from __future__ import annotations

import json
import math
import re
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationError, field_validator, model_validator

from serializer.archive.extras import decode_base64, validate_extra_name
from serializer.formats import DEFAULT_FORMAT, Format
from serializer.manifest.model import canonical_json, spec_digest
from serializer.s3.uri import parse_s3_uri

from ..errors import SpecError
from .base import Strict
from .extras import ExtraBase64, ExtraSource, dump_source
from .inputs import (
    INPUT_TAGS,
    MAX_INPUT_TENSORS,
    DimSpec,
    InputDims,
    InputEntry,
    TensorSpec,
    check_entry,
    check_input_name,
    input_tensors,
    value_shape,
)
from .limits import MAX_JSON_BYTES, MAX_TOTAL_ELEMENTS, check_depth
from .serving import TritonTarget, check_triton_target

#: What an export's name may hold; it is a segment of the export's keys (worker.keys).
NAME_PATTERN = r"[A-Za-z0-9._-]{1,128}"
Name = Annotated[str, StringConstraints(pattern=rf"^{NAME_PATTERN}$")]
_BUILDER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")
_DEVICE_RE = re.compile(r"^(cpu|cuda|cuda:\d{1,2})$")


#: Spec fields added after the first release, left out of the spec's JSON (and so of its
#: hash and keys) while they hold their default: every earlier spec keeps its hash.
_OMITTED_AT_DEFAULT = {"format": DEFAULT_FORMAT, "dynamic_shapes": None, "triton": None, "example_kwargs": None}
#: How a spec asks for its module to be captured: ``auto`` tries each way of its format
#: (TorchScript: script, then trace; pt2: torch.export strict, then non-strict) and keeps
#: the first that captures and verifies.
Method = Literal["script", "trace", "auto"]


class ExportSpec(Strict):
    """What to export, where to: the spec of docs/contract.md, plus tolerances and a seed."""

    name: Name
    builder: str
    kwargs: dict[str, Any] = Field(default_factory=dict)
    weights: str | None = None
    method: Method = "script"
    example_inputs: list[InputEntry] | None = None
    example_kwargs: dict[str, InputEntry] | None = Field(
        default=None, description="example inputs passed by keyword: name -> a tensor, a list or a dict of them"
    )
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
    triton: TritonTarget | None = Field(
        default=None, description="torchscript only: also publish the export into this Triton model repository"
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
        if len(canonical_json({k: dump_source(s) for k, s in v.items()})) > 16 * MAX_JSON_BYTES:
            raise ValueError("inline extra files are larger than 16 MiB; store them in S3 and give a 'uri'")
        return v

    @field_validator("example_kwargs")
    @classmethod
    def _kwarg_names(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        for name in v or {}:
            check_input_name(name)
        return v

    @model_validator(mode="after")
    def _needs_inputs(self) -> ExportSpec:
        if self.method in ("trace", "auto") and not self.has_inputs:
            raise ValueError(f"method {self.method!r} needs example_inputs (or example_kwargs)")
        if self.verify and not self.has_inputs:
            raise ValueError("verify needs example_inputs (or example_kwargs)")
        self._check_inputs()
        if self.format == "pt2":
            self._check_pt2()
        elif self.dynamic_shapes is not None:
            raise ValueError("dynamic_shapes apply to format 'pt2' only")
        if self.triton is not None and self.structured_inputs:
            raise ValueError("triton takes positional tensor inputs only: no example_kwargs, lists or dicts")
        check_triton_target(self.triton, fmt=self.format, has_inputs=bool(self.example_inputs))
        return self

    def _check_inputs(self) -> None:
        entries = [(f"example_inputs.{i}", e) for i, e in enumerate(self.example_inputs or [])]
        entries += [(f"example_kwargs.{k}", e) for k, e in (self.example_kwargs or {}).items()]
        for where, entry in entries:
            check_entry(entry, where)
        tensors = [t for _, entry in entries for t in input_tensors(entry)]
        if len(tensors) > MAX_INPUT_TENSORS:
            raise ValueError(
                f"example_inputs and example_kwargs hold {len(tensors)} tensors, more than {MAX_INPUT_TENSORS}"
            )
        total = sum(math.prod(t.shape) for t in tensors if t.shape is not None)
        if total > MAX_TOTAL_ELEMENTS:
            raise ValueError(
                f"example_inputs and example_kwargs hold {total} elements together, more than {MAX_TOTAL_ELEMENTS}"
            )

    def _check_pt2(self) -> None:
        if not self.has_inputs:
            raise ValueError(
                "format 'pt2' needs example_inputs (or example_kwargs): torch.export.export captures the module "
                "with them"
            )
        if self.method == "trace":
            raise ValueError(
                "method 'trace' applies to format 'torchscript'; format 'pt2' always captures with "
                "torch.export.export (leave method out, or 'auto' to try its strict and non-strict modes)"
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
        if self.example_kwargs:
            raise ValueError("dynamic_shapes apply to positional example_inputs only; leave out example_kwargs")
        if len(self.dynamic_shapes) != len(self.example_inputs or []):
            raise ValueError(
                f"dynamic_shapes has {len(self.dynamic_shapes)} entries, "
                f"example_inputs {len(self.example_inputs or [])}: "
                "give one per input (null for a static one)"
            )
        named: dict[str, DimSpec] = {}
        for i, (dims, tensor) in enumerate(zip(self.dynamic_shapes, self.example_inputs or [], strict=True)):
            if not isinstance(tensor, TensorSpec):
                if dims:
                    raise ValueError(f"dynamic_shapes.{i}: input {i} is a list or dict; only a tensor's are dynamic")
                continue
            shape = tensor.shape if tensor.shape is not None else value_shape(tensor.value)
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
    def has_inputs(self) -> bool:
        """Whether the spec gives example inputs (positional or by keyword)."""
        return bool(self.example_inputs) or bool(self.example_kwargs)

    @property
    def structured_inputs(self) -> bool:
        """Whether the example inputs are more than positional tensors: keyword inputs, or
        a list or dict of tensors among the positional ones."""
        return bool(self.example_kwargs) or any(not isinstance(e, TensorSpec) for e in self.example_inputs or [])

    @property
    def should_verify(self) -> bool:
        """``verify``, defaulting to true where example inputs are given."""
        return self.has_inputs if self.verify is None else self.verify

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
            if data.get("method") != "auto":  # auto means each way of the format
                data.pop("method", None)
            data.pop("triton", None)  # Triton loads TorchScript only
        else:
            data.pop("dynamic_shapes", None)
        return parse_spec(data)

    @property
    def spec_hash(self) -> str:
        """sha256 of the canonical JSON of the spec: equal specs, equal hashes."""
        return spec_digest(self.to_json_dict())


def parse_spec(data: Any) -> ExportSpec:
    """Validate a JSON-able dict as an :class:`ExportSpec`.

    Raises:
        SpecError: naming every field that is wrong and why.
    """
    if isinstance(data, ExportSpec):
        return data
    if not isinstance(data, dict):
        raise _spec_error(f"a spec is a JSON object, got {type(data).__name__}", ("spec", "not_an_object"))
    try:
        check_depth(data)
    except SpecError as exc:
        raise _spec_error(str(exc), ("spec", "too_deep")) from None
    try:
        # Validated as JSON text, strictly: a dict made in Python is held to what JSON means.
        text = json.dumps(data)
    except (TypeError, ValueError) as exc:
        raise _spec_error(f"invalid spec: not JSON data: {exc}", ("spec", "not_json")) from None
    try:
        return ExportSpec.model_validate_json(text)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        problems = "; ".join(f"{_where(err['loc'])}: {err['msg']}" for err in errors)
        kinds = [(_field_of(err["loc"]), err["type"]) for err in errors]
        raise _spec_error(f"invalid spec: {problems}", *kinds) from None


def _where(loc: tuple[int | str, ...]) -> str:
    """A validation error's location, without the tags of an input's form (``<tensor>``)."""
    return ".".join(str(p) for p in loc if p not in INPUT_TAGS) or "spec"


def _field_of(loc: tuple[int | str, ...]) -> str:
    """The spec's own field a validation error is about, or "spec" (an unknown key is data)."""
    return str(loc[0]) if loc and loc[0] in ExportSpec.model_fields else "spec"


def _spec_error(message: str, *problems: tuple[str, str]) -> SpecError:
    error = SpecError(message)
    error.problems = problems
    return error
