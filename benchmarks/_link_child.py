"""One link benchmark measurement, in its own process (the protocol of :mod:`devtools.child`):
build the model (uploads), say ready, run the variant on go, report wall, phases,
connections and the archive's size and sha256.

Our export goes through the worker's own path (``Settings()`` from the environment the
parent chose, the worker's client, :func:`worker.export.upload.upload_archive`), so it
measures whatever defaults the product code has when the benchmark runs; our download is
:func:`~serializer.torchscript.load.load_artifact` with torch's load stubbed out.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import types
import warnings
from collections.abc import Callable
from typing import Any

import psutil

from devtools.child import child_protocol, send, wait_for_go

from ._export_common import HASH_CHUNK, REGION, plain_client

#: Upload rows: ours (worker defaults, and the old fixed 8 MiB x 4), then the tools.
UPLOADS = ("ours", "ours-8x4", "upload_file", "s5cmd", "crt")
#: What our export does beside the upload, done the tools' way: save, upload_file, then the
#: sha256 a manifest needs, read from the file (unshaped rows only).
HASHED_TOOL = "upload_file+sha256"
#: Download rows: ours (load_artifact's download), then the tools.
DOWNLOADS = ("load_artifact", "download_file", "s5cmd-get", "crt-get")
VARIANTS = UPLOADS + DOWNLOADS
#: Seconds between samples of the process tree's sockets (rows without the proxy).
CONN_SAMPLE_INTERVAL = 0.05


class ConnSampler(threading.Thread):
    """Counts this process tree's TCP connections to ``port``: distinct ones seen, most at once."""

    def __init__(self, port: int) -> None:
        super().__init__(name="conn-sampler", daemon=True)
        self._port = port
        self._stop_event = threading.Event()
        self.seen: set[tuple[int, int]] = set()
        self.most = 0

    def sample(self) -> None:
        root = psutil.Process()
        now: set[tuple[int, int]] = set()
        for proc in [root, *root.children(recursive=True)]:
            try:
                for c in proc.net_connections(kind="tcp"):
                    if c.raddr and c.raddr.port == self._port and c.status == psutil.CONN_ESTABLISHED:
                        now.add((proc.pid, c.laddr.port))
            except psutil.Error:
                continue
        self.seen |= now
        self.most = max(self.most, len(now))

    def run(self) -> None:
        while not self._stop_event.wait(CONN_SAMPLE_INTERVAL):
            self.sample()

    def stop(self) -> dict[str, int]:
        self._stop_event.set()
        self.join()
        return {"used": len(self.seen), "max_concurrent": self.most}


def proxy_call(port: int, **request: Any) -> dict[str, Any]:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(json.dumps(request).encode() + b"\n")
        reply: dict[str, Any] = json.loads(sock.makefile("rb").readline())
    return reply


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def s5cmd(cfg: dict[str, Any], *args: str) -> None:
    """``s5cmd`` (the one next to this interpreter) against the row's endpoint, at its defaults."""
    exe = shutil.which("s5cmd", path=os.path.dirname(sys.executable)) or "s5cmd"
    env = {**os.environ, "AWS_REGION": REGION}
    proc = subprocess.run(
        [exe, "--endpoint-url", cfg["url"], *args], check=False, capture_output=True, text=True, env=env
    )
    if proc.returncode != 0:
        raise RuntimeError(f"s5cmd {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")


class CrtTransfers:
    """boto3's CRT transfer manager (``preferred_transfer_client="crt"``), or, where boto3's
    wrapper cannot reach a plain-HTTP endpoint, s3transfer's same ``CRTTransferManager`` with
    its request serializer pointed at the endpoint and TLS off."""

    def __init__(self, cfg: dict[str, Any]) -> None:
        import botocore.session
        from s3transfer.crt import (
            BotocoreCRTCredentialsWrapper,
            BotocoreCRTRequestSerializer,
            CRTTransferManager,
            create_s3_crt_client,
        )

        session = botocore.session.get_session()
        creds = BotocoreCRTCredentialsWrapper(session.get_credentials()).to_crt_credentials_provider()
        self.client = create_s3_crt_client(REGION, crt_credentials_provider=creds, use_ssl=False)
        serializer = BotocoreCRTRequestSerializer(session, {"region_name": REGION, "endpoint_url": cfg["url"]})
        self.manager = CRTTransferManager(self.client, serializer)
        self.note = "s3transfer CRTTransferManager (awscrt S3Client, defaults; boto3's wrapper forces TLS)"

    def upload(self, path: str, bucket: str, key: str) -> None:
        self.manager.upload(path, bucket, key).result()

    def download(self, bucket: str, key: str, path: str) -> None:
        self.manager.download(bucket, key, path).result()

    def close(self) -> None:
        self.manager.shutdown()


class SaveTimes:
    """The ``progress`` object upload_archive reports to: when the archive was saved."""

    def __init__(self) -> None:
        self.saved: float | None = None

    def on_size(self, total: int) -> None:
        self.saved = time.perf_counter()

    def on_bytes(self, n: int) -> None:
        pass


