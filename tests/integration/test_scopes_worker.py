"""A worker scoped to one team's prefixes, through a counting proxy (tests/faultproxy.py at
rate 0) in front of the moto server: a spec or a bulk run naming another team's bucket is
refused naming the field, not one request reaches that bucket, the worker stays alive and
exports the next legitimate spec.

The other team's bucket exists and holds private objects (a state_dict, a text file), so a
refusal is not a 404 in disguise: on the code before scopes these specs read the private
bytes into an artifact the submitter can read, or wrote into the other team's prefix.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.s3.client import make_s3_client
from tests.faultproxy import ProxyHandle, fault_proxy
from worker.examples import tiny_classifier

from .hostile import queue_lengths
from .services import client_app, db_url, running_worker, tail, worker_env

#: This module's Redis database.
SCOPES_DB = 15
#: Seconds for one job or one bulk run.
JOB_TIMEOUT = 120.0
TINY = {"in_features": 8, "hidden": 8, "classes": 3}
INPUTS = [{"shape": [2, 8], "dtype": "float32"}]


@dataclass
class Scoped:
    """The world: the proxy, the worker (reads ``home/team-a``, writes ``home/team-a/exports``),
    moto directly, the team's bucket and the other team's."""

    proxy: ProxyHandle
    app: Any
    s3: Any
    proc: Any
    log_path: Path
    home: str
    foreign: str

    @property
    def read(self) -> str:
        return f"s3://{self.home}/team-a"

    @property
    def write(self) -> str:
        return f"s3://{self.home}/team-a/exports"

    def spec(self, name: str, **changes: Any) -> dict[str, Any]:
        spec: dict[str, Any] = {
            "name": name,
            "builder": "worker.examples:tiny_classifier",
            "kwargs": TINY,
            "weights": f"{self.read}/weights/tiny.pt",
            "example_inputs": INPUTS,
            "extra_files": {"labels.txt": {"uri": f"{self.read}/labels.txt"}},
            "destination": f"{self.write}/models",
        }
        spec.update(changes)
        return spec

    def send(self, task: str, *args: Any, **kwargs: Any) -> tuple[str, Any]:
        result = self.app.send_task(task, args=list(args), kwargs=kwargs, queue="cpu")
        value = result.get(timeout=JOB_TIMEOUT, propagate=False, interval=0.2)
        return result.state, value

    def foreign_keys(self) -> list[str]:
        return sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=self.foreign).get("Contents", []))

    def keys(self, prefix: str) -> list[str]:
        listing = self.s3.list_objects_v2(Bucket=self.home, Prefix=prefix)
        return sorted(o["Key"] for o in listing.get("Contents", []))

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the worker exited with {self.proc.returncode}:\n{tail(self.log_path)}"
        assert self.app.control.ping(timeout=2.0), "the worker does not answer a ping"

    def assert_exports(self, name: str) -> dict[str, Any]:
        """The legitimate spec still exports, after whatever was refused."""
        state, value = self.send("worker.tasks.export_model", self.spec(name))
        assert state == "SUCCESS", f"{state}: {value!r}\n{tail(self.log_path)}"
        assert value["artifact_uri"].startswith(f"{self.write}/models/{name}/")
        return dict(value)


def _state_dict_bytes(seed: int) -> bytes:
    buffer = io.BytesIO()
    torch.save(tiny_classifier(**TINY, seed=seed).state_dict(), buffer)
    return buffer.getvalue()


@pytest.fixture(scope="module")
def scoped(redis_server: str, moto_process_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Scoped]:
    import redis

    broker = db_url(redis_server, SCOPES_DB)
    base = tmp_path_factory.mktemp("scopes")
    (base / "spool").mkdir()
    log_path = base / "worker.log"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.close()
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=4)
    home, foreign = f"team-a-{uuid.uuid4().hex[:10]}", f"team-b-{uuid.uuid4().hex[:10]}"
    for bucket in (home, foreign):
        s3.create_bucket(Bucket=bucket)
    s3.put_object(Bucket=home, Key="team-a/weights/tiny.pt", Body=_state_dict_bytes(1))
    s3.put_object(Bucket=home, Key="team-a/labels.txt", Body=b"cat\ndog\nbird\n")
    s3.put_object(Bucket=foreign, Key="private/weights.pt", Body=_state_dict_bytes(2))
    s3.put_object(Bucket=foreign, Key="private/secret.txt", Body=b"team b's secret\n")
    with fault_proxy(moto_process_endpoint, rate=0.0) as proxy:
        env = worker_env(
            broker,
            proxy.url,
            EXPORT_READ_SCOPES=f"s3://{home}/team-a",
            EXPORT_WRITE_SCOPES=f"s3://{home}/team-a/exports",
            EXPORT_SPOOL_DIR=str(base / "spool"),
        )
        app = client_app(broker)
        with running_worker(app, env, log_path, concurrency=1) as proc:
            yield Scoped(proxy, app, s3, proc, log_path, home, foreign)


def _refused(world: Scoped, state: str, value: Any, field: str, rule: str) -> None:
    assert state == "FAILURE", f"{state}: {value!r}"
    assert type(value).__name__ == "ScopeError", f"{type(value).__name__}: {value}"
    assert str(value).startswith(f"{field}: ") and str(value).endswith(f"is outside {rule}"), str(value)
    assert "team b's secret" not in str(value) and "bytes" not in str(value), "the refusal says more than the rule"


def test_the_legitimate_spec_exports_through_the_proxy(scoped: Scoped) -> None:
    value = scoped.assert_exports("legit-0")
    assert scoped.proxy.requests_to(scoped.home) > 0, "the proxy counts requests by bucket"
    assert value["skipped"] is False


#: field -> the spec change that names the other team's bucket
FOREIGN = {
    "weights": lambda w: {"weights": f"s3://{w.foreign}/private/weights.pt"},
    "extra_files.labels.txt": lambda w: {
        "extra_files": {"labels.txt": {"uri": f"s3://{w.foreign}/private/secret.txt"}}
    },
    "destination": lambda w: {"destination": f"s3://{w.foreign}/models"},
}


@pytest.mark.parametrize("field", sorted(FOREIGN))
def test_a_spec_naming_another_teams_bucket_is_refused_and_nothing_reaches_it(scoped: Scoped, field: str) -> None:
    before = scoped.foreign_keys()
    scoped.proxy.configure(reset=True)
    state, value = scoped.send("worker.tasks.export_model", scoped.spec(f"attack-{field}", **FOREIGN[field](scoped)))
    rule = "EXPORT_WRITE_SCOPES" if field == "destination" else "EXPORT_READ_SCOPES"
    _refused(scoped, state, value, field, rule)
    assert scoped.proxy.requests_to(scoped.foreign) == 0, scoped.proxy.stats()["buckets"]
    assert scoped.proxy.stats()["total_requests"] == 0, "a refused spec sends nothing at all"
    assert scoped.foreign_keys() == before
    assert not [k for k in scoped.keys("team-a/exports/") if f"attack-{field}" in k]
    scoped.assert_alive()
    scoped.assert_exports(f"after-{field.replace('.', '-')}")


@pytest.mark.parametrize(
    ("where", "field"),
    [
        ("team-b/models", "destination"),  # the same bucket, another team's prefix
        ("team-a/exports-other/models", "destination"),  # a longer name, not a folder below
        ("team-a/exports/../../team-b", "destination"),  # navigation: a literal key, refused
    ],
)
def test_a_destination_beside_the_write_scope_is_refused(scoped: Scoped, where: str, field: str) -> None:
    scoped.proxy.configure(reset=True)
    state, value = scoped.send(
        "worker.tasks.export_model", scoped.spec("beside", destination=f"s3://{scoped.home}/{where}")
    )
    assert state == "FAILURE" and type(value).__name__ == "ScopeError", f"{state}: {value!r}"
    assert str(value).startswith(f"{field}: "), str(value)
    assert scoped.proxy.stats()["total_requests"] == 0
    assert scoped.keys("team-b/") == [] and scoped.keys("team-a/exports-other/") == []
    scoped.assert_alive()


@pytest.mark.parametrize("field", ["source", "report_to"])
def test_a_bulk_run_naming_another_teams_bucket_is_refused(scoped: Scoped, field: str) -> None:
    before = scoped.foreign_keys()
    scoped.proxy.configure(reset=True)
    if field == "source":
        state, value = scoped.send("worker.tasks.reexport", f"s3://{scoped.foreign}/private")
        rule = "EXPORT_READ_SCOPES"
    else:
        state, value = scoped.send(
            "worker.tasks.reexport", f"{scoped.write}/models", report_to=f"s3://{scoped.foreign}/reports"
        )
        rule = "EXPORT_WRITE_SCOPES"
    _refused(scoped, state, value, field, rule)
    assert scoped.proxy.requests_to(scoped.foreign) == 0, scoped.proxy.stats()["buckets"]
    assert scoped.foreign_keys() == before
    scoped.assert_alive()


def test_a_catalog_spec_naming_another_teams_bucket_is_counted_and_the_run_goes_on(scoped: Scoped) -> None:
    catalog = [
        scoped.spec("bulk-legit"),
        scoped.spec("bulk-attack", weights=f"s3://{scoped.foreign}/private/weights.pt"),
        scoped.spec("bulk-attack-2", destination=f"s3://{scoped.foreign}/models"),
    ]
    body = "\n".join(json.dumps(s) for s in catalog).encode()
    scoped.s3.put_object(Bucket=scoped.home, Key="team-a/catalogs/c.jsonl", Body=body)
    before = scoped.foreign_keys()
    scoped.proxy.configure(reset=True)
    state, report = scoped.send(
        "worker.tasks.reexport", f"{scoped.read}/catalogs/c.jsonl", report_to=f"{scoped.write}/_reports"
    )
    assert state == "SUCCESS", f"{state}: {report!r}\n{tail(scoped.log_path)}"
    assert report["counts"]["exported"] == 1, report
    refused = {f["name"]: f["error"] for f in report["failures"]}
    assert set(refused) == {"bulk-attack", "bulk-attack-2"}, report
    assert "weights: " in refused["bulk-attack"] and "outside EXPORT_READ_SCOPES" in refused["bulk-attack"]
    assert "destination: " in refused["bulk-attack-2"] and "outside EXPORT_WRITE_SCOPES" in refused["bulk-attack-2"]
    assert scoped.proxy.requests_to(scoped.foreign) == 0, scoped.proxy.stats()["buckets"]
    assert scoped.foreign_keys() == before
    scoped.assert_alive()


def test_submit_export_refuses_in_the_caller_and_enqueues_nothing(scoped: Scoped, redis_client: Any) -> None:
    from worker.errors import ScopeError
    from worker.settings import Settings
    from worker.tasks import submit_export

    submitter = Settings(read_scopes=scoped.read, write_scopes=scoped.write)
    before = queue_lengths(redis_client)
    for field, change in FOREIGN.items():
        with pytest.raises(ScopeError, match=f"^{field}: "):
            submit_export(scoped.spec("submitted", **change(scoped)), settings=submitter)
    assert queue_lengths(redis_client) == before, "a spec refused by submit_export was sent"
