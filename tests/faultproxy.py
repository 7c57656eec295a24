"""A fault-injecting HTTP/1.1 reverse proxy for an S3 endpoint, for tests against a flaky store.

It runs as its own process, on loopback, in front of an S3 server on loopback (moto)::

    python -m tests.faultproxy --upstream http://127.0.0.1:5000 --port 0 --rate 0.1 \\
        --faults 500,slowdown,reset,reset-after,stall --ops all --seed 7 --ready-file port.txt

Each request is forwarded (method, path and query, headers, body) and the reply relayed,
except for a share ``rate`` of the requests whose S3 operation is in ``ops``: those get one
of the fault ``kinds``, picked at random:

``500``
    an ``InternalError`` reply (HTTP 500, S3's XML error body).
``slowdown``
    a ``SlowDown`` reply (HTTP 503).
``reset``
    the connection is reset (``SO_LINGER`` 0: the client sees ECONNRESET); nothing reached
    the store.
``reset-after``
    the request reached the store and was carried out, then the connection is reset: the
    reply is lost.  A retried non-idempotent request meets the effect of the first try.
``stall``
    nothing is answered for ``stall_seconds``, then the connection is reset (a client whose
    read timeout is shorter times out first).
``truncate``
    the request reached the store; the reply's headers and half its body are sent, then
    the connection is closed.  The client sees a short body, never wrong bytes (a reply
    without a body is lost as with ``reset-after``).

For requests with ``Expect: 100-continue`` (botocore sends it with file-like bodies) half
of the ``500``/``slowdown``/``reset`` faults are injected before ``100 Continue``, as S3
answers early errors, so the body is never sent.  No fault changes a byte that reaches
either side: every fault is a reply the client can tell from a good one.

Control, on the proxy itself: ``GET /__faults__`` returns the counters as JSON (requests per bucket, requests per
operation, faults per operation and kind, recent faults, multipart uploads whose creation
reply was lost); ``POST /__faults__`` with a JSON object changes the configuration at run
time (``rate``, ``ops``, ``faults``, ``limit``, ``after``, ``stall_seconds``, ``seed``,
``rules``), ``{"reset": true}`` zeroes the counters, and ``{"trace": true}`` also lists the
requests relayed without a fault in the recent events.  ``rules`` is a list of ``{"ops",
"faults", "rate", "limit", "after"}``: the first rule that matches a request and has budget
left decides its fault, so that e.g. "one lost reply on Complete, then three 500s on
HeadObject" can be scripted.

:func:`fault_proxy` starts the process from a test and yields a :class:`ProxyHandle`.
Only the standard library is used; every wait is bounded.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import http.client
import ipaddress
import json
import os
import random
import re
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

#: Every fault this proxy knows.
FAULT_KINDS = ("500", "slowdown", "reset", "reset-after", "stall", "truncate")
#: Faults that may be answered before ``100 Continue`` (the body is then never read).
EARLY_KINDS = frozenset({"500", "slowdown", "reset"})
#: Path of the control endpoint (not a valid bucket name, so never an S3 request).
CONTROL_PATH = "/__faults__"
#: Largest request or reply body relayed (a part is 5 MiB..5 GiB; the tests use small ones).
MAX_BODY = 256 * 1024**2
#: Seconds an idle client connection is kept open.
IDLE_TIMEOUT = 120.0
#: Seconds to connect to, and wait on, the upstream server.
UPSTREAM_TIMEOUT = 60.0
#: Longest stall allowed, whatever is asked.
MAX_STALL = 300.0
#: Faults remembered in the stats, most recent last.
EVENTS_KEPT = 500
#: Most chunks and trailer lines read from one chunked request body.
MAX_CHUNKS = 1_000_000
MAX_TRAILERS = 100
#: Headers that describe one connection, not the message (RFC 9110 7.6.1), and the ones
#: this proxy sets itself.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "proxy-connection",
        "te",
        "trailer",
        "trailers",
        "transfer-encoding",
        "upgrade",
        "expect",
        "content-length",
    }
)
#: Seconds :func:`fault_proxy` waits for the process to be ready, and to stop.
START_TIMEOUT = 20.0
STOP_GRACE = 5.0


# -- which S3 operation a request is ---------------------------------------------------------


def classify(method: str, target: str, header_names: Iterable[str] = ()) -> str:
    """The S3 operation of a path-style request (``/bucket/key?query``), by method and query
    (and ``x-amz-copy-source`` among the request's header names)."""
    parts = urlsplit(target)
    query = {k for k, _ in parse_qsl(parts.query, keep_blank_values=True)}
    segments = parts.path.lstrip("/").split("/", 1)
    bucket = segments[0]
    is_object = len(segments) == 2 and segments[1] != ""
    copy = any(k.lower() == "x-amz-copy-source" for k in header_names)
    method = method.upper()
    if not bucket:
        return "ListBuckets" if method == "GET" else f"{method}Service"
    if is_object:
        if "uploadId" in query:
            if method == "PUT" and "partNumber" in query:
                return "UploadPartCopy" if copy else "UploadPart"
            return {
                "POST": "CompleteMultipartUpload",
                "DELETE": "AbortMultipartUpload",
                "GET": "ListParts",
            }.get(method, f"{method}Upload")
        if "uploads" in query and method == "POST":
            return "CreateMultipartUpload"
        for sub, name in (("tagging", "ObjectTagging"), ("acl", "ObjectAcl"), ("retention", "ObjectRetention")):
            if sub in query:
                return {"GET": "Get", "PUT": "Put", "DELETE": "Delete"}.get(method, method) + name
        return {
            "GET": "GetObject",
            "HEAD": "HeadObject",
            "PUT": "CopyObject" if copy else "PutObject",
            "DELETE": "DeleteObject",
            "POST": "PostObject",
        }.get(method, f"{method}Object")
    if method == "GET":
        if "uploads" in query:
            return "ListMultipartUploads"
        if "versions" in query:
            return "ListObjectVersions"
        if "location" in query:
            return "GetBucketLocation"
        if "list-type" in query:
            return "ListObjectsV2"
        listing = {"prefix", "delimiter", "marker", "max-keys", "encoding-type"}
        return "ListObjects" if query <= listing else "GetBucketOther"
    if method == "POST" and "delete" in query:
        return "DeleteObjects"
    if method == "PUT":
        return "CreateBucket" if not query else "PutBucketOther"
    return {"HEAD": "HeadBucket", "DELETE": "DeleteBucket"}.get(method, f"{method}Bucket")


# -- what to inject ---------------------------------------------------------------------------


def _parse_list(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        return tuple(p.strip() for p in value.split(",") if p.strip())
    return tuple(str(v) for v in value)


@dataclass
class Rule:
    """Inject one of ``faults`` into a share ``rate`` of the requests for ``ops`` (None: all
    operations), at most ``limit`` times (None: no limit), once ``after`` of them passed."""

    ops: frozenset[str] | None
    faults: tuple[str, ...]
    rate: float
    limit: int | None = None
    #: Matching requests let through before the rule applies.
    after: int = 0
    injected: int = 0
    seen: int = 0

    @classmethod
    def parse(cls, data: Mapping[str, Any], base: Rule | None = None) -> Rule:
        ops_value = data.get("ops", "all" if base is None or base.ops is None else sorted(base.ops))
        ops = _parse_list(ops_value)
        faults = _parse_list(data["faults"]) if "faults" in data else (base.faults if base else ("500",))
        unknown = [f for f in faults if f not in FAULT_KINDS]
        if unknown or not faults:
            raise ValueError(f"unknown fault kinds {unknown} (known: {', '.join(FAULT_KINDS)})")
        rate = float(data.get("rate", base.rate if base else 0.0))
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must lie in [0, 1], got {rate}")
        limit = data.get("limit", base.limit if base else None)
        if limit is not None and int(limit) < 0:
            raise ValueError(f"limit must be >= 0, got {limit}")
        after = int(data.get("after", base.after if base else 0))
        if after < 0:
            raise ValueError(f"after must be >= 0, got {after}")
        return cls(
            ops=None if ops in ((), ("all",)) else frozenset(ops),
            faults=faults,
            rate=rate,
            limit=None if limit is None else int(limit),
            after=after,
        )

    def describe(self) -> dict[str, Any]:
        return {
            "ops": "all" if self.ops is None else sorted(self.ops),
            "faults": list(self.faults),
            "rate": self.rate,
            "limit": self.limit,
            "after": self.after,
            "injected": self.injected,
            "seen": self.seen,
        }


@dataclass
class FaultState:
    """The configuration and the counters, shared by the proxy's threads (under ``lock``)."""

    rules: list[Rule]
    stall_seconds: float
    seed: int
    #: Whether a request gets a fault: one draw per matching request, in arrival order, so
    #: the share of faulted requests does not depend on how the other draws interleave.
    rng: random.Random = field(init=False)
    #: Which fault, and whether it comes before ``100 Continue``.
    pick: random.Random = field(init=False)
    lock: threading.Lock = field(default_factory=threading.Lock)
    requests: collections.Counter[str] = field(default_factory=collections.Counter)
    #: Requests per bucket (the first segment of a path-style request; "" for the service).
    buckets: collections.Counter[str] = field(default_factory=collections.Counter)
    faults: dict[str, collections.Counter[str]] = field(default_factory=dict)
    events: collections.deque[dict[str, Any]] = field(default_factory=lambda: collections.deque(maxlen=EVENTS_KEPT))
    lost_uploads: list[dict[str, str]] = field(default_factory=list)
    upstream_errors: int = 0
    seq: int = 0
    #: Also remember the requests that got no fault (kind ``"pass"``) in ``events``.
    trace: bool = False

    def __post_init__(self) -> None:
        self._seed(self.seed)

    def _seed(self, seed: int) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.pick = random.Random(seed + 1)

    def decide(self, op: str, bucket: str = "") -> str | None:
        """Count a request for ``op`` to ``bucket``; the fault to inject into it, if any."""
        with self.lock:
            self.requests[op] += 1
            self.buckets[bucket] += 1
            for rule in self.rules:
                if rule.ops is not None and op not in rule.ops:
                    continue
                if rule.limit is not None and rule.injected >= rule.limit:
                    continue
                rule.seen += 1
                if rule.seen > rule.after and rule.rate > 0 and self.rng.random() < rule.rate:
                    rule.injected += 1
                    return self.pick.choice(rule.faults)
            return None

    def coin(self) -> bool:
        with self.lock:
            return self.pick.random() < 0.5

    def record(self, op: str, kind: str, method: str, target: str, **info: Any) -> None:
        """Count a fault of ``kind`` (``"pass"``: a request relayed as it was, traced only)."""
        with self.lock:
            if kind == "pass" and not self.trace:
                return
            self.seq += 1
            if kind != "pass":
                self.faults.setdefault(op, collections.Counter())[kind] += 1
            self.events.append({"n": self.seq, "op": op, "kind": kind, "method": method, "target": target, **info})

    def configure(self, data: Mapping[str, Any]) -> None:
        """Apply a control request (see the module docstring); nothing changes if it is invalid.

        Raises:
            ValueError, TypeError, KeyError: a bad value.
        """
        with self.lock:
            rules = self.rules
            if "rules" in data:
                rules = [Rule.parse(r) for r in data["rules"]]
            elif any(k in data for k in ("rate", "ops", "faults", "limit", "after")):
                rules = [Rule.parse(data, self.rules[0] if self.rules else None)]
            stall = float(data.get("stall_seconds", self.stall_seconds))
            seed = int(data["seed"]) if "seed" in data else None
            self.rules = rules
            self.stall_seconds = min(MAX_STALL, max(0.0, stall))
            if seed is not None:
                self._seed(seed)
            if "trace" in data:
                self.trace = bool(data["trace"])
            if data.get("reset"):
                self.requests.clear()
                self.buckets.clear()
                self.faults.clear()
                self.events.clear()
                self.lost_uploads.clear()
                self.upstream_errors = 0
                for rule in self.rules:
                    rule.injected = rule.seen = 0

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "config": {
                    "rules": [r.describe() for r in self.rules],
                    "stall_seconds": self.stall_seconds,
                    "seed": self.seed,
                    "trace": self.trace,
                },
                "requests": dict(self.requests),
                "buckets": dict(self.buckets),
                "faults": {op: dict(kinds) for op, kinds in self.faults.items()},
                "total_requests": sum(self.requests.values()),
                "total_faults": sum(sum(k.values()) for k in self.faults.values()),
                "lost_uploads": list(self.lost_uploads),
                "upstream_errors": self.upstream_errors,
                "events": list(self.events),
            }


# -- the proxy --------------------------------------------------------------------------------


#: An upstream reply: status, reason, headers, body.
Reply = tuple[int, str, list[tuple[str, str]], bytes]


class BodyError(Exception):
    """Raised when a request body cannot be read (too large, malformed, cut short)."""


def _error_xml(code: str, message: str) -> bytes:
    request_id = f"{random.getrandbits(64):016X}"
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f"<Error><Code>{code}</Code><Message>{message}</Message>"
        f"<RequestId>{request_id}</RequestId><HostId>faultproxy</HostId></Error>"
    ).encode()


