"""A link-shaping TCP proxy for loopback benchmarks: a round-trip delay and a bandwidth cap
per connection (and optionally one for all connections together), counting connections.

It runs as its own process (its own core share, not the measured process's GIL)::

    python -m devtools.shaping_proxy --upstream 127.0.0.1:8333 --rtt-ms 20 \\
        --conn-rate 25MB --total-rate 150MB --ready-file port.txt

Each accepted connection is relayed to ``upstream`` byte for byte (any TCP protocol, so
HTTP keep-alive, ``100-continue`` and pipelining pass untouched).  Each direction is a
delay line: a chunk read at ``t`` is written no sooner than ``t + rtt / 2``, and no faster
than the connection's token bucket (``conn_rate`` bytes per second) and the shared one
(``total_rate``) allow; a new connection waits one ``rtt`` before its first byte is relayed
(the TCP handshake of a real link).  A request/response turn therefore costs one ``rtt``
plus its bytes over the rate, as on a long fat link; what is in flight per direction is
bounded (the bandwidth-delay product plus one read), so a slow side pushes back through
the kernel's buffers.  Without rates and delay it is a plain relay (its ceiling is what
``benchmarks/_link_probe.py`` measures).

Control: a second port (``--control-port``, its number in the ready file after the data
port) takes one JSON line per connection and answers one: ``{"op": "stats"}`` (connections
accepted, open, used and most used at once since the last reset, bytes each way),
``{"op": "reset"}`` (a new counting window: connections open now count as used only once
they move a byte), ``{"op": "config", "rtt": s, "conn_rate": Bps, "total_rate": Bps}``
(changes apply to chunks relayed from then on; 0 removes a limit).

Only the standard library is used.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from .processes import die_with_parent, stop_process_group

__all__ = ["LinkShape", "ProxyHandle", "ShapingProxy", "TokenBucket", "parse_rate", "running_proxy"]

#: Bytes per read from either side: large reads keep the proxy's cost per byte low.
READ_SIZE = 256 * 1024
#: Seconds of traffic a token bucket may send at once after an idle spell (its burst).
BURST_SECONDS = 0.005
#: Extra bytes a direction may hold beyond its bandwidth-delay product (one read, and some).
QUEUE_SLACK = 4 * READ_SIZE
#: Bytes per second assumed for the delay line's bound when no rate is set.
UNSHAPED_RATE = 10**9
#: Seconds to connect to the upstream.
CONNECT_TIMEOUT = 10.0
#: Seconds :func:`running_proxy` waits for the process to listen, and for a control reply.
START_TIMEOUT = 20.0
CONTROL_TIMEOUT = 10.0

_RATE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}


def parse_rate(text: str) -> float:
    """A rate in bytes per second: ``25MB`` (10^6), ``20MiB`` (2^20) or a plain number; 0: none."""
    value = text.strip().upper().removesuffix("/S")
    number = value.rstrip("KMGIB")
    unit = value[len(number) :]
    try:
        return float(number) * _RATE_UNITS[unit]
    except (KeyError, ValueError):
        raise ValueError(f"not a rate: {text!r} (e.g. 25MB, 20MiB, 0)") from None


class TokenBucket:
    """Bytes per second with a small burst; :meth:`reserve` says how long to wait first."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.tokens = self.burst
        self.stamp = time.monotonic()

    @property
    def burst(self) -> float:
        return max(float(READ_SIZE), self.rate * BURST_SECONDS)

    def reserve(self, n: int, now: float) -> float:
        """Take ``n`` bytes' worth of tokens; seconds until they are earned (0: send now)."""
        if self.rate <= 0:
            return 0.0
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        self.tokens -= n
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate


@dataclass
class LinkShape:
    """The link: round trip in seconds, bytes per second per connection and in all (0: none)."""

    rtt: float = 0.0
    conn_rate: float = 0.0
    total_rate: float = 0.0

    def describe(self) -> dict[str, float]:
        return {"rtt": self.rtt, "conn_rate": self.conn_rate, "total_rate": self.total_rate}


@dataclass
class Counters:
    """Connections and bytes in the current counting window."""

    window: int = 0
    accepted: int = 0
    open: int = 0
    used: int = 0
    used_open: int = 0
    max_used_open: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    started: float = field(default_factory=time.monotonic)

    def snapshot(self) -> dict[str, Any]:
        return {
            "accepted": self.accepted,
            "open": self.open,
            "used": self.used,
            "max_concurrent": self.max_used_open,
            "bytes_up": self.bytes_up,
            "bytes_down": self.bytes_down,
            "seconds": time.monotonic() - self.started,
        }


class _Conn:
    """One relayed connection: which window it was last counted in."""

    __slots__ = ("counted", "window")

    def __init__(self) -> None:
        self.window = -1
        self.counted = False


