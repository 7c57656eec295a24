""".pt2 (torch.export) exports for real: redis-server, ``celery -A worker worker``, the moto
server in its own process, and ``exportctl`` run as a user would, in fresh processes.

The worker here is this module's own, on Redis database :data:`PT2_DB` (the session's worker
consumes database 0, other modules theirs), so it is the only one serving these jobs.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.s3.client import make_s3_client
from worker.cli.demo_services import celery_worker as celery_worker_process

from .conftest import ROOT
from .services import ServiceWorld
from .services import db_url as _url
from .services import running_worker as _worker
from .services import tail as _tail
from .services import worker_env as _env

#: This module's Redis database (0-13 belong to other modules).
PT2_DB = 14
#: Seconds a CLI command, a job or a bulk run may take.
CLI_TIMEOUT = 120.0
RUN_TIMEOUT = 120.0
TINY = {"in_features": 8, "hidden": 8, "classes": 3}
LABELS = "cat\ndog\nbird\n"
#: Bytes that are not UTF-8 (0xff never is).
BINARY = b"\x00\x01\xff\xfe\x80binary\r\n"


class World(ServiceWorld):
    """The module's service: a broker database, a worker (2 processes), the S3 server."""

    bucket_prefix = "pt2"

    def exportctl(
        self, *args: str, text: bool = True, timeout: float = CLI_TIMEOUT
    ) -> subprocess.CompletedProcess[Any]:
        """``exportctl ARGS`` in a fresh process, against this module's broker and S3."""
        return subprocess.run(
            [sys.executable, "-m", "worker.cli", *args],
            env=self.env,
            cwd=ROOT,
            capture_output=True,
            text=text,
            timeout=timeout,
            check=False,
        )

    def submit(self, tmp_path: Path, spec: dict[str, Any], *flags: str) -> subprocess.CompletedProcess[str]:
        path = tmp_path / f"spec-{uuid.uuid4().hex[:8]}.json"
        path.write_text(json.dumps(spec))
        return self.exportctl("submit", str(path), *flags)

    def get(self, uri: str) -> bytes:
        bucket, _, key = uri.removeprefix("s3://").partition("/")
        return bytes(self.s3.get_object(Bucket=bucket, Key=key)["Body"].read())


@pytest.fixture(scope="module")
def world(redis_server: str, moto_process_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    broker = _url(redis_server, PT2_DB)
    log_path = tmp_path_factory.mktemp("pt2") / "worker.log"
    env = {**_env(broker, moto_process_endpoint), "COLUMNS": "300"}
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=8)
    w = World(broker, env, s3, log_path)
    w.redis.flushdb()
    with _worker(w.app, env, log_path) as proc:
        yield w
        assert proc.poll() is None, f"the worker exited:\n{w.log_tail()}"


def pt2_spec(bucket: str, name: str = "pt2-tiny", **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": name,
        "builder": "worker.examples:tiny_classifier",
        "kwargs": dict(TINY),
        "format": "pt2",
        "example_inputs": [{"shape": [4, 8], "dtype": "float32"}],
        "dynamic_shapes": [{"0": {"name": "batch", "min": 2}}],
        "extra_files": {"labels.txt": LABELS},
        "destination": f"s3://{bucket}/models",
    }
    spec.update(overrides)
    return spec


