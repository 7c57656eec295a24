"""Structured example inputs and capture choices without a store: the spec's forms and
bounds (and the hashes of specs that use none of them), synthesis, the build record's
layout and its reading back, output comparison by structure, the ways ``method: auto``
tries, and ``.pt2`` outputs of a registered pytree type."""

from __future__ import annotations

import io
from typing import Any

import pytest
import torch

from serializer.consumer.compare import compare_outputs
from serializer.consumer.verify import stored_inputs
from serializer.errors import ArchiveError
from serializer.pt2.pytree import foreign_types, is_plain, to_plain
from tests.structured_models import Prediction, PredictionHead
from worker.builders import ExampleInputs, example_args, example_inputs, to_exported_program, to_torchscript
from worker.errors import ScriptingFailed, SpecError, TorchExportFailed
from worker.export.capture import Built, Way, ways
from worker.export.record import recorded_inputs
from worker.spec import TensorSpec, parse_spec

BASE = {"name": "m", "builder": "tests.fixtures:tiny_linear", "destination": "s3://bucket-a/p"}

#: spec_hash of specs written before structured inputs existed: they must never change.
PINNED = [
    (
        {**BASE, "example_inputs": [{"shape": [2, 8], "dtype": "float32"}, {"value": [[1, 2]], "dtype": "int64"}]},
        "94ea6a30fdc38f4b73621933d3b3078ef50b489671ae70336715c82df366db7f",
    ),
    (
        {
            **BASE,
            "format": "pt2",
            "example_inputs": [{"shape": [2, 8]}],
            "dynamic_shapes": [{"0": {"name": "batch", "max": 64}}],
        },
        "e83fabbc72798298537d35efde95d7e4ad9dd3bf150f4dd576ad1fb1e81692f2",
    ),
    (
        {**BASE, "method": "trace", "example_inputs": [{"shape": [2, 8], "dtype": "int64", "low": 1, "high": 5}]},
        "dbd66d2f790083fb267d3f395892df7d7eab49c07fa4c655e0af271e14c1c193",
    ),
]


@pytest.mark.parametrize(("data", "digest"), PINNED)
def test_a_spec_without_the_new_fields_keeps_its_hash_and_keys(data: dict[str, Any], digest: str) -> None:
    spec = parse_spec(data)
    assert spec.spec_hash == digest
    assert "example_kwargs" not in spec.to_json_dict()


def test_inputs_take_the_forms_of_a_tensor_a_list_and_a_dict() -> None:
    spec = parse_spec(
        {
            **BASE,
            "example_inputs": [
                {"shape": [2]},
                [{"shape": [3]}, {"value": [1, 2]}],
                {"a": {"shape": [1]}, "b": [{"shape": [2]}]},
            ],
            "example_kwargs": {"attention_mask": {"shape": [2], "dtype": "bool"}},
        }
    )
    tensor, items, named = spec.example_inputs or []
    assert isinstance(tensor, TensorSpec)
    assert isinstance(items, list) and all(isinstance(t, TensorSpec) for t in items)
    assert isinstance(named, dict) and isinstance(named["b"], list)
    assert spec.structured_inputs and spec.should_verify
    again = parse_spec(spec.to_json_dict())
    assert again == spec and again.spec_hash == spec.spec_hash


def test_inputs_by_keyword_alone_are_enough_for_trace_and_pt2() -> None:
    for fields in ({"method": "trace"}, {"format": "pt2"}, {"method": "auto"}, {"format": "pt2", "method": "auto"}):
        spec = parse_spec({**BASE, **fields, "example_kwargs": {"x": {"shape": [2]}}})
        assert spec.has_inputs and not spec.example_inputs


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"example_inputs": [[[[[{"shape": [1]}]]]]]}, ["example_inputs.0", "deeper than 3"]),
        ({"example_inputs": [{"a b": {"shape": [1]}}]}, ["example_inputs.0", "'a b'"]),
        ({"example_kwargs": {"1x": {"shape": [1]}}}, ["example_kwargs", "'1x'"]),
        ({"example_inputs": [{"shape": [2], "scale": 3}]}, ["example_inputs.0.scale"]),
        ({"example_inputs": [[{"shape": [1]}] * 257]}, ["257 tensors"]),
        ({"method": "auto"}, ["'auto' needs example_inputs"]),
        ({"format": "pt2", "method": "trace", "example_inputs": [{"shape": [1]}]}, ["'auto'"]),
        (
            {"format": "pt2", "example_inputs": [[{"shape": [2]}]], "dynamic_shapes": [{"0": "auto"}]},
            ["dynamic_shapes.0", "list or dict"],
        ),
        (
            {"format": "pt2", "example_kwargs": {"x": {"shape": [2]}}, "dynamic_shapes": []},
            ["positional example_inputs only"],
        ),
    ],
)
def test_bad_structured_inputs_are_refused_naming_where(fields: dict[str, Any], words: list[str]) -> None:
    with pytest.raises(SpecError) as info:
        parse_spec({**BASE, **fields})
    message = str(info.value)
    for word in words:
        assert word in message, message
    assert "<tensor>" not in message and "<dict>" not in message


