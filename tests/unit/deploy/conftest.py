"""Fixtures of the deployment-file tests: each parsed file once per module, read when asked.

A file that does not parse fails the tests that use it at set-up; the others still collect
and run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.unit.deploy import files


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """One test per runner of our images for tests that take ``runner``."""
    if "runner" not in metafunc.fixturenames:
        return
    try:
        runners = files.our_runners()
    except Exception:
        return
    metafunc.parametrize("runner", runners, ids=lambda r: r.where)


@pytest.fixture()
def runner() -> files.Runner:
    """Used only where the runners could not be listed: fails the test with the parse error."""
    files.our_runners()
    raise AssertionError("the runners parsed after all; run the tests again")


@pytest.fixture(scope="module")
def services() -> dict[str, dict[str, Any]]:
    """docker-compose.yml's services, interpolated."""
    return files.services()


@pytest.fixture(scope="module")
def compose_variables() -> frozenset[str]:
    """The variables docker-compose.yml interpolates."""
    return files.compose_variables()


@pytest.fixture(scope="module")
def dockerfiles() -> dict[str, files.Dockerfile]:
    """deploy/Dockerfile.* by kind."""
    return files.dockerfiles()


@pytest.fixture(scope="module")
def k8s_files() -> list[Path]:
    """The manifests under deploy/k8s."""
    return files.k8s_files()


@pytest.fixture(scope="module")
def k8s_docs() -> list[tuple[Path, dict[str, Any]]]:
    """Every object of every manifest under deploy/k8s, with its file."""
    return files.k8s_docs()


@pytest.fixture(scope="module")
def all_runners() -> list[files.Runner]:
    """Every place in docker-compose.yml and deploy/k8s that runs a command."""
    return files.all_runners()
