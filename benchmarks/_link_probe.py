"""The link benchmark's ceilings, measured in the same run before the rows: the store's raw
ingest and egress (parallel UploadParts of a prepared part, parallel ranged GETs; no
serialization) and the shaping proxy's own unshaped ceiling (parallel streams into a sink)."""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError

from devtools.shaping_proxy import LinkShape, running_proxy

from ._common import MiB
from ._export_common import BUCKET, plain_client

#: Part size and parts of the raw ingest probe (prepared in memory once).
PROBE_PART = 8 * MiB
#: Bytes each stream pushes through the proxy when its ceiling is measured.
SINK_CHUNK = 1 * MiB


@dataclass
class Ceiling:
    """One probe: bytes moved, seconds, connections."""

    what: str
    nbytes: int
    seconds: float
    connections: int

    @property
    def rate(self) -> float:
        """Bytes per second."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0


def _timed(what: str, nbytes: int, connections: int, work: Callable[[], None]) -> Ceiling:
    start = time.perf_counter()
    work()
    return Ceiling(what, nbytes, time.perf_counter() - start, connections)


def store_ceilings(url: str, checksum_mode: str, total: int, connections: int) -> tuple[Ceiling, Ceiling]:
    """Raw ingest (UploadPart of one prepared part, ``connections`` at once, ``total`` bytes)
    and raw egress (ranged GETs of the completed object, as many at once) of the store at ``url``."""
    client = plain_client(url, checksum_mode, max_pool_connections=connections + 2, read_timeout=300)
    payload = os.urandom(PROBE_PART)
    parts = max(1, total // PROBE_PART)
    key = f"probe/raw-{uuid.uuid4().hex[:8]}"
    upload_id = client.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
    etags: dict[int, str] = {}
    try:

        def put(number: int) -> None:
            reply = client.upload_part(Bucket=BUCKET, Key=key, UploadId=upload_id, PartNumber=number, Body=payload)
            etags[number] = reply["ETag"]

        def ingest() -> None:
            with ThreadPoolExecutor(connections) as pool:
                list(pool.map(put, range(1, parts + 1)))

        put(1)  # warm the pool's first connection and the store's volume
        up = _timed("store raw ingest (UploadPart)", parts * PROBE_PART, connections, ingest)
        client.complete_multipart_upload(
            Bucket=BUCKET,
            Key=key,
            UploadId=upload_id,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in sorted(etags)]},
        )
        upload_id = ""

        def get(number: int) -> None:
            start = (number - 1) * PROBE_PART
            reply = client.get_object(Bucket=BUCKET, Key=key, Range=f"bytes={start}-{start + PROBE_PART - 1}")
            for _ in reply["Body"].iter_chunks(MiB):
                pass

        def egress() -> None:
            with ThreadPoolExecutor(connections) as pool:
                list(pool.map(get, range(1, parts + 1)))

        down = _timed("store raw egress (ranged GET)", parts * PROBE_PART, connections, egress)
        return up, down
    finally:
        with contextlib.suppress(BotoCoreError, ClientError):
            if upload_id:
                client.abort_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload_id)
            client.delete_object(Bucket=BUCKET, Key=key)


def proxy_ceiling(total: int, connections: int) -> tuple[Ceiling, dict[str, Any]]:
    """The unshaped proxy's throughput: ``connections`` streams of ``total / connections``
    bytes each through it into a sink in this process; and the proxy's counters."""
    sink = socket.create_server(("127.0.0.1", 0), backlog=64)
    received: list[int] = []

    def drain(conn: socket.socket) -> None:
        n = 0
        with conn:
            while chunk := conn.recv(4 * SINK_CHUNK):
                n += len(chunk)
            received.append(n)
            conn.sendall(b"ok")

    def accept() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _ = sink.accept()
                threading.Thread(target=drain, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    each = max(SINK_CHUNK, total // connections // SINK_CHUNK * SINK_CHUNK)
    buffer = b"\0" * SINK_CHUNK
    try:
        with running_proxy(f"127.0.0.1:{sink.getsockname()[1]}", LinkShape()) as proxy:

            def push(_: int) -> None:
                with socket.create_connection(("127.0.0.1", proxy.port)) as conn:
                    for _ in range(each // SINK_CHUNK):
                        conn.sendall(buffer)
                    conn.shutdown(socket.SHUT_WR)
                    conn.recv(16)

            def run() -> None:
                with ThreadPoolExecutor(connections) as pool:
                    list(pool.map(push, range(connections)))

            ceiling = _timed("shaping proxy, unshaped (into a sink)", each * connections, connections, run)
            stats = proxy.stats()
    finally:
        sink.close()
    if sum(received) != each * connections:
        raise RuntimeError(f"the proxy relayed {sum(received)} B of {each * connections} B")
    return ceiling, stats
