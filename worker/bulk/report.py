"""A bulk run's report: where it goes, what it says (a pure function of the run's record),
and its write to S3."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from serializer.manifest.model import canonical_json
from serializer.s3.client import S3Client
from serializer.s3.uri import parse_s3_uri

from ..errors import SpecError
from ..settings import Settings
from .keys import RunKeys
from .selection import is_catalog
from .status import OUTCOMES, RunStatus

log = logging.getLogger(__name__)


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


def build_report(
    keys: RunKeys, record: dict[str, str], failures: list[dict[str, Any]], *, error: str | None, now: float
) -> dict[str, Any]:
    """The report of a run that ends now, from its record (the run hash, decoded) and its
    failures: counts by outcome, each failure, timings.

    Args:
        error: why the run failed (planning failed), or None.
        now: the time it ends, in seconds since the epoch.
    """
    items = int(record.get("items", 0))
    superseded = record.get("status") == RunStatus.SUPERSEDED
    status = RunStatus.SUPERSEDED if superseded else RunStatus.FAILED if error else RunStatus.FINISHED
    return {
        "run_id": keys.run_id,
        "source": keys.source,
        "policy": keys.policy,
        "to_format": keys.to_format or None,
        "dry_run": False,
        "status": status.value,
        "error": error,
        "started_at": record.get("started_at"),
        "finished_at": datetime.fromtimestamp(now, UTC).isoformat(),
        "duration_s": round(now - float(record.get("started", now)), 3),
        "selected": int(record.get("selected", 0)),
        "counts": {name.value: int(record.get(name, 0)) for name in OUTCOMES},
        "failures": failures,
        "item_seconds": {
            "count": items,
            "mean": round(float(record.get("item_seconds", 0)) / items, 4) if items else 0.0,
            "max": round(float(record.get("item_seconds_max", 0)), 4),
        },
        "window": int(record.get("window", 0)),
        "resumed_from": record.get("resumed_from") or None,
        "report_uri": record.get("report_uri"),
    }


def write_report(client: S3Client, uri: str, body: bytes) -> None:
    """Put a report's JSON at ``uri``."""
    target = parse_s3_uri(uri)
    client.put_object(Bucket=target.bucket, Key=target.key, Body=body, ContentType="application/json")


def save_report(client: S3Client, report: dict[str, Any]) -> bytes:
    """Write ``report`` to its ``report_uri``; returns its JSON as it is kept.

    A write that fails does not fail the run: the report (kept in Redis and in the task's
    result) then says why in ``report_error``.
    """
    body = canonical_json(report)
    try:
        write_report(client, report["report_uri"], body)
    except Exception as exc:  # noqa: BLE001 - the report stays in Redis and in the task's result
        log.warning("bulk run %s: report not written to %s: %s", report["run_id"], report["report_uri"], exc)
        report["report_error"] = str(exc)
        body = canonical_json(report)
    return body