def submitted_result(proc: subprocess.CompletedProcess[str], world: World) -> dict[str, Any]:
    assert proc.returncode == 0, f"{proc.stderr}\n--- worker log ---\n{world.log_tail()}"
    assert proc.stdout.startswith("{"), proc.stdout + proc.stderr
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def error_line(proc: subprocess.CompletedProcess[str]) -> str:
    """The one ``error: ...`` line a failed command prints (no traceback)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


# -- one pt2 export, end to end ---------------------------------------------------------------


def test_pt2_export_through_the_cli_and_back(world: World, tmp_path: Path) -> None:
    bucket = world.bucket()
    result = submitted_result(world.submit(tmp_path, pt2_spec(bucket), "--wait"), world)
    uri = result["artifact_uri"]
    assert uri.startswith(f"s3://{bucket}/models/pt2-tiny/") and uri.endswith("/model.pt2"), result
    assert result["manifest_uri"] == uri.removesuffix("model.pt2") + "model.manifest.json"
    assert result["verification"]["passed"] is True, result

    # show --json: the manifest, schema 3, with the PT2 facts.
    show = world.exportctl("show", uri, "--json")
    assert show.returncode == 0, show.stderr
    manifest = json.loads(show.stdout)
    assert manifest["schema_version"] == 3
    art = manifest["artifact"]
    assert art["format"] == "pt2"
    assert art["uri"] == uri
    assert art["pt2"]["archive_version"] == 0
    assert art["pt2"]["schema_version"]["major"] >= 1
    assert manifest["spec"]["format"] == "pt2"
    assert manifest["spec"]["dynamic_shapes"] == [{"0": {"name": "batch", "min": 2, "max": None}}]
    assert manifest["verification"]["passed"] is True
    stored = world.get(uri)
    assert art["size"] == len(stored) == result["size"]
    assert art["sha256"] == hashlib.sha256(stored).hexdigest() == result["sha256"]
    # The manifest URI shows the same document.
    assert world.exportctl("show", result["manifest_uri"], "--json").stdout == show.stdout

    # verify: every step, loaded with torch.export.load.
    verify = world.exportctl("verify", uri)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    lines = verify.stdout.splitlines()
    load = [line for line in lines if line.split()[:2] == ["ok", "load"]]
    assert load and "torch.export.load" in load[0], verify.stdout
    for step in ("manifest", "signature", "compatibility", "checksum", "extra files", "self-check"):
        assert any(line.split()[:1] == ["ok"] and f" {step} " in line for line in lines), (step, verify.stdout)
    assert "skipped" not in verify.stdout  # the self-check ran on the stored inputs
    assert lines[-1] == f"verified: {uri}"

    # extra: the exact bytes, through the manifest and through the zip's directory.
    for flags in ([], ["--no-manifest"]):
        extra = world.exportctl("extra", uri, "labels.txt", *flags, text=False)
        assert extra.returncode == 0, extra.stderr
        assert extra.stdout == LABELS.encode(), flags

    # ls --json: one row, format pt2.
    ls = world.exportctl("ls", f"s3://{bucket}/models", "--json")
    assert ls.returncode == 0, ls.stderr
    (row,) = [json.loads(line) for line in ls.stdout.splitlines()]
    assert row["format"] == "pt2"
    assert row["artifact_uri"] == uri
    assert row["verified"] is True
    assert row["name"] == "pt2-tiny"

    # A consumer: torch.export.load from the bytes, run on batch sizes other than the example's.
    program = torch.export.load(io.BytesIO(stored))
    from worker.examples import tiny_classifier

    eager = tiny_classifier(**TINY).eval()
    for batch in (2, 7, 33):
        x = torch.randn(batch, 8)
        with torch.no_grad():
            got = program.module()(x)
            want = eager(x)
        assert got.shape == (batch, 3)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    # The batch dimension is one symbol, bounded below by the spec's min.
    (batch_range,) = program.range_constraints.values()
    assert batch_range.lower == 2

    assert not world.open_uploads(bucket)
    assert world.keys(bucket) == sorted(
        [uri.removeprefix(f"s3://{bucket}/"), result["manifest_uri"].removeprefix(f"s3://{bucket}/")]
    )


# -- failures leave nothing behind -----------------------------------------------------------


def test_failing_pt2_specs_leave_nothing_and_the_worker_goes_on(world: World, tmp_path: Path) -> None:
    bucket = world.bucket()
    binary_key = "assets/blob.bin"
    world.s3.put_object(Bucket=bucket, Key=binary_key, Body=BINARY)

    # A base64 extra file that is not UTF-8: refused by exportctl before anything is sent.
    bad64 = pt2_spec(bucket, "bad-base64", extra_files={"blob.bin": {"base64": base64.b64encode(BINARY).decode()}})
    refused = world.submit(tmp_path, bad64, "--wait")
    line = error_line(refused)
    assert "blob.bin" in line and "UTF-8" in line, line
    assert "submitted" not in refused.stderr, refused.stderr  # no job id: nothing was enqueued

    # An extra file fetched from S3 that is binary: fails on the worker, naming the file.
    fetched = pt2_spec(
        bucket,
        "bad-uri",
        extra_files={"labels.txt": LABELS, "weights.bin": {"uri": f"s3://{bucket}/{binary_key}"}},
    )
    line = error_line(world.submit(tmp_path, fetched, "--wait"))
    assert "export failed" in line and "weights.bin" in line and "UTF-8" in line, line

    # A dynamic dimension the model cannot have (its input features): torch.export refuses.
    specializes = pt2_spec(bucket, "bad-dim", dynamic_shapes=[{"1": {"name": "features", "min": 2}}])
    line = error_line(world.submit(tmp_path, specializes, "--wait"))
    assert "export failed" in line and "torch.export.export failed" in line, line

    # None of them left an object or an open upload under the destination.
    assert world.keys(bucket, "models/") == []
    assert world.open_uploads(bucket) == []
    assert world.keys(bucket) == [binary_key]
    # Nor a target lock that would hold up the next job of these specs.
    assert not list(world.redis.scan_iter("export-worker:bulk:target:*"))

    # The worker goes on serving: the same spec without the binary file exports.
    good = pt2_spec(bucket, "bad-uri", extra_files={"labels.txt": LABELS})
    result = submitted_result(world.submit(tmp_path, good, "--wait"), world)
    assert result["artifact_uri"].endswith("/model.pt2")
    assert result["verification"]["passed"] is True
    assert world.keys(bucket, "models/") == sorted(
        u.removeprefix(f"s3://{bucket}/") for u in (result["artifact_uri"], result["manifest_uri"])
    )
    assert world.open_uploads(bucket) == []


# -- bulk conversion of TorchScript exports to pt2 -------------------------------------------


def ts_spec(bucket: str, n: int, **overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "name": f"ts-{n:02d}",
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {**TINY, "seed": n},
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "extra_files": {"labels.txt": f"label-{n}\n"},
        "destination": f"s3://{bucket}/models",
    }
    spec.update(overrides)
    return spec


def state_keys(world: World) -> set[str]:
    """The database's keys but the broker's own bookkeeping of deliveries (``unacked``, which
    comes and goes as the last job's ack lands)."""
    names = {k.decode() if isinstance(k, bytes) else k for k in world.redis.keys("*")}
    return {k for k in names if not k.startswith("unacked")}


def test_bulk_conversion_to_pt2(world: World) -> None:
    bucket = world.bucket()
    specs = [ts_spec(bucket, n) for n in range(6)]
    specs[1]["method"] = "trace"
    del specs[4]["example_inputs"]  # cannot be converted: torch.export needs inputs
    unconvertible = specs[4]["name"]

    # The TorchScript exports, made by the worker.
    sent = [world.app.send_task("worker.tasks.export_model", args=[s], queue="cpu") for s in specs]
    results = [r.get(timeout=RUN_TIMEOUT) for r in sent]
    assert all(r["artifact_uri"].endswith("/model.pt") for r in results), results
    ts_before = world.manifests(bucket)
    assert len(ts_before) == 6
    assert {m["artifact"]["format"] for m in ts_before.values()} == {"torchscript"}
    source = f"s3://{bucket}/models"

    # Dry run: decisions only; nothing enqueued, nothing written.
    keys_before = world.keys(bucket)
    redis_before = state_keys(world)
    dry = world.exportctl("reexport", source, "--to-format", "pt2", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    decisions = [json.loads(line) for line in dry.stdout.splitlines()]
    assert len(decisions) == 6, dry.stdout
    exports = [d for d in decisions if d["action"] == "export"]
    invalid = [d for d in decisions if d["action"] == "invalid"]
    assert len(exports) == 5 and len(invalid) == 1, decisions
    assert all(d["target"].endswith("/model.pt2") for d in exports), exports
    assert len({d["target"] for d in exports}) == 5
    assert {d["name"] for d in exports} == {s["name"] for s in specs} - {unconvertible}
    assert invalid[0]["name"] == unconvertible
    assert invalid[0]["reason"].startswith("cannot convert to pt2"), invalid[0]
    assert "example_inputs" in invalid[0]["reason"]
    assert "5 would run" in dry.stderr, dry.stderr
    assert world.keys(bucket) == keys_before
    assert state_keys(world) == redis_before  # no bulk run, no job
    assert world.redis.llen("cpu") == 0

    # The run: 5 converted, the one without inputs failed; nothing half-done.
    run = world.exportctl("reexport", source, "--to-format", "pt2", "--wait", timeout=RUN_TIMEOUT)
    assert run.returncode == 1, run.stderr  # one failed
    assert run.stdout.startswith("{"), run.stderr + world.log_tail()
    report = json.loads(run.stdout)
    assert report["status"] == "finished", report
    assert report["to_format"] == "pt2"
    assert report["counts"] == {"exported": 5, "skipped": 0, "unchanged": 0, "failed": 1, "superseded": 0}, report
    (failure,) = report["failures"]
    assert failure["name"] == unconvertible
    assert "cannot convert to pt2" in failure["error"], failure

    after = world.manifests(bucket)
    # The TorchScript exports are still there, untouched.
    for key, before in ts_before.items():
        assert after[key] == before, key
        body = world.get(before["artifact"]["uri"])
        assert hashlib.sha256(body).hexdigest() == before["artifact"]["sha256"]
    pt2 = {k: m for k, m in after.items() if k not in ts_before}
    assert len(pt2) == 5
    assert {m["spec"]["name"] for m in pt2.values()} == {d["name"] for d in exports}
    assert {m["artifact"]["uri"] for m in pt2.values()} == {d["target"] for d in exports}
    for m in pt2.values():
        assert m["schema_version"] == 3 and m["artifact"]["format"] == "pt2", m
        assert m["spec"]["format"] == "pt2" and m["spec"]["method"] == "script", m["spec"]
        assert m["verification"]["passed"] is True
    # The traced one became a plain pt2 spec, next to its TorchScript export.
    traced = next(m for m in pt2.values() if m["spec"]["name"] == specs[1]["name"])
    assert traced["artifact"]["uri"].startswith(f"{source}/{specs[1]['name']}/")

    # Every pt2 export verifies, as a consumer would check it.
    with ThreadPoolExecutor(5) as pool:
        checks = list(pool.map(lambda m: world.exportctl("verify", m["artifact"]["uri"]), pt2.values()))
    for proc in checks:
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "torch.export.load" in proc.stdout
        assert proc.stdout.splitlines()[-1].startswith("verified: ")
    assert world.open_uploads(bucket) == []
    assert not [k for k in world.keys(bucket) if ".staging-" in k]

    # Once more: nothing new to export (the pt2 manifests listed now have the same targets).
    again = world.exportctl("reexport", source, "--to-format", "pt2", "--wait", timeout=RUN_TIMEOUT)
    assert again.stdout.startswith("{"), again.stderr
    second = json.loads(again.stdout)
    assert second["status"] == "finished", second
    counts = second["counts"]
    assert counts["exported"] == 0, second
    assert counts["failed"] == 1, second  # still the one without inputs
    assert counts["unchanged"] + counts["skipped"] == 10, second
    assert world.manifests(bucket) == after


# -- CUDA ------------------------------------------------------------------------------------


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device here (torch.cuda.is_available() is false)")
def test_pt2_export_on_cuda(world: World, tmp_path: Path) -> None:
    """device "cuda" goes to the gpu queue: a worker of its own serves it, on this database."""
    bucket = world.bucket()
    spec = pt2_spec(bucket, "pt2-cuda", device="cuda")
    log_path = tmp_path / "gpu-worker.log"
    node = f"pt2-gpu-{uuid.uuid4().hex[:8]}@%h"
    with celery_worker_process(world.env, queues="gpu", log_path=str(log_path), node=node, cwd=str(ROOT)) as proc:
        deadline = time.monotonic() + 60
        while not world.app.control.ping(destination=[node.replace("%h", socket.gethostname())], timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"the gpu worker did not start:\n{_tail(log_path)}")
        submit = world.submit(tmp_path, spec, "--wait")
        assert submit.returncode == 0, submit.stderr + _tail(log_path)
        result = json.loads(submit.stdout)
    assert result["artifact_uri"].endswith("/model.pt2")
    assert result["verification"]["passed"] is True

    program = torch.export.load(io.BytesIO(world.get(result["artifact_uri"])))
    weights = [t for t in program.state_dict.values() if isinstance(t, torch.Tensor)]
    assert weights and all(t.device.type == "cuda" for t in weights)
    from worker.examples import tiny_classifier

    eager = tiny_classifier(**TINY).eval()
    x = torch.randn(5, 8)
    with torch.no_grad():
        got = program.module()(x.cuda())
    assert got.device.type == "cuda"
    torch.testing.assert_close(got.cpu(), eager(x), atol=1e-4, rtol=1e-3)

    verify = world.exportctl("verify", result["artifact_uri"])
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "weights on cuda" in verify.stdout
