"""A builder module that must never be imported: importing it leaves a marker file.

The tests name it in specs whose allow-list does not cover it, then check that the marker
(``$NEVER_IMPORT_MARKER``, set by the test) was not created, in this process or a worker's.
"""

from __future__ import annotations

import os
from pathlib import Path

from torch import nn

#: Environment variable naming the marker file this module creates when imported.
MARKER_ENV = "NEVER_IMPORT_MARKER"

_marker = os.environ.get(MARKER_ENV)
if _marker:
    Path(_marker).write_text(f"imported by pid {os.getpid()}\n")


def build() -> nn.Module:
    """Would return a module, if the module were ever imported."""
    return nn.Identity()
