"""Bulk runs over selections that hold planted or unparseable objects, for real: redis-server,
a worker, the moto server behind a counting proxy (tests/faultproxy.py at rate 0).

On the code before these checks, one JSON object planted under a scheduled prefix made the
run export whatever spec it named (any builder, any destination), one deeply nested
manifest or a key with a control character stopped the whole run ("planning failed"), and
a catalog could be any file on the worker's disk.  Here each is counted as a failure with
its reason, nothing reaches the foreign bucket, and the other exports are done.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serializer.manifest.model import MANIFEST_SUFFIX
from serializer.s3.client import make_s3_client
from tests.faultproxy import ProxyHandle, fault_proxy
from worker.keys import export_keys
from worker.spec import parse_spec

from .services import client_app, db_url, running_worker, tail, worker_env

#: This module's Redis database.
TRUST_DB = 2
#: Seconds for one bulk run.
RUN_TIMEOUT = 180.0
TINY = {"in_features": 8, "hidden": 8, "classes": 3}
#: Stands for a private file's text: it must never reach a report.
SECRET = "hunter2-private-text"


@dataclass
class World:
    proxy: ProxyHandle
    app: Any
    s3: Any
    proc: Any
    log_path: Path
    catalogs: Path
    private: Path

    def bucket(self) -> str:
        name = f"trust-{uuid.uuid4().hex[:10]}"
        self.s3.create_bucket(Bucket=name)
        return name

    def run(self, source: str, **kwargs: Any) -> tuple[str, Any]:
        result = self.app.send_task("worker.tasks.reexport", args=[source], kwargs=kwargs, queue="cpu")
        value = result.get(timeout=RUN_TIMEOUT, propagate=False, interval=0.2)
        return result.state, value

    def keys(self, bucket: str) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", []))

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the worker exited:\n{tail(self.log_path)}"
        assert self.app.control.ping(timeout=2.0), "the worker does not answer a ping"


@pytest.fixture(scope="module")
def world(redis_server: str, moto_process_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    import redis

    broker = db_url(redis_server, TRUST_DB)
    base = tmp_path_factory.mktemp("trust")
    catalogs, private = base / "catalogs", base / "private"
    catalogs.mkdir()
    private.mkdir()
    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.close()
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=4)
    with fault_proxy(moto_process_endpoint, rate=0.0) as proxy:
        env = worker_env(broker, proxy.url, EXPORT_CATALOG_DIR=str(catalogs))
        app = client_app(broker)
        log_path = base / "worker.log"
        with running_worker(app, env, log_path, concurrency=2) as proc:
            yield World(proxy, app, s3, proc, log_path, catalogs, private)


def spec(bucket: str, n: int, **changes: Any) -> dict[str, Any]:
    data = {
        "name": f"model-{n}",
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {**TINY, "seed": n},
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
    }
    data.update(changes)
    return data


def populate(world: World, bucket: str, count: int) -> list[str]:
    """``count`` exports under ``s3://bucket/models``, made by a bulk run; their manifests."""
    world.s3.put_object(
        Bucket=bucket, Key="seed.jsonl", Body="\n".join(json.dumps(spec(bucket, n)) for n in range(count)).encode()
    )
    state, report = world.run(f"s3://{bucket}/seed.jsonl", policy="missing")
    assert state == "SUCCESS" and report["counts"]["exported"] == count, report
    return [k for k in world.keys(bucket) if k.endswith(MANIFEST_SUFFIX)]


def test_a_planted_manifest_under_a_prefix_runs_nothing(world: World) -> None:
    bucket, foreign = world.bucket(), world.bucket()
    manifests = populate(world, bucket, 2)
    doc = json.loads(world.s3.get_object(Bucket=bucket, Key=manifests[0])["Body"].read())
    # The spec an attacker wants run: a builder outside the allow-list, another team's bucket.
    evil = parse_spec(spec(foreign, 9, builder="tests.never_import:build", destination=f"s3://{foreign}/stolen"))
    keys = export_keys(evil, doc["producer"]["torch"])
    doc.update(spec=evil.to_json_dict(), spec_hash=evil.spec_hash)
    doc["artifact"]["uri"] = keys.artifact
    planted = f"models/planted/model{MANIFEST_SUFFIX}"
    world.s3.put_object(Bucket=bucket, Key=planted, Body=json.dumps(doc).encode())
    world.proxy.configure(reset=True)

    state, report = world.run(f"s3://{bucket}/models", policy="always")

    assert state == "SUCCESS", f"{report!r}\n{tail(world.log_path)}"
    assert report["status"] == "finished" and report["error"] is None
    assert report["counts"]["exported"] == 2 and report["counts"]["failed"] == 1, report
    (failure,) = report["failures"]
    assert failure["source"] == f"s3://{bucket}/{planted}"
    assert "not trusted" in failure["error"], failure
    assert world.proxy.requests_to(foreign) == 0, world.proxy.stats()["buckets"]
    assert world.keys(foreign) == []
    world.assert_alive()


