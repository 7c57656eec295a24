"""The CONTRACT's promises about ``export_model``, through a real broker and a real worker.

Jobs go through ``export_model.delay`` to a redis-server, are run by a ``celery -A worker
worker`` process, and write to a moto server in its own process; the tests check the
stored objects with their own S3 client.  Builders come from ``tests.fixtures`` (allowed in
the worker) and ``tests.never_import`` (not allowed; importing it leaves a marker file).
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import pathlib
import platform
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import torch

from serializer.manifest.model import Manifest, manifest_uri_for
from serializer.s3.uri import parse_s3_uri
from tests.conftest import object_keys, open_uploads
from tests.fixtures import ALL_BYTES, TinyLinear, TokenSum, TwoInputs, load_archive
from tests.integration.conftest import WorkerProcess
from worker.errors import SpecError
from worker.spec import parse_spec
from worker.tasks import export_model, submit_export

#: Keys the CONTRACT promises in the task's result.
CONTRACT_RESULT_KEYS = {"artifact_uri", "manifest_uri", "sha256", "size", "spec_hash", "extra_files", "skipped"}
#: Keys the CONTRACT promises in the manifest.
CONTRACT_MANIFEST_KEYS = {
    "schema_version",
    "artifact",
    "spec",
    "spec_hash",
    "extra_files",
    "producer",
    "created_at",
    "verification",
}
RECORD = "export_worker"
JOB_TIMEOUT = 90.0

pytestmark = pytest.mark.usefixtures("celery_worker")


# -- helpers ----------------------------------------------------------------------------------


def tiny_spec(bucket: str, **fields: Any) -> dict[str, Any]:
    """A small, valid export of ``tests.fixtures:tiny_linear`` to ``bucket``."""
    return {
        "name": "tiny",
        "builder": "tests.fixtures:tiny_linear",
        "destination": f"s3://{bucket}/models",
        "example_inputs": [{"shape": [2, 4], "dtype": "float32"}],
        **fields,
    }


def run(spec: dict[str, Any], worker: WorkerProcess) -> dict[str, Any]:
    """Submit ``spec``, wait for the result; the worker's spool is empty afterwards."""
    result = export_model.delay(spec)
    value = result.get(timeout=JOB_TIMEOUT, propagate=False)
    assert result.state == "SUCCESS", f"{result.state}: {value!r}\n{worker.log_tail()}"
    assert isinstance(value, dict)
    assert list(worker.spool_dir.iterdir()) == [], "spool files were left behind"
    return value


def run_failing(spec: dict[str, Any], worker: WorkerProcess) -> BaseException:
    """Submit ``spec``, expect FAILURE; returns the exception the worker raised."""
    result = export_model.delay(spec)
    value = result.get(timeout=JOB_TIMEOUT, propagate=False)
    assert result.state == "FAILURE", f"{result.state}: {value!r}"
    assert isinstance(value, BaseException)
    assert list(worker.spool_dir.iterdir()) == [], "spool files were left behind"
    return value


def get_bytes(client: Any, uri: str) -> bytes:
    target = parse_s3_uri(uri)
    return bytes(client.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())


def head(client: Any, uri: str) -> dict[str, Any]:
    target = parse_s3_uri(uri)
    return dict(client.head_object(Bucket=target.bucket, Key=target.key))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_tensors(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True)


@dataclass
class Stored:
    """An export as a consumer finds it in S3."""

    archive: bytes
    manifest: dict[str, Any]
    module: torch.jit.ScriptModule
    extras: dict[str, bytes]

    def record(self, name: str) -> bytes:
        return self.extras[f"{RECORD}/{name}"]


