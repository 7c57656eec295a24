"""How a running export reports where it is: the stages and the upload's byte counter."""

from __future__ import annotations

import threading
from collections.abc import Callable
from enum import Enum
from types import TracebackType
from typing import Any


class Stage(Enum):
    """Where a running export is; reported through Celery's ``update_state``."""

    BUILDING = "building"
    SCRIPTING = "scripting"
    #: format pt2: torch.export.export captures the module.
    EXPORTING = "exporting"
    UPLOADING = "uploading"
    VERIFYING = "verifying"
    PUBLISHING = "publishing"


#: Called with the stage an export enters, and what it knows about it (``bytes``, ``total``).
Progress = Callable[[Stage, dict[str, Any]], None]


def ignore_progress(stage: Stage, info: dict[str, Any]) -> None:
    """A :data:`Progress` that reports nothing."""


class UploadProgress:
    """Counts an upload's bytes and reports them as :attr:`Stage.UPLOADING`.

    Parts land on the upload's threads, some possibly just after the upload returned: they
    are counted and reported under a lock, in order, and never once the ``with`` block is
    left (so never after the next stage's report).
    """

    def __init__(self, report: Progress) -> None:
        self._report = report
        self._lock = threading.Lock()
        self._state: dict[str, Any] = {"bytes": 0, "total": None}
        self._open = True

    def __enter__(self) -> UploadProgress:
        self._report(Stage.UPLOADING, dict(self._state))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        with self._lock:
            self._open = False

    def on_size(self, total: int) -> None:
        """The archive's size, once known."""
        with self._lock:
            self._state["total"] = total
            self._report(Stage.UPLOADING, dict(self._state))

    def on_bytes(self, n: int) -> None:
        """``n`` more bytes were stored."""
        with self._lock:
            self._state["bytes"] += n
            if self._open:
                self._report(Stage.UPLOADING, dict(self._state))
