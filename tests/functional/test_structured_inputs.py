"""Exports of modules called with structured example inputs (by keyword, a list or a dict of
tensors) and returning dicts or a library's pytree type, in each capture method and with
``method: auto`` (in-process moto): what is stored, the manifest's capture entry, and the
consumer's self-check on the stored inputs."""

from __future__ import annotations

import base64
import io
import json
import subprocess
import sys
from typing import Any

import pytest
import torch

from serializer.archive.extras import EXAMPLE_INPUTS, EXAMPLE_INPUTS_TEXT
from serializer.consumer.extras import read_extra_file
from serializer.consumer.verify import verify_artifact
from serializer.manifest.store import read_manifest
from serializer.s3.uri import parse_s3_uri
from worker.errors import CaptureFailed
from worker.export import run_export
from worker.settings import Settings
from worker.spec import parse_spec

pytestmark = pytest.mark.usefixtures("clean_env")

#: The builders of these tests, beside the bundled examples.
SETTINGS = Settings(allowed_builders=("worker.examples", "tests.structured_models"))

IDS = {"shape": [2, 5], "dtype": "int64", "low": 0, "high": 10}
MASK = {"value": [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], "dtype": "int64"}
IMAGES = [{"shape": [3, 4, 5]}, {"shape": [3, 6, 2]}]
BATCH = {"features": {"shape": [2, 4]}, "bias": {"shape": [3]}}

#: (builder, spec fields) of each structured case.
CASES = {
    "kwargs": ("masked_encoder", {"example_inputs": [IDS], "example_kwargs": {"attention_mask": MASK}}),
    "all-kwargs": ("masked_encoder", {"example_kwargs": {"input_ids": IDS, "attention_mask": MASK}}),
    "list": ("image_list", {"example_inputs": [IMAGES]}),
    "dict": ("dict_batch", {"example_inputs": [BATCH]}),
}
#: Capture methods as (format, method): a TorchScript trace and a pt2 export.
METHODS = [("torchscript", "trace"), ("pt2", "script")]


def spec_of(bucket: str, name: str, builder: str, fmt: str, method: str, **fields: Any) -> Any:
    data = {
        "name": name,
        "builder": f"tests.structured_models:{builder}",
        "destination": f"s3://{bucket}/structured",
        "format": fmt,
        "method": method,
        **fields,
    }
    return parse_spec({k: v for k, v in data.items() if not (k == "method" and v == "script" and fmt == "pt2")})


def stored_manifest(s3: Any, result: dict[str, Any]) -> Any:
    return read_manifest(s3, result["manifest_uri"])


def record_inputs(s3: Any, result: dict[str, Any], pt2: bool) -> Any:
    """The build record's example inputs, read from the stored archive's extra file by range."""

    name = EXAMPLE_INPUTS_TEXT if pt2 else EXAMPLE_INPUTS
    raw = read_extra_file(s3, result["artifact_uri"], name)
    return torch.load(io.BytesIO(base64.b64decode(raw) if pt2 else raw), weights_only=True)


@pytest.mark.parametrize(("fmt", "method"), METHODS, ids=[f"{f}-{m}" for f, m in METHODS])
@pytest.mark.parametrize("case", list(CASES))
def test_structured_inputs_export_verify_and_self_check(s3: Any, bucket: str, case: str, fmt: str, method: str) -> None:
    builder, fields = CASES[case]
    spec = spec_of(bucket, f"{case}-{fmt}", builder, fmt, method, **fields)
    result = run_export(spec, settings=SETTINGS, client=s3)
    manifest = stored_manifest(s3, result)
    assert manifest.verification is not None and manifest.verification.passed
    record = record_inputs(s3, result, fmt == "pt2")
    assert set(record) == {"args", "kwargs"}
    assert sorted(record["kwargs"]) == sorted(fields.get("example_kwargs", {}))
    report = verify_artifact(s3, result["artifact_uri"])
    assert report.ok, [(s.name, s.detail) for s in report.steps]
    assert report.steps[-1].name == "self-check" and "max abs diff" in report.steps[-1].detail


def test_a_dict_output_is_traced_non_strict_and_the_manifest_says_so(s3: Any, bucket: str) -> None:
    builder, fields = CASES["kwargs"]
    result = run_export(
        spec_of(bucket, "dict-out", builder, "torchscript", "trace", **fields), settings=SETTINGS, client=s3
    )
    capture = stored_manifest(s3, result).capture
    assert capture is not None
    assert (capture.method, capture.strict, capture.attempts) == ("trace", False, [])
    assert stored_manifest(s3, result).schema_version == 5


