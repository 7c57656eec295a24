"""The states of a bulk run, the outcomes of its items and the planner's actions.

``str`` Enums: a member is its value wherever it goes (JSON, Redis, log lines), so the
reports and the Redis records read exactly as plain strings would.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    """Where a run stands (the ``status`` field of its record and its report)."""

    #: Streaming the selection into the to-do list, dispatching as it goes.
    PLANNING = "planning"
    #: Planning is over; items are in flight or to do.
    RUNNING = "running"
    #: Every item counted and the report written.
    FINISHED = "finished"
    #: Planning failed; the report says why.
    FAILED = "failed"
    #: A later run of the same selection took over; leftover jobs export nothing.
    SUPERSEDED = "superseded"
    #: No record of the run (it expired, or never existed); never stored.
    EXPIRED = "expired"


class Outcome(StrEnum):
    """How an item (or a candidate) ends; the report counts each."""

    #: Exported, new or replacing an older export.
    EXPORTED = "exported"
    #: The target already holds a current export (written by this run or the one it resumes).
    SKIPPED = "skipped"
    #: Nothing to redo under the policy, or another candidate has the same target.
    UNCHANGED = "unchanged"
    #: The candidate could not be read, or its export failed.
    FAILED = "failed"
    #: A job of a run that a later run took over: it exported nothing.
    SUPERSEDED = "superseded"


#: Every outcome, in the order the report lists them.
OUTCOMES: tuple[Outcome, ...] = tuple(Outcome)


class Action(StrEnum):
    """What the planner decides for one candidate."""

    #: No export by this worker's torch yet: export it.
    EXPORT = "export"
    #: An export exists but the policy wants it redone: export it again, replacing it.
    REPLACE = "replace"
    #: Nothing to redo.
    UNCHANGED = "unchanged"
    #: The candidate cannot be exported (unreadable, bad spec, builder not allowed).
    INVALID = "invalid"
