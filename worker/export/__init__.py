"""One export: build, capture, stream, verify and publish a model (:func:`run_export`).

One job per module: :mod:`.plan` decides (skip, write, stage) from what the store holds;
:mod:`.extras` resolves the spec's extra files; :mod:`.capture` builds and captures the
module; :mod:`.record` writes the build record; :mod:`.upload` streams the archive;
:mod:`.verify` reloads and compares it; :mod:`.publish` promotes, writes the manifest and
cleans up; :mod:`.job` runs the steps.  The key layout is :mod:`worker.keys`.
"""

from __future__ import annotations

from .extras import MAX_EXTRA_FILE_BYTES, resolve_extra_files
from .job import run_export
from .plan import Action, plan_export
from .progress import Progress, Stage
from .publish import CONFLICT_WAIT, MAX_SINGLE_COPY
from .record import build_record
from .result import result_of
from .verify import verify_archive

__all__ = [
    "CONFLICT_WAIT",
    "MAX_EXTRA_FILE_BYTES",
    "MAX_SINGLE_COPY",
    "Action",
    "Progress",
    "Stage",
    "build_record",
    "plan_export",
    "resolve_extra_files",
    "result_of",
    "run_export",
    "verify_archive",
]
