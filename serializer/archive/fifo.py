"""The ``fifo`` export path: an archive saved into a named pipe read by a child uploader.

The saving is the caller's (TorchScript's ``torch.jit.save`` to a path); this module knows
no torch.  The child (``python -m serializer.archive._fifo_child``) streams the pipe into a MultipartWriter
and indexes the zip.  It is a separate process because the C++ save holds the GIL, so a
reader thread here would never run.  Protocol, one JSON object per line:

1. parent -> child: the upload's settings;      child -> parent: ``{"ready": true}``
2. parent saves into the pipe; at EOF the child sends ``{"index": ...}``
3. parent checks the index -> ``{"commit": bool}``; child -> ``{"result": ...}`` or ``{"error": ...}``
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import IO, Any

from ..errors import ArchiveError, ObjectExists, UploadFailed
from ..s3.client import S3Client
from ..s3.multipart import UploadResult
from ..s3.options import UploadOptions
from ..s3.parts import DEFAULT_PART_SIZE
from .info import check_extras
from .upload import CONTENT_TYPE
from .zipindex import ZipIndex, index_from_json

#: Seconds to wait for the child to open the pipe before giving up.
READY_TIMEOUT = 60.0
#: Seconds to wait for the child to finish the upload's last parts and Complete.
FINISH_TIMEOUT = 600.0


def save_through_fifo(
    save: Callable[[str], None],
    path: str,
    client: S3Client,
    bucket: str,
    key: str,
    opts: UploadOptions,
    extras: Mapping[str, bytes],
) -> tuple[UploadResult, ZipIndex]:
    """Run ``save(path)`` with a pipe at ``path`` while a child process uploads what it reads.

    ``save`` raises :class:`~serializer.errors.ArchiveError` when it cannot save."""
    os.mkfifo(path, 0o600)
    config = {
        "fifo": path,
        "bucket": bucket,
        "key": key,
        "endpoint_url": client.meta.endpoint_url,
        "region_name": client.meta.region_name,
        "checksum_mode": getattr(client.meta.config, "request_checksum_calculation", None) or "when_supported",
        # The child's writer buffers parts in memory: a stream is tuned within the default
        # count (part_size * (4 + 1)), or fixed where the options say so; either way its
        # limit falls on throttling.
        "part_size": opts.part_size or DEFAULT_PART_SIZE,
        "max_in_flight": opts.max_in_flight,
        "checksum_algorithm": opts.checksum_algorithm,
        "if_none_match": opts.if_none_match,
        "extra_args": {"ContentType": CONTENT_TYPE, **opts.extra_args},
    }
    child = subprocess.Popen(
        [sys.executable, "-m", "serializer.archive._fifo_child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=_child_env(client),
        text=True,
    )
    assert child.stdin is not None and child.stdout is not None
    try:
        _send(child.stdin, config)
        _receive(child, READY_TIMEOUT)
        # Hold a write end ourselves: the child cannot see EOF before the save has ended, and
        # opening it fails at once (ENXIO) rather than blocking if the child is gone.
        hold = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
        try:
            _send(child.stdin, {"go": True})
            save(path)
            saved: ArchiveError | None = None
        except ArchiveError as exc:
            saved = exc
        finally:
            os.close(hold)
        reply = _receive(child, FINISH_TIMEOUT, keep_error=saved is not None)
        if saved is not None:
            with contextlib.suppress(UploadFailed):  # the uploader may have reported and exited
                _send(child.stdin, {"commit": False})
            cause = f"; uploader: {reply['error']}" if "error" in reply else ""
            raise ArchiveError(f"{saved}{cause}") from saved
        index = index_from_json(reply["index"])
        try:
            check_extras(index, extras)
        except ArchiveError:
            _send(child.stdin, {"commit": False})
            raise
        _send(child.stdin, {"commit": True})
        result = UploadResult(**_receive(child, FINISH_TIMEOUT)["result"])
        return result, index
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
        with contextlib.suppress(OSError):  # unsent bytes to an exited child: a broken pipe
            child.stdin.close()
        child.stdout.close()


def _child_env(client: S3Client) -> dict[str, str]:
    """The child's environment: ours, plus the client's resolved credentials (never logged)."""
    env = dict(os.environ)
    creds = getattr(getattr(client, "_request_signer", None), "_credentials", None)
    if creds is not None:
        frozen = creds.get_frozen_credentials()
        env["AWS_ACCESS_KEY_ID"] = frozen.access_key
        env["AWS_SECRET_ACCESS_KEY"] = frozen.secret_key
        if frozen.token:
            env["AWS_SESSION_TOKEN"] = frozen.token
        else:
            env.pop("AWS_SESSION_TOKEN", None)
    return env


def _send(stream: IO[str], message: Mapping[str, Any]) -> None:
    try:
        stream.write(json.dumps(message) + "\n")
        stream.flush()
    except BrokenPipeError as exc:
        raise UploadFailed("uploader process exited early") from exc


def _receive(child: subprocess.Popen[str], timeout: float, *, keep_error: bool = False) -> dict[str, Any]:
    """Next message from the child; its ``error`` becomes the matching exception unless
    ``keep_error``, when it is returned as it is."""
    assert child.stdout is not None
    deadline = time.monotonic() + timeout
    while True:
        ready, _, _ = select.select([child.stdout], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise UploadFailed(f"uploader process sent nothing for {timeout:.0f} s")
        line = child.stdout.readline()
        if not line:
            if keep_error:
                return {"error": f"exited with status {child.wait()}"}
            raise UploadFailed(f"uploader process exited with status {child.wait()}")
        message: dict[str, Any] = json.loads(line)
        if "error" in message:
            if keep_error:
                return message
            kind = ObjectExists if message.get("kind") == "ObjectExists" else UploadFailed
            raise kind(message["error"])
        return message
