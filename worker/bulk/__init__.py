"""Bulk re-exports: one run per selection, its state in Redis, its jobs through a window.

A run (its id is the ``reexport`` task's id) goes like this:

1. The ``reexport`` task takes the selection's lock (``SET NX`` with an expiry), streams the
   selection (:mod:`worker.bulk.selection`) through the :class:`~worker.bulk.planner.Planner`,
   and appends the specs to export to the run's to-do list in Redis; the others are counted
   as ``unchanged`` (or ``failed``, for candidates that cannot be read).  It dispatches
   while it plans (:func:`~worker.bulk.run.plan_run`).
2. Dispatch claims items from the to-do list only while fewer than ``EXPORT_BULK_WINDOW``
   are in flight (an atomic Redis script), and sends each as one ``reexport_item`` job on
   its spec's queue.  Each finished item frees its slot and claims the next: the window
   refills as jobs finish.  No burst of messages, no chord, no result kept per item.
3. The item that leaves nothing in flight and nothing to do (or the planner, if it is last)
   finalizes: the report (:mod:`worker.bulk.report`) goes to S3 and becomes the
   ``reexport`` task's result, and the lock is released.

The planner and the items keep nothing per candidate in memory: the to-do list, the set of
targets claimed and the failures live in Redis (under ``export-worker:bulk:``, expiring with
the results; see :mod:`worker.bulk.state` and :mod:`worker.bulk.keys`).  A run that is
interrupted (its lock expired after a crash, or the planner failed) is resumed by the next
run of the same selection, policy and target format: targets it finished are skipped.  A
run with a target format (``to_format="pt2"``) converts every spec before deciding it.
"""

from .keys import PREFIX, RunKeys
from .locks import TARGET_LOCK_POLL, target_lock, target_lock_ttl, target_locked
from .planner import DRY_RUN_RECENT_TARGETS, Decision, Planner, RecentTargets, plan
from .report import build_report, report_uri_for, save_report, write_report
from .run import PLAN_BATCH, dry_run, new_format, new_policy, plan_run
from .selection import Candidate, check_source, is_catalog, iter_candidates, list_manifests
from .state import BulkRun, BulkRunBusy, Send
from .status import OUTCOMES, Action, Outcome, RunStatus

__all__ = [
    "DRY_RUN_RECENT_TARGETS",
    "OUTCOMES",
    "PLAN_BATCH",
    "PREFIX",
    "TARGET_LOCK_POLL",
    "Action",
    "BulkRun",
    "BulkRunBusy",
    "Candidate",
    "Decision",
    "Outcome",
    "Planner",
    "RecentTargets",
    "RunKeys",
    "RunStatus",
    "Send",
    "build_report",
    "check_source",
    "dry_run",
    "is_catalog",
    "iter_candidates",
    "list_manifests",
    "new_format",
    "new_policy",
    "plan",
    "plan_run",
    "report_uri_for",
    "save_report",
    "target_lock",
    "target_lock_ttl",
    "target_locked",
    "write_report",
]
