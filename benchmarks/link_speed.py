"""TorchScript exports and downloads on a link with realistic per-connection limits, against
the tools people would use instead.

Against S3 one connection carries far less than the store can, with tens of milliseconds
of round trip, so how many connections an export opens matters more than on loopback.
This benchmark puts SeaweedFS (``weed mini``) behind the shaping proxy
(:mod:`devtools.shaping_proxy`: a round-trip delay, a cap per TCP connection and one for
all of them together) and measures, per archive size:

uploads (each: save to a path, then the transfer; timed from the start of the save)
    ``ours`` (the worker's export at its defaults: no EXPORT_PART_SIZE/EXPORT_MAX_IN_FLIGHT),
    ``ours-8x4`` (EXPORT_PART_SIZE=8MiB, EXPORT_MAX_IN_FLIGHT=4, the old fixed setting),
    ``upload_file`` (``torch.jit.save`` to a path, boto3's ``upload_file`` at TransferConfig's
    defaults), ``s5cmd`` (save, ``s5cmd cp`` at its defaults), ``crt`` (save, the CRT transfer
    manager of s3transfer, from ``awscrt``)
downloads
    ``load_artifact`` (its download: ``torch.jit.load`` is stubbed out), ``download_file``,
    ``s5cmd-get``, ``crt-get``

and on the unshaped loopback (straight to the store) ``ours`` against ``upload_file`` and
``upload_file+sha256`` (the same, then the file's sha256, which a manifest needs), three
times each, alternately.
Before the rows, in the same run, it measures the store's raw ingest and egress (parallel
UploadParts of a prepared part, parallel ranged GETs: no serialization) and the proxy's own
unshaped ceiling, and picks the shape from them: the aggregate cap is ``--link-share`` (0.6)
of the least of the three (each ceiling was measured with the 2 cores to itself, while a row
runs the store, the proxy and the client at once, so the link must leave them CPU to
spare), the cap per connection an eighth of that (so a client with 4 connections gets half
the link, one with 8 or more all of it).  Explicit ``--total-rate`` and ``--conn-rate``
override that.

Each row runs in a fresh child that builds the model first (as
:mod:`benchmarks.export_to_s3`); the parent samples the RSS of the child and its
descendants (s5cmd) and reports the peak above the RSS at "ready" (above the model).
Connections are counted at the proxy (distinct client connections that moved a byte, and
the most of those open at once) on the shaped link, by sampling the child's sockets on
the unshaped one.  The targets are printed as met / not met.

Usage (from the repository root, in the project's virtual environment)::

    python benchmarks/link_speed.py --sizes 1,4 --markdown link-speed.md
    python benchmarks/link_speed.py --quick
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python benchmarks/link_speed.py`: the repository root, for `benchmarks` and `devtools`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import os
import platform
import shutil
import signal
import tempfile
import uuid
from collections.abc import Sequence
from typing import Any
from urllib.parse import urlsplit

import psutil
from botocore.exceptions import BotoCoreError, ClientError

from benchmarks._common import REPO_ROOT, on_sigterm
from benchmarks._export_common import (
    BUCKET,
    MAX_TENSOR_BYTES,
    RESCAN_EVERY,
    SAMPLE_INTERVAL,
    bench_env,
    format_size,
    plain_client,
    size_arg,
    use_bench_credentials,
)
from benchmarks._export_endpoints import choose_checksum_mode, running_endpoint
from benchmarks._link_child import DOWNLOADS, HASHED_TOOL, UPLOADS, child_main
from benchmarks._link_probe import proxy_ceiling, store_ceilings
from benchmarks._link_report import Row, report
from devtools.child import measure_child
from devtools.shaping_proxy import LinkShape, ProxyHandle, parse_rate, running_proxy

GiB = 1024**3
MiB = 1024**2
#: Connections of the probes (enough to saturate the store and the proxy on 2 cores).
PROBE_CONNECTIONS = 16
#: Connections a client needs to fill the link: the cap per connection is the aggregate's share.
CONNS_TO_FILL = 8
#: The environment of the old fixed setting.
OLD_FIXED = {"EXPORT_PART_SIZE": "8MiB", "EXPORT_MAX_IN_FLIGHT": "4"}
#: Rows on the unshaped loopback (the 1.0x target, and the tool doing what ours does).
UNSHAPED = ("ours", "upload_file", HASHED_TOOL)


def size_list(text: str) -> list[int]:
    """``1,4`` (GiB) or explicit sizes (``64MiB,256MiB``)."""
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        out.append(int(float(item) * GiB) if item.replace(".", "", 1).isdigit() else size_arg(item))
    if not out:
        raise argparse.ArgumentTypeError("empty list")
    return out


def child_env(url: str, spool: Path, mode: str, variant: str) -> dict[str, str]:
    env = bench_env(
        PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
        AWS_ENDPOINT_URL_S3=url,
        EXPORT_SPOOL_DIR=str(spool),
        EXPORT_S3_CHECKSUM_MODE=mode,
    )
    for name in OLD_FIXED:
        env.pop(name, None)
    if variant == "ours-8x4":
        env.update(OLD_FIXED)
    return env


def measure(
    row: Row, url: str, proxy: ProxyHandle | None, cfg: dict[str, Any], spool: Path, timeout: float
) -> dict[str, Any]:
    """Run one row in a fresh child; fill ``row``; the child's final message."""
    label = f"{row.link} {format_size(row.size)} {row.direction} {row.variant}"
    print(f"  {label}: ", end="", flush=True)
    config = {
        **cfg,
        "variant": row.variant,
        "url": url,
        "control_port": proxy.control_port if proxy else None,
        "store_port": urlsplit(url).port,
        "spool_dir": str(spool),
    }
    try:
        run = measure_child(
            Path(__file__).resolve(),
            config,
            timeout=timeout,
            sample_interval=SAMPLE_INTERVAL,
            descendants=True,
            rescan_every=RESCAN_EVERY,
            cwd=REPO_ROOT,
            env=child_env(url, spool, cfg["checksum_mode"], row.variant),
        )
    except Exception as exc:
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        print(f"FAILED: {row.error}", flush=True)
        return {}
    result = run.result
    row.wall, row.save = float(result["wall"]), float(result.get("save") or 0.0)
    row.peak_growth = run.peak - run.baseline
    row.archive_size = int(result["size"])
    row.conns = result.get("conns") or {}
    row.note = result.get("note")
    print(
        f"{row.wall:.2f} s (save {row.save:.2f} s), {row.rate / 1e6:.0f} MB/s, "
        f"transfer {row.link_rate / 1e6:.0f} MB/s, "
        f"peak RSS {row.peak_growth / MiB:+.0f} MiB, connections {row.conns.get('used')}/"
        f"{row.conns.get('max_concurrent')}",
        flush=True,
    )
    return result


