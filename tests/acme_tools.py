"""A helper module another builder module imports from: :func:`leave_marker` is registered
here, and writes the file it is given when called, so a test can tell whether it ever ran
under another module's name (``tests.acme_models:leave_marker``)."""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

from worker.allowlist import register_builder


@register_builder
def leave_marker(path: str) -> nn.Module:
    """Write ``path`` (the proof of a call), then return a module."""
    Path(path).write_text(f"called in pid {os.getpid()}\n")
    return nn.Identity()
