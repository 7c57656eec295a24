"""What every benchmark shares."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["REPO_ROOT", "MiB", "on_sigterm"]

MiB = 1024**2
#: Where the benchmarks run from, and their children and workers with it.
REPO_ROOT = Path(__file__).resolve().parent.parent


def on_sigterm(signum: int, frame: Any) -> None:
    """A SIGTERM handler: stop as on Ctrl-C, so that what was started is stopped."""
    raise KeyboardInterrupt
