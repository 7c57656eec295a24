"""The safetensors layout read without trusting it (worker.weights.safetensors_format) and
the decision of whether a checkpoint fits a module (worker.weights.fit)."""

from __future__ import annotations

import json
import struct

import pytest
import torch
from torch import nn

from tests.safetensors_checkpoints import index_bytes, one_file
from worker.spec import parse_spec
from worker.weights import (
    MAX_HEADER_BYTES,
    MAX_INDEX_BYTES,
    TensorInfo,
    check_shard_name,
    fit_checkpoint,
    header_length,
    parse_header,
    parse_index,
    weights_kind,
)
from worker.weights.fit import Located, module_tensors


def split(data: bytes) -> tuple[int, bytes, int]:
    n = header_length(data[:8], len(data))
    return n, data[8 : 8 + n], len(data) - 8 - n


def test_a_real_header_is_read_as_its_tensors() -> None:
    data = one_file(
        {"a": torch.zeros(2, 3), "b": torch.zeros(4, dtype=torch.bfloat16), "c": torch.zeros((), dtype=torch.int64)}
    )
    _, header, size = split(data)
    assert parse_header(header, size) == {
        "a": TensorInfo("float32", (2, 3)),
        "b": TensorInfo("bfloat16", (4,)),
        "c": TensorInfo("int64", ()),
    }


@pytest.mark.parametrize("claimed", [MAX_HEADER_BYTES + 1, 2**63, 2**64 - 1])
def test_a_huge_header_length_is_refused_before_it_is_read(claimed: int) -> None:
    with pytest.raises(ValueError, match=rf"a header of {claimed} bytes, more than the {MAX_HEADER_BYTES}-byte limit"):
        header_length(struct.pack("<Q", claimed), 10 * MAX_HEADER_BYTES)


@pytest.mark.parametrize(("prefix", "size"), [(b"\x00" * 8, 100), (struct.pack("<Q", 200), 100), (b"abc", 3)])
def test_a_header_length_of_zero_past_the_end_or_truncated_is_refused(prefix: bytes, size: int) -> None:
    with pytest.raises(ValueError, match="not a safetensors file"):
        header_length(prefix, size)


@pytest.mark.parametrize(
    ("header", "words"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}, "__metadata__": {"k": 1}}', "__metadata__"),
        (b'{"a": {"dtype": "C64", "shape": [2], "data_offsets": [0, 8]}}', "dtype 'C64'"),
        (b'{"a": {"dtype": "F32", "shape": [-2], "data_offsets": [0, 8]}}', "shape"),
        (b'{"a": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}}', "shape"),
        (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 12]}}', "does not fit"),
        (b'{"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}', "does not fit"),  # past the data
        (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0]}}', "data_offsets"),
        (b'{"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8], "x": 1}}', "is not {dtype"),
        (b'{"": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}', "without a name"),
    ],
)
def test_an_invalid_header_is_refused_naming_why(header: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=f"(not a safetensors file|invalid safetensors header).*{words}"):
        parse_header(header, 8)


@pytest.mark.parametrize(
    "name",
    [
        "../other/x.safetensors",
        "sub/x.safetensors",
        "/x.safetensors",
        "..",
        ".",
        "",
        "a\\b.safetensors",
        "x\n.safetensors",
        "model.bin",
        ".safetensors",
        3,
        None,
    ],
)
def test_a_shard_that_is_not_a_file_in_the_index_folder_is_refused(name: object) -> None:
    with pytest.raises(ValueError, match="shard"):
        check_shard_name(name)
    with pytest.raises(ValueError, match="shard"):
        parse_index(index_bytes({"w": name}))  # type: ignore[dict-item]


def test_an_index_maps_tensors_to_shards() -> None:
    data = index_bytes({"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"})
    assert parse_index(data) == {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}


@pytest.mark.parametrize(
    ("data", "words"),
    [
        (b"not json", "not JSON"),
        (b"[]", "weight_map"),
        (b'{"weight_map": {}}', "weight_map"),
        (b'{"weight_map": ["a"]}', "weight_map"),
        (json.dumps({"weight_map": {"a": "x.safetensors"}, "pad": "x" * MAX_INDEX_BYTES}).encode(), "larger than"),
    ],
)
def test_an_invalid_index_is_refused(data: bytes, words: str) -> None:
    with pytest.raises(ValueError, match=words):
        parse_index(data)


