"""One export benchmark measurement, in its own process: build the model, say ready, run
the variant on go, report the archive's size and sha256 (the protocol of :mod:`devtools.child`)."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import psutil

from devtools.child import child_protocol, send, wait_for_go
from serializer.s3.client import make_s3_client

from ._export_common import HASH_CHUNK, MAX_TENSOR_BYTES, PT2_VARIANTS, REGION, plain_client


# -- the child --------------------------------------------------------------------------------
@dataclass
class Outcome:
    """What a variant produced: the archive's size, its sha256 when the variant knows it, how
    to compute it otherwise, and what to clean up."""

    size: int
    sha256: str | None = None
    digest: Callable[[], str] | None = None
    cleanup: Callable[[], None] = lambda: None


def build_model(size: int, max_tensor: int = MAX_TENSOR_BYTES, *, pt2: bool = False) -> Any:
    """A module holding ``size`` bytes of float32 parameters of at most ``max_tensor`` bytes
    each, deterministic: scripted, or with ``pt2`` exported (``torch.export.export``; the
    program shares the module's parameters)."""
    import torch

    from serializer.torchscript.save import quiet_torchscript_deprecation

    module = torch.nn.Identity()
    generator = torch.Generator().manual_seed(0)
    remaining = size // 4
    index = 0
    while remaining > 0:
        n = min(remaining, max(1, max_tensor // 4))
        tensor = torch.empty(n, dtype=torch.float32).uniform_(-1.0, 1.0, generator=generator)
        module.register_parameter(f"w{index}", torch.nn.Parameter(tensor, requires_grad=False))
        remaining -= n
        index += 1
    if pt2:
        return torch.export.export(module, (torch.zeros(1),))
    with quiet_torchscript_deprecation():
        return torch.jit.script(module)


def _file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def run_variant(model: Any, cfg: dict[str, Any], plain: Any, ours: Any) -> Outcome:
    if cfg["variant"] in PT2_VARIANTS:
        return run_pt2_variant(model, cfg, plain, ours)
    import torch

    from serializer.s3.options import UploadOptions
    from serializer.torchscript.export import export_torchscript
    from serializer.torchscript.save import quiet_torchscript_deprecation

    variant, bucket, key = cfg["variant"], cfg["bucket"], cfg["key"]
    if variant == "buffer":
        buf = io.BytesIO()
        with quiet_torchscript_deprecation():
            torch.jit.save(model, buf)
        size = buf.tell()
        buf.seek(0)
        plain.upload_fileobj(buf, bucket, key)
        return Outcome(size, digest=lambda: hashlib.sha256(buf.getbuffer()).hexdigest(), cleanup=buf.close)
    if variant == "file":
        path = os.path.join(tempfile.mkdtemp(prefix="file-", dir=cfg["spool_dir"]), "model.pt")
        with quiet_torchscript_deprecation():
            torch.jit.save(model, path)
        plain.upload_file(path, bucket, key)
        return Outcome(
            os.path.getsize(path),
            digest=lambda: _file_sha256(path),
            cleanup=lambda: shutil.rmtree(os.path.dirname(path), ignore_errors=True),
        )
    info = export_torchscript(
        model,
        f"s3://{bucket}/{key}",
        client=ours,
        options=UploadOptions(part_size=cfg["part_size"], max_in_flight=cfg["max_in_flight"]),
        strategy=variant,
        spool_dir=cfg["spool_dir"],
    )
    return Outcome(info.size, sha256=info.sha256)


def run_pt2_variant(program: Any, cfg: dict[str, Any], plain: Any, ours: Any) -> Outcome:
    """The ``pt2-*`` variants: ``program`` is an ExportedProgram."""
    import torch

    from serializer.pt2.export import export_pt2
    from serializer.s3.options import UploadOptions

    variant, bucket, key = cfg["variant"], cfg["bucket"], cfg["key"]
    if variant == "pt2-buffer":
        buf = io.BytesIO()
        torch.export.save(program, buf)  # leaves the buffer rewound to 0
        size = buf.getbuffer().nbytes
        plain.upload_fileobj(buf, bucket, key)
        return Outcome(size, digest=lambda: hashlib.sha256(buf.getbuffer()).hexdigest(), cleanup=buf.close)
    if variant == "pt2-file":
        path = os.path.join(tempfile.mkdtemp(prefix="pt2-file-", dir=cfg["spool_dir"]), "model.pt2")
        torch.export.save(program, path)
        plain.upload_file(path, bucket, key)
        return Outcome(
            os.path.getsize(path),
            digest=lambda: _file_sha256(path),
            cleanup=lambda: shutil.rmtree(os.path.dirname(path), ignore_errors=True),
        )
    info = export_pt2(
        program,
        f"s3://{bucket}/{key}",
        client=ours,
        options=UploadOptions(part_size=cfg["part_size"], max_in_flight=cfg["max_in_flight"]),
        strategy="stream" if variant == "pt2-stream" else "spool",
        spool_dir=cfg["spool_dir"],
    )
    return Outcome(info.size, sha256=info.sha256)


def child_main() -> int:
    """One measurement; talks JSON lines with the parent on the original stdout."""
    protocol, cfg = child_protocol()
    try:
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        model = build_model(cfg["size"], cfg["max_tensor"], pt2=cfg["variant"] in PT2_VARIANTS)
        mode = cfg["checksum_mode"]
        plain = plain_client(cfg["url"], mode)
        ours = make_s3_client(
            endpoint_url=cfg["url"],
            region_name=REGION,
            checksum_mode=mode,
            # The tuned default opens up to 64 connections; a fixed count needs at least its own.
            max_pool_connections=64 if cfg["max_in_flight"] is None else max(10, cfg["max_in_flight"]),
        )
        for client in (plain, ours):  # connect before the clock starts
            client.head_bucket(Bucket=cfg["bucket"])
        send(protocol, {"event": "ready", "rss": psutil.Process().memory_info().rss})
        if not wait_for_go():
            return 1
        start = time.perf_counter()
        outcome = run_variant(model, cfg, plain, ours)
        wall = time.perf_counter() - start
        send(protocol, {"event": "done", "wall": wall, "size": outcome.size})
        sha = outcome.sha256
        if sha is None and cfg["want_sha"] and outcome.digest is not None:
            sha = outcome.digest()
        outcome.cleanup()
        send(protocol, {"event": "result", "sha256": sha})
    except Exception as exc:
        traceback.print_exc()
        send(protocol, {"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0
