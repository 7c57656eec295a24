"""Bulk re-exports: one run per selection, its state in Redis, its jobs through a window.

A run (its id is the ``reexport`` task's id) goes like this:

1. The ``reexport`` task takes the selection's lock (``SET NX`` with an expiry), streams the
   selection through the :class:`~worker.selection.Planner`, and appends the specs to
   export to the run's to-do list in Redis; the others are counted as ``unchanged`` (or
   ``failed``, for candidates that cannot be read).  It dispatches while it plans.
2. Dispatch claims items from the to-do list only while fewer than ``EXPORT_BULK_WINDOW``
   are in flight (an atomic Redis script), and sends each as one ``reexport_item`` job on
   its spec's queue.  Each finished item frees its slot and claims the next: the window
   refills as jobs finish.  No burst of messages, no chord, no result kept per item.
3. The item that leaves nothing in flight and nothing to do (or the planner, if it is last)
   finalizes: the report goes to S3 and becomes the ``reexport`` task's result, and the
   lock is released.

The planner and the items keep nothing per candidate in memory: the to-do list, the set of
targets claimed and the failures live in Redis (under ``export-worker:bulk:``, expiring with
the results).  A run that is interrupted (its lock expired after a crash, or the planner
failed) is resumed by the next run of the same selection, policy and target format:
targets it finished are skipped.  A run with a target format (``to_format="pt2"``)
converts every spec before deciding it (see :class:`~worker.selection.Planner`).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from serializer.formats import FORMATS, Format
from serializer.manifest.model import canonical_json
from serializer.s3.client import S3Client
from serializer.s3.uri import parse_s3_uri

from .errors import ExportError, SpecError
from .selection import Decision, Planner, is_catalog, iter_candidates
from .settings import POLICIES, Policy, Settings

log = logging.getLogger(__name__)

PREFIX = "export-worker:bulk:"
#: Outcomes an item (or a candidate) ends with; the report counts each.
OUTCOMES = ("exported", "skipped", "unchanged", "failed", "superseded")
#: Candidates planned between two dispatches and progress reports.
PLAN_BATCH = 50
#: Seconds between an item's tries to take the lock of an export another job is writing.
TARGET_LOCK_POLL = 2.0

Send = Callable[[str, dict[str, Any]], None]


class BulkRunBusy(ExportError):
    """Another bulk run holds the selection's lock."""


