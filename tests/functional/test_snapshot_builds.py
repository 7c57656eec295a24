"""A transformers model exported from a Hugging Face snapshot in S3 (in-process moto): the
builder's config comes from the snapshot's ``config.json``, the weights from its
safetensors, and its config and tokenizer files travel into the archive as extra files."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from serializer.consumer.extras import read_extra_file
from serializer.manifest.store import read_manifest
from serializer.torchscript.load import load_artifact
from tests.fixtures import TINY_BERT
from tests.safetensors_checkpoints import sharded
from worker.errors import BuildFailed, SpecError
from worker.export import run_export
from worker.settings import Settings
from worker.spec import parse_spec
from worker.zoo import transformers_model

pytest.importorskip("transformers")

pytestmark = [
    pytest.mark.usefixtures("clean_env"),
    # What tracing a transformers model says (the worker logs it; the export's own check
    # compares the outputs); every other warning stays an error.
    pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated"),
    pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning"),
]

SETTINGS = Settings(allowed_builders=("worker.zoo:transformers_model",))
TINY = TINY_BERT
IDS = {"shape": [2, 6], "dtype": "int64", "low": 0, "high": 64}
VOCAB = b"[PAD]\n[UNK]\n[CLS]\n[SEP]\n" + b"".join(b"w%d\n" % i for i in range(60))
TOKENIZER_CONFIG = b'{"do_lower_case": true, "model_max_length": 512}'
#: A sentencepiece model is binary: a .pt2 archive cannot carry it.
SENTENCEPIECE = bytes(range(256))


def trained() -> torch.nn.Module:
    return transformers_model("BertModel", config=TINY, seed=11).eval()


@pytest.fixture()
def snapshot(s3: Any, bucket: str) -> dict[str, bytes]:
    """A snapshot as a team copies it from the hub: config, two weight shards and their
    index, tokenizer files, and a README nobody needs in the archive."""
    module = trained()
    files = {
        "config.json": module.config.to_json_string().encode(),
        "vocab.txt": VOCAB,
        "tokenizer_config.json": TOKENIZER_CONFIG,
        "tokenizer.model": SENTENCEPIECE,
        "README.md": b"# tiny bert\n",
        **sharded(module.state_dict(), 2),
    }
    for name, data in files.items():
        s3.put_object(Bucket=bucket, Key=f"hub/bert/{name}", Body=data)
    return files


def spec_of(bucket: str, fmt: str, **fields: Any) -> Any:
    return parse_spec(
        {
            "name": f"bert-{fmt}",
            "builder": "worker.zoo:transformers_model",
            "kwargs": {"class_name": "BertModel"},
            "weights": f"s3://{bucket}/hub/bert/",
            "destination": f"s3://{bucket}/exports",
            "format": fmt,
            "example_inputs": [IDS],
            **({"method": "trace"} if fmt == "torchscript" else {}),
            **fields,
        }
    )


def extra_names(s3: Any, result: dict[str, Any]) -> set[str]:
    return {e.name for e in read_manifest(s3, result["manifest_uri"]).extra_files}


def test_a_torchscript_export_takes_config_weights_and_tokenizer_from_the_snapshot(
    s3: Any, bucket: str, snapshot: dict[str, bytes]
) -> None:
    result = run_export(spec_of(bucket, "torchscript"), settings=SETTINGS, client=s3)
    manifest = read_manifest(s3, result["manifest_uri"])
    assert manifest.verification is not None and manifest.verification.passed
    names = extra_names(s3, result)
    assert {"config.json", "vocab.txt", "tokenizer_config.json", "tokenizer.model"} <= names
    assert "README.md" not in names
    for name in ("config.json", "vocab.txt", "tokenizer.model"):
        assert read_extra_file(s3, result["artifact_uri"], name) == snapshot[name]
    # The archive holds the snapshot's weights: it answers as the trained model does.
    loaded, _ = load_artifact(s3, result["artifact_uri"])
    ids = torch.randint(0, 64, (2, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = trained()(ids, return_dict=False)[0]
        torch.testing.assert_close(loaded(ids)[0], expected)


def test_a_pt2_export_carries_the_text_files_and_leaves_the_binary_one_out(
    s3: Any, bucket: str, snapshot: dict[str, bytes]
) -> None:
    result = run_export(spec_of(bucket, "pt2"), settings=SETTINGS, client=s3)
    names = extra_names(s3, result)
    assert {"config.json", "vocab.txt", "tokenizer_config.json"} <= names
    assert "tokenizer.model" not in names
    assert read_extra_file(s3, result["artifact_uri"], "vocab.txt") == VOCAB


def test_the_spec_s_own_config_and_extra_files_win(s3: Any, bucket: str, snapshot: dict[str, bytes]) -> None:
    # The snapshot's config.json is unreadable as JSON: with the spec's own config it is not parsed.
    s3.put_object(Bucket=bucket, Key="hub/bert/config.json", Body=b"not json")
    spec = spec_of(
        bucket,
        "torchscript",
        kwargs={"class_name": "BertModel", "config": TINY, "seed": 5},
        extra_files={"config.json": "the team's own", "notes.txt": "kept"},
    )
    result = run_export(spec, settings=SETTINGS, client=s3)
    assert read_extra_file(s3, result["artifact_uri"], "config.json") == b"the team's own"
    assert read_extra_file(s3, result["artifact_uri"], "vocab.txt") == VOCAB
    assert "notes.txt" in extra_names(s3, result)


def test_a_snapshot_config_that_is_not_a_json_object_fails_cleanly(
    s3: Any, bucket: str, snapshot: dict[str, bytes]
) -> None:
    s3.put_object(Bucket=bucket, Key="hub/bert/config.json", Body=json.dumps(["bert"]).encode())
    with pytest.raises(BuildFailed, match=r"config\.json .* is not a JSON object"):
        run_export(spec_of(bucket, "torchscript"), settings=SETTINGS, client=s3)
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="exports/").get("KeyCount", 0)
    assert listed == 0
    assert s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []) == []


def test_a_snapshot_file_over_the_extra_file_limit_is_refused_before_it_is_read(
    s3: Any, bucket: str, snapshot: dict[str, bytes]
) -> None:
    s3.put_object(Bucket=bucket, Key="hub/bert/tokenizer.json", Body=b"{" + b" " * 20_000 + b"}")
    settings = Settings(allowed_builders=SETTINGS.allowed_builders, max_extra_file_bytes=10_000)
    with pytest.raises(SpecError, match=r"tokenizer\.json.* 20002 bytes, over EXPORT_MAX_EXTRA_FILE_BYTES"):
        run_export(spec_of(bucket, "torchscript"), settings=settings, client=s3)
    assert s3.list_objects_v2(Bucket=bucket, Prefix="exports/").get("KeyCount", 0) == 0
