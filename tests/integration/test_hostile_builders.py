"""Builders outside the allow-list are never imported by a real worker, however spelled; a name
an allowed module only imports is never called."""

from __future__ import annotations

import http.server
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import tests.acme_models
from tests.conftest import object_keys
from tests.hostile_corpus import NEVER_IMPORT_SPELLINGS, _zip_torch_save
from tests.integration.conftest import WorkerProcess
from tests.integration.hostile import assert_nothing_written, send

pytestmark = pytest.mark.usefixtures("celery_worker")


def test_builders_outside_the_allow_list_are_never_imported(
    celery_worker: WorkerProcess, worker_s3: Any, dest_bucket: str
) -> None:
    marker = celery_worker.never_import_marker
    assert "tests.never_import" not in sys.modules
    kwargs_that_would_import = {"name": "tests.never_import", "mod_name": "tests.never_import"}
    for builder in NEVER_IMPORT_SPELLINGS:
        for kwargs in ({}, kwargs_that_would_import):
            spec = {
                "name": "never",
                "builder": builder,
                "kwargs": kwargs,
                "destination": f"s3://{dest_bucket}/never",
            }
            state, value = send(spec)
            assert state == "FAILURE", f"{builder!r}: {state} {value!r}"
            assert isinstance(value, BaseException)
            assert type(value).__name__ in ("SpecError", "BuilderNotAllowed", "BuildFailed"), f"{builder!r}: {value!r}"
            assert not marker.exists(), f"{builder!r} with {kwargs} imported tests.never_import: {marker.read_text()}"
            celery_worker.assert_alive()
    assert_nothing_written(worker_s3, dest_bucket)
    assert "tests.never_import" not in sys.modules


class _CountingServer(http.server.ThreadingHTTPServer):
    """Serves one checkpoint at every path and counts the requests it gets."""

    def __init__(self, body: bytes) -> None:
        self.body, self.requests = body, 0
        super().__init__(("127.0.0.1", 0), _Handler)


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _CountingServer

    def do_GET(self) -> None:
        self.server.requests += 1
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.server.body)))
        self.end_headers()
        self.wfile.write(self.server.body)

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture()
def evil_server(celery_worker: WorkerProcess) -> Iterator[tuple[_CountingServer, str, Path]]:
    """An HTTP server on this host serving a checkpoint whose unpickling creates a marker."""
    marker = celery_worker.shared_dir / f"pwned-{uuid.uuid4().hex[:8]}"
    server = _CountingServer(_zip_torch_save(marker))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server, f"http://127.0.0.1:{server.server_address[1]}/weights/evil.pt", marker
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_an_imported_hub_loader_is_refused_by_a_real_worker(
    celery_worker: WorkerProcess,
    worker_s3: Any,
    dest_bucket: str,
    evil_server: tuple[_CountingServer, str, Path],
    tmp_path: Path,
) -> None:
    server, url, marker = evil_server
    hub_dir = celery_worker.shared_dir / f"hub-{uuid.uuid4().hex[:8]}"
    spec = {
        "name": "acme",
        "builder": "tests.acme_models:load_state_dict_from_url",
        "kwargs": {"url": url, "model_dir": str(hub_dir)},
        "destination": f"s3://{dest_bucket}/acme",
    }
    state, value = send(spec)
    assert state == "FAILURE", f"{state}: {value!r}"
    assert type(value).__name__ == "BuilderNotAllowed", repr(value)
    assert "imported into tests.acme_models, not defined there" in str(value)
    assert server.requests == 0, "the worker fetched the URL"
    assert not marker.exists(), f"the checkpoint's code ran in the worker: {marker.read_text()}"
    assert not hub_dir.exists(), "the worker downloaded something"
    assert_nothing_written(worker_s3, dest_bucket)
    celery_worker.assert_alive()

    # The legitimate export goes through the same worker, from the same allowed module.
    good = {
        "name": "acme",
        "builder": "tests.acme_models:build_classifier",
        "destination": f"s3://{dest_bucket}/acme",
        "example_inputs": [{"shape": [2, 4], "dtype": "float32"}],
    }
    state, value = send(good)
    assert state == "SUCCESS", f"{state}: {value!r}\n{celery_worker.log_tail()}"
    assert sorted(object_keys(worker_s3, dest_bucket)) == sorted(
        uri.split("/", 3)[3] for uri in (value["artifact_uri"], value["manifest_uri"])
    )

    # The control: the server answers, and what it serves does run code when loaded this way.
    tests.acme_models.load_state_dict_from_url(url, model_dir=str(tmp_path / "hub"), progress=False)
    assert server.requests == 1
    assert marker.exists()
