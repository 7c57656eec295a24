"""A real worker exports a module whose weights are a sharded safetensors checkpoint in the
moto server."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from tests.integration.conftest import WorkerProcess
from tests.integration.hostile import check_failed, send
from tests.integration.test_worker import check_export, run
from tests.safetensors_checkpoints import INDEX, sharded
from worker.examples import TinyClassifier

pytestmark = pytest.mark.usefixtures("celery_worker")


def spec(dest_bucket: str, weights: str) -> dict[str, Any]:
    return {
        "name": "sharded",
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {"in_features": 8, "hidden": 6, "classes": 3},
        "weights": weights,
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "destination": f"s3://{dest_bucket}/models",
    }


def test_an_export_loads_sharded_safetensors_weights(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str, assets_bucket: str
) -> None:
    torch.manual_seed(11)
    trained = TinyClassifier(8, 6, 3)
    for name, data in sharded(trained.state_dict(), 3).items():
        worker_s3.put_object(Bucket=assets_bucket, Key=f"snapshots/tiny/{name}", Body=data)
    worker_s3.put_object(Bucket=assets_bucket, Key="snapshots/tiny/config.json", Body=b"{}")
    data = spec(dest_bucket, f"s3://{assets_bucket}/snapshots/tiny/")
    stored = check_export(worker_s3, data, run(data, celery_worker))
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert torch.allclose(stored.module(x), trained(x), atol=1e-6), "outputs are those of the stored weights"
    assert stored.manifest["spec"]["weights"] == f"s3://{assets_bucket}/snapshots/tiny/"


def test_a_sharded_checkpoint_that_does_not_fit_fails_naming_the_keys(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str, assets_bucket: str
) -> None:
    state = TinyClassifier(8, 6, 3).state_dict()
    state.pop("body.2.bias")
    for name, body in sharded(state, 2).items():
        worker_s3.put_object(Bucket=assets_bucket, Key=f"short/{name}", Body=body)
    weights = f"s3://{assets_bucket}/short/{INDEX}"
    state_name, value = send(spec(dest_bucket, weights))
    check_failed(
        state_name, value, "BuildFailed", r"do not fit the module: 1 missing key \(body\.2\.bias\)", celery_worker
    )