def test_a_plain_export_has_no_capture_entry_and_its_old_layout(s3: Any, bucket: str) -> None:
    result = run_export(
        spec_of(bucket, "plain", "scriptable", "torchscript", "script", example_inputs=[{"shape": [2, 4]}]),
        settings=SETTINGS,
        client=s3,
    )
    manifest = stored_manifest(s3, result)
    assert manifest.capture is None and manifest.schema_version == 2
    doc = json.loads(s3.get_object(**_loc(result["manifest_uri"]))["Body"].read())
    assert "capture" not in doc
    inputs = record_inputs(s3, result, pt2=False)
    assert isinstance(inputs, list) and len(inputs) == 1  # positional tensors: a list, as before


def _loc(uri: str) -> dict[str, str]:
    target = parse_s3_uri(uri)
    return {"Bucket": target.bucket, "Key": target.key}


def test_auto_picks_script_for_a_module_that_scripts(s3: Any, bucket: str) -> None:
    spec = spec_of(bucket, "auto-script", "scriptable", "torchscript", "auto", example_inputs=[{"shape": [2, 4]}])
    capture = stored_manifest(s3, run_export(spec, settings=SETTINGS, client=s3)).capture
    assert capture is not None and capture.method == "script" and capture.attempts == []


def test_auto_picks_trace_for_a_module_that_does_not_script(s3: Any, bucket: str) -> None:
    spec = spec_of(bucket, "auto-trace", "try_except", "torchscript", "auto", example_inputs=[{"shape": [2, 4]}])
    result = run_export(spec, settings=SETTINGS, client=s3)
    capture = stored_manifest(s3, result).capture
    assert capture is not None and capture.method == "trace"
    (failed,) = capture.attempts
    assert failed.method == "script" and "torch.jit.script failed" in failed.error
    assert verify_artifact(s3, result["artifact_uri"]).ok


def test_auto_for_pt2_records_the_mode_that_passed(s3: Any, bucket: str) -> None:
    builder, fields = CASES["kwargs"]
    result = run_export(spec_of(bucket, "auto-pt2", builder, "pt2", "auto", **fields), settings=SETTINGS, client=s3)
    capture = stored_manifest(s3, result).capture
    assert capture is not None and (capture.method, capture.strict) == ("export", True)


def test_auto_fails_with_every_attempts_reason_and_leaves_nothing(s3: Any, bucket: str) -> None:
    spec = spec_of(bucket, "auto-none", "untraceable", "torchscript", "auto", example_inputs=[{"shape": [2, 4]}])
    with pytest.raises(CaptureFailed) as info:
        run_export(spec, settings=SETTINGS, client=s3)
    message = str(info.value)
    assert "script: " in message and "torch.jit.script failed" in message
    assert "trace: " in message and "torch.jit.trace failed" in message
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0


def test_a_pt2_of_a_registered_output_type_loads_in_a_process_with_only_torch(
    s3: Any, bucket: str, tmp_path: Any
) -> None:
    spec = spec_of(bucket, "pytree-out", "prediction_head", "pt2", "script", example_inputs=[{"shape": [2, 4]}])
    result = run_export(spec, settings=SETTINGS, client=s3)
    manifest = stored_manifest(s3, result)
    assert manifest.verification is not None and manifest.verification.passed
    assert manifest.capture is not None and manifest.capture.plain_outputs
    path = tmp_path / "model.pt2"
    path.write_bytes(s3.get_object(**_loc(result["artifact_uri"]))["Body"].read())
    # A fresh interpreter that never imports the module registering Prediction.
    code = (
        "import sys\n"
        "from serializer.pt2.load import load_pt2_file\n"
        "from serializer.consumer.verify import self_check\n"
        f"program, extras = load_pt2_file({str(path)!r})\n"
        "out = program.module()(__import__('torch').ones(2, 4))\n"
        "assert type(out) is dict and sorted(out) == ['logits', 'probs'], out\n"
        "passed = self_check(program.module(), extras)[0]\n"
        "assert 'tests.structured_models' not in sys.modules\n"
        "print('passed' if passed else 'differs')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == "passed"


def test_verification_fails_for_a_stored_program_naming_a_registered_type(s3: Any, bucket: str) -> None:
    from serializer.archive.info import ArchiveInfo
    from serializer.pt2.export import export_pt2
    from tests.structured_models import PredictionHead
    from worker.errors import VerificationFailed
    from worker.export.verify import verify_archive

    module = PredictionHead().eval()
    x = torch.ones(2, 4)
    program = torch.export.export(module, (x,))  # not through the worker: its outputs stay Prediction
    info: ArchiveInfo = export_pt2(program, f"s3://{bucket}/raw/model.pt2", client=s3, extra_files={})
    with pytest.raises(VerificationFailed, match=r"tests\.structured_models\.Prediction"):
        verify_archive(s3, info, (x,), module(x), atol=1e-5, rtol=1e-4)
