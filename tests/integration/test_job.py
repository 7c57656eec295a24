"""``run_export`` called directly (no Celery), against the in-process moto server: the paths
that are hard to reach through a worker (verification mismatches, the progress callback)."""

from __future__ import annotations

import io
import threading
from typing import Any

import pytest
import torch

from serializer.manifest.store import read_manifest
from serializer.torchscript.load import load_artifact
from tests.conftest import object_keys, open_uploads
from tests.fixtures import TinyLinear
from worker.errors import VerificationFailed
from worker.export import Stage, run_export, verify
from worker.settings import Settings
from worker.spec import parse_spec

MiB = 1024**2


def settings(**changes: Any) -> Settings:
    return Settings(allowed_builders=("tests.fixtures",), **changes)


def tiny(bucket: str, **fields: Any) -> Any:
    return parse_spec(
        {
            "name": "tiny",
            "builder": "tests.fixtures:tiny_linear",
            "example_inputs": [{"shape": [3, 4]}],
            "destination": f"s3://{bucket}/direct",
            **fields,
        }
    )


@pytest.fixture()
def outputs_differ(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Fault injection: the reloaded archive's outputs "differ" from the eager module's.

    A module that really behaves differently once scripted is hard to build on purpose, so
    the comparison ``run_export`` uses is replaced by one that always reports a mismatch.
    """
    calls: list[Any] = []

    def compare(expected: Any, actual: Any, *, atol: float, rtol: float) -> tuple[bool, float, float]:
        calls.append((expected, actual))
        return False, 1.0, 1.0

    monkeypatch.setattr(verify, "compare_outputs", compare)
    return calls


def test_verification_mismatch_fails_and_removes_the_artifact(s3: Any, bucket: str, outputs_differ: list[Any]) -> None:
    with pytest.raises(VerificationFailed, match=r"max abs diff 1, .*atol 1e-05"):
        run_export(tiny(bucket), settings=settings(verify_mismatch="fail"), client=s3)
    assert len(outputs_differ) == 1, "the archive was reloaded and compared"
    expected, actual = outputs_differ[0]
    assert torch.allclose(expected, actual), "the real outputs agree: only the comparison was faked"
    assert object_keys(s3, bucket) == [], "the unverified archive was deleted, no manifest written"
    assert open_uploads(s3, bucket) == []


def test_verification_mismatch_is_recorded_when_configured(s3: Any, bucket: str, outputs_differ: list[Any]) -> None:
    result = run_export(tiny(bucket), settings=settings(verify_mismatch="record"), client=s3)
    assert outputs_differ
    manifest = read_manifest(s3, result["manifest_uri"])
    assert manifest.verification is not None
    assert manifest.verification.passed is False
    assert manifest.verification.max_abs_diff == 1.0
    assert result["verification"]["passed"] is False
    assert sorted(object_keys(s3, bucket)) == sorted(
        result[k].removeprefix(f"s3://{bucket}/") for k in ("artifact_uri", "manifest_uri")
    )


def test_verification_passes_without_fault_injection(s3: Any, bucket: str) -> None:
    result = run_export(tiny(bucket), settings=settings(verify_mismatch="fail"), client=s3)
    assert result["verification"]["passed"] is True
    assert result["verification"]["max_abs_diff"] == 0.0


def test_progress_callback_sees_every_stage_in_order(s3: Any, bucket: str) -> None:
    reports: list[tuple[Stage, dict[str, Any], str]] = []

    def progress(stage: Stage, info: dict[str, Any]) -> None:
        reports.append((stage, dict(info), threading.current_thread().name))

    spec = parse_spec(
        {
            "name": "blob",
            "builder": "tests.fixtures:param_blob",
            "kwargs": {"total_bytes": 12 * MiB, "n_params": 3},
            "example_inputs": [{"shape": [4]}],
            "destination": f"s3://{bucket}/direct",
        }
    )
    result = run_export(spec, settings=settings(part_size=5 * MiB, max_in_flight=2), client=s3, progress=progress)
    stages = [stage for stage, _, _ in reports]
    collapsed = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    assert collapsed == [Stage.BUILDING, Stage.SCRIPTING, Stage.UPLOADING, Stage.VERIFYING, Stage.PUBLISHING]
    uploading = [info for stage, info, _ in reports if stage is Stage.UPLOADING]
    sent = [info["bytes"] for info in uploading]
    assert sent == sorted(sent) and sent[0] == 0 and 0 < sent[-1] <= result["size"]
    assert uploading[-1]["total"] == result["size"]
    # Parts land on the upload's threads, and their reports come from there.
    assert any(name != threading.main_thread().name for _, _, name in reports)


def test_skipped_export_reports_no_progress(s3: Any, bucket: str) -> None:
    spec = tiny(bucket, verify=False)
    first = run_export(spec, settings=settings(), client=s3)
    reports: list[Stage] = []
    again = run_export(spec, settings=settings(), client=s3, progress=lambda stage, info: reports.append(stage))
    assert again == {**first, "skipped": True}
    assert reports == []


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (this host has none)")
def test_cuda_export_reloads_on_the_cpu(s3: Any, bucket: str) -> None:
    weights = io.BytesIO()
    torch.save(TinyLinear(seed=4).state_dict(), weights)
    s3.put_object(Bucket=bucket, Key="weights/tiny.pt", Body=weights.getvalue())
    spec = tiny(bucket, device="cuda", weights=f"s3://{bucket}/weights/tiny.pt")
    result = run_export(spec, settings=settings(), client=s3)
    assert result["verification"]["passed"] is True
    manifest = read_manifest(s3, result["manifest_uri"])
    assert manifest.producer.device == "cuda"
    module, _ = load_artifact(s3, result["artifact_uri"], map_location="cpu", sha256=result["sha256"])
    assert all(p.device.type == "cpu" for p in module.parameters())
    x = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.allclose(module(x), TinyLinear(seed=4)(x), atol=1e-5)