def test_unparseable_objects_are_counted_and_the_run_finishes(world: World) -> None:
    bucket = world.bucket()
    populate(world, bucket, 2)
    odd = {
        f"models/deep/model{MANIFEST_SUFFIX}": ('{"a":' * 100_000 + "1" + "}" * 100_000).encode(),
        f"models/ctl\x01key/model{MANIFEST_SUFFIX}": b"{}",
        f"models/latin1/model{MANIFEST_SUFFIX}": b'{"spec": "caf\xe9"}',
    }
    for key, body in odd.items():
        world.s3.put_object(Bucket=bucket, Key=key, Body=body)

    state, report = world.run(f"s3://{bucket}/models", policy="always")

    assert state == "SUCCESS", f"{report!r}\n{tail(world.log_path)}"
    assert report["status"] == "finished" and report["error"] is None, report
    assert report["counts"]["exported"] == 2 and report["counts"]["failed"] == 3, report
    reasons = {f["source"]: f["error"] for f in report["failures"]}
    assert "nested deeper" in reasons[f"s3://{bucket}/models/deep/model{MANIFEST_SUFFIX}"]
    assert "control characters" in reasons[f"s3://{bucket}/models/ctl\x01key/model{MANIFEST_SUFFIX}"]
    assert "not UTF-8" in reasons[f"s3://{bucket}/models/latin1/model{MANIFEST_SUFFIX}"]
    world.assert_alive()


def test_a_catalog_outside_the_catalog_dir_is_refused(world: World) -> None:
    bucket = world.bucket()
    secret = world.private / "specs.jsonl"
    secret.write_text(json.dumps(spec(bucket, 1, metadata={"token": SECRET})) + "\n")
    (world.catalogs / "link.jsonl").symlink_to(secret)
    for source in (str(secret), str(world.catalogs / "link.jsonl"), f"{world.catalogs}/../private/specs.jsonl"):
        state, value = world.run(source, report_to=f"s3://{bucket}/reports")
        assert state == "FAILURE", value
        assert "outside EXPORT_CATALOG_DIR" in str(value) and SECRET not in str(value)
    assert not [k for k in world.keys(bucket) if k.startswith("models/")], "nothing was exported"
    for report_key in world.keys(bucket):
        assert SECRET not in world.s3.get_object(Bucket=bucket, Key=report_key)["Body"].read().decode()
    world.assert_alive()


def test_a_catalogs_bad_lines_are_reported_without_their_text(world: World) -> None:
    bucket = world.bucket()
    path = world.catalogs / f"{bucket}.jsonl"
    lines = [
        json.dumps(spec(bucket, 1)),
        json.dumps({SECRET: 1, "name": "n", "destination": f"s3://{bucket}/models"}),
        f"{SECRET} is not JSON",
        json.dumps(spec(bucket, 2, device=SECRET)),
    ]
    path.write_text("\n".join(lines) + "\n")
    state, report = world.run(str(path), policy="missing", report_to=f"s3://{bucket}/reports")
    assert state == "SUCCESS", f"{report!r}\n{tail(world.log_path)}"
    assert report["counts"]["exported"] == 1 and report["counts"]["failed"] == 3, report
    stored = world.s3.get_object(Bucket=bucket, Key=f"reports/{report['run_id']}.json")["Body"].read().decode()
    assert SECRET not in stored and SECRET not in json.dumps(report)
    assert [f["source"] for f in report["failures"]] == [f"{path}:{n}" for n in (2, 3, 4)]