def check_export(client: Any, spec: dict[str, Any], result: dict[str, Any]) -> Stored:
    """Everything the CONTRACT says about a stored export, checked against ``result``."""
    parsed = parse_spec(spec)
    assert result.keys() >= CONTRACT_RESULT_KEYS
    assert result["skipped"] is False
    assert result["spec_hash"] == parsed.spec_hash
    assert result["artifact_uri"].startswith(f"{parsed.destination}/{parsed.name}/")
    assert result["artifact_uri"].endswith("/model.pt")
    assert result["manifest_uri"] == manifest_uri_for(result["artifact_uri"])

    # The archive: size and sha256 of the bytes as stored.
    archive = get_bytes(client, result["artifact_uri"])
    assert len(archive) == result["size"] == head(client, result["artifact_uri"])["ContentLength"]
    assert sha256(archive) == result["sha256"]

    # The manifest: the CONTRACT's fields, agreeing with the archive and the spec.
    raw = get_bytes(client, result["manifest_uri"])
    manifest = json.loads(raw)
    Manifest.from_json(raw)  # validates
    assert manifest.keys() >= CONTRACT_MANIFEST_KEYS
    assert manifest["schema_version"] == 2
    artifact = manifest["artifact"]
    assert artifact["uri"] == result["artifact_uri"]
    assert artifact["size"] == len(archive)
    assert artifact["sha256"] == sha256(archive)
    assert artifact["format"] == "torchscript"
    assert manifest["spec"] == parsed.to_json_dict()
    assert manifest["spec_hash"] == parsed.spec_hash
    assert manifest["metadata"] == parsed.metadata
    producer = manifest["producer"]
    assert producer["torch"] == torch.__version__
    assert producer["python"] == platform.python_version()
    assert producer["device"] == parsed.device
    assert producer["export_worker"] and producer["host"]
    created = datetime.fromisoformat(manifest["created_at"].replace("Z", "+00:00"))
    assert created.utcoffset() == timedelta(0), "created_at is UTC"
    assert abs(datetime.now(UTC) - created) < timedelta(minutes=10)
    if parsed.should_verify:
        verification = manifest["verification"]
        assert verification["passed"] is True
        assert verification["max_abs_diff"] <= parsed.atol
        assert result["verification"] == verification
    else:
        assert manifest["verification"] is None

    # Each extra file: listed in the result, and its bytes where the manifest says.
    names = [e["name"] for e in manifest["extra_files"]]
    assert names == result["extra_files"]
    assert f"{RECORD}/build.json" in names
    module, extras = load_archive(archive, names)
    for entry in manifest["extra_files"]:
        piece = archive[entry["offset"] : entry["offset"] + entry["size"]]
        assert len(piece) == entry["size"]
        assert sha256(piece) == entry["sha256"], entry["name"]
        assert extras[entry["name"]] == piece, entry["name"]

    build = json.loads(extras[f"{RECORD}/build.json"])
    assert build["spec"] == parsed.to_json_dict()
    assert build["producer"] == producer
    return Stored(archive, manifest, module, extras)


def self_check(stored: Stored) -> tuple[list[torch.Tensor], Any]:
    """The build record lets a consumer check the archive without the model's code: the
    loaded module on the stored inputs gives the stored reference outputs."""
    inputs = load_tensors(stored.record("example_inputs.pt"))
    reference = load_tensors(stored.record("reference_outputs.pt"))
    with torch.no_grad():
        actual = stored.module(*inputs)
    assert torch.allclose(actual, reference, atol=1e-6)
    return inputs, reference


def assert_nothing_left(client: Any, bucket: str) -> None:
    assert object_keys(client, bucket) == []
    assert open_uploads(client, bucket) == []


def put(client: Any, bucket: str, key: str, data: bytes) -> str:
    client.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def state_dict_bytes(module: torch.nn.Module) -> bytes:
    buf = io.BytesIO()
    torch.save(module.state_dict(), buf)
    return buf.getvalue()


# -- exports that succeed ------------------------------------------------------------------------


