"""A bulk run's state in Redis, and the transitions that change it.

The record of a run is one hash (counts, status, window, timings); next to it the to-do
list, the set of targets claimed, the set of items counted and the failures.  Every step
that more than one process may take at once (claiming under the window, counting an item,
finalizing, releasing a lock) is one Redis script (see :mod:`worker.bulk.lua`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

from serializer.s3.client import S3Client

from ..errors import ExportError, SpecError
from ..settings import Settings
from . import lua
from .keys import RunKeys, run_key
from .planner import Decision
from .report import build_report, save_report
from .status import OUTCOMES, Action, Outcome, RunStatus

log = logging.getLogger(__name__)

#: What :meth:`BulkRun.add` returns for a candidate put on the to-do list.
QUEUED = "queued"

#: Sends one item of a run as a job: (run id, item).
Send = Callable[[str, dict[str, Any]], None]


class BulkRunBusy(ExportError):
    """Raised when another bulk run holds the selection's lock."""


def _compact(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"))


class BulkRun:
    """A run's state in Redis, and the steps that change it."""

    def __init__(self, redis: Any, keys: RunKeys, settings: Settings) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self._claim = redis.register_script(lua.CLAIM)
        self._finish = redis.register_script(lua.FINISH)
        self._lock_owned = redis.register_script(lua.LOCK_OWNED)
        self._complete = redis.register_script(lua.COMPLETE)

    @classmethod
    def load(cls, redis: Any, run_id: str, settings: Settings) -> BulkRun:
        """A run from its id.

        Raises:
            SpecError: no such run (it expired, or never existed).
        """
        raw = redis.hmget(run_key(run_id), "source", "policy", "to_format")
        if raw[0] is None:
            raise SpecError(f"no bulk run {run_id} (unknown, or its record expired)")
        to_format = raw[2].decode() if raw[2] is not None else ""
        return cls(redis, RunKeys(run_id, raw[0].decode(), raw[1].decode(), to_format), settings)

    # -- starting -------------------------------------------------------------------------

    def start(self, *, window: int, report_uri: str, dry_run: bool = False) -> str | None:
        """Take the selection's lock and record the run; returns the run it resumes, if any.

        Raises:
            BulkRunBusy: another run holds the lock.
        """
        keys = self.keys
        self._take_lock()
        resumed = self._supersede_previous()
        if resumed is None:
            self.redis.delete(keys.done)
        expires = self.settings.result_expires
        pipe = self.redis.pipeline()
        pipe.set(keys.last, keys.run_id, ex=expires)
        pipe.hset(
            keys.run,
            mapping={
                "source": keys.source,
                "policy": keys.policy,
                "to_format": keys.to_format,
                "window": window,
                "status": RunStatus.PLANNING.value,
                "planned": 0,
                "in_flight": 0,
                "selected": 0,
                "started_at": datetime.now(UTC).isoformat(),
                "started": time.time(),
                "report_uri": report_uri,
                "resumed_from": resumed or "",
                "dry_run": int(dry_run),
                **{name.value: 0 for name in OUTCOMES},
            },
        )
        for key in keys.all_run_keys():
            pipe.expire(key, expires)
        pipe.expire(keys.done, expires)
        pipe.execute()
        # The lists and sets are created later; expire them as they appear (see _touch).
        return resumed

    def _take_lock(self) -> None:
        keys = self.keys
        if not self.redis.set(keys.lock, keys.run_id, nx=True, ex=self.settings.lock_ttl):
            holder = self.redis.get(keys.lock)
            raise BulkRunBusy(
                f"a bulk run of {keys.source} is already running (run {holder.decode() if holder else '?'}); "
                "one run per selection at a time"
            )

    def _supersede_previous(self) -> str | None:
        """End the selection's previous run if it was interrupted; returns its id, if so."""
        keys = self.keys
        previous = self.redis.get(keys.last)
        if previous is None or previous.decode() == keys.run_id:
            return None
        old = RunKeys(previous.decode(), keys.source, keys.policy, keys.to_format)
        status = self.redis.hget(old.run, "status")
        if status is None or status.decode() in (RunStatus.FINISHED, RunStatus.SUPERSEDED):
            return None
        # The interrupted run ends here: its to-do list goes, and its jobs still
        # queued or redelivered count themselves as skipped without exporting.
        pipe = self.redis.pipeline()
        pipe.hset(old.run, "status", RunStatus.SUPERSEDED.value)
        pipe.delete(old.todo)
        pipe.execute()
        return old.run_id

    def _touch(self, *keys: str) -> None:
        pipe = self.redis.pipeline()
        for key in keys:
            pipe.expire(key, self.settings.result_expires)
        pipe.execute()

    def renew_lock(self) -> None:
        """Push the lock's expiry back: the run is alive."""
        self._lock_owned(keys=[self.keys.lock], args=[self.keys.run_id, self.settings.lock_ttl])

    def release_lock(self) -> None:
        self._lock_owned(keys=[self.keys.lock], args=[self.keys.run_id, 0])

    # -- planning -------------------------------------------------------------------------

    def add(self, decision: Decision, item_id: int) -> str:
        """Record one planned candidate: to-do (unless done already), unchanged, or failed.
        Returns its outcome so far: ``queued``, ``skipped``, ``unchanged`` or ``failed``."""
        keys = self.keys
        self.redis.hincrby(keys.run, "selected", 1)
        if decision.action == Action.INVALID:
            self._fail(decision.name, decision.source, decision.reason)
            return Outcome.FAILED
        if not decision.runs:
            self.redis.hincrby(keys.run, Outcome.UNCHANGED.value, 1)
            return Outcome.UNCHANGED
        assert decision.target is not None
        if self.redis.sismember(keys.done, decision.target):
            self.redis.hincrby(keys.run, Outcome.SKIPPED.value, 1)
            return Outcome.SKIPPED
        if not self.redis.sadd(keys.targets, decision.target):
            self.redis.hincrby(keys.run, Outcome.UNCHANGED.value, 1)  # another candidate has the same target
            return Outcome.UNCHANGED
        item = {
            "id": item_id,
            "action": decision.action.value,
            "reason": decision.reason,
            "source": decision.source,
            "target": decision.target,
            "spec": decision.spec,
        }
        self.redis.rpush(keys.todo, _compact(item))
        return QUEUED

    def planned(self) -> None:
        """Planning is over: from now on, the run ends when nothing is left in flight."""
        self.redis.hset(self.keys.run, mapping={"planned": 1, "status": RunStatus.RUNNING.value})
        self._touch(self.keys.todo, self.keys.targets, self.keys.failures)

    # -- dispatching ----------------------------------------------------------------------

    def dispatch(self, send: Send) -> int:
        """Send to-do items while the window has room; returns how many were sent."""
        window = int(self.redis.hget(self.keys.run, "window") or self.settings.bulk_window)
        sent = 0
        while True:
            raw = self._claim(keys=[self.keys.todo, self.keys.run], args=[window])
            if raw is None:
                return sent
            item = json.loads(raw)
            try:
                send(self.keys.run_id, item)
            except BaseException:
                # Not sent: put it back, free its slot.
                self.redis.lpush(self.keys.todo, raw)
                self.redis.hincrby(self.keys.run, "in_flight", -1)
                raise
            sent += 1

    # -- finishing items ------------------------------------------------------------------

    def complete(self, item: dict[str, Any], outcome: str, seconds: float, error: str | None = None) -> bool:
        """Count a finished item and free its slot, atomically and once (a redelivered item
        is not counted twice).  Returns False where it had been counted already.

        ``exported`` and ``skipped`` mean the target holds a current export: a run that
        resumes this one skips it.  Jobs that export nothing (those of a superseded run)
        count as ``superseded``."""
        keys = self.keys
        outcome = Outcome(outcome)
        failure = ""
        if outcome == Outcome.FAILED:
            name = str((item.get("spec") or {}).get("name", "?"))
            failure = _compact({"name": name, "source": item.get("source", ""), "error": error or "failed"})
        done_target = item["target"] if outcome in (Outcome.EXPORTED, Outcome.SKIPPED) else ""
        counted = self._complete(
            keys=[keys.run, keys.counted, keys.done, keys.failures],
            args=[str(item["id"]), outcome.value, f"{seconds:.6f}", done_target, failure],
        )
        if counted:
            self.renew_lock()
        return bool(counted)

    def _fail(self, name: str, source: str, error: str) -> None:
        self.redis.hincrby(self.keys.run, Outcome.FAILED.value, 1)
        self.redis.rpush(self.keys.failures, _compact({"name": name, "source": source, "error": error}))

    def status(self) -> str:
        """``planning``, ``running``, ``finished``, ``failed`` or ``superseded`` (or
        ``expired``, where the run's record is gone)."""
        raw = self.redis.hget(self.keys.run, "status")
        return raw.decode() if raw is not None else RunStatus.EXPIRED.value

    def is_counted(self, item: dict[str, Any]) -> bool:
        """Whether the item was finished and counted before (it is being redelivered)."""
        return bool(self.redis.sismember(self.keys.counted, str(item["id"])))

    def try_finish(self) -> bool:
        """Whether this caller is the one to finalize (planning done, nothing left)."""
        return bool(self._finish(keys=[self.keys.run, self.keys.todo]))

    # -- progress and the report ----------------------------------------------------------

    def _record(self) -> dict[str, str]:
        return {k.decode(): v.decode() for k, v in self.redis.hgetall(self.keys.run).items()}

    def progress(self) -> dict[str, Any]:
        """Counts so far: selected, each outcome, in flight, queued, remaining, and status."""
        raw = self._record()
        counts = {name: int(raw.get(name, 0)) for name in (*(o.value for o in OUTCOMES), "selected", "in_flight")}
        done = sum(counts[name] for name in OUTCOMES)
        return {
            "run_id": self.keys.run_id,
            "source": raw.get("source"),
            "policy": raw.get("policy"),
            "status": raw.get("status"),
            "planned": raw.get("planned") == "1",
            **counts,
            "queued": int(self.redis.llen(self.keys.todo)),
            "done": done,
            "remaining": counts["selected"] - done,
            "report_uri": raw.get("report_uri"),
        }

    def iter_failures(self, batch: int = 500) -> Iterator[dict[str, Any]]:
        start = 0
        while True:
            chunk = self.redis.lrange(self.keys.failures, start, start + batch - 1)
            if not chunk:
                return
            for raw in chunk:
                yield json.loads(raw)
            start += batch

    def finalize(self, client: S3Client, error: str | None = None) -> dict[str, Any]:
        """Write the report to S3 (and Redis), release the lock; returns the report."""
        keys = self.keys
        raw = self._record()
        report = build_report(keys, raw, list(self.iter_failures()), error=error, now=time.time())
        body = save_report(client, report)
        superseded = raw.get("status") == RunStatus.SUPERSEDED
        last = self.redis.get(keys.last)
        pipe = self.redis.pipeline()
        pipe.set(keys.report, body, ex=self.settings.result_expires)
        pipe.delete(keys.todo, keys.targets, keys.counted)
        if not superseded:
            pipe.hset(keys.run, "status", report["status"])
        if not error and not superseded and last is not None and last.decode() == keys.run_id:
            # The selection's latest run finished: nothing is left to resume.
            pipe.delete(keys.done)
        pipe.execute()
        self.release_lock()
        log.info("bulk run %s of %s %s: %s", keys.run_id, keys.source, report["status"], report["counts"])
        return report

    def stored_report(self) -> dict[str, Any] | None:
        raw = self.redis.get(self.keys.report)
        return json.loads(raw) if raw is not None else None
