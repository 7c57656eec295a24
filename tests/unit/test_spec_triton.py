"""The spec's ``triton`` option (worker.spec.serving): validated, and absent from the JSON unless set."""

from __future__ import annotations

from typing import Any

import pytest

from worker.errors import SpecError
from worker.spec import parse_spec

BASE: dict[str, Any] = {
    "name": "tiny",
    "builder": "worker.examples:tiny_classifier",
    "example_inputs": [{"shape": [2, 16], "dtype": "float32"}],
    "destination": "s3://bucket/models",
}
TRITON = {"repository": "s3://serving/triton/", "version": 3}


def test_a_spec_without_triton_keeps_its_json_and_hash() -> None:
    spec = parse_spec(BASE)
    assert "triton" not in spec.to_json_dict()
    assert spec.spec_hash == parse_spec({**BASE, "triton": None}).spec_hash


def test_triton_is_recorded_when_set() -> None:
    spec = parse_spec({**BASE, "triton": TRITON})
    assert spec.triton is not None and spec.triton.repository == "s3://serving/triton"
    assert spec.triton.model_name is None and spec.triton.max_batch_size == 0
    assert spec.to_json_dict()["triton"] == {
        "repository": "s3://serving/triton",
        "model_name": None,
        "version": 3,
        "max_batch_size": 0,
    }
    assert spec.spec_hash != parse_spec(BASE).spec_hash


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"format": "pt2"}, "triton applies to format 'torchscript'"),
        ({"example_inputs": None}, "triton needs example_inputs"),
        ({"triton": {**TRITON, "version": 0}}, "triton.version"),
        ({"triton": {**TRITON, "repository": "https://x/y"}}, "triton.repository"),
        ({"triton": {**TRITON, "model_name": "a/b"}}, "triton.model_name"),
        ({"triton": {**TRITON, "model_name": ".."}}, "triton.model_name"),
        ({"triton": {**TRITON, "platform": "onnx"}}, "triton.platform"),
    ],
)
def test_bad_triton_options_are_refused(overrides: dict[str, Any], message: str) -> None:
    data = {**BASE, "triton": TRITON, **overrides}
    with pytest.raises(SpecError, match=message):
        parse_spec(data)


def test_a_conversion_to_pt2_drops_triton() -> None:
    spec = parse_spec({**BASE, "triton": TRITON}).as_format("pt2")
    assert spec.format == "pt2" and spec.triton is None