@pytest.mark.parametrize(
    ("uri", "kind"),
    [
        ("s3://b/m/", "snapshot"),
        ("s3://b/m/model.safetensors.index.json", "index"),
        ("s3://b/m/custom.safetensors.index.json", "index"),
        ("s3://b/m/model.safetensors", "safetensors"),
        ("s3://b/m/model.pt", "pickle"),
        ("s3://b/m/pytorch_model.bin", "pickle"),
        ("s3://b/m/weights", "pickle"),
    ],
)
def test_what_weights_name_is_told_by_their_form(uri: str, kind: str) -> None:
    assert weights_kind(uri) == kind


def found(state: dict[str, torch.Tensor], shard: str = "s.safetensors") -> dict[str, Located]:
    return {
        k: Located(TensorInfo(str(v.dtype).removeprefix("torch."), tuple(v.shape)), shard) for k, v in state.items()
    }


def test_missing_unexpected_shape_and_dtype_problems_are_each_named() -> None:
    module = nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2))
    state = {
        "0.weight": torch.zeros(3, 5),  # shape
        "0.bias": torch.zeros(3, dtype=torch.int32),  # dtype, not castable
        "1.weight": torch.zeros(2, 3),
        "extra.w": torch.zeros(1),
    }
    fit = fit_checkpoint(module_tensors(module), found(state, "model-00002-of-00003.safetensors"))
    message = fit.problems(strict=True)
    assert message is not None
    assert "1 missing key (1.bias)" in message
    assert "1 unexpected key (extra.w)" in message
    assert (
        "1 shape mismatch (0.weight in model-00002-of-00003.safetensors: checkpoint [3, 5], module [3, 4])" in message
    )
    assert "1 dtype mismatch (0.bias in model-00002-of-00003.safetensors: checkpoint int32, module float32)" in message
    lax = fit.problems(strict=False)
    assert lax is not None and "missing" not in lax and "unexpected" not in lax and "shape mismatch" in lax


def test_many_missing_keys_are_counted_and_a_few_named() -> None:
    module = nn.Sequential(*[nn.Linear(2, 2) for _ in range(5)])
    message = fit_checkpoint(module_tensors(module), {}).problems(strict=True)
    assert message == "10 missing keys (0.weight, 0.bias, 1.weight, 1.bias, 2.weight, and 5 more)"


def test_floating_dtypes_are_cast_only_when_allowed() -> None:
    module = nn.Linear(2, 2)
    state = {k: v.to(torch.bfloat16) for k, v in module.state_dict().items()}
    refused = fit_checkpoint(module_tensors(module), found(state))
    assert refused.problems(strict=True) == (
        "2 dtype mismatches (weight in s.safetensors: checkpoint bfloat16, module float32, bias in s.safetensors: "
        "checkpoint bfloat16, module float32) (a dtype is never cast but between floats)"
    )
    allowed = fit_checkpoint(module_tensors(module), found(state), cast_floating=True)
    assert allowed.problems(strict=True) is None and allowed.cast == ["weight", "bias"]


def test_a_tied_key_left_out_is_not_missing() -> None:
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(5, 3)
            self.head = nn.Linear(3, 5, bias=False)
            self.head.weight = self.embed.weight

    module = Tied()
    fit = fit_checkpoint(module_tensors(module), found({"embed.weight": torch.zeros(5, 3)}))
    assert fit.problems(strict=True) is None
    assert list(fit.load) == ["embed.weight"]


@pytest.mark.parametrize(
    "weights", ["s3://bkt/snapshots/bert/", "s3://bkt/m/model.safetensors.index.json", "s3://bkt/m/model.safetensors"]
)
def test_a_spec_may_name_safetensors_and_snapshots_and_keeps_them_as_given(weights: str) -> None:
    data = {
        "name": "m",
        "builder": "worker.examples:tiny_classifier",
        "destination": "s3://bkt/out",
        "weights": weights,
    }
    spec = parse_spec(data)
    assert spec.weights == weights
    assert spec.to_json_dict()["weights"] == weights


def test_the_public_names_of_worker_weights() -> None:
    import worker.builders
    import worker.weights

    assert worker.weights.__all__ == [
        "MAX_HEADER_BYTES",
        "MAX_INDEX_BYTES",
        "MAX_SHARDS",
        "MAX_SNAPSHOT_FILES",
        "SNAPSHOT_WEIGHTS",
        "Fit",
        "TensorInfo",
        "check_shard_name",
        "fit_checkpoint",
        "header_length",
        "load_weights",
        "parse_header",
        "parse_index",
        "snapshot_files",
        "weights_kind",
    ]
    assert worker.builders.load_weights is worker.weights.load_weights  # existing callers keep their import