def test_script_export_with_every_kind_of_extra_file(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str, assets_bucket: str
) -> None:
    remote = b"vocab\ttoken\n" + ALL_BYTES
    extra_files = {
        "notes/plain.txt": "héllo wörld\nline two\n",
        "docs/text.md": {"text": "# Title\n\nünïcödé ✓\n"},
        "bin/all-bytes.bin": {"base64": base64.b64encode(ALL_BYTES).decode()},
        "remote/vocab.bin": {"uri": put(worker_s3, assets_bucket, "assets/vocab.bin", remote)},
        "empty.txt": "",
    }
    spec = tiny_spec(dest_bucket, extra_files=extra_files, metadata={"team": "tests", "n": 1})
    result = run(spec, celery_worker)
    stored = check_export(worker_s3, spec, result)

    assert stored.extras["notes/plain.txt"] == "héllo wörld\nline two\n".encode()
    assert stored.extras["docs/text.md"] == "# Title\n\nünïcödé ✓\n".encode()
    assert stored.extras["bin/all-bytes.bin"] == ALL_BYTES
    assert stored.extras["remote/vocab.bin"] == remote
    assert stored.extras["empty.txt"] == b""
    assert set(result["extra_files"]) == {
        *extra_files,
        f"{RECORD}/build.json",
        f"{RECORD}/example_inputs.pt",
        f"{RECORD}/reference_outputs.pt",
    }

    (x,), reference = self_check(stored)
    assert x.shape == (2, 4) and x.dtype == torch.float32
    with torch.no_grad():
        assert torch.allclose(reference, TinyLinear()(x), atol=1e-6), "the reference is the eager module's output"
    keys = object_keys(worker_s3, dest_bucket)
    assert sorted(keys) == sorted(parse_s3_uri(result[k]).key for k in ("artifact_uri", "manifest_uri"))


