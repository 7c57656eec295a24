"""The bulk benchmark's memory phase: the dispatcher's peak memory on synthetic listings, one
measurement per process (the protocol of :mod:`devtools.child`)."""

from __future__ import annotations

import argparse
import json
import time
import traceback
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

from devtools.child import child_protocol, measure_child, send, wait_for_go

from ._bulk_common import (
    MEASURE_TIMEOUT,
    POLICY,
    PUT_THREADS,
    SAMPLE_INTERVAL,
    STALE_EVERY,
    STALE_TORCH,
    TARGET_MEMORY_RATIO,
    WARMUP_MANIFESTS,
    BenchFailure,
    new_bucket,
    render_table,
    tail_of,
    tiny_spec,
)
from ._common import REPO_ROOT, MiB


# -- memory: the synthetic listing ---------------------------------------------------------------
def _template_manifest(client: Any, bucket: str) -> dict[str, Any]:
    """The manifest of one real export (in this process), as JSON data."""
    from serializer.manifest.store import read_manifest
    from worker.export import run_export
    from worker.settings import Settings
    from worker.spec import parse_spec

    result = run_export(parse_spec(tiny_spec(0, bucket, "template")), settings=Settings(), client=client)
    data: dict[str, Any] = json.loads(read_manifest(client, result["manifest_uri"]).to_json())
    return data


def _put_listing(client: Any, bucket: str, n: int, template: dict[str, Any]) -> int:
    """Put ``n`` manifests of distinct specs under ``s3://bucket/models``; returns how many are stale."""
    import torch

    from serializer.manifest.model import Manifest, canonical_json
    from worker.keys import export_keys
    from worker.spec import parse_spec

    def body(i: int) -> tuple[str, bytes]:
        spec = parse_spec(tiny_spec(i, bucket, "mem"))
        keys = export_keys(spec, torch.__version__)
        data = {**template, "spec": spec.to_json_dict(), "spec_hash": spec.spec_hash}
        data["artifact"] = {**template["artifact"], "uri": keys.artifact}
        if i % STALE_EVERY == 0:
            data["producer"] = {**template["producer"], "torch": STALE_TORCH}
        return keys.manifest, canonical_json(data)

    first = body(0)[1]
    Manifest.from_json(first)  # a valid manifest, or stop here

    def put(i: int) -> None:
        uri, payload = body(i)
        key = uri.split("/", 3)[3]
        client.put_object(Bucket=bucket, Key=key, Body=payload, ContentType="application/json")

    with ThreadPoolExecutor(PUT_THREADS) as pool:
        for _ in pool.map(put, range(n)):
            pass
    return len(range(0, n, STALE_EVERY))


def measure_in_child(config: dict[str, Any], log_path: Path) -> dict[str, Any]:
    """Run one dispatcher call in a fresh process; its numbers plus the RSS growth seen from here."""
    with open(log_path, "ab") as log:
        run = measure_child(
            REPO_ROOT / "benchmarks" / "bulk.py",
            config,
            timeout=MEASURE_TIMEOUT,
            sample_interval=SAMPLE_INTERVAL,
            cwd=REPO_ROOT,
            stderr=log,
            log_tail=lambda: tail_of(log_path),
        )
    return {**run.result, "rss_before": run.baseline, "rss_growth": run.peak - run.baseline}