class ShapingProxy:
    """The proxy's state: the shape, the shared bucket, the counters."""

    def __init__(self, upstream: tuple[str, int], shape: LinkShape) -> None:
        self.upstream = upstream
        self.shape = shape
        self.total_up = TokenBucket(shape.total_rate)
        self.total_down = TokenBucket(shape.total_rate)
        self.counters = Counters()
        # The event loop holds tasks only weakly, and a connection whose transports are both
        # paused is reachable from nothing else: without these references the collector may
        # destroy a connection mid-relay ("Task was destroyed but it is pending").
        self._live: set[asyncio.Task[Any]] = set()

    def configure(self, data: dict[str, Any]) -> None:
        for name in ("rtt", "conn_rate", "total_rate"):
            if name in data:
                value = float(data[name])
                if value < 0:
                    raise ValueError(f"{name} must be >= 0, got {value}")
                setattr(self.shape, name, value)
        self.total_up.rate = self.total_down.rate = self.shape.total_rate

    def reset(self) -> None:
        opened = self.counters.open
        self.counters = Counters(window=self.counters.window + 1, open=opened)

    def _mark_used(self, conn: _Conn) -> None:
        c = self.counters
        if conn.window != c.window:
            conn.window = c.window
            conn.counted = True
            c.used += 1
            c.used_open += 1
            c.max_used_open = max(c.max_used_open, c.used_open)

    def _closed(self, conn: _Conn) -> None:
        self.counters.open -= 1
        if conn.counted and conn.window == self.counters.window:
            self.counters.used_open -= 1

    async def handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._live.add(task)
            task.add_done_callback(self._live.discard)
        conn = _Conn()
        self.counters.accepted += 1
        self.counters.open += 1
        try:
            up_r, up_w = await asyncio.wait_for(asyncio.open_connection(*self.upstream), CONNECT_TIMEOUT)
        except (TimeoutError, OSError):
            self._closed(conn)
            client_w.close()
            return
        for w in (client_w, up_w):
            sock = w.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.shape.rtt > 0:
                await asyncio.sleep(self.shape.rtt)  # the handshake
            pumps = [
                asyncio.ensure_future(self._direction(client_r, up_w, conn, up=True)),
                asyncio.ensure_future(self._direction(up_r, client_w, conn, up=False)),
            ]
            _done, pending = await asyncio.wait(pumps, return_when=asyncio.FIRST_EXCEPTION)
            for task in pending:
                task.cancel()
            for task in pending:
                with contextlib.suppress(BaseException):
                    await task
        finally:
            self._closed(conn)
            for w in (client_w, up_w):
                with contextlib.suppress(Exception):
                    w.close()

    async def _direction(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, conn: _Conn, *, up: bool
    ) -> None:
        """Relay one direction through a bounded delay line until EOF, then half-close."""
        queue: collections.deque[tuple[float, bytes]] = collections.deque()
        queued = 0
        have_data = asyncio.Event()
        room = asyncio.Event()
        room.set()
        eof = False

        def limit() -> float:
            rate = self.shape.conn_rate or self.shape.total_rate or UNSHAPED_RATE
            return rate * self.shape.rtt / 2 + QUEUE_SLACK

        async def read_side() -> None:
            nonlocal queued, eof
            try:
                while True:
                    while queued >= limit():
                        room.clear()
                        await room.wait()
                    data = await reader.read(READ_SIZE)
                    if not data:
                        return
                    queue.append((time.monotonic(), data))
                    queued += len(data)
                    have_data.set()
            except OSError:
                pass  # a reset is an end of stream: what was read is still relayed
            finally:
                eof = True
                have_data.set()

        reading = asyncio.ensure_future(read_side())
        bucket = TokenBucket(self.shape.conn_rate)
        shared = self.total_up if up else self.total_down
        try:
            while True:
                if not queue:
                    if eof:
                        break
                    have_data.clear()
                    await have_data.wait()
                    continue
                stamp, data = queue[0]
                due = stamp + self.shape.rtt / 2 - time.monotonic()
                if due > 0:
                    await asyncio.sleep(due)
                bucket.rate = self.shape.conn_rate
                wait = bucket.reserve(len(data), time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)
                wait = shared.reserve(len(data), time.monotonic())
                if wait > 0:
                    await asyncio.sleep(wait)
                queue.popleft()
                queued -= len(data)
                room.set()
                self._mark_used(conn)
                if up:
                    self.counters.bytes_up += len(data)
                else:
                    self.counters.bytes_down += len(data)
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        finally:
            reading.cancel()
            with contextlib.suppress(BaseException):
                await reading

    async def control(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = json.loads(await reader.readline() or b"{}")
            op = request.get("op")
            if op == "stats":
                reply: dict[str, Any] = {"ok": True, **self.counters.snapshot(), "shape": self.shape.describe()}
            elif op == "reset":
                self.reset()
                reply = {"ok": True}
            elif op == "config":
                self.configure(request)
                reply = {"ok": True, "shape": self.shape.describe()}
            else:
                reply = {"ok": False, "error": f"unknown op {op!r}"}
        except (ValueError, TypeError) as exc:
            reply = {"ok": False, "error": str(exc)}
        writer.write(json.dumps(reply).encode() + b"\n")
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()


async def serve(args: argparse.Namespace) -> None:
    host, _, port = args.upstream.rpartition(":")
    proxy = ShapingProxy(
        (host or "127.0.0.1", int(port)),
        LinkShape(rtt=args.rtt_ms / 1000, conn_rate=parse_rate(args.conn_rate), total_rate=parse_rate(args.total_rate)),
    )
    data = await asyncio.start_server(proxy.handle, "127.0.0.1", args.port, limit=2 * READ_SIZE, backlog=256)
    control = await asyncio.start_server(proxy.control, "127.0.0.1", args.control_port)
    ports = [s.getsockname()[1] for srv in (data, control) for s in srv.sockets[:1]]
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp"
        with open(tmp, "w") as f:
            f.write(f"{ports[0]} {ports[1]}\n")
        os.replace(tmp, args.ready_file)
    print(f"shaping proxy on 127.0.0.1:{ports[0]} (control {ports[1]}) -> {args.upstream}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with data, control:
        await stop.wait()


# -- the launcher ---------------------------------------------------------------------------


@dataclass
class ProxyHandle:
    """A running proxy process: its endpoint URL and control calls."""

    url: str
    port: int
    control_port: int
    proc: subprocess.Popen[bytes]

    def call(self, **request: Any) -> dict[str, Any]:
        """One control request (see the module docstring); its reply.

        Raises:
            RuntimeError: the proxy refused it.
        """
        with socket.create_connection(("127.0.0.1", self.control_port), timeout=CONTROL_TIMEOUT) as sock:
            sock.sendall(json.dumps(request).encode() + b"\n")
            reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
        if not reply.get("ok"):
            raise RuntimeError(f"shaping proxy refused {request}: {reply.get('error')}")
        return reply

    def stats(self) -> dict[str, Any]:
        return self.call(op="stats")

    def reset(self) -> None:
        self.call(op="reset")

    def configure(self, shape: LinkShape) -> None:
        self.call(op="config", **shape.describe())


@contextlib.contextmanager
def running_proxy(
    upstream: str, shape: LinkShape | None = None, *, log: IO[bytes] | None = None
) -> Iterator[ProxyHandle]:
    """Start the proxy in front of ``upstream`` (``http://127.0.0.1:PORT`` or ``HOST:PORT``) in
    its own process group; stop it, whatever happens.

    Raises:
        RuntimeError: it exited or did not listen within :data:`START_TIMEOUT`.
    """
    shape = shape or LinkShape()
    target = upstream.removeprefix("http://").rstrip("/")
    with tempfile.TemporaryDirectory(prefix="shaping-proxy-") as tmp:
        ready = Path(tmp) / "ports"
        cmd = [
            sys.executable,
            "-m",
            "devtools.shaping_proxy",
            f"--upstream={target}",
            f"--rtt-ms={shape.rtt * 1000}",
            f"--conn-rate={shape.conn_rate}",
            f"--total-rate={shape.total_rate}",
            f"--ready-file={ready}",
        ]
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log or subprocess.DEVNULL,
            stderr=log or subprocess.DEVNULL,
            cwd=Path(__file__).resolve().parent.parent,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only calls prctl
        )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not ready.exists():
                if proc.poll() is not None:
                    raise RuntimeError(f"shaping proxy exited with status {proc.returncode}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"shaping proxy did not listen within {START_TIMEOUT:.0f} s")
                time.sleep(0.05)
            port, control = (int(v) for v in ready.read_text().split())
            yield ProxyHandle(f"http://127.0.0.1:{port}", port, control, proc)
        finally:
            stop_process_group(proc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--upstream", required=True, help="HOST:PORT to relay to (loopback)")
    p.add_argument("--port", type=int, default=0, help="port to listen on (0: any free one)")
    p.add_argument("--control-port", type=int, default=0, help="control port (0: any free one)")
    p.add_argument("--rtt-ms", type=float, default=0.0, help="round trip added, in ms (0)")
    p.add_argument("--conn-rate", default="0", help="bytes/s per connection and direction, e.g. 25MB (0: none)")
    p.add_argument("--total-rate", default="0", help="bytes/s of all connections per direction (0: none)")
    p.add_argument("--ready-file", help="write 'PORT CONTROL_PORT' here once listening")
    args = p.parse_args(argv)
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
