"""End-to-end latency of tiny exports: enqueue to result through Redis and a real worker,
against the in-process floor (the same ``run_export``, no Celery) in the same run.

    python benchmarks/latency.py [--jobs 100] [--warmup 5] [--markdown FILE]

Starts its own redis-server, moto S3 server (own process) and one Celery worker process
(``-c 1``), all on loopback.  Each job is a distinct spec (its name carries the job number)
so nothing is skipped; the two paths alternate job by job.  Target: p50 within 30 ms of the floor's p50.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from typing import Any

#: Target: the p50 through Celery may exceed the in-process p50 by at most this much.
TARGET_OVERHEAD_MS = 30.0


def _spec(i: int, bucket: str, tag: str) -> dict[str, Any]:
    return {
        "name": f"lat-{tag}-{i}",
        "builder": "worker.examples:tiny_classifier",
        "example_inputs": [{"shape": [2, 16]}],
        "extra_files": {"labels.txt": "a\nb\nc\nd\n"},
        "destination": f"s3://{bucket}/latency",
    }


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--markdown", help="also write the table to this file")
    args = parser.parse_args()

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from worker.cli.demo_services import celery_worker, moto_server, redis_server

    bucket = "latency-bench"
    with tempfile.TemporaryDirectory() as tmp, redis_server() as redis_url, moto_server() as s3_url:
        env = dict(
            os.environ,
            CELERY_BROKER_URL=redis_url,
            AWS_ENDPOINT_URL_S3=s3_url,
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1",
            EXPORT_SPOOL_DIR=tmp,
        )
        os.environ.update(env)
        from serializer.s3.client import make_s3_client
        from worker.celery import app
        from worker.export import run_export
        from worker.settings import Settings
        from worker.spec import parse_spec
        from worker.tasks import export_model

        client = make_s3_client(max_pool_connections=8)
        client.create_bucket(Bucket=bucket)
        settings = Settings()

        with celery_worker(env, log_path=os.path.join(tmp, "worker.log")) as proc:
            deadline = time.monotonic() + 90
            while not app.control.ping(timeout=0.5):
                if proc.poll() is not None or time.monotonic() > deadline:
                    print("worker did not start", file=sys.stderr)
                    return 1
            # Interleaved, so that whatever else the machine does weighs on both alike.
            floor: list[float] = []
            celery: list[float] = []
            for i in range(args.warmup + args.jobs):
                spec = parse_spec(_spec(i, bucket, "floor"))
                start = time.perf_counter()
                result = run_export(spec, settings=settings, client=client)
                in_process = time.perf_counter() - start
                assert not result["skipped"]

                start = time.perf_counter()
                result = export_model.delay(_spec(i, bucket, "celery")).get(timeout=120)
                through_celery = time.perf_counter() - start
                assert not result["skipped"]
                if i >= args.warmup:
                    floor.append(in_process * 1000)
                    celery.append(through_celery * 1000)

    rows = [("in-process floor (run_export)", floor), ("export_model.delay -> result", celery)]
    lines = [
        "| path | jobs | p50 ms | p95 ms | mean ms |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, values in rows:
        lines.append(
            f"| {label} | {len(values)} | {_percentile(values, 0.5):.1f} | {_percentile(values, 0.95):.1f} | "
            f"{statistics.fmean(values):.1f} |"
        )
    overhead = _percentile(celery, 0.5) - _percentile(floor, 0.5)
    verdict = "PASS" if overhead <= TARGET_OVERHEAD_MS else "FAIL"
    lines.append("")
    lines.append(f"**{verdict}** p50 overhead {overhead:.1f} ms (target <= {TARGET_OVERHEAD_MS:.0f} ms)")
    text = "\n".join(lines)
    print(text)
    if args.markdown:
        with open(args.markdown, "w", encoding="utf-8") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
