"""Fixtures of the unit tests: the unit tier opens no socket.

Every test here runs with ``socket.socket.connect``, ``connect_ex`` and
``socket.create_connection`` replaced by a refusal that names the rule; a test that needs
S3 belongs in ``tests/functional`` (in-process moto), one that needs a server in
``tests/integration``.  Unix sockets are local to the host and stay allowed.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from typing import Any

import pytest

RULE = (
    "tests/unit opens no socket: a test that needs S3 goes to tests/functional (in-process moto), "
    "one that needs Redis, a worker or a server over HTTP to tests/integration"
)


class SocketInUnitTest(RuntimeError):
    """A unit test tried to open a network connection."""


def _refused(address: Any) -> SocketInUnitTest:
    return SocketInUnitTest(f"{RULE} (tried to connect to {address!r})")


def _guard(real: Callable[..., Any]) -> Callable[..., Any]:
    def connect(self: socket.socket, address: Any) -> Any:
        if getattr(socket, "AF_UNIX", None) is not None and self.family == socket.AF_UNIX:
            return real(self, address)
        # Closed here: callers clean up after an OSError, not after this error.
        self.close()
        raise _refused(address)

    return connect


def _create_connection(address: Any, *args: Any, **kwargs: Any) -> socket.socket:
    raise _refused(address)


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Refuse any TCP/UDP connection for the length of the test (see :data:`RULE`)."""
    monkeypatch.setattr(socket.socket, "connect", _guard(socket.socket.connect))
    monkeypatch.setattr(socket.socket, "connect_ex", _guard(socket.socket.connect_ex))
    monkeypatch.setattr(socket, "create_connection", _create_connection)
