"""Weights from S3 (worker.weights.load_weights) against the in-process store: safetensors
as one file, an index and its shards, a snapshot prefix; refusals named; every derived
object inside the read scopes or never read."""

from __future__ import annotations

import io
import pathlib
import re
import struct
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from torch import nn

from tests.safetensors_checkpoints import INDEX, index_bytes, one_file, sharded
from worker.errors import BuildFailed, ScopeError
from worker.examples import TinyClassifier
from worker.weights import load_weights, snapshot_files

UNSCOPED = ("*",)


def trained(seed: int = 7) -> TinyClassifier:
    torch.manual_seed(seed)
    return TinyClassifier(8, 6, 3)


def fresh() -> TinyClassifier:
    torch.manual_seed(0)
    return TinyClassifier(8, 6, 3)


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def put_all(s3: Any, bucket: str, folder: str, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"{folder}/{name}", Body=data)


@pytest.fixture()
def reads(s3: Any) -> Iterator[list[str]]:
    """The keys of every GetObject and HeadObject the client sends, in order."""
    seen: list[str] = []

    def record(params: dict[str, Any], **_: Any) -> None:
        seen.append(params["Key"])

    s3.meta.events.register("provide-client-params.s3.GetObject", record)
    s3.meta.events.register("provide-client-params.s3.HeadObject", record)
    yield seen
    s3.meta.events.unregister("provide-client-params.s3.GetObject", record)
    s3.meta.events.unregister("provide-client-params.s3.HeadObject", record)


def test_one_safetensors_file_is_loaded(s3: Any, bucket: str, tmp_path: pathlib.Path) -> None:
    source = trained()
    s3.put_object(Bucket=bucket, Key="m/model.safetensors", Body=one_file(source.state_dict()))
    module = fresh()
    assert not same_weights(module, source)
    load_weights(module, s3, f"s3://{bucket}/m/model.safetensors", str(tmp_path), read_scopes=UNSCOPED)
    assert same_weights(module, source)
    assert list(tmp_path.iterdir()) == [], "the shard was left in the spool"


def test_an_index_and_three_shards_are_loaded_shard_by_shard(
    s3: Any, bucket: str, tmp_path: pathlib.Path, reads: list[str]
) -> None:
    source = trained()
    files = sharded(source.state_dict(), 3)
    put_all(s3, bucket, "ckpt", files)
    module = fresh()
    load_weights(module, s3, f"s3://{bucket}/ckpt/{INDEX}", str(tmp_path), read_scopes=UNSCOPED)
    assert same_weights(module, source)
    assert list(tmp_path.iterdir()) == []
    shards = sorted(n for n in files if n != INDEX)
    assert len(shards) == 3
    assert {k.removeprefix("ckpt/") for k in reads} == {INDEX, *shards}


def test_a_snapshot_prefix_loads_its_index_and_ignores_the_rest(s3: Any, bucket: str) -> None:
    source = trained()
    put_all(s3, bucket, "snap", {**sharded(source.state_dict(), 2), "config.json": b"{}", "tokenizer.json": b"{}"})
    # A single-file checkpoint beside the index is not what a snapshot's index names: the index wins.
    s3.put_object(Bucket=bucket, Key="snap/model.safetensors", Body=b"not read")
    module = fresh()
    load_weights(module, s3, f"s3://{bucket}/snap/", read_scopes=UNSCOPED)
    assert same_weights(module, source)
    assert set(snapshot_files(s3, f"s3://{bucket}/snap/", read_scopes=UNSCOPED)) == {
        INDEX,
        "model-00001-of-00002.safetensors",
        "model-00002-of-00002.safetensors",
        "model.safetensors",
        "config.json",
        "tokenizer.json",
    }