# Claim the next item if the window has room: (to-do list, run hash), (window).
_CLAIM = """
if tonumber(redis.call('HGET', KEYS[2], 'in_flight') or '0') >= tonumber(ARGV[1]) then return false end
local item = redis.call('LPOP', KEYS[1])
if item then redis.call('HINCRBY', KEYS[2], 'in_flight', 1) end
return item
"""
# Finalize at most once, when planning is done and nothing is left: (run hash, to-do list).
_FINISH = """
if redis.call('HGET', KEYS[1], 'planned') ~= '1' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'in_flight') or '0') > 0 then return 0 end
if redis.call('LLEN', KEYS[2]) > 0 then return 0 end
return redis.call('HSETNX', KEYS[1], 'finalizing', '1')
"""
# Release or renew a lock only if it is still ours: (lock), (owner, ttl or 0 to release).
_LOCK_OWNED = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if tonumber(ARGV[2]) > 0 then return redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return redis.call('DEL', KEYS[1])
"""
# Count a finished item once and free its slot: (run hash, counted set, done set, failures),
# (item id, outcome, seconds, target done or '', failure JSON or '').
_COMPLETE = """
if redis.call('SADD', KEYS[2], ARGV[1]) == 0 then return 0 end
redis.call('HINCRBY', KEYS[1], ARGV[2], 1)
redis.call('HINCRBY', KEYS[1], 'items', 1)
redis.call('HINCRBYFLOAT', KEYS[1], 'item_seconds', ARGV[3])
local old = tonumber(redis.call('HGET', KEYS[1], 'item_seconds_max') or '0')
if tonumber(ARGV[3]) > old then redis.call('HSET', KEYS[1], 'item_seconds_max', ARGV[3]) end
if ARGV[4] ~= '' then redis.call('SADD', KEYS[3], ARGV[4]) end
if ARGV[5] ~= '' then redis.call('RPUSH', KEYS[4], ARGV[5]) end
redis.call('HINCRBY', KEYS[1], 'in_flight', -1)
return 1
"""


def _digest(*parts: str) -> str:
    import hashlib

    return hashlib.sha256("\0".join(parts).encode()).hexdigest()[:32]


@dataclass(frozen=True)
class RunKeys:
    """The Redis keys of one run, and of its selection."""

    run_id: str
    source: str
    policy: str
    to_format: str = ""

    @property
    def run(self) -> str:
        return f"{PREFIX}run:{self.run_id}"

    @property
    def todo(self) -> str:
        return f"{self.run}:todo"

    @property
    def failures(self) -> str:
        return f"{self.run}:failures"

    @property
    def counted(self) -> str:
        return f"{self.run}:counted"

    @property
    def targets(self) -> str:
        return f"{self.run}:targets"

    @property
    def report(self) -> str:
        return f"{self.run}:report"

    @property
    def lock(self) -> str:
        """One bulk run per selection, whatever its policy."""
        return f"{PREFIX}lock:{_digest(self.source)}"

    @property
    def done(self) -> str:
        """Targets finished by unfinished runs of this selection and policy (for resuming)."""
        return f"{PREFIX}done:{self._selection}"

    @property
    def last(self) -> str:
        return f"{PREFIX}last:{self._selection}"

    @property
    def _selection(self) -> str:
        """The selection, policy and target format: what a resumed run must share."""
        return _digest(self.source, self.policy, *([self.to_format] if self.to_format else []))

    def all_run_keys(self) -> tuple[str, ...]:
        return (self.run, self.todo, self.failures, self.counted, self.targets, self.report)


def report_uri_for(source: str, run_id: str, settings: Settings, report_to: str | None = None) -> str:
    """Where a run's report goes: ``report_to``, ``EXPORT_REPORT_PREFIX``, or ``_reexport/``
    under the selection (next to an S3 catalog).

    Raises:
        SpecError: a catalog on disk with no report location.
    """
    base = report_to or settings.report_prefix
    if base is None:
        if not source.startswith("s3://"):
            raise SpecError(f"catalog {source} is on disk: give report_to or set EXPORT_REPORT_PREFIX (s3://...)")
        if is_catalog(source):
            uri = parse_s3_uri(source)
            folder = uri.key.rpartition("/")[0]
            base = f"s3://{uri.bucket}/{folder}".rstrip("/")
        else:
            base = source
        base = base.rstrip("/") + "/_reexport"
    target = parse_s3_uri(base.rstrip("/"), require_key=False)
    return str(target.join(f"{run_id}.json"))


class BulkRun:
    """A run's state in Redis, and the steps that change it."""

    def __init__(self, redis: Any, keys: RunKeys, settings: Settings) -> None:
        self.redis = redis
        self.keys = keys
        self.settings = settings
        self._claim = redis.register_script(_CLAIM)
        self._finish = redis.register_script(_FINISH)
        self._lock_owned = redis.register_script(_LOCK_OWNED)
        self._complete = redis.register_script(_COMPLETE)

    @classmethod
    def load(cls, redis: Any, run_id: str, settings: Settings) -> BulkRun:
        """A run from its id.

        Raises:
            SpecError: no such run (it expired, or never existed).
        """
        raw = redis.hmget(f"{PREFIX}run:{run_id}", "source", "policy", "to_format")
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
        if not self.redis.set(keys.lock, keys.run_id, nx=True, ex=self.settings.lock_ttl):
            holder = self.redis.get(keys.lock)
            raise BulkRunBusy(
                f"a bulk run of {keys.source} is already running (run {holder.decode() if holder else '?'}); "
                "one run per selection at a time"
            )
        previous = self.redis.get(keys.last)
        resumed = None
        if previous is not None and previous.decode() != keys.run_id:
            old = RunKeys(previous.decode(), keys.source, keys.policy, keys.to_format)
            status = self.redis.hget(old.run, "status")
            if status is not None and status.decode() not in ("finished", "superseded"):
                resumed = old.run_id
                # The interrupted run ends here: its to-do list goes, and its jobs still
                # queued or redelivered count themselves as skipped without exporting.
                pipe = self.redis.pipeline()
                pipe.hset(old.run, "status", "superseded")
                pipe.delete(old.todo)
                pipe.execute()
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
                "status": "planning",
                "planned": 0,
                "in_flight": 0,
                "selected": 0,
                "started_at": datetime.now(UTC).isoformat(),
                "started": time.time(),
                "report_uri": report_uri,
                "resumed_from": resumed or "",
                "dry_run": int(dry_run),
                **{name: 0 for name in OUTCOMES},
            },
        )
        for key in keys.all_run_keys():
            pipe.expire(key, expires)
        pipe.expire(keys.done, expires)
        pipe.execute()
        # The lists and sets are created later; expire them as they appear (see _touch).
        return resumed

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
        if decision.action == "invalid":
            self._fail(decision.name, decision.source, decision.reason)
            return "failed"
        if not decision.runs:
            self.redis.hincrby(keys.run, "unchanged", 1)
            return "unchanged"
        assert decision.target is not None
        if self.redis.sismember(keys.done, decision.target):
            self.redis.hincrby(keys.run, "skipped", 1)
            return "skipped"
        if not self.redis.sadd(keys.targets, decision.target):
            self.redis.hincrby(keys.run, "unchanged", 1)  # another candidate has the same target
            return "unchanged"
        item = {
            "id": item_id,
            "action": decision.action,
            "reason": decision.reason,
            "source": decision.source,
            "target": decision.target,
            "spec": decision.spec,
        }
        self.redis.rpush(keys.todo, json.dumps(item, separators=(",", ":")))
        return "queued"

    def planned(self) -> None:
        """Planning is over: from now on, the run ends when nothing is left in flight."""
        self.redis.hset(self.keys.run, mapping={"planned": 1, "status": "running"})
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
        failure = ""
        if outcome == "failed":
            name = str((item.get("spec") or {}).get("name", "?"))
            entry = {"name": name, "source": item.get("source", ""), "error": error or "failed"}
            failure = json.dumps(entry, separators=(",", ":"))
        done_target = item["target"] if outcome in ("exported", "skipped") else ""
        counted = self._complete(
            keys=[keys.run, keys.counted, keys.done, keys.failures],
            args=[str(item["id"]), outcome, f"{seconds:.6f}", done_target, failure],
        )
        if counted:
            self.renew_lock()
        return bool(counted)

    def _fail(self, name: str, source: str, error: str) -> None:
        self.redis.hincrby(self.keys.run, "failed", 1)
        self._record_failure(name, source, error)

    def _record_failure(self, name: str, source: str, error: str) -> None:
        entry = {"name": name, "source": source, "error": error}
        self.redis.rpush(self.keys.failures, json.dumps(entry, separators=(",", ":")))

    def status(self) -> str:
        """``planning``, ``running``, ``finished``, ``failed`` or ``superseded``."""
        raw = self.redis.hget(self.keys.run, "status")
        return raw.decode() if raw is not None else "expired"

    def is_counted(self, item: dict[str, Any]) -> bool:
        """Whether the item was finished and counted before (it is being redelivered)."""
        return bool(self.redis.sismember(self.keys.counted, str(item["id"])))

    def try_finish(self) -> bool:
        """Whether this caller is the one to finalize (planning done, nothing left)."""
        return bool(self._finish(keys=[self.keys.run, self.keys.todo]))

    # -- progress and the report ----------------------------------------------------------

    def progress(self) -> dict[str, Any]:
        """Counts so far: selected, each outcome, in flight, queued, remaining, and status."""
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(self.keys.run).items()}
        counts = {name: int(raw.get(name, 0)) for name in (*OUTCOMES, "selected", "in_flight")}
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
        raw = {k.decode(): v.decode() for k, v in self.redis.hgetall(keys.run).items()}
        counts = {name: int(raw.get(name, 0)) for name in OUTCOMES}
        items = int(raw.get("items", 0))
        finished = datetime.now(UTC)
        report: dict[str, Any] = {
            "run_id": keys.run_id,
            "source": keys.source,
            "policy": keys.policy,
            "to_format": keys.to_format or None,
            "dry_run": False,
            "status": "superseded" if raw.get("status") == "superseded" else "failed" if error else "finished",
            "error": error,
            "started_at": raw.get("started_at"),
            "finished_at": finished.isoformat(),
            "duration_s": round(time.time() - float(raw.get("started", time.time())), 3),
            "selected": int(raw.get("selected", 0)),
            "counts": counts,
            "failures": list(self.iter_failures()),
            "item_seconds": {
                "count": items,
                "mean": round(float(raw.get("item_seconds", 0)) / items, 4) if items else 0.0,
                "max": round(float(raw.get("item_seconds_max", 0)), 4),
            },
            "window": int(raw.get("window", 0)),
            "resumed_from": raw.get("resumed_from") or None,
            "report_uri": raw.get("report_uri"),
        }
        body = canonical_json(report)
        try:
            write_report(client, report["report_uri"], body)
        except Exception as exc:  # noqa: BLE001 - the report stays in Redis and in the task's result
            log.warning("bulk run %s: report not written to %s: %s", keys.run_id, report["report_uri"], exc)
            report["report_error"] = str(exc)
            body = canonical_json(report)
        superseded = raw.get("status") == "superseded"
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
        log.info("bulk run %s of %s %s: %s", keys.run_id, keys.source, report["status"], counts)
        return report

    def stored_report(self) -> dict[str, Any] | None:
        raw = self.redis.get(self.keys.report)
        return json.loads(raw) if raw is not None else None


