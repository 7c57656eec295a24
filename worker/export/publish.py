"""Publishing an export: what the store holds, promotion of a staged archive, the manifest
write, the races with other jobs on the same keys, and the clean-ups after a failure."""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from types import TracebackType
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from serializer.archive.info import ArchiveInfo
from serializer.errors import ManifestError, ObjectExists, SignatureError
from serializer.manifest.model import Manifest
from serializer.manifest.store import read_manifest_raw, write_manifest
from serializer.s3.client import S3Client
from serializer.s3.retry import error_code
from serializer.s3.uri import parse_s3_uri
from serializer.signing.keys import TrustedKeys
from serializer.signing.store import check_signed

from ..errors import ExportConflict
from ..keys import Keys, manifest_mismatch
from ..spec import ExportSpec
from .result import result_of

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

log = logging.getLogger(__name__)

#: Seconds a job that lost the publish race waits for the winner's manifest.
CONFLICT_WAIT = 30.0
#: Largest object one CopyObject may copy; larger replacements use a multipart copy.
MAX_SINGLE_COPY = 5 * 1024**3


def existing_manifest(client: S3Client, keys: Keys) -> tuple[Manifest, bytes] | None:
    """The export's manifest and its bytes, or None where there is none yet.

    Raises:
        ManifestError: a manifest that cannot be read or does not validate.
    """
    try:
        return read_manifest_raw(client, keys.manifest)
    except ManifestError as exc:
        if "no manifest" in str(exc):
            return None
        raise


def trusted_manifest(
    client: S3Client, keys: Keys, spec: ExportSpec, trust: TrustedKeys | None = None
) -> tuple[Manifest | None, str | None]:
    """What the export's manifest key holds: ``(manifest, None)`` where it is the export of
    ``spec`` (:func:`~worker.keys.manifest_mismatch`) and, with ``trust``, signed by one
    of those keys; ``(None, None)`` where nothing is there; ``(None, why)`` where something
    is there that is not (planted, copied, unsigned, or unreadable): the export then goes
    on and replaces it.

    Raises:
        ClientError: a transient store error.
    """
    try:
        found = existing_manifest(client, keys)
    except ManifestError as exc:
        return None, str(exc)
    if found is None:
        return None, None
    manifest, raw = found
    mismatch = manifest_mismatch(manifest, spec, keys.manifest)
    if mismatch is None and trust is not None:
        try:
            check_signed(client, keys.manifest, manifest, raw, trust)
        except SignatureError as exc:
            mismatch = f"its signature is not trusted ({exc.kind})"
    return (None, mismatch) if mismatch is not None else (manifest, None)


def object_exists(client: S3Client, uri: str) -> bool:
    """Whether an object is stored at ``uri`` (a HEAD)."""
    target = parse_s3_uri(uri)
    try:
        client.head_object(Bucket=target.bucket, Key=target.key)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def promote(client: S3Client, staged: ArchiveInfo, artifact_uri: str) -> ArchiveInfo:
    """Copy a verified staged archive over the artifact (server side); the copy's info."""
    source, target = parse_s3_uri(staged.uri), parse_s3_uri(artifact_uri)
    copy_source: CopySourceTypeDef = {"Bucket": source.bucket, "Key": source.key}
    if staged.size <= MAX_SINGLE_COPY:
        reply = client.copy_object(
            Bucket=target.bucket, Key=target.key, CopySource=copy_source, CopySourceIfMatch=staged.etag
        )
        etag = str(reply.get("CopyObjectResult", {}).get("ETag", ""))
    else:
        client.copy(copy_source, target.bucket, target.key)
        etag = str(client.head_object(Bucket=target.bucket, Key=target.key)["ETag"])
    # Quoted, as HEAD and S3 give it (some stores answer CopyObject with a bare ETag).
    if etag and not etag.startswith('"'):
        etag = f'"{etag}"'
    return dataclasses.replace(staged, uri=artifact_uri, etag=etag, version_id=None)


def publish_manifest(
    client: S3Client,
    keys: Keys,
    info: ArchiveInfo,
    manifest: Manifest,
    spec: ExportSpec,
    *,
    conditional: bool,
    trust: TrustedKeys | None = None,
) -> dict[str, Any]:
    """Write the manifest, the export's last step; the task's result.  Where ``conditional``
    and another job published first, its export is adopted (``skipped``) or refused.

    Raises:
        ExportConflict: the winner's manifest describes other bytes.
    """
    try:
        write_manifest(client, keys.manifest, manifest, if_none_match=conditional)
    except ObjectExists:
        return adopt_winner(client, keys, info, spec, trust)
    return result_of(manifest, keys, skipped=False)


def adopt_winner(
    client: S3Client, keys: Keys, info: ArchiveInfo, spec: ExportSpec, trust: TrustedKeys | None = None
) -> dict[str, Any]:
    """Another job published the manifest first.  Its archive is the one stored (the archive
    key is written once): where its manifest is this spec's and describes these bytes, the
    export is done.

    Raises:
        ExportConflict: the winner's manifest describes other bytes, or another spec.
    """
    done, _ = trusted_manifest(client, keys, spec, trust)
    if done is not None and done.artifact.sha256 == info.sha256:
        return result_of(done, keys, skipped=True)
    raise ExportConflict(
        f"{keys.manifest} was published by another job for other bytes than {keys.artifact} holds; "
        "check the export with exportctl verify"
    )


def await_winner(
    client: S3Client,
    keys: Keys,
    spec: ExportSpec,
    other_running: Callable[[], bool] | None = None,
    trust: TrustedKeys | None = None,
) -> dict[str, Any]:
    """Another worker published the same artifact first: wait for its manifest (at least
    CONFLICT_WAIT seconds, and for as long as ``other_running`` says it is at work); only a
    manifest that is this spec's export counts.

    Raises:
        ExportConflict: no manifest of this spec came.
    """
    deadline = time.monotonic() + CONFLICT_WAIT
    while time.monotonic() < deadline or (other_running is not None and other_running()):
        done, _ = trusted_manifest(client, keys, spec, trust)
        if done is not None:
            return result_of(done, keys, skipped=True)
        time.sleep(0.5)
    raise ExportConflict(
        f"{keys.artifact} exists without a manifest after {CONFLICT_WAIT:.0f} s: another export of this spec "
        "is still running, or one crashed between archive and manifest; delete the archive to redo it"
    )


def delete_quietly(client: S3Client, uri: str) -> None:
    """Delete the object at ``uri``; a failure is logged, not raised (the sweeper is the net)."""
    target = parse_s3_uri(uri)
    try:
        client.delete_object(Bucket=target.bucket, Key=target.key)
    except Exception:
        log.exception("could not delete %s after a failed export", uri)


def delete_on_failure(cleanups: ExitStack, client: S3Client, uri: str) -> None:
    """Have ``cleanups`` delete ``uri`` when its block fails, whatever the exception, except
    :class:`ExportConflict`: then the keys are not provably this job's, and are left alone."""

    def on_exit(exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if exc is not None and not isinstance(exc, ExportConflict):
            delete_quietly(client, uri)

    cleanups.push(on_exit)
