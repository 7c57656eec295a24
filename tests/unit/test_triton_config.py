"""config.pbtxt generation (worker.triton.triton_config), parsed with Triton's own model-config
protobuf: what Triton's model repository would read."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from worker.triton import TritonError, target_uris, triton_config
from worker.zoo import transformers_model


def parsed(text: str) -> Any:
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def dims(entry: Any) -> list[int]:
    return list(entry.dims)


def test_a_single_input_and_output_model() -> None:
    config = parsed(triton_config("tiny", [torch.zeros(4, 16)], torch.zeros(4, 3)))
    assert config.name == "tiny" and config.platform == "pytorch_libtorch" and config.max_batch_size == 0
    [inp], [out] = config.input, config.output
    assert inp.name == "INPUT__0" and inp.data_type == model_config_pb2.TYPE_FP32 and dims(inp) == [4, 16]
    assert out.name == "OUTPUT__0" and out.data_type == model_config_pb2.TYPE_FP32 and dims(out) == [4, 3]


def test_several_inputs_and_a_tuple_of_outputs_keep_their_order_and_types() -> None:
    inputs = [
        torch.zeros(2, 8, dtype=torch.int64),
        torch.ones(2, 8, dtype=torch.bool),
        torch.zeros(2, dtype=torch.int32),
    ]
    outputs = (torch.zeros(2, 8, 5, dtype=torch.float16), torch.zeros(2, 5, dtype=torch.bfloat16))
    config = parsed(triton_config("m", inputs, outputs))
    assert [i.name for i in config.input] == ["INPUT__0", "INPUT__1", "INPUT__2"]
    assert [i.data_type for i in config.input] == [
        model_config_pb2.TYPE_INT64,
        model_config_pb2.TYPE_BOOL,
        model_config_pb2.TYPE_INT32,
    ]
    assert [o.name for o in config.output] == ["OUTPUT__0", "OUTPUT__1"]
    assert [o.data_type for o in config.output] == [model_config_pb2.TYPE_FP16, model_config_pb2.TYPE_BF16]
    assert [dims(o) for o in config.output] == [[2, 8, 5], [2, 5]]


def test_max_batch_size_takes_dimension_zero_out_of_every_entry() -> None:
    config = parsed(triton_config("m", [torch.zeros(4, 3, 8, 8)], [torch.zeros(4, 10)], max_batch_size=16))
    assert config.max_batch_size == 16
    assert dims(config.input[0]) == [3, 8, 8] and dims(config.output[0]) == [10]


def test_dynamic_dimensions_of_the_spec_are_variable() -> None:
    dynamic = [{"1": {"name": "seq", "min": 2}}, None]
    config = parsed(triton_config("m", [torch.zeros(2, 7), torch.zeros(2, 3)], torch.zeros(2), dynamic_shapes=dynamic))
    assert dims(config.input[0]) == [2, -1] and dims(config.input[1]) == [2, 3]


def test_a_scalar_output_is_one_element_reshaped_away() -> None:
    config = parsed(triton_config("m", [torch.zeros(3)], torch.tensor(1.0)))
    assert dims(config.output[0]) == [1] and list(config.output[0].reshape.shape) == []


def test_a_transformers_model_output_tuple() -> None:
    bert = {
        "model_type": "bert",
        "vocab_size": 50,
        "hidden_size": 8,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": 16,
    }
    model = transformers_model("BertModel", bert).eval()
    ids = torch.randint(0, 50, (2, 6))
    with torch.no_grad():
        config = parsed(triton_config("bert", [ids], model(ids), max_batch_size=8))
    assert config.input[0].data_type == model_config_pb2.TYPE_INT64 and dims(config.input[0]) == [6]
    assert [dims(o) for o in config.output] == [[6, 8], [8]]


@pytest.mark.parametrize(
    ("outputs", "message"),
    [
        ({"logits": torch.zeros(1)}, "returns a dict"),
        ((torch.zeros(1), (torch.zeros(1),)), "tuple of Tensor, tuple"),
        ((), r"tuple \(empty\)"),
        (None, "returns a NoneType"),
    ],
)
def test_outputs_triton_cannot_take_are_refused(outputs: Any, message: str) -> None:
    with pytest.raises(TritonError, match=message):
        triton_config("m", [torch.zeros(1)], outputs)


def test_a_dtype_without_a_triton_type_is_refused() -> None:
    with pytest.raises(TritonError, match=r"input 0 is torch\.complex64"):
        triton_config("m", [torch.zeros(2, dtype=torch.complex64)], torch.zeros(1))


def test_batching_needs_a_dimension() -> None:
    with pytest.raises(TritonError, match="output 0 has no dimensions"):
        triton_config("m", [torch.zeros(2)], torch.tensor(0.0), max_batch_size=4)


def test_no_inputs_is_refused() -> None:
    with pytest.raises(TritonError, match="no example inputs"):
        triton_config("m", [], torch.zeros(1))


def test_repository_layout() -> None:
    assert target_uris("s3://b/repo/", "m", 3) == ("s3://b/repo/m/3/model.pt", "s3://b/repo/m/config.pbtxt")