def write_report(client: S3Client, uri: str, body: bytes) -> None:
    target = parse_s3_uri(uri)
    client.put_object(Bucket=target.bucket, Key=target.key, Body=body, ContentType="application/json")


def plan_run(
    run: BulkRun, client: S3Client, planner: Planner, send: Send, on_progress: Callable[[], None] | None = None
) -> None:
    """Stream the selection into the run, dispatching as it goes."""
    for item_id, candidate in enumerate(iter_candidates(client, run.keys.source)):
        run.add(planner.decide(candidate), item_id)
        if item_id % PLAN_BATCH == PLAN_BATCH - 1:
            run.dispatch(send)
            run.renew_lock()
            if on_progress is not None:
                on_progress()
    if on_progress is not None:
        # Before planning ends: afterwards the run may finish (and store its result) at any time.
        on_progress()
    run.planned()
    run.dispatch(send)


def target_lock_ttl(settings: Settings) -> int:
    """Seconds an item holds the lock of the export it writes: past the hard time limit
    (a live export never loses it), not much more (a dead one does not block for long)."""
    return settings.time_limit + min(60, settings.time_limit // 4 + 1)


def _target_key(target: str) -> str:
    return f"{PREFIX}target:{_digest(target)}"


def target_locked(redis: Any, target: str) -> bool:
    """Whether some job holds the lock of the export at ``target``."""
    return bool(redis.exists(_target_key(target)))


def target_lock(redis: Any, target: str, ttl: int, owner: str | None = None) -> Callable[[], None] | None:
    """Hold the lock of one export's keys; returns its release, or None if another holds it.

    ``owner`` (a task id) takes back a lock its own earlier attempt held when its process died.
    """
    key = _target_key(target)
    token = owner or uuid.uuid4().hex
    if not redis.set(key, token, nx=True, ex=ttl):
        if owner is None or redis.get(key) != owner.encode():
            return None
        redis.expire(key, ttl)
    script = redis.register_script(_LOCK_OWNED)
    return lambda: script(keys=[key], args=[token, 0])


def new_format(value: str | None) -> Format | None:
    """Check a target format name (None: keep each spec's own).

    Raises:
        SpecError: not one of the formats.
    """
    if value is None or value == "":
        return None
    if value not in FORMATS:
        raise SpecError(f"to_format must be one of {', '.join(FORMATS)}, got {value!r}")
    return value


def new_policy(value: str) -> Policy:
    """Check a policy name.

    Raises:
        SpecError: not one of the policies.
    """
    if value not in POLICIES:
        named = ", ".join(repr(p) for p in POLICIES[:-1]) + f" or {POLICIES[-1]!r}"
        raise SpecError(f"policy must be {named}, got {value!r}")
    return value


def dry_run(
    client: S3Client,
    source: str,
    policy: Policy,
    settings: Settings,
    *,
    run_id: str,
    report_uri: str | None,
    to_format: Format | None = None,
) -> dict[str, Any]:
    """Decide every candidate without sending anything; the plan is streamed into the report
    object (when ``report_uri`` is given), the counts returned."""
    from serializer.s3.multipart import MultipartWriter

    from .selection import plan

    counts = {"export": 0, "replace": 0, "unchanged": 0, "invalid": 0}
    started = time.time()
    writer = None
    if report_uri is not None:
        target = parse_s3_uri(report_uri)
        writer = MultipartWriter(
            client,
            target.bucket,
            target.key,
            part_size=settings.part_size,
            extra_args={"ContentType": "application/json"},
        )
    try:
        if writer is not None:
            writer.write(b'{"plan":[')
        for n, decision in enumerate(plan(client, source, policy, settings, to_format)):
            counts[decision.action] += 1
            if writer is not None:
                writer.write((b"," if n else b"") + canonical_json(decision.to_json()))
        summary = {
            "run_id": run_id,
            "source": source,
            "policy": policy,
            "to_format": to_format,
            "dry_run": True,
            "status": "finished",
            "selected": sum(counts.values()),
            "would": counts,
            "duration_s": round(time.time() - started, 3),
            "report_uri": report_uri,
        }
        if writer is not None:
            writer.write(b"]," + canonical_json(summary)[1:])
            writer.close()
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    return summary
