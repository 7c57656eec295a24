"""The public names of the worker's packages that other code builds on."""

from __future__ import annotations

import worker.export
import worker.spec

EXPORT = [
    "CONFLICT_WAIT",
    "MAX_EXTRA_FILE_BYTES",
    "MAX_SINGLE_COPY",
    "Action",
    "Progress",
    "Stage",
    "build_record",
    "plan_export",
    "resolve_extra_files",
    "result_of",
    "run_export",
    "verify_archive",
]
SPEC = [
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


def test_export_package_names_are_pinned() -> None:
    assert worker.export.__all__ == EXPORT
    assert all(hasattr(worker.export, name) for name in EXPORT)


def test_spec_package_names_are_pinned() -> None:
    assert worker.spec.__all__ == SPEC
    assert all(hasattr(worker.spec, name) for name in SPEC)
