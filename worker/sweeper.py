"""Cleaning up after exports that died: stale multipart uploads, staging objects, orphans.

An export that is killed (``kill -9``, a lost host, the hard time limit) cannot abort its
own multipart upload, and its parts stay billed and invisible until someone aborts it.  The
sweeper, scheduled by beat, walks the prefixes the service writes to and removes what no
live export can still own, i.e. older than ``EXPORT_SWEEP_AFTER`` (by default the
visibility timeout, itself above the hard time limit):

- incomplete multipart uploads (``AbortMultipartUpload``);
- staging objects of replacements (``model.pt.staging-*``, ``model.pt2.staging-*``);
- archives without a manifest (an export that died between archive and manifest).

Only keys in the service's own layout are touched; anything else under a prefix is left.

The store-side safety net is a lifecycle rule, ``AbortIncompleteMultipartUpload``
(README, "Operations").  Listings are streamed: memory stays flat whatever the count.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

from botocore.exceptions import ClientError

from serializer.manifest.model import MANIFEST_SUFFIX
from serializer.s3.client import S3Client
from serializer.s3.retry import error_code
from serializer.s3.uri import parse_s3_uri

from .keys import is_archive_key, is_staging_key, manifest_key_of

log = logging.getLogger(__name__)


@dataclass
class SweepReport:
    """What one sweep found and removed."""

    aborted_uploads: int = 0
    deleted_staging: int = 0
    deleted_orphans: int = 0
    recent_kept: int = 0

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


def sweep(
    client: S3Client, prefixes: Iterable[str], *, older_than: float, now: datetime | None = None, dry_run: bool = False
) -> SweepReport:
    """Remove stale uploads, staging objects and orphan archives under ``prefixes``.

    Args:
        prefixes: ``s3://bucket[/prefix]`` URIs.
        older_than: seconds; anything younger may belong to a live export and is kept.
        dry_run: count, remove nothing.
    """
    cutoff = (now or datetime.now(UTC)) - timedelta(seconds=older_than)
    report = SweepReport()
    chosen = list(prefixes)
    for uri in chosen:
        target = parse_s3_uri(uri.rstrip("/"), require_key=False)
        key = target.key if not target.key or target.key.endswith("/") else target.key + "/"
        _sweep_uploads(client, target.bucket, key, cutoff, report, dry_run)
        _sweep_objects(client, target.bucket, key, cutoff, report, dry_run)
    log.info("sweep of %s: %s", ", ".join(chosen) or "no prefix", report.as_dict())
    return report


def _sweep_uploads(
    client: S3Client, bucket: str, prefix: str, cutoff: datetime, report: SweepReport, dry: bool
) -> None:
    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix)
    for page in pages:
        for upload in page.get("Uploads", []):
            if upload["Initiated"] >= cutoff:
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
    client: S3Client, bucket: str, prefix: str, cutoff: datetime, report: SweepReport, dry: bool
) -> None:
    # Within a folder the listing is sorted: "model.manifest.json" comes before "model.pt"
    # and "model.pt2" (a folder holds one format: the spec's hash covers it), so
    # remembering the last manifest seen tells whether an archive has one.
    last_manifest = ""
    for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            key = item["Key"]
            if key.endswith(MANIFEST_SUFFIX):
                last_manifest = key
                continue
            # Only keys in the service's layout (worker.keys); other objects are never touched.
            staging = is_staging_key(key)
            orphan = is_archive_key(key) and last_manifest != manifest_key_of(key)
            if not (staging or orphan):
                continue
            if item["LastModified"] >= cutoff:
                report.recent_kept += 1
                continue
            if staging:
                report.deleted_staging += 1
            else:
                report.deleted_orphans += 1
            if not dry:
                client.delete_object(Bucket=bucket, Key=key)
                log.warning(
                    "deleted stale %s s3://%s/%s", "staging object" if staging else "orphan archive", bucket, key
                )
