"""Running a bulk re-export: checking its arguments, planning it into Redis, or a dry run."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from serializer.formats import FORMATS, Format
from serializer.manifest.model import canonical_json
from serializer.s3.client import S3Client
from serializer.s3.multipart import MultipartWriter
from serializer.s3.uri import parse_s3_uri

from ..errors import SpecError
from ..settings import POLICIES, Policy, Settings
from .planner import Planner, plan
from .selection import iter_candidates
from .state import BulkRun, Send
from .status import Action, RunStatus

#: Candidates planned between two dispatches and progress reports.
PLAN_BATCH = 50


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


def plan_run(
    run: BulkRun, client: S3Client, planner: Planner, send: Send, on_progress: Callable[[], None] | None = None
) -> None:
    """Stream the selection into the run, dispatching as it goes."""
    candidates = iter_candidates(
        client, run.keys.source, catalog_dir=planner.settings.catalog_dir, trusted=planner.trusted
    )
    for item_id, candidate in enumerate(candidates):
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


def _plan_writer(client: S3Client, report_uri: str | None, settings: Settings) -> MultipartWriter | None:
    if report_uri is None:
        return None
    target = parse_s3_uri(report_uri)
    return MultipartWriter(
        client, target.bucket, target.key, part_size=settings.part_size, extra_args={"ContentType": "application/json"}
    )


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
    counts = {action.value: 0 for action in Action}
    started = time.time()
    writer = _plan_writer(client, report_uri, settings)
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
            "status": RunStatus.FINISHED.value,
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
