"""The zoo: each architecture of :mod:`.architectures` through a real worker on the three
paths (TorchScript script, TorchScript trace, .pt2), each job's outcome recorded: a pass
(exported and verified), or the clean failure the job reports.  No job may fail dirty: the
worker stays alive, no job times out, a failed job leaves no object and no open upload.

``ZOO_TABLE=path`` writes the outcomes as the markdown table of docs/compatibility.md.
"""

from __future__ import annotations

import importlib
import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.s3.client import make_s3_client
from tests.integration.conftest import ROOT
from tests.integration.services import ServiceWorld, db_url, tail, worker_env
from worker.cli.demo_services import celery_worker

from .architectures import TIMM, TORCHVISION, TRANSFORMERS, Architecture

pytestmark = pytest.mark.zoo

#: The zoo's broker database; its worker reads a queue of its own, so it shares the database
#: with no other module's worker.
ZOO_DB = 0
#: The three paths: (column, spec fields).
PATHS = [
    ("TorchScript script", {"method": "script"}),
    ("TorchScript trace", {"method": "trace"}),
    ("pt2", {"format": "pt2"}),
]
#: Seconds a job may take; a job past it fails the zoo (a timeout is a dirty failure).
JOB_TIMEOUT = 240.0
#: The exceptions a job fails cleanly with: the worker's own, naming the cause.
CLEAN_FAILURES = {"BuildFailed", "ScriptingFailed", "TorchExportFailed", "VerificationFailed", "SpecError"}


def _why_not(module: str) -> str | None:
    try:
        importlib.import_module(module)
    except Exception as exc:  # torchvision beside a torch it was not built for fails at import
        return f"{module} cannot be imported here ({type(exc).__name__}: {str(exc).splitlines()[0][:120]})"
    return None


class Zoo(ServiceWorld):
    bucket_prefix = "zoo"

    def __init__(self, queue: str, *args: Any) -> None:
        super().__init__(*args)
        self.queue = queue
        self.outcomes: dict[str, dict[str, str]] = {}


@pytest.fixture(scope="module")
def zoo(redis_server: str, moto_process_endpoint: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Zoo]:
    broker = db_url(redis_server, ZOO_DB)
    log_path = tmp_path_factory.mktemp("zoo") / "worker.log"
    queue = f"zoo-{uuid.uuid4().hex[:8]}"
    env = worker_env(
        broker, moto_process_endpoint,
        EXPORT_ALLOWED_BUILDERS="worker.zoo",
        EXPORT_SOFT_TIME_LIMIT=str(int(JOB_TIMEOUT) - 30), EXPORT_TIME_LIMIT=str(int(JOB_TIMEOUT) - 10),
    )  # fmt: skip
    s3 = make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=4)
    world = Zoo(queue, broker, env, s3, log_path)
    node = f"zoo-{uuid.uuid4().hex[:8]}@%h"
    with celery_worker(env, queues=queue, concurrency=1, log_path=str(log_path), node=node, cwd=str(ROOT)) as proc:
        world.proc = proc  # type: ignore[attr-defined]
        while not world.app.control.ping(destination=[node.replace("%h", os.uname().nodename)], timeout=0.5):
            if proc.poll() is not None:
                pytest.fail(f"the zoo's worker did not start:\n{tail(log_path)}")
        yield world
        table = os.environ.get("ZOO_TABLE")
        if table:
            Path(table).write_text(compatibility_table(world.outcomes))


def run_job(zoo: Zoo, arch: Architecture, column: str, fields: dict[str, Any]) -> str:
    """One export of ``arch`` on one path through the worker; its outcome for the table."""
    bucket = zoo.bucket()
    spec = {
        "name": arch.name.replace(" ", "-").replace("(", "").replace(")", "").lower(),
        "builder": arch.builder,
        "kwargs": arch.kwargs,
        "example_inputs": arch.example_inputs,
        "destination": f"s3://{bucket}/models",
        "atol": 1e-4,
        **fields,
    }
    result = zoo.app.send_task("worker.tasks.export_model", args=[spec], queue=zoo.queue)
    state = result.get(timeout=JOB_TIMEOUT, propagate=False)
    assert zoo.proc.poll() is None, f"the worker died on {arch.name} / {column}:\n{zoo.log_tail()}"  # type: ignore[attr-defined]
    if result.successful():
        assert state["verification"]["passed"] is True, state
        assert zoo.keys(bucket, "models/"), state
        return "pass"
    error = type(result.result).__name__
    message = str(result.result)
    assert error in CLEAN_FAILURES, f"{arch.name} / {column} failed dirty: {error}: {message}\n{zoo.log_tail()}"
    assert zoo.keys(bucket) == [], f"{arch.name} / {column} left objects behind"
    assert zoo.open_uploads(bucket) == [], f"{arch.name} / {column} left an upload open"
    return f"{error}: {short(message)}"


def short(message: str) -> str:
    """A failure's message for a table cell: its first line, cut, without pipes."""
    line = message.strip().splitlines()[0] if message.strip() else ""
    line = re.sub(r" at 0x[0-9a-f]+", "", line)  # object addresses change from run to run
    return (line[:160] + ("..." if len(line) > 160 else "")).replace("|", "/")


@pytest.mark.parametrize("arch", TRANSFORMERS, ids=[a.name for a in TRANSFORMERS])
def test_architecture_on_every_path(zoo: Zoo, arch: Architecture) -> None:
    row = zoo.outcomes.setdefault(arch.name, {"library": arch.library, "class": str(arch.kwargs["class_name"])})
    for column, fields in PATHS:
        row[column] = run_job(zoo, arch, column, fields)
    assert any(row[column] == "pass" for column, _ in PATHS[1:]), row


@pytest.mark.parametrize("arch", TORCHVISION + TIMM, ids=[a.name for a in TORCHVISION + TIMM])
def test_torchvision_and_timm_architectures(zoo: Zoo, arch: Architecture) -> None:
    why = _why_not("torchvision.models" if arch.library == "torchvision" else "timm")
    row = zoo.outcomes.setdefault(arch.name, {"library": arch.library, "class": str(arch.kwargs["name"])})
    if why is not None:
        for column, _ in PATHS:
            row[column] = "not run here: " + re.sub(r" \(.*", "", why)
        pytest.skip(why)
    for column, fields in PATHS:
        row[column] = run_job(zoo, arch, column, fields)


def compatibility_table(outcomes: dict[str, dict[str, str]]) -> str:
    """The outcomes as a markdown table, one row per architecture."""
    columns = [column for column, _ in PATHS]
    lines = [
        "| Architecture | Library | Builder argument | " + " | ".join(columns) + " |",
        "|---|---|---|" + "---|" * len(columns),
    ]
    for name, row in outcomes.items():
        cells = [name, row["library"], f"`{row['class']}`", *(row.get(c, "-") for c in columns)]
        lines.append("| " + " | ".join(cells) + " |")
    passed = {c: sum(row.get(c) == "pass" for row in outcomes.values()) for c in columns}
    summary = ", ".join(f"{c}: {n} of {len(outcomes)}" for c, n in passed.items())
    return "\n".join(lines) + f"\n\nPassed: {summary} (torch {torch.__version__}).\n"
