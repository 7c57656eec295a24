"""Publishing exports into a Triton model repository (worker.triton) against in-process moto:
the server-side copy, the generated config, versions written once, scopes, .pt2 refused."""

from __future__ import annotations

import json
from typing import Any

import pytest
from botocore.exceptions import ClientError
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from tests.conftest import object_keys
from worker.errors import ScopeError
from worker.export import run_export
from worker.settings import Settings
from worker.spec import ExportSpec, parse_spec
from worker.triton import SHA256_METADATA, TritonError, publish_to_triton

ALLOWED = ("worker.examples",)


def settings(**changes: Any) -> Settings:
    return Settings(allowed_builders=ALLOWED, **changes)


def tiny(bucket: str, **fields: Any) -> ExportSpec:
    return parse_spec(
        {
            "name": "tiny",
            "builder": "worker.examples:tiny_classifier",
            "kwargs": {"in_features": 8, "hidden": 4, "classes": 3},
            "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
            "destination": f"s3://{bucket}/models",
            **fields,
        }
    )


def get(client: Any, uri: str) -> Any:
    bucket, _, key = uri.removeprefix("s3://").partition("/")
    return client.get_object(Bucket=bucket, Key=key)


def test_an_export_with_the_triton_option_is_published(s3: Any, bucket: str) -> None:
    spec = tiny(bucket, triton={"repository": f"s3://{bucket}/triton", "version": 2, "max_batch_size": 4})
    result = run_export(spec, settings=settings(), client=s3)
    assert result["triton"] == {
        "model_uri": f"s3://{bucket}/triton/tiny/2/model.pt",
        "config_uri": f"s3://{bucket}/triton/tiny/config.pbtxt",
        "copied": True,
    }
    model = get(s3, result["triton"]["model_uri"])
    assert model["Body"].read() == get(s3, result["artifact_uri"])["Body"].read()
    assert model["Metadata"][SHA256_METADATA] == result["sha256"]
    config = text_format.Parse(
        get(s3, result["triton"]["config_uri"])["Body"].read().decode(), model_config_pb2.ModelConfig()
    )
    assert config.name == "tiny" and config.platform == "pytorch_libtorch" and config.max_batch_size == 4
    assert list(config.input[0].dims) == [8] and list(config.output[0].dims) == [3]


def test_an_export_without_the_option_has_no_triton_result(s3: Any, bucket: str) -> None:
    result = run_export(tiny(bucket), settings=settings(), client=s3)
    assert "triton" not in result
    assert not [k for k in object_keys(s3, bucket) if "triton" in k]


def test_a_job_run_again_publishes_again_without_copying(s3: Any, bucket: str) -> None:
    spec = tiny(bucket, triton={"repository": f"s3://{bucket}/triton", "model_name": "clf", "version": 1})
    run_export(spec, settings=settings(), client=s3)
    s3.delete_object(Bucket=bucket, Key="triton/clf/config.pbtxt")
    again = run_export(spec, settings=settings(), client=s3)
    assert again["skipped"] is True and again["triton"]["copied"] is False
    assert "triton/clf/config.pbtxt" in object_keys(s3, bucket)


def test_a_version_holding_another_archive_is_refused(s3: Any, bucket: str) -> None:
    first = run_export(tiny(bucket), settings=settings(), client=s3)
    other = run_export(tiny(bucket, seed=7, name="other"), settings=settings(), client=s3)
    repo = f"s3://{bucket}/triton"
    publish_to_triton(s3, first["artifact_uri"], repo, "m", 1)
    before = get(s3, f"{repo}/m/1/model.pt")["Body"].read()
    with pytest.raises(TritonError, match="already holds another archive"):
        publish_to_triton(s3, other["artifact_uri"], repo, "m", 1)
    assert get(s3, f"{repo}/m/1/model.pt")["Body"].read() == before
    publish_to_triton(s3, other["artifact_uri"], repo, "m", 2)
    assert {"triton/m/1/model.pt", "triton/m/2/model.pt", "triton/m/config.pbtxt"} <= set(object_keys(s3, bucket))


