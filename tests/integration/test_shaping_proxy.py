"""The shaping proxy (devtools/shaping_proxy.py) as a process: bytes relayed unchanged both
ways, no faster than its caps allow, each turn at least one round trip, connections counted."""

from __future__ import annotations

import asyncio
import gc
import hashlib
import os
import queue
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from devtools.shaping_proxy import LinkShape, ShapingProxy, running_proxy

#: Bytes each stream sends: small, so the lower bounds stay a second or two.
PAYLOAD = 1_000_000


@pytest.fixture
def echo_server() -> Iterator[int]:
    """A loopback server that answers each connection with the sha256 of what it got, then
    the bytes themselves."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve(conn: socket.socket) -> None:
        with conn:
            data = bytearray()
            while chunk := conn.recv(1 << 16):
                data += chunk
            conn.sendall(hashlib.sha256(data).digest() + data)

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield server.getsockname()[1]
    server.close()


def _round_trip(port: int, payload: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as conn:
        conn.sendall(payload)
        conn.shutdown(socket.SHUT_WR)
        reply = bytearray()
        while chunk := conn.recv(1 << 16):
            reply += chunk
    return bytes(reply)


def _streams(port: int, count: int) -> tuple[float, list[tuple[bytes, bytes]]]:
    payloads = [os.urandom(PAYLOAD) for _ in range(count)]
    replies: list[tuple[bytes, bytes]] = []
    start = time.monotonic()
    threads = [threading.Thread(target=lambda p=p: replies.append((p, _round_trip(port, p)))) for p in payloads]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    return time.monotonic() - start, replies


def _check_bytes(replies: list[tuple[bytes, bytes]], count: int) -> None:
    assert len(replies) == count
    for sent, reply in replies:
        assert reply == hashlib.sha256(sent).digest() + sent


def test_per_connection_cap_and_delay(echo_server: int) -> None:
    rate, rtt = 2e6, 0.2
    with running_proxy(f"127.0.0.1:{echo_server}", LinkShape(rtt=rtt, conn_rate=rate)) as proxy:
        seconds, replies = _streams(proxy.port, 2)
        stats = proxy.stats()
    _check_bytes(replies, 2)
    # Each stream: the handshake's round trip, PAYLOAD up and PAYLOAD + 32 down at the cap
    # (one after the other: the server answers at EOF), half a round trip each way; the
    # bucket's burst is the only allowance.
    burst = max(256 * 1024, rate * 0.005)
    lower = rtt + 2 * (rtt / 2) + 2 * (PAYLOAD - burst) / rate
    assert seconds >= lower
    assert stats["used"] == stats["accepted"] == stats["max_concurrent"] == 2
    assert stats["bytes_up"] == 2 * PAYLOAD
    assert stats["bytes_down"] == 2 * (PAYLOAD + 32)


def test_aggregate_cap(echo_server: int) -> None:
    total = 4e6
    with running_proxy(f"127.0.0.1:{echo_server}", LinkShape(total_rate=total)) as proxy:
        seconds, replies = _streams(proxy.port, 4)
    _check_bytes(replies, 4)
    # 4 MB up through the shared bucket of that direction, less its burst (the other
    # direction has its own bucket, and streams answer while others still send).
    assert seconds >= (4 * PAYLOAD - 256 * 1024) / total


def test_unshaped_relay_and_counting_window(echo_server: int) -> None:
    with running_proxy(f"127.0.0.1:{echo_server}") as proxy:
        _check_bytes(_streams(proxy.port, 3)[1], 3)
        proxy.reset()
        assert proxy.stats()["used"] == 0
        _check_bytes(_streams(proxy.port, 1)[1], 1)
        stats = proxy.stats()
        proxy.configure(LinkShape(rtt=0.01, conn_rate=1e6))
        assert proxy.stats()["shape"] == {"rtt": 0.01, "conn_rate": 1e6, "total_rate": 0.0}
    assert stats["used"] == stats["accepted"] == 1
    assert stats["bytes_up"] == PAYLOAD


def test_connections_survive_the_garbage_collector(echo_server: int) -> None:
    """The event loop holds tasks only weakly: a connection whose transports are paused is
    reachable from nothing else, and the collector must not end it mid-relay. The proxy runs
    in this process here, with a collection every millisecond."""
    proxy = ShapingProxy(("127.0.0.1", echo_server), LinkShape())
    ready: queue.Queue[tuple[asyncio.AbstractEventLoop, asyncio.Event, int]] = queue.Queue()

    async def serve() -> None:
        server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
        stop = asyncio.Event()
        ready.put((asyncio.get_running_loop(), stop, server.sockets[0].getsockname()[1]))
        async with server:
            while not stop.is_set():
                gc.collect()
                await asyncio.sleep(0.001)

    thread = threading.Thread(target=asyncio.run, args=(serve(),), daemon=True)
    thread.start()
    loop, stop, port = ready.get(timeout=10)
    try:
        for _ in range(3):
            _check_bytes(_streams(port, 3)[1], 3)
    finally:
        loop.call_soon_threadsafe(stop.set)
        thread.join(10)
