"""The benchmarks' measurement children: a fresh ``python SCRIPT --child`` per measurement,
talking JSON lines with its parent, its memory sampled from outside.

The protocol: the parent sends the config; the child prepares (builds, imports, warms up)
and answers ``ready``; the parent starts sampling and sends ``go``; the child runs the
measured call and answers ``done``, then a final message.  ``{"event": "error"}`` at any
point ends it.
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
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .processes import die_with_parent, kill_tree
from .rss_sampler import RssSampler

__all__ = ["ChildFailed", "ChildRun", "child_protocol", "measure_child", "receive", "send", "wait_for_go"]


class ChildFailed(RuntimeError):
    """Raised when a measurement child reports an error or exits before it answered."""


@dataclass
class ChildRun:
    """What one child reported (``done`` and the final message merged) and the RSS seen from outside."""

    result: dict[str, Any]
    baseline: int
    peak: int


def send(stream: IO[str], message: dict[str, Any]) -> None:
    """One JSON line, flushed."""
    stream.write(json.dumps(message) + "\n")
    stream.flush()


def receive(proc: subprocess.Popen[str], deadline: float, log_tail: Callable[[], str] = str) -> dict[str, Any]:
    """The child's next message; ``log_tail()`` is appended to a failure's message.

    Raises:
        TimeoutError: nothing came by ``deadline`` (``time.monotonic()``).
        ChildFailed: the child exited or reported an error.
    """
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], max(0.0, deadline - time.monotonic()))
    if not ready:
        raise TimeoutError(_join("measurement timed out", log_tail()))
    line = proc.stdout.readline()
    if not line:
        raise ChildFailed(_join(f"measurement process exited with status {proc.wait()}", log_tail()))
    message: dict[str, Any] = json.loads(line)
    if message.get("event") == "error":
        raise ChildFailed(_join(str(message["error"]), log_tail()))
    return message


def _join(message: str, tail: str) -> str:
    return f"{message}\n{tail}" if tail else message


def measure_child(
    script: Path,
    config: dict[str, Any],
    *,
    timeout: float,
    sample_interval: float,
    descendants: bool = False,
    rescan_every: int = 5,
    cwd: Path,
    env: Mapping[str, str] | None = None,
    stderr: IO[Any] | None = None,
    log_tail: Callable[[], str] = str,
) -> ChildRun:
    """Run ``python script --child`` through one measurement, sampling its RSS (and with
    ``descendants`` its descendants') from ``ready`` to ``done``; kill its tree if it lingers.

    Raises:
        TimeoutError, ChildFailed: as :func:`receive`, or the child's exit status was not 0.
    """
    proc = subprocess.Popen(
        [sys.executable, str(script), "--child"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        env=None if env is None else dict(env),
        cwd=cwd,
        start_new_session=True,
        preexec_fn=die_with_parent,  # noqa: PLW1509 - only calls prctl
    )
    assert proc.stdin is not None
    deadline = time.monotonic() + timeout
    sampler: RssSampler | None = None
    try:
        send(proc.stdin, config)
        receive(proc, deadline, log_tail)  # ready
        sampler = RssSampler(proc.pid, interval=sample_interval, descendants=descendants, rescan_every=rescan_every)
        baseline = sampler.sample()
        sampler.peak = baseline
        sampler.start()
        send(proc.stdin, {"go": True})
        done = receive(proc, deadline, log_tail)
        peak = sampler.stop()
        sampler = None
        final = receive(proc, deadline, log_tail)
        if proc.wait(timeout=60) != 0:
            raise ChildFailed(_join(f"measurement process exited with status {proc.returncode}", log_tail()))
        return ChildRun({**done, **final}, baseline, peak)
    finally:
        if sampler is not None and sampler.is_alive():
            sampler.stop()
        if proc.poll() is None:
            kill_tree(proc)
        for stream in (proc.stdin, proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def child_protocol() -> tuple[IO[str], dict[str, Any]]:
    """In the child: the protocol stream (the original stdout; what libraries print goes to
    stderr from now on) and the config the parent sent."""
    protocol = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)
    return protocol, json.loads(sys.stdin.readline())


def wait_for_go() -> bool:
    """In the child: block until the parent says ``go`` (False if it hung up)."""
    return bool(json.loads(sys.stdin.readline() or "{}").get("go"))