def child_main() -> int:
    """One measurement: warm up, report ready, run the measured call on "go"; JSON lines on stdout."""
    protocol, cfg = child_protocol()
    try:
        import gc
        import tracemalloc

        import redis

        from serializer.s3.client import make_s3_client
        from worker import bulk
        from worker.bulk import Planner
        from worker.settings import Settings

        settings = Settings()
        client = make_s3_client(max_pool_connections=settings.max_in_flight + 2)
        store = redis.Redis.from_url(cfg["redis_url"])

        def call(source: str) -> dict[str, Any]:
            run_id = str(uuid.uuid4())
            report_uri = f"{cfg['report_prefix']}/{run_id}.json"
            if cfg["path"] == "dry-run":
                summary = bulk.dry_run(client, source, POLICY, settings, run_id=run_id, report_uri=report_uri)
                return {"selected": summary["selected"], **summary["would"]}
            run = bulk.BulkRun(store, bulk.RunKeys(run_id, source, POLICY), settings)
            run.start(window=cfg["window"], report_uri=report_uri)
            try:
                bulk.plan_run(run, client, Planner(client, settings, POLICY), lambda run_id, item: None)
                progress = run.progress()
            finally:
                keys = run.keys
                store.delete(*keys.all_run_keys(), keys.done, keys.last, keys.lock)
            return {k: progress[k] for k in ("selected", "queued", "in_flight", "unchanged", "failed", "skipped")}

        # Warm-up: the same path on a small selection (imports torch, builds a Planner, reads a
        # builder's source, touches every module the measured call needs).
        Planner(client, settings, POLICY)
        call(cfg["warm_source"])
        gc.collect()
        send(protocol, {"event": "ready", "rss": psutil.Process().memory_info().rss})
        if not wait_for_go():
            return 1
        if cfg["trace"]:
            tracemalloc.start()
        started = time.perf_counter()
        counts = call(cfg["source"])
        wall = time.perf_counter() - started
        heap_peak = tracemalloc.get_traced_memory()[1] if cfg["trace"] else None
        tracemalloc.stop()
        send(protocol, {"event": "done", "wall_s": wall, "heap_peak": heap_peak})
        send(protocol, {"event": "result", "counts": counts})
    except Exception as exc:
        traceback.print_exc()
        send(protocol, {"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


def _check_counts(path: str, counts: dict[str, Any], n: int, stale: int) -> None:
    if path == "dry-run":
        ok = counts["selected"] == n and counts["replace"] == stale and counts["unchanged"] == n - stale
        ok = ok and counts["export"] == 0 and counts["invalid"] == 0
    else:
        ok = counts["selected"] == n and counts["queued"] + counts["in_flight"] == stale
        ok = ok and counts["unchanged"] == n - stale and counts["failed"] == 0 and counts["skipped"] == 0
    if not ok:
        raise BenchFailure(f"{path} of {n} manifests ({stale} stale): unexpected counts {counts}")


def memory_phase(args: argparse.Namespace, client: Any, redis_url: str, workdir: Path, out: dict[str, Any]) -> None:
    """Fill ``out`` measurement by measurement (what was measured stays there if a later one fails)."""
    print("\n-- memory: one real export for the manifest template", flush=True)
    template_bucket = new_bucket(client, "template")
    template = _template_manifest(client, template_bucket)
    warm_bucket = new_bucket(client, "mem-warm")
    _put_listing(client, warm_bucket, WARMUP_MANIFESTS, template)
    listings: dict[int, tuple[str, int]] = {}
    for size in args.sizes:
        bucket = new_bucket(client, f"mem-{size}")
        started = time.perf_counter()
        stale = _put_listing(client, bucket, size, template)
        listings[size] = (bucket, stale)
        print(f"   {size} manifests ({stale} stale) put in {time.perf_counter() - started:.1f} s", flush=True)

    rows: list[dict[str, Any]] = out.setdefault("rows", [])
    comparisons: list[dict[str, Any]] = out.setdefault("comparisons", [])
    for path in args.paths:
        for size in args.sizes:
            bucket, stale = listings[size]
            row: dict[str, Any] = {"path": path, "specs": size, "stale": stale}
            for trace in (False, True):
                config = {
                    "path": path,
                    "trace": trace,
                    "source": f"s3://{bucket}/models",
                    "warm_source": f"s3://{warm_bucket}/models",
                    "report_prefix": f"s3://{bucket}/_reexport",
                    "redis_url": redis_url,
                    "window": args.window or 64,
                }
                got = measure_in_child(config, workdir / f"measure-{path}-{size}-{int(trace)}.log")
                _check_counts(path, got["counts"], size, stale)
                if trace:
                    row["heap_peak"] = got["heap_peak"]
                    row["wall_s_traced"] = round(got["wall_s"], 3)
                else:
                    row["rss_growth"] = got["rss_growth"]
                    row["rss_before"] = got["rss_before"]
                    row["wall_s"] = round(got["wall_s"], 3)
                    row["counts"] = got["counts"]
            row["candidates"] = row["counts"]["selected"]
            print(
                f"   {path} {size}: {row['wall_s']:.2f} s, heap peak {row['heap_peak'] / MiB:.2f} MiB, "
                f"RSS growth {row['rss_growth'] / MiB:.2f} MiB",
                flush=True,
            )
            rows.append(row)
    # Every larger selection against the smallest.
    small = min(args.sizes)
    by_key = {(r["path"], r["specs"]): r for r in rows}
    for path in args.paths:
        for large in [s for s in args.sizes if s != small]:
            for metric in ("heap_peak", "rss_growth"):
                a, b = by_key[(path, small)][metric], by_key[(path, large)][metric]
                ratio = b / a if a > 0 else float("inf")
                comparisons.append(
                    {
                        "path": path,
                        "metric": metric,
                        "small": small,
                        "large": large,
                        "at_small": a,
                        "at_large": b,
                        "ratio": round(ratio, 3),
                        "target": TARGET_MEMORY_RATIO,
                        "verdict": "PASS" if ratio <= TARGET_MEMORY_RATIO else "MISS",
                    }
                )


def memory_tables(result: dict[str, Any]) -> str:
    headers = ["path", "specs", "candidates", "plan", "wall s", "wall s (traced)", "heap peak MiB", "RSS growth MiB"]
    rows = []
    for r in result["rows"]:
        c = r["counts"]
        if r["path"] == "dry-run":
            plan = f"replace {c['replace']}, unchanged {c['unchanged']}"
        else:
            plan = f"in flight {c['in_flight']}, queued {c['queued']}, unchanged {c['unchanged']}"
        rows.append(
            [
                r["path"],
                str(r["specs"]),
                str(r["candidates"]),
                plan,
                f"{r['wall_s']:.2f}",
                f"{r['wall_s_traced']:.2f}",
                f"{r['heap_peak'] / MiB:.2f}",
                f"{r['rss_growth'] / MiB:.2f}",
            ]
        )
    text = render_table(headers, rows, right={1, 2, 4, 5, 6, 7})
    if result["comparisons"]:
        headers = ["path", "metric", "at small MiB", "at large MiB", "large / small", "target"]
        rows = [
            [
                c["path"],
                f"{'heap peak' if c['metric'] == 'heap_peak' else 'RSS growth'} {c['large']} vs {c['small']}",
                f"{c['at_small'] / MiB:.2f}",
                f"{c['at_large'] / MiB:.2f}",
                f"{c['ratio']:.3f}x",
                f"<= {TARGET_MEMORY_RATIO}x {c['verdict']}",
            ]
            for c in result["comparisons"]
        ]
        text += "\n\n" + render_table(headers, rows, right={2, 3, 4})
    return text
