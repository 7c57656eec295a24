"""The sweeper through a real worker, behind a counting proxy (tests/faultproxy.py at rate 0)
in front of the moto server: a ``sweep_stale`` message asking for another bucket, a wider
prefix or a shorter age than the deployment configured is refused, not one request reaches
the store, and the other bucket's in-progress archives and uploads are all still there; the
worker stays alive and the configured sweep still cleans its own prefix.

On the code before this check, the same messages deleted the other bucket's archives
without manifests and aborted its uploads (the age 0 made everything stale).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from serializer.s3.client import make_s3_client
from tests.faultproxy import ProxyHandle, fault_proxy

from .services import client_app, db_url, running_worker, tail, worker_env

#: This module's Redis database.
SWEEP_DB = 10
#: Seconds for one sweep.
JOB_TIMEOUT = 60.0
#: A folder of the service's layout.
FOLDER = "models/m/0123456789abcdef/torch-2.13.0_cpu"
#: The worker's time limits, and an age above them: what the deployment configured.
LIMITS = {"EXPORT_SOFT_TIME_LIMIT": "30", "EXPORT_TIME_LIMIT": "40", "EXPORT_VISIBILITY_TIMEOUT": "60"}
SWEEP_AFTER = 50


@dataclass
class Swept:
    """The world: the proxy, the worker (sweeping ``s3://{home}/models``), moto directly."""

    proxy: ProxyHandle
    app: Any
    s3: Any
    proc: Any
    log_path: Path
    home: str

    def send(self, *args: Any) -> tuple[str, Any]:
        result = self.app.send_task("worker.tasks.sweep_stale", args=list(args), queue="cpu")
        value = result.get(timeout=JOB_TIMEOUT, propagate=False, interval=0.2)
        return result.state, value

    def bucket(self) -> str:
        name = f"sweep-{uuid.uuid4().hex[:12]}"
        self.s3.create_bucket(Bucket=name)
        return name

    def in_progress(self, bucket: str) -> tuple[list[str], list[str]]:
        """An export's archive without its manifest yet, and an open upload, as a live export
        leaves them (moto dates uploads in 2010: old by any clock)."""
        self.s3.put_object(Bucket=bucket, Key=f"{FOLDER}/model.pt", Body=b"archive")
        self.s3.create_multipart_upload(Bucket=bucket, Key=f"{FOLDER}/model.pt2")
        return self.contents(bucket)

    def contents(self, bucket: str) -> tuple[list[str], list[str]]:
        keys = sorted(o["Key"] for o in self.s3.list_objects_v2(Bucket=bucket).get("Contents", []))
        uploads = sorted(u["UploadId"] for u in self.s3.list_multipart_uploads(Bucket=bucket).get("Uploads", []))
        return keys, uploads

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"the worker exited with {self.proc.returncode}:\n{tail(self.log_path)}"
        assert self.app.control.ping(timeout=2.0), "the worker does not answer a ping"


@pytest.fixture(scope="module")
def swept(redis_server: str, moto_process_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swept]:
    import redis

    broker = db_url(redis_server, SWEEP_DB)
    log_path = tmp_path_factory.mktemp("sweeper") / "worker.log"
    client = redis.Redis.from_url(broker)
    client.flushdb()
    client.close()
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=4)
    home = f"sweep-home-{uuid.uuid4().hex[:8]}"
    s3.create_bucket(Bucket=home)
    with fault_proxy(moto_process_endpoint, rate=0.0) as proxy:
        env = worker_env(
            broker,
            proxy.url,
            EXPORT_SWEEP_PREFIXES=f"s3://{home}/models",
            EXPORT_SWEEP_AFTER=str(SWEEP_AFTER),
            **LIMITS,
        )
        app = client_app(broker)
        with running_worker(app, env, log_path, concurrency=1) as proc:
            yield Swept(proxy, app, s3, proc, log_path, home)


@pytest.mark.parametrize(
    ("prefixes", "older_than", "reason"),
    [
        pytest.param(["s3://{foreign}/models"], None, "outside EXPORT_SWEEP_PREFIXES", id="foreign-bucket"),
        pytest.param(["s3://{home}"], None, "outside EXPORT_SWEEP_PREFIXES", id="wider-prefix"),
        pytest.param(["s3://{home}/models", "s3://{foreign}/models"], None, "outside", id="one-foreign"),
        pytest.param(["s3://{home}/models"], 0.0, "under EXPORT_SWEEP_AFTER", id="shorter-age"),
        pytest.param(None, 0.0, "under EXPORT_SWEEP_AFTER", id="shorter-age-configured-prefixes"),
    ],
)
def test_a_sweep_message_asking_for_more_than_configured_is_refused(
    swept: Swept, prefixes: list[str] | None, older_than: float | None, reason: str
) -> None:
    foreign = swept.bucket()
    theirs = swept.in_progress(foreign)
    ours = swept.in_progress(swept.home)
    names = {"foreign": foreign, "home": swept.home}
    asked = None if prefixes is None else [uri.format(**names) for uri in prefixes]
    swept.proxy.configure(reset=True)
    state, value = swept.send(asked, older_than)
    stats = swept.proxy.stats()
    assert state == "FAILURE", f"{state}: {value!r}"
    assert type(value).__name__ == "SweepRefused" and reason in str(value), repr(value)
    assert stats["total_requests"] == 0, stats  # not one request, to any bucket
    assert swept.proxy.requests_to(foreign) == 0
    assert swept.contents(foreign) == theirs
    assert swept.contents(swept.home) == ours
    swept.assert_alive()


def test_the_configured_sweep_still_cleans_its_own_prefix_only(swept: Swept) -> None:
    foreign = swept.bucket()
    theirs = swept.in_progress(foreign)
    swept.in_progress(swept.home)
    # An export of our own that is complete, and a look-alike outside the layout.
    complete = "models/c/fedcba9876543210/torch-2.13.0_cpu"
    for key in (f"{complete}/model.manifest.json", f"{complete}/model.pt", "models/team/torch-2.13.0_cpu/model.pt"):
        swept.s3.put_object(Bucket=swept.home, Key=key, Body=b"x")
    open_before = len(swept.contents(swept.home)[1])
    swept.proxy.configure(reset=True)
    # (moto's uploads date from 2010, its objects from now: only the uploads are stale)
    state, value = swept.send([f"s3://{swept.home}/models/m"], float(SWEEP_AFTER))
    assert state == "SUCCESS", f"{state}: {value!r}\n{tail(swept.log_path)}"
    assert value["aborted_uploads"] == open_before >= 1 and value["deleted_orphans"] == 0
    assert swept.proxy.requests_to(foreign) == 0
    assert swept.contents(foreign) == theirs
    keys, uploads = swept.contents(swept.home)
    assert uploads == []
    assert {f"{FOLDER}/model.pt", f"{complete}/model.pt", "models/team/torch-2.13.0_cpu/model.pt"} <= set(keys)
    swept.assert_alive()