def test_a_snapshot_with_a_single_file_or_a_pickle_is_loaded(s3: Any, bucket: str) -> None:
    source = trained()
    s3.put_object(Bucket=bucket, Key="one/model.safetensors", Body=one_file(source.state_dict()))
    buf = io.BytesIO()
    torch.save(source.state_dict(), buf)
    s3.put_object(Bucket=bucket, Key="old/pytorch_model.bin", Body=buf.getvalue())
    for prefix in ("one", "old"):
        module = fresh()
        load_weights(module, s3, f"s3://{bucket}/{prefix}/", read_scopes=UNSCOPED)
        assert same_weights(module, source), prefix


def test_a_snapshot_without_weights_names_what_it_holds(s3: Any, bucket: str) -> None:
    put_all(s3, bucket, "cfg", {"config.json": b"{}", "tf_model.h5": b"x"})
    with pytest.raises(
        BuildFailed, match=r"holds no model.safetensors.index.json, .*\(found: config.json, tf_model.h5\)"
    ):
        load_weights(fresh(), s3, f"s3://{bucket}/cfg/", read_scopes=UNSCOPED)


def test_missing_unexpected_and_mismatched_keys_are_named_before_any_shard_is_downloaded(
    s3: Any, bucket: str, reads: list[str]
) -> None:
    state = trained().state_dict()
    state.pop("body.2.bias")
    state["body.0.weight"] = torch.zeros(6, 9)
    state["body.0.bias"] = state["body.0.bias"].to(torch.float16)
    state["head.weight"] = torch.zeros(2)
    put_all(s3, bucket, "bad", sharded(state, 2))
    uri = f"s3://{bucket}/bad/{INDEX}"
    with pytest.raises(BuildFailed) as caught:
        load_weights(fresh(), s3, uri, read_scopes=UNSCOPED)
    message = str(caught.value)
    assert message.startswith(f"weights {uri} do not fit the module: ")
    assert "1 missing key (body.2.bias)" in message
    assert "1 unexpected key (head.weight)" in message
    assert "body.0.weight in model-00001-of-00002.safetensors: checkpoint [6, 9], module [6, 8]" in message
    assert "body.0.bias in model-00001-of-00002.safetensors: checkpoint float16, module float32" in message
    assert all(reads.count(r) == 2 for r in reads if r.endswith(".safetensors")), "a shard was downloaded"


def test_floating_weights_of_another_dtype_are_cast_only_when_allowed(s3: Any, bucket: str) -> None:
    source = trained()
    half = {k: v.to(torch.bfloat16) for k, v in source.state_dict().items()}
    s3.put_object(Bucket=bucket, Key="bf16/model.safetensors", Body=one_file(half))
    uri = f"s3://{bucket}/bf16/model.safetensors"
    with pytest.raises(BuildFailed, match="4 dtype mismatches"):
        load_weights(fresh(), s3, uri, read_scopes=UNSCOPED)
    module = fresh()
    load_weights(module, s3, uri, read_scopes=UNSCOPED, cast_floating=True)
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert torch.equal(module.body[0].weight, half["body.0.weight"].float())


def test_not_strict_loads_what_fits_and_leaves_the_rest(s3: Any, bucket: str) -> None:
    source = trained()
    state = {k: v for k, v in source.state_dict().items() if k.startswith("body.0.")} | {"other": torch.ones(1)}
    s3.put_object(Bucket=bucket, Key="part/model.safetensors", Body=one_file(state))
    module = fresh()
    before = module.body[2].weight.clone()
    load_weights(module, s3, f"s3://{bucket}/part/model.safetensors", strict=False, read_scopes=UNSCOPED)
    assert torch.equal(module.body[0].weight, source.body[0].weight)
    assert torch.equal(module.body[2].weight, before)


def test_a_shard_outside_the_read_scopes_is_never_read(s3: Any, bucket: str, reads: list[str]) -> None:
    put_all(s3, bucket, "team", sharded(trained().state_dict(), 3))
    uri = f"s3://{bucket}/team/{INDEX}"
    with pytest.raises(ScopeError, match=rf"weights: s3://{bucket}/team/model-00001-of-00003.safetensors is outside"):
        load_weights(fresh(), s3, uri, read_scopes=(uri,))  # the index alone is in scope
    assert reads == [f"team/{INDEX}"]