def test_a_repository_outside_the_write_scopes_is_refused_before_any_work(s3: Any, bucket: str) -> None:
    scoped = settings(write_scopes=(f"s3://{bucket}/models",), read_scopes=(f"s3://{bucket}",))
    spec = tiny(bucket, triton={"repository": f"s3://{bucket}/triton", "version": 1})
    with pytest.raises(ScopeError, match=r"triton\.repository: .* is outside EXPORT_WRITE_SCOPES"):
        run_export(spec, settings=scoped, client=s3)
    assert object_keys(s3, bucket) == []
    done = run_export(tiny(bucket), settings=scoped, client=s3)
    with pytest.raises(ScopeError, match="outside EXPORT_WRITE_SCOPES"):
        publish_to_triton(s3, done["artifact_uri"], f"s3://{bucket}/triton", "m", 1, write_scopes=scoped.write_scopes)
    assert not [k for k in object_keys(s3, bucket) if k.startswith("triton/")]


def test_a_pt2_export_is_refused(s3: Any, bucket: str) -> None:
    done = run_export(tiny(bucket, format="pt2"), settings=settings(), client=s3)
    with pytest.raises(TritonError, match="loads TorchScript only"):
        publish_to_triton(s3, done["artifact_uri"], f"s3://{bucket}/triton", "m", 1)
    assert not [k for k in object_keys(s3, bucket) if k.startswith("triton/")]


def test_an_export_without_example_inputs_is_refused(s3: Any, bucket: str) -> None:
    done = run_export(tiny(bucket, example_inputs=None), settings=settings(), client=s3)
    with pytest.raises(TritonError, match="no example inputs and reference outputs"):
        publish_to_triton(s3, done["artifact_uri"], f"s3://{bucket}/triton", "m", 1)


class FailingConfigWrites:
    """The store's client, except that every PutObject fails (after the copy went through)."""

    def __init__(self, client: Any) -> None:
        self._client = client

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    def put_object(self, **kwargs: Any) -> Any:
        raise ClientError({"Error": {"Code": "InternalError", "Message": "injected"}}, "PutObject")


def test_a_config_that_cannot_be_written_takes_the_copy_back(s3: Any, bucket: str) -> None:
    done = run_export(tiny(bucket), settings=settings(), client=s3)
    with pytest.raises(ClientError, match="injected"):
        publish_to_triton(FailingConfigWrites(s3), done["artifact_uri"], f"s3://{bucket}/triton", "m", 1)
    assert not [k for k in object_keys(s3, bucket) if k.startswith("triton/")]


def test_exportctl_triton_publishes_and_refuses_with_one_line(
    s3: Any, bucket: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main

    done = run_export(tiny(bucket), settings=settings(), client=s3)
    pt2 = run_export(tiny(bucket, format="pt2"), settings=settings(), client=s3)
    monkeypatch.setenv("EXPORT_WRITE_SCOPES", f"s3://{bucket}/triton")
    repo = f"s3://{bucket}/triton"
    assert main(["triton", done["artifact_uri"], "--repository", repo, "--model", "m", "--version", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == {"config_uri": f"{repo}/m/config.pbtxt", "copied": True, "model_uri": f"{repo}/m/5/model.pt"}
    assert main(["triton", pt2["artifact_uri"], "--repository", repo, "--model", "p", "--version", "1"]) == 1
    assert "loads TorchScript only" in capsys.readouterr().err
    outside = f"s3://{bucket}/elsewhere"
    assert main(["triton", done["manifest_uri"], "--repository", outside, "--model", "m", "--version", "1"]) == 1
    assert "outside EXPORT_WRITE_SCOPES" in capsys.readouterr().err
    assert not [k for k in object_keys(s3, bucket) if k.startswith(("triton/p/", "elsewhere/"))]
