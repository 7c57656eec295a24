"""Peak memory of loading weights from S3 (worker.weights.load_weights): a sharded
safetensors checkpoint against the same weights as one ``torch.save`` file, both from a
moto server over HTTP, in the same run.

Each load runs in a child process that first builds the module (``--layers`` Linear layers
of ``--width`` x ``--width`` float32, no bias); the parent samples the child's RSS from
outside and reports the peak above the built module, with its file-backed part (pages of
mmapped files, which the kernel may drop) apart from the anonymous part.

    .venv/bin/python -m benchmarks.weights                 # 3 GiB in 6 shards of 512 MiB
    .venv/bin/python -m benchmarks.weights --layers 8 --shards 4   # 2 GiB in 4 shards of 512 MiB

moto answers each ranged GET by reading the whole object, so the one-file baseline takes
minutes at 3 GiB (s3transfer's 8 MiB ranges); the figures are memory, not speed.
    .venv/bin/python -m benchmarks.weights --layers 4 --width 2048 --shards 2   # quick
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from benchmarks._common import REPO_ROOT, MiB

BUCKET = "weights-bench"


def build(layers: int, width: int) -> Any:
    import torch
    from torch import nn

    with torch.device("cpu"):
        return nn.Sequential(*[nn.Linear(width, width, bias=False) for _ in range(layers)])


def child(endpoint: str, uri: str, layers: int, width: int, spool: str) -> None:
    """Build the module, say its RSS, wait for ``go``, load, say how long it took."""
    from serializer.s3.client import make_s3_client
    from worker.weights import load_weights

    module = build(layers, width)
    client = make_s3_client(endpoint_url=endpoint)
    print("ready", flush=True)
    sys.stdin.readline()
    start = time.monotonic()
    load_weights(module, client, uri, spool, read_scopes=("*",))
    print(f"done {time.monotonic() - start:.2f}", flush=True)
    sys.stdin.readline()


class Sampler(threading.Thread):
    """Peak RSS and peak anonymous RSS (RSS less file-backed pages) of one process."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.proc = psutil.Process(pid)
        self.stop_event = threading.Event()
        self.base = self.read()
        self.peak = self.base

    def read(self) -> tuple[int, int]:
        info = self.proc.memory_info()
        return info.rss, info.rss - info.shared

    def run(self) -> None:
        while not self.stop_event.wait(0.02):
            rss, anon = self.read()
            self.peak = (max(self.peak[0], rss), max(self.peak[1], anon))

    def stop(self) -> tuple[int, int]:
        self.stop_event.set()
        self.join()
        return self.peak[0] - self.base[0], self.peak[1] - self.base[1]


def measure(endpoint: str, uri: str, args: argparse.Namespace, spool: str) -> tuple[float, int, int]:
    command = [sys.executable, "-m", "benchmarks.weights", "--child", endpoint, uri]
    command += ["--layers", str(args.layers), "--width", str(args.width), "--spool", spool]
    proc = subprocess.Popen(command, cwd=REPO_ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None and proc.stdout is not None
    try:
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError("the child did not start")
        sampler = Sampler(proc.pid)
        sampler.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        line = proc.stdout.readline().split()
        above, anon = sampler.stop()
        if not line or line[0] != "done":
            raise RuntimeError(f"the child failed: {line}")
        proc.stdin.write("bye\n")
        proc.stdin.flush()
        return float(line[1]), above, anon
    finally:
        proc.wait(timeout=60)


def prepare(client: Any, args: argparse.Namespace, work: str) -> tuple[str, str, int]:
    """Upload the checkpoint twice (sharded safetensors, one torch.save file); the largest shard's size."""
    import torch
    from safetensors.torch import save_file

    from tests.safetensors_checkpoints import index_bytes

    module = build(args.layers, args.width)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.rand(p.shape, generator=gen))
    state = module.state_dict()
    names = list(state)
    weight_map: dict[str, str] = {}
    largest = 0
    for i in range(args.shards):
        part = names[len(names) * i // args.shards : len(names) * (i + 1) // args.shards]
        name = f"model-{i + 1:05d}-of-{args.shards:05d}.safetensors"
        path = os.path.join(work, name)
        save_file({k: state[k] for k in part}, path)
        largest = max(largest, os.path.getsize(path))
        client.upload_file(path, BUCKET, f"st/{name}")
        os.remove(path)
        weight_map.update(dict.fromkeys(part, name))
    client.put_object(Bucket=BUCKET, Key="st/model.safetensors.index.json", Body=index_bytes(weight_map))
    path = os.path.join(work, "weights.pt")
    torch.save(state, path)
    client.upload_file(path, BUCKET, "pt/weights.pt")
    os.remove(path)
    return f"s3://{BUCKET}/st/model.safetensors.index.json", f"s3://{BUCKET}/pt/weights.pt", largest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=12)
    parser.add_argument("--width", type=int, default=8192, help="each layer is width x width float32")
    parser.add_argument("--shards", type=int, default=6)
    parser.add_argument("--child", nargs=2, metavar=("ENDPOINT", "URI"), help=argparse.SUPPRESS)
    parser.add_argument("--spool", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*args.child, args.layers, args.width, args.spool)
        return 0

    from serializer.s3.client import make_s3_client
    from worker.cli.demo_services import moto_server

    # The moto server takes any credentials; the children inherit these.
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    console = Console()
    total = args.layers * args.width * args.width * 4
    console.print(f"checkpoint: {args.layers} tensors, {total / MiB:.0f} MiB, {args.shards} shards")
    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="weights-bench-") as work:
        client = make_s3_client(endpoint_url=endpoint)
        client.create_bucket(Bucket=BUCKET)
        start = time.monotonic()
        sharded_uri, pickle_uri, largest = prepare(client, args, work)
        console.print(f"uploaded in {time.monotonic() - start:.0f} s; largest shard {largest / MiB:.0f} MiB")
        rows = []
        for name, uri in (("safetensors, index + shards", sharded_uri), ("torch.save file (baseline)", pickle_uri)):
            rows.append((name, *measure(endpoint, uri, args, work)))
            seconds, above, anon = rows[-1][1:]
            console.print(f"{name}: {seconds:.1f} s, +{above / MiB:.0f} MiB RSS ({anon / MiB:.0f} MiB anonymous)")
    table = Table(title=f"load_weights, {total / MiB:.0f} MiB from moto over HTTP (peak above the built module)")
    for column in ("weights", "seconds", "peak RSS MiB", "of it anonymous MiB", "largest shard MiB"):
        table.add_column(column, justify="left" if column == "weights" else "right")
    for name, seconds, above, anon in rows:
        table.add_row(name, f"{seconds:.1f}", f"{above / MiB:.0f}", f"{anon / MiB:.0f}", f"{largest / MiB:.0f}")
    console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
