"""An export job with the spec's ``triton`` option, on the session's real worker: the archive
copied into the Triton repository, the config parsed with Triton's own protobuf, and the
copy loadable by torch as Triton's PyTorch backend would load it."""

from __future__ import annotations

import io
from typing import Any

import torch
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from worker.tasks import export_model

from .conftest import WorkerProcess

#: Seconds a job may take.
JOB_TIMEOUT = 120.0


def read(client: Any, bucket: str, key: str) -> bytes:
    return bytes(client.get_object(Bucket=bucket, Key=key)["Body"].read())


def test_an_export_job_publishes_into_a_triton_repository(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    spec = {
        "name": "tiny",
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {"in_features": 8, "hidden": 4, "classes": 3},
        "method": "trace",
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "destination": f"s3://{dest_bucket}/models",
        "triton": {"repository": f"s3://{dest_bucket}/triton", "model_name": "classifier", "version": 1},
    }
    result = export_model.delay(spec)
    value = result.get(timeout=JOB_TIMEOUT, propagate=False)
    assert result.state == "SUCCESS", f"{result.state}: {value!r}\n{celery_worker.log_tail()}"
    assert value["triton"]["model_uri"] == f"s3://{dest_bucket}/triton/classifier/1/model.pt"
    model = read(worker_s3, dest_bucket, "triton/classifier/1/model.pt")
    assert model == read(worker_s3, dest_bucket, value["artifact_uri"].split("/", 3)[3])
    config = text_format.Parse(
        read(worker_s3, dest_bucket, "triton/classifier/config.pbtxt").decode(), model_config_pb2.ModelConfig()
    )
    assert (config.name, config.platform, config.max_batch_size) == ("classifier", "pytorch_libtorch", 0)
    assert [(i.name, list(i.dims)) for i in config.input] == [("INPUT__0", [2, 8])]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [
        ("OUTPUT__0", model_config_pb2.TYPE_FP32, [2, 3])
    ]
    loaded = torch.jit.load(io.BytesIO(model))
    assert loaded(torch.zeros(2, 8)).shape == (2, 3)
    celery_worker.assert_alive()