def test_trace_export_with_float_and_bounded_integer_inputs(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    spec = {
        "name": "two-inputs",
        "builder": "tests.fixtures:two_inputs",
        "kwargs": {"features": 4, "vocab": 8},
        "method": "trace",
        "example_inputs": [
            {"shape": [3, 4], "dtype": "float32"},
            {"shape": [3, 50], "dtype": "int64", "low": 5, "high": 8},
        ],
        "destination": f"s3://{dest_bucket}/traced",
        "seed": 11,
    }
    stored = check_export(worker_s3, spec, run(spec, celery_worker))
    (x, ids), reference = self_check(stored)
    assert x.shape == (3, 4) and x.dtype == torch.float32
    assert ids.shape == (3, 50) and ids.dtype == torch.int64
    assert int(ids.min()) >= 5 and int(ids.max()) <= 7, "integer inputs lie in [low, high)"
    with torch.no_grad():
        assert torch.allclose(reference, TwoInputs(4, 8)(x, ids), atol=1e-6)
    assert stored.module.original_name == "TwoInputs"


def test_given_values_are_the_example_inputs(celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str) -> None:
    ids = [[1, 2, 3], [9, 0, 4]]
    spec = {
        "name": "token-sum",
        "builder": "tests.fixtures:token_sum",
        "kwargs": {"vocab": 10, "dim": 3},
        "example_inputs": [{"value": ids, "dtype": "int64"}],
        "destination": f"s3://{dest_bucket}/given",
    }
    stored = check_export(worker_s3, spec, run(spec, celery_worker))
    (stored_ids,), reference = self_check(stored)
    assert torch.equal(stored_ids, torch.tensor(ids, dtype=torch.int64))
    with torch.no_grad():
        assert torch.allclose(reference, TokenSum(10, 3)(stored_ids))


def test_export_without_example_inputs_is_not_verified(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    spec = tiny_spec(dest_bucket, example_inputs=None)
    del spec["example_inputs"]
    result = run(spec, celery_worker)
    stored = check_export(worker_s3, spec, result)
    assert result["verification"] is None
    assert result["extra_files"] == [f"{RECORD}/build.json"]
    with torch.no_grad():
        x = torch.randn(5, 4)
        assert torch.allclose(stored.module(x), TinyLinear()(x), atol=1e-6)


def test_weights_from_s3_are_loaded_into_the_module(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str, assets_bucket: str
) -> None:
    trained = TinyLinear(seed=7)
    weights = put(worker_s3, assets_bucket, "checkpoints/tiny.pt", state_dict_bytes(trained))
    spec = tiny_spec(dest_bucket, kwargs={"seed": 0}, weights=weights)
    stored = check_export(worker_s3, spec, run(spec, celery_worker))
    self_check(stored)
    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        out = stored.module(x)
        assert torch.allclose(out, trained(x), atol=1e-6), "outputs are those of the uploaded weights"
        assert not torch.allclose(out, TinyLinear(seed=0)(x)), "not those of the builder's own"
    assert stored.manifest["spec"]["weights"] == weights


def test_identical_resubmit_is_skipped_and_rewrites_nothing(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    spec = tiny_spec(dest_bucket, extra_files={"a.txt": "a"})
    first = run(spec, celery_worker)
    before = {uri: head(worker_s3, first[uri]) for uri in ("artifact_uri", "manifest_uri")}
    # A rewritten manifest would differ in ETag (its created_at changes) and LastModified.
    time.sleep(1.1)
    reordered = dict(reversed(list(spec.items())))
    second = run(reordered, celery_worker)
    assert second == {**first, "skipped": True}
    for uri, old in before.items():
        new = head(worker_s3, first[uri])
        assert (new["ETag"], new["LastModified"]) == (old["ETag"], old["LastModified"]), uri
    assert len(object_keys(worker_s3, dest_bucket)) == 2


# -- failures --------------------------------------------------------------------------------------


@dataclass
class Context:
    """What a failure case may set up: the worker, S3, buckets, a marker directory."""

    worker: WorkerProcess
    s3: Any
    dest: str
    assets: str
    markers: list[pathlib.Path]


class TouchOnUnpickle:
    """A pickle payload: unpickling it (without ``weights_only``) creates ``path``."""

    def __init__(self, path: pathlib.Path) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (pathlib.Path.touch, (pathlib.Path(self.path),))


def malicious_checkpoint(marker: pathlib.Path) -> bytes:
    """A ``torch.save`` zip that looks like TinyLinear's state_dict, whose pickle runs code."""
    buf = io.BytesIO()
    torch.save({"linear.weight": TouchOnUnpickle(marker), "linear.bias": torch.zeros(3)}, buf)
    return buf.getvalue()


def test_malicious_checkpoint_payload_is_live(tmp_path: pathlib.Path) -> None:
    # The control for the malicious-weights case: the payload does run when unpickled unsafely.
    marker = tmp_path / "ran"
    data = malicious_checkpoint(marker)
    with pytest.raises(Exception, match="weights_only"):
        torch.load(io.BytesIO(data), weights_only=True)
    assert not marker.exists()
    torch.load(io.BytesIO(data), weights_only=False)
    assert marker.exists()


def _not_allowed(ctx: Context) -> dict[str, Any]:
    ctx.markers.append(ctx.worker.never_import_marker)
    return tiny_spec(ctx.dest, builder="tests.never_import:build", example_inputs=None)


def _malicious_weights(ctx: Context) -> dict[str, Any]:
    marker = ctx.worker.shared_dir / f"pwned-{uuid.uuid4().hex[:8]}"
    ctx.markers.append(marker)
    weights = put(ctx.s3, ctx.assets, "evil/state_dict.pt", malicious_checkpoint(marker))
    return tiny_spec(ctx.dest, weights=weights)


def _wrong_weights(ctx: Context) -> dict[str, Any]:
    weights = put(ctx.s3, ctx.assets, "other/state_dict.pt", state_dict_bytes(TinyLinear(in_features=5)))
    return tiny_spec(ctx.dest, weights=weights)


FailureCase = tuple[Callable[[Context], dict[str, Any]], str, list[str]]

FAILURES: dict[str, FailureCase] = {
    "builder not allowed": (_not_allowed, "BuilderNotAllowed", ["tests.never_import:build", "EXPORT_ALLOWED_BUILDERS"]),
    "unscriptable module": (
        lambda ctx: tiny_spec(ctx.dest, builder="tests.fixtures:unscriptable"),
        "ScriptingFailed",
        ["torch.jit.script failed", "try blocks aren't supported"],
    ),
    "traversal in an extra-file name": (
        lambda ctx: tiny_spec(ctx.dest, extra_files={"../../etc/cron.d/evil": "x"}),
        "SpecError",
        ["extra_files", "'..'", "../../etc/cron.d/evil"],
    ),
    "unknown field": (lambda ctx: tiny_spec(ctx.dest, colour="blue"), "SpecError", ["colour", "not permitted"]),
    "missing weights object": (
        lambda ctx: tiny_spec(ctx.dest, weights=f"s3://{ctx.assets}/no/such/weights.pt"),
        "BuildFailed",
        ["weights", "no/such/weights.pt", "cannot be read"],
    ),
    "malicious pickle in weights": (_malicious_weights, "BuildFailed", ["weights_only", "evil/state_dict.pt"]),
    "weights that do not fit": (_wrong_weights, "BuildFailed", ["do not fit", "size mismatch"]),
    "missing extra-file object": (
        lambda ctx: tiny_spec(ctx.dest, extra_files={"vocab.txt": {"uri": f"s3://{ctx.assets}/nope.txt"}}),
        "SpecError",
        ["extra_files.vocab.txt", "nope.txt"],
    ),
    "builder that is not there": (
        lambda ctx: tiny_spec(ctx.dest, builder="tests.fixtures:no_such_builder"),
        "BuildFailed",
        ["tests.fixtures:no_such_builder", "cannot import"],
    ),
    "reserved build-record name": (
        lambda ctx: tiny_spec(ctx.dest, extra_files={f"{RECORD}/build.json": "{}"}),
        "SpecError",
        ["extra_files", RECORD, "reserved"],
    ),
    "inputs that do not fit the module": (
        lambda ctx: tiny_spec(ctx.dest, example_inputs=[{"shape": [2, 5]}]),
        "BuildFailed",
        ["example_inputs", "2x5 and 4x3"],
    ),
}


@pytest.mark.parametrize(("make", "error", "words"), list(FAILURES.values()), ids=list(FAILURES))
def test_failure_names_the_cause_leaves_nothing_and_the_worker_goes_on(
    celery_worker: WorkerProcess,
    worker_s3: Any,
    dest_bucket: str,
    assets_bucket: str,
    make: Callable[[Context], dict[str, Any]],
    error: str,
    words: list[str],
) -> None:
    ctx = Context(celery_worker, worker_s3, dest_bucket, assets_bucket, [])
    exc = run_failing(make(ctx), celery_worker)
    assert type(exc).__name__ == error, repr(exc)
    for word in words:
        assert word in str(exc), f"{word!r} not in {exc}"
    assert_nothing_left(worker_s3, dest_bucket)
    for marker in ctx.markers:
        assert not marker.exists(), f"{marker.name} exists: code ran in the worker that never should have"

    # The worker goes on serving.
    celery_worker.assert_alive()
    good = tiny_spec(dest_bucket)
    check_export(worker_s3, good, run(good, celery_worker))


@pytest.mark.skipif(torch.cuda.is_available(), reason="this host has CUDA; the test is for CPU-only workers")
def test_cuda_spec_forced_onto_a_cpu_worker_fails_with_device_unavailable(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    result = export_model.apply_async(args=[tiny_spec(dest_bucket, device="cuda")], queue="cpu")
    exc = result.get(timeout=JOB_TIMEOUT, propagate=False)
    assert result.state == "FAILURE"
    assert type(exc).__name__ == "DeviceUnavailable"
    assert "'cuda'" in str(exc) and "no CUDA" in str(exc)
    assert_nothing_left(worker_s3, dest_bucket)


# -- routing and progress ----------------------------------------------------------------------------


def test_cuda_spec_goes_to_the_gpu_queue(redis_client: Any, worker_s3: Any, dest_bucket: str) -> None:
    before = redis_client.llen("gpu")
    result = export_model.apply_async(args=[tiny_spec(dest_bucket, device="cuda")])
    try:
        assert redis_client.llen("gpu") == before + 1
        message = json.loads(redis_client.lindex("gpu", 0))
        assert message["headers"]["id"] == result.id
        assert message["properties"]["delivery_info"]["routing_key"] == "gpu"
        # No worker consumes the gpu queue here: the job waits there, untouched.
        time.sleep(0.5)
        assert redis_client.llen("gpu") == before + 1
        assert result.state == "PENDING"
        assert_nothing_left(worker_s3, dest_bucket)
    finally:
        redis_client.delete("gpu")


def test_submit_export_validates_before_sending_and_routes(redis_client: Any, dest_bucket: str) -> None:
    gpu_before = redis_client.llen("gpu")
    with pytest.raises(SpecError, match="colour"):
        submit_export(tiny_spec(dest_bucket, colour="blue", device="cuda"))
    assert redis_client.llen("gpu") == gpu_before, "a bad spec is refused in the caller, nothing is sent"
    result = submit_export(tiny_spec(dest_bucket, device="cuda:1"))
    try:
        assert redis_client.llen("gpu") == gpu_before + 1
        assert json.loads(redis_client.lindex("gpu", 0))["headers"]["id"] == result.id
    finally:
        redis_client.delete("gpu")


def test_cpu_spec_goes_to_the_cpu_queue(celery_worker: WorkerProcess, redis_client: Any, dest_bucket: str) -> None:
    gpu_before = redis_client.llen("gpu")
    result = run(tiny_spec(dest_bucket, device="cpu"), celery_worker)
    assert result["skipped"] is False
    assert redis_client.llen("gpu") == gpu_before


def test_progress_passes_through_every_stage(
    celery_worker: WorkerProcess, redis_client: Any, worker_s3: Any, dest_bucket: str
) -> None:
    """Every state the worker stores is also published on the task's key: subscribe first,
    then submit, and the whole sequence is seen, however fast the job."""
    from worker.celery import app

    task_id = str(uuid.uuid4())
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(app.backend.get_key_for_task(task_id))
    try:
        while pubsub.get_message(timeout=0.1) is not None:
            pass
        # About 12 MiB of parameters: a multipart upload of two parts with the default part size.
        spec = {
            "name": "blob",
            "builder": "tests.fixtures:param_blob",
            "kwargs": {"total_bytes": 12 * 1024**2, "n_params": 3},
            "example_inputs": [{"shape": [4]}],
            "destination": f"s3://{dest_bucket}/blob",
        }
        result = export_model.apply_async(args=[spec], task_id=task_id)
        seen_while_polling: list[tuple[str, Any]] = []
        deadline = time.monotonic() + JOB_TIMEOUT
        while not result.ready():
            assert time.monotonic() < deadline, "the job did not finish"
            meta = app.backend.get_task_meta(task_id)  # one read: state and info agree
            seen_while_polling.append((meta["status"], meta["result"]))
            time.sleep(0.02)
        value = result.get(timeout=1)
        states = []
        while (message := pubsub.get_message(timeout=0.5)) is not None:
            states.append(json.loads(message["data"]))
    finally:
        pubsub.close()

    assert [s["task_id"] for s in states] == [task_id] * len(states)
    statuses = [s["status"] for s in states]
    assert statuses[0] == "STARTED" and statuses[-1] == "SUCCESS"
    assert set(statuses[1:-1]) == {"PROGRESS"}
    progress = [s["result"] for s in states[1:-1]]
    assert all(p["name"] == "blob" for p in progress)
    stages = [p["stage"] for p in progress]
    collapsed = [s for i, s in enumerate(stages) if i == 0 or stages[i - 1] != s]
    assert collapsed == ["building", "scripting", "uploading", "verifying", "publishing"]
    uploading = [p for p in progress if p["stage"] == "uploading"]
    sent = [p["bytes"] for p in uploading]
    # Parts land on the upload's threads: their reports carry this task's id, in order.
    assert sent == sorted(sent) and sent[0] == 0 and 0 < sent[-1] <= value["size"], sent
    assert [p["total"] for p in uploading if p["total"] is not None][-1] == value["size"]
    after = [p["bytes"] for p in progress if p["stage"] in ("verifying", "publishing")]
    assert after == [value["size"]] * 2
    assert value == states[-1]["result"]
    for state, info in seen_while_polling:
        if state == "PROGRESS":
            assert info["stage"] in set(stages)
    assert "exception calling callback" not in celery_worker.log_tail(400), "a progress report failed"
