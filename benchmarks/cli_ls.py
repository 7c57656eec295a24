"""``exportctl ls`` of many exports: manifests read one by one (``--workers 1``, the baseline,
as ``ls`` read them before) against the thread pool, in the same run.

    python benchmarks/cli_ls.py [--exports 1000] [--repeat 3] [--workers 4,16] [--latency-ms 0] [--markdown FILE]

Starts its own moto S3 server (own process, HTTP on loopback), writes ``--exports`` small
valid manifests under one prefix with the export key layout, then runs the whole ``ls``
command (listing, reads, plain lines to a pipe-like stdout) ``--repeat`` times per setting,
settings alternating; prints the median seconds and the speedup over the baseline.

A loopback moto answers a GET in about a millisecond of its own CPU, so the pool gains
little there; ``--latency-ms`` adds that much wait (a sleep, as a network round trip
would, in the thread sending the request) before each manifest GET, to show a remote store.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any


def _manifest(bucket: str, prefix: str, i: int) -> tuple[str, bytes]:
    """A valid manifest's key and body, under :mod:`worker.keys`' layout."""
    from serializer.archive.info import ArchiveInfo
    from serializer.manifest.model import MANIFEST_SUFFIX, Producer, Verification, build_manifest, spec_digest
    from worker.keys import HASH_DIGITS, TORCH_FOLDER

    name = f"bench-model-{i:05d}"
    spec = {"name": name, "builder": "worker.examples:tiny_classifier", "destination": f"s3://{bucket}/{prefix}"}
    digest = spec_digest(spec)
    base = f"{prefix}/{name}/{digest[:HASH_DIGITS]}/{TORCH_FOLDER}2.5.1_cpu/model"
    archive = ArchiveInfo(
        uri=f"s3://{bucket}/{base}.pt",
        size=10_000 + i,
        sha256=f"{i:064x}",
        etag='"etag"',
        format_version=3,
        archive_root="model",
        extra_files=(),
    )
    manifest = build_manifest(
        archive,
        spec=spec,
        spec_hash=digest,
        producer=Producer(torch="2.5.1+cpu", python="3.11.9", export_worker="0.1.0", device="cpu", host="bench"),
        verification=Verification(passed=True, max_abs_diff=0.0, atol=1e-5, rtol=1e-4),
        created_at=datetime(2025, 1, 2, tzinfo=UTC),
    )
    return base + MANIFEST_SUFFIX, manifest.to_json()


def _add_latency(seconds: float) -> None:
    """Each client ``ls`` makes from now on waits ``seconds`` before sending a GetObject."""
    from serializer.s3.client import make_s3_client as make_client
    from worker.cli import consumer

    def wait(**_: Any) -> None:
        time.sleep(seconds)

    def slow_client(**kwargs: Any) -> Any:
        client = make_client(**kwargs)
        client.meta.events.register("before-send.s3.GetObject", wait)
        return client

    consumer.make_s3_client = slow_client  # type: ignore[attr-defined]  # the name ls calls


def _ls_seconds(prefix: str, workers: int, exports: int) -> float:
    """One whole ``exportctl ls PREFIX --workers N``, its output to a buffer (not a terminal)."""
    from worker.cli import main

    stdout, stderr = io.StringIO(), io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["ls", prefix, "--workers", str(workers)])
    elapsed = time.perf_counter() - start
    lines = stdout.getvalue().count("\n")
    if status != 0 or lines != exports + 1:
        raise SystemExit(f"ls --workers {workers} failed ({status}, {lines} lines): {stderr.getvalue()[-500:]}")
    return elapsed


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--exports", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workers", default="4,16", help="pool sizes compared with the baseline (1)")
    parser.add_argument("--latency-ms", type=float, default=0.0, help="wait added before each manifest GET")
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from serializer.s3.client import make_s3_client
    from worker.cli.consumer import LS_WORKERS
    from worker.cli.demo_services import moto_server

    settings = [1, *(int(w) for w in args.workers.split(",") if int(w) != 1)]
    bucket, prefix = "ls-bench", "exports"
    with moto_server() as s3_url:
        os.environ.update(
            AWS_ENDPOINT_URL_S3=s3_url,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
        )
        client = make_s3_client(max_pool_connections=16)
        client.create_bucket(Bucket=bucket)

        def put(i: int) -> None:
            key, body = _manifest(bucket, prefix, i)
            client.put_object(Bucket=bucket, Key=key, Body=body)

        with ThreadPoolExecutor(16) as pool:
            list(pool.map(put, range(args.exports)))
        uri = f"s3://{bucket}/{prefix}"
        if args.latency_ms:
            _add_latency(args.latency_ms / 1000)
        _ls_seconds(uri, LS_WORKERS, args.exports)  # warm-up: imports, the server's first requests
        times: dict[int, list[float]] = {w: [] for w in settings}
        for _ in range(args.repeat):
            for workers in settings:
                times[workers].append(_ls_seconds(uri, workers, args.exports))

    base = statistics.median(times[1])
    rows = [
        "| workers | median s | min s | exports/s | speedup |",
        "|--------:|---------:|------:|----------:|--------:|",
    ]
    for workers in settings:
        median = statistics.median(times[workers])
        label = f"{workers} (baseline)" if workers == 1 else f"{workers}{' (default)' if workers == LS_WORKERS else ''}"
        rate, fastest = args.exports / median, min(times[workers])
        rows.append(f"| {label} | {median:.2f} | {fastest:.2f} | {rate:,.0f} | {base / median:.1f}x |")
    wait = f", {args.latency_ms:g} ms added before each GET" if args.latency_ms else ""
    title = f"`exportctl ls` of {args.exports} exports, moto server over HTTP{wait}, {args.repeat} runs each"
    table = "\n".join([title, "", *rows])
    print(table)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(table + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
