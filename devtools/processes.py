"""Process trees the benchmarks start: children that die with their parent, and stopping a
whole tree or session."""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from typing import Any

import psutil

__all__ = ["die_with_parent", "kill_tree", "stop_process_group"]


def die_with_parent() -> None:
    """In a child, before exec: ask Linux to SIGTERM it if its parent dies without cleanup."""
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