def test_the_deployment_scopes_apply_when_none_are_given(
    s3: Any, bucket: str, reads: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    put_all(s3, bucket, "team", sharded(trained().state_dict(), 2))
    uri = f"s3://{bucket}/team/{INDEX}"
    monkeypatch.setenv("EXPORT_READ_SCOPES", uri)
    with pytest.raises(ScopeError, match="is outside EXPORT_READ_SCOPES"):
        load_weights(fresh(), s3, uri)
    assert reads == [f"team/{INDEX}"]


def test_a_snapshot_whose_weights_lie_outside_the_scopes_is_not_read(s3: Any, bucket: str, reads: list[str]) -> None:
    s3.put_object(Bucket=bucket, Key="snap/model.safetensors", Body=one_file(trained().state_dict()))
    with pytest.raises(ScopeError, match="is outside"):
        load_weights(fresh(), s3, f"s3://{bucket}/snap/", read_scopes=(f"s3://{bucket}/snap/config.json",))
    assert reads == []


@pytest.mark.parametrize("shard", ["../other/x.safetensors", "sub/x.safetensors", "..", "x.bin"])
def test_an_index_pointing_outside_its_folder_is_refused_and_nothing_else_read(
    s3: Any, bucket: str, reads: list[str], shard: str
) -> None:
    s3.put_object(Bucket=bucket, Key="other/x.safetensors", Body=one_file(trained().state_dict()))
    s3.put_object(Bucket=bucket, Key=f"evil/{INDEX}", Body=index_bytes({"body.0.weight": shard}))
    with pytest.raises(BuildFailed, match=rf"shard {re.escape(repr(shard))} is not a"):
        load_weights(fresh(), s3, f"s3://{bucket}/evil/{INDEX}", read_scopes=UNSCOPED)
    assert reads == [f"evil/{INDEX}"]


def test_a_huge_header_is_refused_after_reading_8_bytes(s3: Any, bucket: str, reads: list[str]) -> None:
    s3.put_object(Bucket=bucket, Key="huge/model.safetensors", Body=struct.pack("<Q", 2**40) + b"{}" * 100)
    with pytest.raises(BuildFailed, match="a header of 1099511627776 bytes, more than the 16777216-byte limit"):
        load_weights(fresh(), s3, f"s3://{bucket}/huge/model.safetensors", read_scopes=UNSCOPED)
    assert reads == ["huge/model.safetensors"]


def test_an_index_and_its_shard_that_disagree_are_refused(s3: Any, bucket: str) -> None:
    files = sharded(trained().state_dict(), 2)
    weight_map = dict.fromkeys(trained().state_dict(), "model-00001-of-00002.safetensors")
    files[INDEX] = index_bytes(weight_map)
    put_all(s3, bucket, "odd", files)
    with pytest.raises(BuildFailed, match=r"the index and shard model-00001-of-00002\.safetensors disagree"):
        load_weights(fresh(), s3, f"s3://{bucket}/odd/{INDEX}", read_scopes=UNSCOPED)


@pytest.mark.parametrize("missing", [INDEX, "model-00002-of-00002.safetensors", "model.safetensors"])
def test_a_missing_object_cannot_be_read_with_one_message(s3: Any, bucket: str, missing: str) -> None:
    files = sharded(trained().state_dict(), 2)
    files.pop(missing, None)
    put_all(s3, bucket, "gone", files)
    weights = INDEX if missing != "model.safetensors" else missing
    with pytest.raises(BuildFailed, match=rf"^weights s3://{bucket}/gone/{re.escape(missing)} cannot be read$"):
        load_weights(fresh(), s3, f"s3://{bucket}/gone/{weights}", read_scopes=UNSCOPED)


def test_a_missing_bucket_cannot_be_read(s3: Any) -> None:
    with pytest.raises(BuildFailed, match=r"^weights s3://no-such-bucket-x/w/ cannot be read$"):
        load_weights(fresh(), s3, "s3://no-such-bucket-x/w/", read_scopes=UNSCOPED)
