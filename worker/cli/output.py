"""What every ``exportctl`` command shares: the two consoles and the one-line error."""

from __future__ import annotations

from rich.console import Console

__all__ = ["CommandError", "console", "out"]

#: Progress, status lines and errors (stderr), so that stdout stays for results.
console = Console(stderr=True, highlight=False, soft_wrap=True)
#: Results (stdout): tables, manifests, task ids.
out = Console(highlight=False, soft_wrap=True)


class CommandError(Exception):
    """Raised for an expected failure the CLI reports as one line with a non-zero exit."""
