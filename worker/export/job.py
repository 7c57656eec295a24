"""One export, as a plain function: spec in, artifact and manifest in S3, result dict out.

The Celery task (``worker.tasks.export_model``) is a thin wrapper around :func:`run_export`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

from serializer.archive.info import ArchiveInfo
from serializer.errors import ObjectExists, UploadFailed
from serializer.manifest.model import CaptureEntry, Producer, build_manifest
from serializer.producer import current_producer
from serializer.s3.client import S3Client
from serializer.signing.keys import SigningKey, TrustedKeys
from serializer.signing.store import sign_export, signature_entry

from ..access import check_spec_scopes
from ..builders import builder_digest, resolve_device
from ..keys import Keys, export_keys, staging_uri
from ..settings import Settings
from ..signing import signing_key, worker_trust
from ..spec import ExportSpec
from ..triton import check_triton_scopes, publish_spec_export
from .capture import Built, Captured, build, capture
from .dead_uploads import abort_dead_uploads, aborted_by_holder
from .extras import check_extras_for_format, resolve_extra_files
from .plan import Action, archive_matters, plan_export
from .progress import Progress, Stage, UploadProgress, ignore_progress
from .publish import (
    await_winner,
    delete_on_failure,
    delete_quietly,
    object_exists,
    promote,
    publish_manifest,
    trusted_manifest,
)
from .record import record_files
from .result import result_of
from .snapshot import carry_into, snapshot_inputs
from .upload import upload_archive
from .verify import verify_upload

log = logging.getLogger(__name__)


def run_export(
    spec: ExportSpec,
    *,
    settings: Settings,
    client: S3Client,
    progress: Progress | None = None,
    replace: bool = False,
    exclusive: bool = False,
    other_running: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """The export (:func:`export_to_store`), then, where the spec's ``triton`` option asks,
    its publication into that Triton repository (in the result's ``triton``); an export
    found done is published too, so a job run again publishes again.

    Raises:
        ScopeError: the Triton repository outside the write scopes, before any work.
        TritonError: the export is done but cannot be published to Triton.
        As :func:`export_to_store` otherwise.
    """
    check_triton_scopes(spec, settings.write_scopes)
    result = export_to_store(
        spec, settings=settings, client=client, progress=progress, replace=replace, exclusive=exclusive,
        other_running=other_running,
    )  # fmt: skip
    published = publish_spec_export(client, spec, result, settings.write_scopes)
    return result if published is None else {**result, "triton": published}


def export_to_store(
    spec: ExportSpec,
    *,
    settings: Settings,
    client: S3Client,
    progress: Progress | None = None,
    replace: bool = False,
    exclusive: bool = False,
    other_running: Callable[[], bool] | None = None,
) -> dict[str, Any]:
    """Build, script, stream, verify and publish one export.

    Nothing is left behind on failure: an artifact written by this run is deleted before the
    error propagates, and the manifest (written last) only exists for a complete export.

    Where the export already exists it is skipped, unless ``replace``: then the new archive
    is uploaded to a staging key, verified there, copied over the old archive (server side)
    and the manifest rewritten; a failure before the copy leaves the old export as it was.
    Concurrent replacements of one export must be kept apart by the caller (the tasks hold
    a lock per export in Redis).  ``exclusive`` says the caller holds it: no other job writes
    these keys now, so an archive found without its manifest was left by a job that died,
    and is replaced the same way, and an upload open on them is a dead job's, and is aborted
    (:mod:`.dead_uploads`).  ``other_running`` says whether another job is exporting
    the same keys: a job that loses the publish race waits for its manifest while it runs.

    Raises:
        ScopeError: a location outside the deployment's scopes, before any request to the store.
        ExportError subclasses (permanent), or botocore errors (transient, for the task to retry).
    """
    check_spec_scopes(spec, settings)
    key = signing_key(settings)  # a key that cannot sign fails the job before any work
    trust = worker_trust(settings, key)
    report = progress or ignore_progress
    producer = current_producer(spec.device, builder_digest(spec.builder, settings.allowed_builders))
    keys = export_keys(spec, producer.torch)
    done, distrust = trusted_manifest(client, keys, spec, trust)
    if distrust is not None:
        log.warning("export %s: manifest at %s not trusted (%s); replacing it", spec.name, keys.manifest, distrust)
    action = _decide(
        client, keys, found=done is not None or distrust is not None, trusted=distrust is None,
        replace=replace, exclusive=exclusive,
    )  # fmt: skip
    if action is Action.SKIP and done is not None:  # SKIP: a manifest was found
        log.info("export %s already at %s; skipped", spec.spec_hash[:16], keys.artifact)
        return result_of(done, keys, skipped=True)
    if exclusive:  # the lock's holder: any upload open on these keys is a dead job's
        abort_dead_uploads(client, keys)
    staged = action is Action.STAGE
    upload_uri = staging_uri(keys) if staged else keys.artifact

    started = time.monotonic()
    report(Stage.BUILDING, {})
    built, captured, extras = _prepare(spec, settings, client, producer, report)
    with UploadProgress(report) as counter:
        try:
            info = upload_archive(
                spec,
                settings,
                client,
                captured.artifact,
                extras,
                upload_uri,
                conditional=settings.conditional_publish and not staged,
                progress=counter,
            )
        except ObjectExists:
            return await_winner(client, keys, spec, other_running, trust)
        except UploadFailed as exc:
            if exclusive or not aborted_by_holder(exc):
                raise
            log.info("export %s: the holder of its lock aborted this upload; waiting for its manifest", spec.name)
            return await_winner(client, keys, spec, other_running, trust)
    staging = upload_uri if staged else None
    result = _publish(
        spec, settings, client, keys, info, built, producer, report, staging=staging, key=key, trust=trust,
        capture=captured.entry,
    )  # fmt: skip
    if not result["skipped"]:  # skipped: another job published first, and its export was adopted
        log.info(
            "exported %s to %s (%d bytes) in %.2f s", spec.name, keys.artifact, info.size, time.monotonic() - started
        )
    return result


def _decide(client: S3Client, keys: Keys, *, found: bool, trusted: bool, replace: bool, exclusive: bool) -> Action:
    """The plan for these keys; the archive is looked for only where the plan depends on it."""
    archive_found = archive_matters(manifest_found=found, replace=replace, exclusive=exclusive) and object_exists(
        client, keys.artifact
    )
    return plan_export(
        manifest_found=found, manifest_trusted=trusted, archive_found=archive_found, replace=replace,
        exclusive=exclusive,
    )  # fmt: skip


def _prepare(
    spec: ExportSpec, settings: Settings, client: S3Client, producer: Producer, report: Progress
) -> tuple[Built, Captured, dict[str, bytes]]:
    """The built module, its capture, and the extra files (the spec's and the build record)."""
    device = resolve_device(spec.device)
    extras = resolve_extra_files(spec, client, settings.max_extra_file_bytes)
    check_extras_for_format(spec, extras)
    snapshot = snapshot_inputs(spec, settings, client)
    carry_into(extras, snapshot.carried, spec.format)
    built = build(spec, settings, client, device, snapshot.kwargs)
    captured = capture(spec, built, report, spool_dir=settings.spool_dir)
    extras.update(record_files(spec, producer.model_dump(), built.inputs, built.reference))
    return built, captured, extras


def _publish(
    spec: ExportSpec,
    settings: Settings,
    client: S3Client,
    keys: Keys,
    info: ArchiveInfo,
    built: Built,
    producer: Producer,
    report: Progress,
    *,
    staging: str | None,
    key: SigningKey | None,
    trust: TrustedKeys | None,
    capture: CaptureEntry | None = None,
) -> dict[str, Any]:
    """Verify the uploaded archive, promote it where it was staged (at ``staging``), sign
    it (where a key is set), write the manifest.

    Each clean-up is registered as soon as what it removes exists: the staging object is
    always deleted; an archive written straight to its key is deleted if a later step
    fails; once a promotion replaced the archive, a failure deletes the old manifest (no
    manifest is better than a wrong one: a retry replaces the archive again, the sweeper
    removes it if none comes).  An :class:`ExportConflict` leaves the keys alone.
    """
    with ExitStack() as cleanups:
        if staging is not None:
            cleanups.callback(delete_quietly, client, staging)
        else:
            delete_on_failure(cleanups, client, keys.artifact)
        verification = verify_upload(spec, settings, client, info, built, report)
        report(Stage.PUBLISHING, {"bytes": info.size})
        if staging is not None:
            info = promote(client, info, keys.artifact)
            delete_on_failure(cleanups, client, keys.manifest)
        manifest = build_manifest(
            info,
            spec=spec.to_json_dict(),
            spec_hash=spec.spec_hash,
            producer=producer,
            verification=verification,
            metadata=spec.metadata,
            signature=signature_entry(key, keys.artifact) if key is not None else None,
            capture=capture,
        )
        if key is not None:  # the signature first: a manifest's presence means signed too
            delete_on_failure(cleanups, client, keys.signature)
            sign_export(
                client, key, model_name=spec.name, artifact_uri=keys.artifact, artifact_sha256=info.sha256,
                manifest_uri=keys.manifest, manifest_bytes=manifest.to_json(),
            )  # fmt: skip
        conditional = settings.conditional_publish and staging is None
        return publish_manifest(client, keys, info, manifest, spec, conditional=conditional, trust=trust)