def check_upload(row: Row, client: Any, key: str, result: dict[str, Any], expected_sha: str | None) -> None:
    stored = int(client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
    if stored == row.archive_size:
        row.checks.append("size ok")
    else:
        row.problems.append(f"stored {stored} B, archive {row.archive_size} B")
    sha = result.get("sha256")
    if sha and expected_sha:
        (row.checks if sha == expected_sha else row.problems).append(
            "sha256 ok" if sha == expected_sha else "sha256 differs"
        )


def remove(client: Any, key: str) -> None:
    with contextlib.suppress(BotoCoreError, ClientError):
        client.delete_object(Bucket=BUCKET, Key=key)
    with contextlib.suppress(BotoCoreError, ClientError):
        for upload in client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []):
            client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])


def run_size(
    size: int, args: argparse.Namespace, store_url: str, proxy: ProxyHandle, mode: str, spool: Path
) -> list[Row]:
    """Every row of one archive size."""
    rows: list[Row] = []
    client = plain_client(store_url, mode, read_timeout=300)
    base = {"bucket": BUCKET, "size": size, "max_tensor": args.max_tensor, "checksum_mode": mode, "want_sha": True}
    kept: tuple[str, str, int] | None = None  # ours' object: key, sha256, size (for the downloads)
    reference_sha: str | None = None
    # The unshaped pair runs alternately, several times: the 1.0x target compares medians, as
    # one run's save to a path alone spreads by more than a second on this disk.
    unshaped = UNSHAPED * args.unshaped_runs
    for link, variants, url in (("shaped", UPLOADS, proxy.url), ("unshaped", unshaped, store_url)):
        for variant in variants:
            if variant not in args.variants:
                continue
            key = f"bench/link-{link}-{variant}-{format_size(size)}-{uuid.uuid4().hex[:8]}.pt"
            row = Row(link, "upload", size, variant)
            rows.append(row)
            result = measure(row, url, proxy if link == "shaped" else None, {**base, "key": key}, spool, args.timeout)
            if row.error is None:
                # The tools upload the same torch.jit.save file; ours saves its own archive
                # (its sha256 is checked by load_artifact in the download rows).
                tool = not variant.startswith("ours")
                reference_sha = reference_sha or (result.get("sha256") if tool else None)
                check_upload(row, client, key, result, reference_sha if tool else None)
            if kept is None and link == "shaped" and variant == "ours" and row.ok:
                kept = (key, str(result["sha256"]), row.archive_size)
            else:
                remove(client, key)
    if kept is None:
        print("  no stored archive of ours to download: download rows skipped", flush=True)
        return rows
    key, sha, nbytes = kept
    for variant in DOWNLOADS:
        if variant not in args.variants:
            continue
        row = Row("shaped", "download", size, variant)
        rows.append(row)
        cfg = {**base, "key": key, "size": nbytes, "sha256": sha}
        result = measure(row, proxy.url, proxy, cfg, spool, args.timeout)
        if row.error is None:
            ok = row.archive_size == nbytes and (result.get("sha256") in (None, sha))
            (row.checks if ok else row.problems).append("size and sha256 ok" if ok else "downloaded bytes differ")
    remove(client, key)
    return rows


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", type=size_list, default=None, help="archive sizes, GiB or with units (1,4)")
    p.add_argument("--quick", action="store_true", help="a smoke run: 128MiB, smaller probes")
    p.add_argument("--variants", default=",".join(UPLOADS + DOWNLOADS + (HASHED_TOOL,)), help="rows to run (all)")
    p.add_argument("--rtt-ms", type=float, default=20.0, help="round trip the proxy adds (20)")
    p.add_argument("--link-share", type=float, default=0.6, help="aggregate cap: share of the least ceiling (0.6)")
    p.add_argument("--total-rate", type=parse_rate, default=0.0, help="aggregate cap, e.g. 150MB (auto)")
    p.add_argument("--conn-rate", type=parse_rate, default=0.0, help="cap per connection, e.g. 20MB (auto)")
    p.add_argument("--max-tensor", type=size_arg, default=MAX_TENSOR_BYTES, help="largest parameter (256MiB)")
    p.add_argument("--timeout", type=float, default=900.0, help="seconds per row (900)")
    p.add_argument("--unshaped-runs", type=int, default=3, help="runs of each unshaped row, alternating (3)")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables and targets as markdown")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = sorted(set(args.variants) - set(UPLOADS + DOWNLOADS + (HASHED_TOOL,)))
    if unknown:
        p.error(f"unknown variants {unknown}")
    if args.sizes is None:
        args.sizes = [128 * MiB] if args.quick else [GiB, 4 * GiB]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main()  # the parent set its credentials and endpoint (AWS_ENDPOINT_URL_S3)
    use_bench_credentials()
    signal.signal(signal.SIGTERM, on_sigterm)
    sizes = sorted(dict.fromkeys(args.sizes))
    probe_bytes = 256 * MiB if args.quick else 1 * GiB
    workdir = Path(tempfile.mkdtemp(prefix="link-bench-"))
    spool = workdir / "spool"
    spool.mkdir()
    rows: list[Row] = []
    failures: list[str] = []
    header: list[str] = [
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / GiB:.0f} GiB RAM, {platform.system()} {platform.machine()}",
    ]
    capacity = {"upload": 0.0, "download": 0.0}
    try:
        with running_endpoint("seaweedfs", workdir) as endpoint:
            choose_checksum_mode(endpoint, "auto")
            mode = endpoint.checksum_mode
            ingest, egress = store_ceilings(endpoint.url, mode, probe_bytes, PROBE_CONNECTIONS)
            relay, _ = proxy_ceiling(probe_bytes * 2, PROBE_CONNECTIONS)
            least = min(ingest.rate, egress.rate, relay.rate)
            total = args.total_rate or args.link_share * least
            shape = LinkShape(
                rtt=args.rtt_ms / 1000, conn_rate=args.conn_rate or total / CONNS_TO_FILL, total_rate=total
            )
            capacity = {"upload": min(total, ingest.rate), "download": min(total, egress.rate)}
            for c in (ingest, egress, relay):
                header.append(
                    f"{c.what}: {c.rate / 1e6:.0f} MB/s ({format_size(c.nbytes)} over {c.connections} connections, "
                    f"{c.seconds:.2f} s)"
                )
            header += [
                f"shaped link: round trip {shape.rtt * 1000:.0f} ms, {shape.conn_rate / 1e6:.1f} MB/s per connection, "
                f"{shape.total_rate / 1e6:.0f} MB/s in all per direction; link capacity (the lesser of the aggregate "
                f"and the store's raw ingest/egress): upload {capacity['upload'] / 1e6:.0f} MB/s, download "
                f"{capacity['download'] / 1e6:.0f} MB/s",
                f"store: SeaweedFS weed mini on loopback, checksum_mode={mode}; model: float32 parameters of at most "
                f"{format_size(args.max_tensor)} each",
                "wall: from the start of the save (uploads) or of the download, in a fresh process per row; save: "
                "torch.jit.save to a path (ours: until the archive's size is known); transfer: wall - save; "
                "MB/s: 10^6 archive bytes per s; peak RSS: child and descendants above the RSS at ready (the model)",
            ]
            for line in header:
                print(line, flush=True)
            with running_proxy(endpoint.url, shape) as proxy:
                for size in sizes:
                    print(f"\n== {format_size(size)} ==", flush=True)
                    rows += run_size(size, args, endpoint.url, proxy, mode, spool)
    except KeyboardInterrupt:
        failures.append("interrupted")
    except Exception as exc:
        failures.append(f"{type(exc).__name__}: {exc}")
        print(f"FAILED: {failures[-1]}", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(rows, header, capacity, sizes, args.markdown, failures)
    return 0 if not failures and all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