def test_synthesis_is_seeded_and_follows_sorted_names_not_key_order() -> None:
    cpu = torch.device("cpu")
    one = example_args(
        [{"b": TensorSpec(shape=[2]), "a": TensorSpec(shape=[2])}],
        {"y": TensorSpec(shape=[1]), "x": TensorSpec(shape=[1])},
        0,
        cpu,
    )
    two = example_args(
        [{"a": TensorSpec(shape=[2]), "b": TensorSpec(shape=[2])}],
        {"x": TensorSpec(shape=[1]), "y": TensorSpec(shape=[1])},
        0,
        cpu,
    )
    assert torch.equal(one.args[0]["a"], two.args[0]["a"]) and torch.equal(one.kwargs["y"], two.kwargs["y"])
    assert not torch.equal(one.args[0]["a"], one.args[0]["b"])
    # Positional tensors alone come out as they always did.
    (plain,) = example_inputs([TensorSpec(shape=[3])], 0, cpu)
    assert torch.equal(plain, torch.randn(3, generator=torch.Generator().manual_seed(0)))


def test_the_record_keeps_a_list_for_positional_tensors_and_args_kwargs_otherwise() -> None:
    x = torch.ones(2)
    plain = recorded_inputs((x,))
    assert isinstance(plain, list) and len(plain) == 1 and plain[0] is not x  # a CPU copy, as before
    structured = recorded_inputs(ExampleInputs(args=([x, x],), kwargs={"mask": x}))
    assert set(structured) == {"args", "kwargs"}
    for record, want in ((recorded_inputs((x,)), ([x], {})), (structured, ([[x, x]], {"mask": x}))):
        buf = io.BytesIO()
        torch.save(record, buf)
        args, kwargs = stored_inputs(buf.getvalue())
        assert len(args) == len(want[0]) and sorted(kwargs) == sorted(want[1])


def test_a_record_of_something_else_is_refused() -> None:
    buf = io.BytesIO()
    torch.save({"inputs": torch.ones(1)}, buf)
    with pytest.raises(ArchiveError, match="example inputs"):
        stored_inputs(buf.getvalue())


def test_outputs_compare_by_structure() -> None:
    x = torch.ones(2)
    assert compare_outputs({"a": x, "b": [x, x]}, {"b": (x, x), "a": x}, atol=0, rtol=0)[0]
    assert not compare_outputs({"a": x}, {"b": x}, atol=0, rtol=0)[0]  # same tensors, other keys
    assert not compare_outputs({"a": x, "b": x}, {"a": x}, atol=0, rtol=0)[0]
    assert not compare_outputs({"a": x}, {"a": x + 1}, atol=0, rtol=0)[0]


def test_auto_tries_script_then_trace_and_pt2_strict_then_not() -> None:
    def built(reference: Any) -> Built:
        return Built(module=torch.nn.Identity(), inputs=ExampleInputs(args=(torch.ones(1),)), reference=reference)

    ts = parse_spec({**BASE, "method": "auto", "example_inputs": [{"shape": [1]}]})
    pt2 = parse_spec({**BASE, "format": "pt2", "method": "auto", "example_inputs": [{"shape": [1]}]})
    assert ways(ts, built(torch.ones(1))) == [Way("script"), Way("trace")]
    assert ways(ts, built({"a": torch.ones(1)})) == [Way("script"), Way("trace", False)]
    assert ways(pt2, built(torch.ones(1))) == [Way("export", True), Way("export", False)]
    assert ways(parse_spec({**BASE, "format": "pt2", "example_inputs": [{"shape": [1]}]}), built(None)) == [
        Way("export")
    ]


def test_a_pt2_output_of_a_registered_type_is_refused_unless_made_plain() -> None:
    module, x = PredictionHead().eval(), torch.ones(2, 4)
    with pytest.raises(TorchExportFailed, match=r"tests\.structured_models\.Prediction"):
        to_exported_program(module, (x,))
    program = to_exported_program(module, (x,), plain_outputs=True)
    assert foreign_types(program) == []
    out = program.module()(x)
    assert type(out) is dict and torch.allclose(out["probs"], module(x).probs)


def test_to_plain_turns_library_containers_into_builtin_ones() -> None:
    x = torch.ones(1)
    value = Prediction(logits=x, probs=x)
    assert not is_plain(value) and is_plain(to_plain(value))
    assert to_plain(value) == {"logits": x, "probs": x}
    assert is_plain({"a": [x, (x,)]})


def test_trace_by_keyword_refuses_a_forward_taking_var_keywords() -> None:
    class Star(torch.nn.Module):
        def forward(self, **kwargs: torch.Tensor) -> torch.Tensor:
            return kwargs["x"] + 1

    with pytest.raises(ScriptingFailed, match=r"\*\*kwargs"):
        to_torchscript(Star(), "trace", ExampleInputs(kwargs={"x": torch.ones(1)}))