_INJECTED_ERRORS = {
    "500": (500, "InternalError", "We encountered an internal error. Please try again. (injected)"),
    "slowdown": (503, "SlowDown", "Please reduce your request rate. (injected)"),
}


class ProxyServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], upstream: str, state: FaultState) -> None:
        parts = urlsplit(upstream)
        if parts.scheme != "http" or not parts.hostname or parts.port is None:
            raise ValueError(f"upstream must be http://HOST:PORT, got {upstream!r}")
        if not _is_loopback(parts.hostname):
            raise ValueError(f"upstream must be on loopback, got {parts.hostname!r}")
        self.upstream_host, self.upstream_port = parts.hostname, parts.port
        self.state = state
        self.stopping = threading.Event()
        super().__init__(address, ProxyHandler)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class ProxyHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: ProxyServer
    timeout = IDLE_TIMEOUT

    _fault: str | None = None
    _decided = False
    _op = ""

    def log_message(self, format: str, *args: Any) -> None:
        if os.environ.get("FAULTPROXY_VERBOSE"):
            super().log_message(format, *args)

    # -- per request ----------------------------------------------------------------------
    def parse_request(self) -> bool:
        self._fault, self._decided, self._op = None, False, ""
        return super().parse_request()

    def _is_control(self) -> bool:
        return urlsplit(self.path).path == CONTROL_PATH

    def _decide(self) -> str | None:
        if not self._decided:
            self._op = classify(self.command, self.path, self.headers.keys())
            bucket = unquote(urlsplit(self.path).path.lstrip("/").partition("/")[0])
            self._fault = self.server.state.decide(self._op, bucket)
            self._decided = True
        return self._fault

    def handle_expect_100(self) -> bool:
        if self._is_control():
            return super().handle_expect_100()
        fault = self._decide()
        if fault in EARLY_KINDS and self.server.state.coin():
            # Answered before the body is sent, as S3 does; the connection is not reused.
            self._inject(fault, early=True)
            return False
        return super().handle_expect_100()

    def do_GET(self) -> None:
        try:
            self._serve()
        except (ConnectionError, TimeoutError):
            # The client went away (or stopped sending) mid-request: nothing more to do with it.
            self.close_connection = True

    do_PUT = do_POST = do_DELETE = do_HEAD = do_PATCH = do_OPTIONS = do_GET

    def _serve(self) -> None:
        if self._is_control():
            self._control()
            return
        fault = self._decide()
        try:
            body, trailers = self._read_body()
        except BodyError as exc:
            self._reply(413 if "large" in str(exc) else 400, "InvalidRequest", str(exc), close=True)
            return
        if fault in ("500", "slowdown", "reset"):
            self._inject(fault, early=False)
            return
        if fault == "stall":
            self.server.state.record(self._op, fault, self.command, self.path)
            self.server.stopping.wait(self.server.state.stall_seconds)
            self._abort()
            return
        response = self._forward(body, trailers)
        if response is None:
            return
        status, reason, headers, data = response
        if fault in ("reset-after", "truncate"):
            info: dict[str, Any] = {"upstream_status": status}
            if self._op == "CreateMultipartUpload" and status == 200:
                upload = _upload_of(data)
                if upload:
                    info["upload_id"] = upload["upload_id"]
                    with self.server.state.lock:
                        self.server.state.lost_uploads.append(upload)
            self.server.state.record(self._op, fault, self.command, self.path, **info)
            if fault == "truncate" and data and self.command != "HEAD":
                # Half the body, then the connection is closed (FIN, not RST, so the client reads
                # the half it got and then finds the body short).
                self._send_head(status, reason, headers, len(data))
                with contextlib.suppress(OSError):
                    self.wfile.write(data[: len(data) // 2])
                self.close_connection = True
                return
            self._abort()
            return
        self.server.state.record(self._op, "pass", self.command, self.path, upstream_status=status)
        self._send_head(status, reason, headers, len(data))
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    # -- pieces ---------------------------------------------------------------------------
    def _read_body(self) -> tuple[bytes, list[tuple[str, str]]]:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            return self._read_chunked()
        length = self.headers.get("Content-Length")
        if length is None:
            return b"", []
        try:
            n = int(length)
        except ValueError:
            raise BodyError(f"bad Content-Length {length!r}") from None
        if n < 0 or n > MAX_BODY:
            raise BodyError(f"body too large or negative: {n} bytes (at most {MAX_BODY})")
        data = self.rfile.read(n)
        if len(data) != n:
            raise BodyError(f"body cut short: {len(data)} of {n} bytes")
        return data, []

    def _read_chunked(self) -> tuple[bytes, list[tuple[str, str]]]:
        out = bytearray()
        for _ in range(MAX_CHUNKS):
            line = self.rfile.readline(1024)
            try:
                size = int(line.split(b";", 1)[0].strip(), 16)
            except ValueError:
                raise BodyError(f"bad chunk size line {line[:40]!r}") from None
            if size == 0:
                break
            if len(out) + size > MAX_BODY:
                raise BodyError(f"chunked body too large (over {MAX_BODY} bytes)")
            chunk = self.rfile.read(size)
            if len(chunk) != size or self.rfile.readline(1024) not in (b"\r\n", b"\n"):
                raise BodyError("chunked body cut short or malformed")
            out += chunk
        else:
            raise BodyError(f"more than {MAX_CHUNKS} chunks")
        trailers: list[tuple[str, str]] = []
        for _ in range(MAX_TRAILERS):
            line = self.rfile.readline(8192)
            if line in (b"\r\n", b"\n", b""):
                return bytes(out), trailers
            name, _, value = line.decode("latin-1").partition(":")
            trailers.append((name.strip(), value.strip()))
        raise BodyError(f"more than {MAX_TRAILERS} trailer fields")

    def _forward(self, body: bytes, trailers: list[tuple[str, str]]) -> Reply | None:
        """Send the request upstream; its reply, or None after answering 502 to the client."""
        conn = http.client.HTTPConnection(
            self.server.upstream_host, self.server.upstream_port, timeout=UPSTREAM_TIMEOUT
        )
        try:
            conn.putrequest(self.command, self.path, skip_host=True, skip_accept_encoding=True)
            for name, value in self.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    conn.putheader(name, value)
            for name, value in trailers:
                conn.putheader(name, value)
            if body or "Content-Length" in self.headers or "Transfer-Encoding" in self.headers:
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body or None)
            resp = conn.getresponse()
            data = resp.read(MAX_BODY + 1)
            if len(data) > MAX_BODY:
                raise OSError(f"upstream reply over {MAX_BODY} bytes")
            return resp.status, resp.reason, resp.getheaders(), data
        except (OSError, http.client.HTTPException) as exc:
            with self.server.state.lock:
                self.server.state.upstream_errors += 1
            self._reply(502, "BadGateway", f"upstream: {type(exc).__name__}: {exc}", close=True)
            return None
        finally:
            conn.close()

    def _send_head(self, status: int, reason: str, headers: list[tuple[str, str]], length: int) -> None:
        self.send_response_only(status, reason)
        upstream_length = None
        for name, value in headers:
            lower = name.lower()
            if lower == "content-length":
                upstream_length = value
            elif lower not in HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            # A HEAD reply's length is the object's, not the (empty) body's.
            if upstream_length is not None:
                self.send_header("Content-Length", upstream_length)
        elif status not in (204, 304) and not 100 <= status < 200:
            self.send_header("Content-Length", str(length))
        self.end_headers()

    def _inject(self, kind: str, *, early: bool) -> None:
        self.server.state.record(self._op, kind, self.command, self.path, early=early)
        if kind == "reset":
            self._abort()
            return
        status, code, message = _INJECTED_ERRORS[kind]
        self._reply(status, code, message, close=early)

    def _reply(self, status: int, code: str, message: str, *, close: bool) -> None:
        body = _error_xml(code, message) if self.command != "HEAD" else b""
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("x-amz-request-id", "faultproxy")
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        with contextlib.suppress(OSError):
            self.wfile.write(body)

    def _abort(self) -> None:
        """Reset the client's connection: SO_LINGER 0, so close() sends RST, not FIN."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        # The reader holds a reference to the socket: closed first, so the socket really closes now.
        with contextlib.suppress(OSError):
            self.rfile.close()
        with contextlib.suppress(OSError):
            self.connection.close()

    def _control(self) -> None:
        try:
            if self.command == "POST":
                length = int(self.headers.get("Content-Length", "0"))
                if not 0 <= length <= 1024**2:
                    raise ValueError("control body too large")
                data = json.loads(self.rfile.read(length) or b"{}")
                if not isinstance(data, dict):
                    raise ValueError("expected a JSON object")
                self.server.state.configure(data)
            elif self.command != "GET":
                raise ValueError(f"{self.command} is not supported on {CONTROL_PATH}")
            body, status = json.dumps(self.server.state.snapshot()).encode(), 200
        except (ValueError, KeyError, TypeError) as exc:
            body, status = json.dumps({"error": str(exc)}).encode(), 400
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _upload_of(data: bytes) -> dict[str, str] | None:
    """Bucket, key and upload id from a CreateMultipartUpload reply."""
    text = data.decode("utf-8", "replace")
    found = {tag: re.search(f"<{tag}>(.*?)</{tag}>", text) for tag in ("Bucket", "Key", "UploadId")}
    if found["UploadId"] is None:
        return None
    return {
        "bucket": found["Bucket"].group(1) if found["Bucket"] else "",
        "key": found["Key"].group(1) if found["Key"] else "",
        "upload_id": found["UploadId"].group(1),
    }


# -- command line -----------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.faultproxy", description=__doc__.split("\n\n")[0])
    parser.add_argument("--upstream", required=True, help="http://127.0.0.1:PORT of the S3 server")
    parser.add_argument("--host", default="127.0.0.1", help="loopback address to listen on")
    parser.add_argument("--port", type=int, default=0, help="port to listen on (0: a free one)")
    parser.add_argument("--rate", type=float, default=0.0, help="share of matching requests that get a fault")
    parser.add_argument("--faults", default="500,slowdown,reset,reset-after,stall", help="fault kinds, comma-separated")
    parser.add_argument("--ops", default="all", help="S3 operations to inject into, comma-separated, or 'all'")
    parser.add_argument("--limit", type=int, default=None, help="inject at most this many faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--stall-seconds", type=float, default=2.0)
    parser.add_argument("--ready-file", default=None, help="write the chosen port here once listening")
    args = parser.parse_args(argv)
    if not _is_loopback(args.host):
        parser.error(f"--host must be a loopback address, got {args.host!r}")

    try:
        rule = Rule.parse({"ops": args.ops, "faults": args.faults, "rate": args.rate, "limit": args.limit})
        state = FaultState([rule], stall_seconds=min(MAX_STALL, max(0.0, args.stall_seconds)), seed=args.seed)
        server = ProxyServer((args.host, args.port), args.upstream, state)
    except ValueError as exc:
        parser.error(str(exc))
    port = server.server_address[1]

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    if args.ready_file:
        tmp = f"{args.ready_file}.tmp"
        Path(tmp).write_text(str(port))
        os.replace(tmp, args.ready_file)
    sys.stdout.write(f"faultproxy listening on http://{args.host}:{port} -> {args.upstream}\n")
    sys.stdout.flush()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.stopping.set()
        server.server_close()
    return 0


# -- from a test --------------------------------------------------------------------------------


@dataclass
class ProxyHandle:
    """A running proxy: its URL, its counters and its configuration."""

    url: str
    proc: subprocess.Popen[bytes]
    log_path: Path

    def _call(self, method: str, data: Mapping[str, Any] | None = None) -> dict[str, Any]:
        body = None if data is None else json.dumps(data).encode()
        request = urllib.request.Request(self.url + CONTROL_PATH, data=body, method=method)
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=30) as reply:
            result: dict[str, Any] = json.loads(reply.read())
        return result

    def requests_to(self, bucket: str) -> int:
        """How many requests for ``bucket`` reached the proxy (path-style addressing)."""
        return int(self.stats()["buckets"].get(bucket, 0))

    def stats(self) -> dict[str, Any]:
        """The counters and configuration (see the module docstring)."""
        return self._call("GET")

    def configure(self, **options: Any) -> dict[str, Any]:
        """Change ``rate``, ``ops``, ``faults``, ``limit``, ``after``, ``stall_seconds``,
        ``seed``, ``trace`` or ``rules``; ``reset=True`` zeroes the counters.  Returns the stats."""
        return self._call("POST", options)

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError as exc:
            return f"(no log: {exc})"


@contextlib.contextmanager
def fault_proxy(
    upstream: str,
    *,
    rate: float = 0.0,
    faults: str | list[str] = "500,slowdown,reset,reset-after,stall",
    ops: str | list[str] = "all",
    limit: int | None = None,
    seed: int = 0,
    stall_seconds: float = 2.0,
) -> Iterator[ProxyHandle]:
    """Run the proxy in front of ``upstream`` in its own process until the block ends."""
    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="faultproxy-") as tmp:
        ready, log_path = Path(tmp) / "port", Path(tmp) / "proxy.log"
        command = [sys.executable, "-m", "tests.faultproxy", "--upstream", upstream, "--port", "0"]
        command += ["--rate", str(rate), "--faults", ",".join(_parse_list(faults)), "--ops", ",".join(_parse_list(ops))]
        command += ["--seed", str(seed), "--stall-seconds", str(stall_seconds), "--ready-file", str(ready)]
        if limit is not None:
            command += ["--limit", str(limit)]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(root), env.get("PYTHONPATH", "")) if p)
        with log_path.open("wb") as log:
            proc = subprocess.Popen(
                command, cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not ready.exists():
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"faultproxy did not start:\n{log_path.read_text(errors='replace')}")
                time.sleep(0.05)
            yield ProxyHandle(f"http://127.0.0.1:{int(ready.read_text())}", proc, log_path)
        finally:
            _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=STOP_GRACE)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=STOP_GRACE)


if __name__ == "__main__":
    sys.exit(main())
