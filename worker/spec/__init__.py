"""The export spec: exactly the fields of docs/contract.md, validated before sending and on
the worker.  :mod:`.model` holds the spec itself, :mod:`.inputs` its example inputs and
dynamic dimensions, :mod:`.extras` its extra-file sources, :mod:`.limits` the bounds on its
JSON."""

from .extras import ExtraBase64, ExtraSource, ExtraText, ExtraURI
from .inputs import (
    DEFAULT_INT_BOUNDS,
    DTYPES,
    INT_DTYPES,
    INT_RANGES,
    MAX_DIMS,
    MAX_INPUT_ELEMENTS,
    DimSpec,
    InputDims,
    TensorSpec,
)
from .limits import MAX_JSON_BYTES, MAX_JSON_DEPTH, MAX_TOTAL_ELEMENTS, check_depth, json_depth_exceeds
from .model import ExportSpec, Name, parse_spec

__all__ = [
    "DEFAULT_INT_BOUNDS",
    "DTYPES",
    "INT_DTYPES",
    "INT_RANGES",
    "MAX_DIMS",
    "MAX_INPUT_ELEMENTS",
    "MAX_JSON_BYTES",
    "MAX_JSON_DEPTH",
    "MAX_TOTAL_ELEMENTS",
    "DimSpec",
    "ExportSpec",
    "ExtraBase64",
    "ExtraSource",
    "ExtraText",
    "ExtraURI",
    "InputDims",
    "Name",
    "TensorSpec",
    "check_depth",
    "json_depth_exceeds",
    "parse_spec",
]
