"""A dead job's upload: aborted by the job that holds the export's lock.

A job killed mid-upload (``kill -9``, an OOM kill, a lost host) leaves its multipart upload
open: its parts are billed and invisible, and only an abort removes them.  The job that
holds the export's lock (the tasks take one per export in Redis; ``exclusive`` in
:func:`~worker.export.job.run_export`) is the only one that writes the export's keys now,
so any upload open on the export's key, or on one of its staging keys, was started by a job
that died: the holder aborts them before it uploads, and a retried export leaves no orphan
parts behind without waiting for the sweeper.

A job without the lock (the same spec delivered twice) may have an upload of its own open
on that key; when the holder aborts it, that job's next part meets ``NoSuchUpload``
(:func:`aborted_by_holder`), and it waits for the holder's manifest as it would after
losing the conditional publish.
"""

from __future__ import annotations

import logging
from typing import Any

from botocore.exceptions import ClientError

from serializer.s3.client import S3Client
from serializer.s3.retry import error_code
from serializer.s3.uri import parse_s3_uri

from ..keys import Keys, is_upload_of

log = logging.getLogger(__name__)


def abort_dead_uploads(client: S3Client, keys: Keys) -> int:
    """Abort every upload open on the export's artifact key or one of its staging keys;
    call only while holding the export's lock, before this job's own upload starts.

    Uploads of any other key (a longer name sharing the prefix, another format's
    ``model.pt2``, keys outside the layout) are left alone.

    Returns:
        How many uploads were aborted.

    Raises:
        ClientError, BotoCoreError: the listing or an abort failed (transient for the task).
    """
    target = parse_s3_uri(keys.artifact)
    aborted = 0
    pages = client.get_paginator("list_multipart_uploads").paginate(Bucket=target.bucket, Prefix=target.key)
    try:
        for page in pages:
            aborted += _abort_listed(client, target.bucket, target.key, page.get("Uploads", []))
    except ClientError as exc:
        if error_code(exc) != "NoSuchBucket":
            raise
        # No bucket, no upload to abort: the export's own upload fails next, naming it.
    return aborted


def _abort_listed(client: S3Client, bucket: str, key: str, uploads: list[Any]) -> int:
    """Abort the listed uploads that are the export's own key or its staging keys."""
    aborted = 0
    for upload in uploads:
        if not is_upload_of(key, upload["Key"]):
            continue
        try:
            client.abort_multipart_upload(Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"])
        except ClientError as exc:
            if error_code(exc) != "NoSuchUpload":  # gone meanwhile: nothing left to abort
                raise
            continue
        aborted += 1
        log.warning(
            "aborted upload %s of s3://%s/%s left by a job that died (started %s)",
            upload["UploadId"],
            bucket,
            upload["Key"],
            upload.get("Initiated"),
        )
    return aborted


def aborted_by_holder(exc: BaseException) -> bool:
    """Whether an upload failed because its upload id is gone (``NoSuchUpload``): for a job
    without the export's lock, the holder aborted it."""
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, ClientError) and error_code(cause) == "NoSuchUpload":
            return True
        cause = cause.__cause__
    return False
