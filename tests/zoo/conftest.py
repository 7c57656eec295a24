"""The zoo runs on its own: ``pytest tests/zoo -m zoo`` (several minutes).  Collected with the
rest of the suite, its tests are skipped, so the suite's time does not grow by the zoo's."""

from __future__ import annotations

import pytest

from tests.integration.conftest import redis_server  # noqa: F401 - the fixture, for the zoo's worker

#: How the zoo is asked for.
RUN_HINT = "the zoo runs on its own: pytest tests/zoo -m zoo (ZOO_TABLE=path writes its table)"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if "zoo" in (config.option.markexpr or ""):
        return
    for item in items:
        if item.get_closest_marker("zoo") is not None:
            item.add_marker(pytest.mark.skip(reason=RUN_HINT))
