"""Cleaning up after exports that died: stale multipart uploads, staging objects, orphans.

An export that is killed (``kill -9``, a lost host, the hard time limit) cannot abort its
own multipart upload, and its parts stay billed and invisible until someone aborts it.  (A
retry of the job aborts the dead attempt's upload itself: :mod:`worker.export.dead_uploads`;
the sweeper is for jobs that never come back and uploads no job knows of.)  The sweeper,
scheduled by beat, walks the prefixes the deployment configured (``EXPORT_SWEEP_PREFIXES``)
and removes what no live export can still own, i.e. older than ``EXPORT_SWEEP_AFTER`` (by
default the visibility timeout, itself above the hard time limit):

- incomplete multipart uploads (``AbortMultipartUpload``) of keys in the service's layout;
- staging objects of replacements (``model.pt.staging-{12 hex}``, ``model.pt2.staging-...``);
- archives whose manifest a HEAD finds absent (an export that died between archive and
  manifest).

It removes only on positive proof:

- only keys of the exact layout (:func:`worker.keys.layout_of`); anything else under a
  prefix, uploads included, is left;
- an orphan is an archive whose exact sibling manifest a HEAD answers 404 for, never a
  guess from the listing's order;
- ages come from the store's own clock (the ``Date`` of its listing replies; where a reply
  has none, the newest timestamp listed so far stands in, which can only make objects look
  younger); the worker's clock is never read;
- a message may narrow the configured prefixes and lengthen the age, never widen or
  shorten them (:func:`sweep_scope` refuses, and nothing is swept).

The store-side safety net is a lifecycle rule, ``AbortIncompleteMultipartUpload``
(README, "Operations").  Listings are streamed: memory stays flat whatever the count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta
from email.utils import parsedate_to_datetime
from typing import Any

from botocore.exceptions import ClientError

from serializer.s3.client import S3Client
from serializer.s3.retry import error_code

from .errors import ScopeError, SweepRefused
from .keys import layout_of, manifest_key_of
from .scopes import Location, parse_location

log = logging.getLogger(__name__)

#: The settings a refusal names.
PREFIXES_SETTING = "EXPORT_SWEEP_PREFIXES"
AGE_SETTING = "EXPORT_SWEEP_AFTER"
#: Error codes of a HEAD that found no object.
_ABSENT = ("404", "NoSuchKey", "NotFound")


@dataclass
class SweepReport:
    """What one sweep found and removed."""

    aborted_uploads: int = 0
    deleted_staging: int = 0
    deleted_orphans: int = 0
    recent_kept: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sweep_scope(
    configured: Sequence[str], stale_after: float, prefixes: Any = None, older_than: Any = None
) -> tuple[list[str], float]:
    """The prefixes and age a sweep asked for, checked against the deployment's.

    Args:
        configured: ``EXPORT_SWEEP_PREFIXES``.
        stale_after: ``EXPORT_SWEEP_AFTER`` (default: the visibility timeout), seconds.
        prefixes: the message's prefixes (None: the configured ones); each must lie inside a
            configured one, on path segments.
        older_than: the message's age (None: ``stale_after``); at least ``stale_after``.

    Raises:
        SweepRefused: a prefix outside the configured ones (or not a canonical
            ``s3://bucket/prefix``), or an age under ``stale_after``, naming the field and
            the rule.  Nothing is swept.
    """
    allowed = [_location(uri, PREFIXES_SETTING) for uri in configured]
    if prefixes is None:
        chosen = list(configured)
    elif isinstance(prefixes, str) or not isinstance(prefixes, list | tuple):
        raise SweepRefused(f"prefixes: a list of s3://bucket/prefix URIs inside {PREFIXES_SETTING}, not {prefixes!r}")
    else:
        chosen = []
        for uri in prefixes:
            if not isinstance(uri, str):
                raise SweepRefused(f"prefixes: {uri!r} is not an s3://bucket/prefix URI")
            location = _location(uri, "prefixes")
            if not any(scope.covers(location) for scope in allowed):
                raise SweepRefused(
                    f"prefixes: {uri} is outside {PREFIXES_SETTING}; a sweep may only narrow the configured prefixes"
                )
            chosen.append(uri)
    if older_than is None:
        return chosen, float(stale_after)
    if isinstance(older_than, bool) or not isinstance(older_than, int | float) or not math.isfinite(older_than):
        raise SweepRefused(f"older_than: a number of seconds, not {older_than!r}")
    if older_than < stale_after:
        raise SweepRefused(
            f"older_than: {older_than} s is under {AGE_SETTING} ({stale_after} s); "
            "a sweep may only lengthen the age, never shorten it"
        )
    return chosen, float(older_than)


def _location(uri: str, field: str) -> Location:
    try:
        return parse_location(uri)
    except ScopeError as exc:
        raise SweepRefused(f"{field}: {exc}") from None


def sweep(client: S3Client, prefixes: Iterable[str], *, older_than: float, dry_run: bool = False) -> SweepReport:
    """Remove stale uploads, staging objects and orphan archives under ``prefixes``.

    Check the prefixes and age with :func:`sweep_scope` first: this function removes what
    it is told to, within the layout's rules.

    Args:
        prefixes: ``s3://bucket[/prefix]`` URIs.
        older_than: seconds by the store's clock; anything younger may belong to a live
            export and is kept.
        dry_run: count, remove nothing (manifests are still looked for: HEAD only).
    """
    report = SweepReport()
    chosen = list(prefixes)
    for uri in chosen:
        location = _location(uri, "prefixes")
        key = "".join(segment + "/" for segment in location.segments)
        _sweep_uploads(client, location.bucket, key, older_than, report, dry_run)
        _sweep_objects(client, location.bucket, key, older_than, report, dry_run)
    log.info("sweep of %s: %s", ", ".join(chosen) or "no prefix", report.as_dict())
    return report


class StoreClock:
    """The store's time, as its replies tell it: the ``Date`` header of each listing page;
    where a page has none, the newest timestamp listed so far (a lower bound of the store's
    time: objects can only look younger, never older)."""

    def __init__(self, older_than: float) -> None:
        self._age = timedelta(seconds=older_than)
        self._date: datetime | None = None
        self._newest: datetime | None = None

    def cutoff(self, page: Mapping[str, Any], stamps: Iterable[datetime]) -> datetime | None:
        """The moment before which what ``page`` lists is stale; None where the store has
        said nothing of its time (an empty page without a ``Date``)."""
        date = _reply_date(page)
        if date is not None and (self._date is None or date > self._date):
            self._date = date
        for stamp in stamps:
            if self._newest is None or stamp > self._newest:
                self._newest = stamp
        now = self._date if self._date is not None else self._newest
        return None if now is None else now - self._age


def _reply_date(page: Mapping[str, Any]) -> datetime | None:
    headers = page.get("ResponseMetadata", {}).get("HTTPHeaders", {})
    text = headers.get("date")
    if not text:
        return None
    try:
        date = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        log.warning("the store's Date header %r does not parse; the listing's own times stand in", text)
        return None
    return date if date.tzinfo is not None else None


def _sweep_uploads(
    client: S3Client, bucket: str, prefix: str, older_than: float, report: SweepReport, dry: bool
) -> None:
    clock = StoreClock(older_than)
    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        uploads = page.get("Uploads", [])
        cutoff = clock.cutoff(page, (u["Initiated"] for u in uploads))
        for upload in uploads:
            if layout_of(upload["Key"]) is None:
                continue  # not a key the service writes: some other client's upload
            if cutoff is None or upload["Initiated"] >= cutoff:
                report.recent_kept += 1
                continue
            report.aborted_uploads += 1
            if dry:
                continue
            try:
                client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
            except ClientError as exc:
                if error_code(exc) != "NoSuchUpload":  # gone already: someone else finished or aborted it
                    raise
            log.warning("aborted stale upload of s3://%s/%s (started %s)", bucket, upload["Key"], upload["Initiated"])


def _sweep_objects(
    client: S3Client, bucket: str, prefix: str, older_than: float, report: SweepReport, dry: bool
) -> None:
    clock = StoreClock(older_than)
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        items = page.get("Contents", [])
        cutoff = clock.cutoff(page, (item["LastModified"] for item in items))
        for item in items:
            key = item["Key"]
            found = layout_of(key)
            if found is None:
                continue  # manifests, and every key the service does not write
            if cutoff is None or item["LastModified"] >= cutoff:
                report.recent_kept += 1
                continue
            if not found.staging and not _manifest_absent(client, bucket, key):
                continue  # a complete export (or one whose manifest could not be looked for)
            if found.staging:
                report.deleted_staging += 1
            else:
                report.deleted_orphans += 1
            if not dry:
                client.delete_object(Bucket=bucket, Key=key)
                log.warning(
                    "deleted stale %s s3://%s/%s", "staging object" if found.staging else "orphan archive", bucket, key
                )


def _manifest_absent(client: S3Client, bucket: str, archive_key: str) -> bool:
    """Whether a HEAD of the archive's exact sibling manifest says it does not exist; any
    other answer (found, refused, failed) keeps the archive."""
    manifest = manifest_key_of(archive_key)
    try:
        client.head_object(Bucket=bucket, Key=manifest)
    except ClientError as exc:
        if error_code(exc) in _ABSENT:
            return True
        log.warning("could not look for s3://%s/%s (%s): its archive is kept", bucket, manifest, error_code(exc))
    return False