def prepare(cfg: dict[str, Any], work: str) -> Callable[[], dict[str, Any]]:
    """Everything before the clock (model, clients, connections); the measured call."""
    variant, bucket, key = cfg["variant"], cfg["bucket"], cfg["key"]
    path = os.path.join(work, "model.pt")
    plain = plain_client(cfg["url"], cfg["checksum_mode"])
    plain.head_bucket(Bucket=bucket)
    if variant in DOWNLOADS:
        return _prepare_download(cfg, plain, path)
    from benchmarks._export_child import build_model
    from serializer.torchscript.save import quiet_torchscript_deprecation

    model = build_model(cfg["size"], cfg["max_tensor"])

    def save() -> float:
        import torch

        start = time.perf_counter()
        with quiet_torchscript_deprecation():
            torch.jit.save(model, path)
        return time.perf_counter() - start

    if variant in ("ours", "ours-8x4"):
        from worker.export.upload import upload_archive
        from worker.settings import Settings
        from worker.tasks import s3_client

        settings = Settings()
        ours = s3_client(settings)
        ours.head_bucket(Bucket=bucket)

        def run_ours() -> dict[str, Any]:
            times = SaveTimes()
            start = time.perf_counter()
            info = upload_archive(
                types.SimpleNamespace(format="torchscript"),  # type: ignore[arg-type]
                settings,
                ours,
                model,
                {},
                f"s3://{bucket}/{key}",
                conditional=False,
                progress=times,  # type: ignore[arg-type]
            )
            saved = (times.saved or start) - start
            return {"size": info.size, "sha256": info.sha256, "save": saved}

        return run_ours
    crt = CrtTransfers(cfg) if variant == "crt" else None

    def run_tool() -> dict[str, Any]:
        saved = save()
        if variant in ("upload_file", HASHED_TOOL):
            plain.upload_file(path, bucket, key)
            if variant == HASHED_TOOL:
                return {"size": os.path.getsize(path), "save": saved, "sha256": file_sha256(path), "note": None}
        elif variant == "s5cmd":
            s5cmd(cfg, "cp", path, f"s3://{bucket}/{key}")
        else:
            assert crt is not None
            crt.upload(path, bucket, key)
        return {"size": os.path.getsize(path), "save": saved, "digest_path": path, "note": crt and crt.note}

    return run_tool


def _prepare_download(cfg: dict[str, Any], plain: Any, path: str) -> Callable[[], dict[str, Any]]:
    variant, bucket, key = cfg["variant"], cfg["bucket"], cfg["key"]
    if variant == "load_artifact":
        import serializer.torchscript.load as load_module
        from serializer.s3.client import make_s3_client

        kept: dict[str, str] = {}

        def keep_file(p: str, **_: Any) -> tuple[None, dict[str, bytes]]:
            # torch.jit.load is not the download: the file's size stands in for it.
            kept["size"] = str(os.path.getsize(p))
            return None, {}

        load_module.load_torchscript_file = keep_file  # type: ignore[assignment]
        consumer = make_s3_client()
        consumer.head_bucket(Bucket=bucket)

        def run_load() -> dict[str, Any]:
            load_module.load_artifact(consumer, f"s3://{bucket}/{key}", sha256=cfg["sha256"], size=cfg["size"])
            return {"size": int(kept["size"]), "sha256": cfg["sha256"], "save": 0.0}

        return run_load
    crt = CrtTransfers(cfg) if variant == "crt-get" else None

    def run_get() -> dict[str, Any]:
        if variant == "download_file":
            plain.download_file(bucket, key, path)
        elif variant == "s5cmd-get":
            s5cmd(cfg, "cp", f"s3://{bucket}/{key}", path)
        else:
            assert crt is not None
            crt.download(bucket, key, path)
        return {"size": os.path.getsize(path), "save": 0.0, "digest_path": path, "note": crt and crt.note}

    return run_get


def child_main() -> int:
    """One measurement; talks JSON lines with the parent on the original stdout."""
    protocol, cfg = child_protocol()
    try:
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        work = tempfile.mkdtemp(prefix=f"{cfg['variant']}-", dir=cfg["spool_dir"])
        run = prepare(cfg, work)
        # Earlier rows' files (and the store's copies of them) are still being written back:
        # flushed now, they weigh on no row's save.
        os.sync()
        send(protocol, {"event": "ready", "rss": psutil.Process().memory_info().rss})
        if not wait_for_go():
            return 1
        sampler = None
        if cfg.get("control_port"):
            proxy_call(cfg["control_port"], op="reset")
        else:
            sampler = ConnSampler(cfg["store_port"])
            sampler.start()
        start = time.perf_counter()
        result = run()
        wall = time.perf_counter() - start
        conns = sampler.stop() if sampler else proxy_call(cfg["control_port"], op="stats")
        digest_path = result.pop("digest_path", None)
        send(protocol, {"event": "done", "wall": wall, **result, "conns": conns})
        if digest_path and cfg["want_sha"]:
            result["sha256"] = file_sha256(digest_path)
        shutil.rmtree(work, ignore_errors=True)
        send(protocol, {"event": "result", "sha256": result.get("sha256")})
    except Exception as exc:
        traceback.print_exc()
        send(protocol, {"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0
