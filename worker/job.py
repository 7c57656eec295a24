"""One export, as a plain function: spec in, artifact and manifest in S3, result dict out.

The Celery task (``worker.tasks.export_model``) is a thin wrapper around :func:`run_export`.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import TYPE_CHECKING, Any

import torch

from serializer.archive.extras import (
    BUILD_JSON,
    BUILD_RECORD_DIR,
    EXAMPLE_INPUTS,
    EXAMPLE_INPUTS_TEXT,
    REFERENCE_OUTPUTS,
    REFERENCE_OUTPUTS_TEXT,
    decode_base64,
)
from serializer.archive.info import ArchiveInfo
from serializer.consumer.compare import compare_outputs
from serializer.errors import InvalidExtraFile, ManifestError, ObjectExists
from serializer.formats import ARTIFACT_SUFFIXES
from serializer.manifest.model import (
    Manifest,
    Verification,
    build_manifest,
    canonical_json,
    manifest_uri_for,
)
from serializer.manifest.store import read_manifest, write_manifest
from serializer.producer import current_producer
from serializer.s3.client import S3Client
from serializer.s3.options import UploadOptions
from serializer.s3.uri import parse_s3_uri
from serializer.torchscript.export import export_torchscript
from serializer.torchscript.load import load_artifact

from .builders import (
    build_module,
    builder_digest,
    example_inputs,
    load_weights,
    resolve_device,
    to_exported_program,
    to_torchscript,
)
from .errors import BuildFailed, ExportConflict, SpecError, VerificationFailed
from .settings import Settings
from .spec import ExportSpec, ExtraBase64, ExtraText, ExtraURI

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

log = logging.getLogger(__name__)

#: Largest extra file when no limit is given (EXPORT_MAX_EXTRA_FILE_BYTES).
MAX_EXTRA_FILE_BYTES = 256 * 1024**2
#: Seconds a job that lost the publish race waits for the winner's manifest.
CONFLICT_WAIT = 30.0
#: Largest object one CopyObject may copy; larger replacements use a multipart copy.
MAX_SINGLE_COPY = 5 * 1024**3


class Stage(Enum):
    """Where a running export is; reported through Celery's ``update_state``."""

    BUILDING = "building"
    SCRIPTING = "scripting"
    #: format pt2: torch.export.export captures the module.
    EXPORTING = "exporting"
    UPLOADING = "uploading"
    VERIFYING = "verifying"
    PUBLISHING = "publishing"


Progress = Callable[[Stage, dict[str, Any]], None]


@dataclass(frozen=True)
class Keys:
    """Where an export goes: derived from the spec's hash and the producing torch."""

    artifact: str
    manifest: str


def export_keys(spec: ExportSpec, torch_version: str) -> Keys:
    """``{destination}/{name}/{spec_hash[:16]}/torch-{version}/model.pt`` (``model.pt2`` for
    format pt2) and its manifest.

    Same spec and same torch: same keys.  A different torch writes next to, not over, the
    artifacts of another.
    """
    dest = parse_s3_uri(spec.destination, require_key=False)
    safe_version = torch_version.replace("+", "_")
    artifact = "model" + ARTIFACT_SUFFIXES[spec.format]
    uri = str(dest.join(spec.name, spec.spec_hash[:16], f"torch-{safe_version}", artifact))
    return Keys(artifact=uri, manifest=manifest_uri_for(uri))


def resolve_extra_files(spec: ExportSpec, client: S3Client, limit: int = MAX_EXTRA_FILE_BYTES) -> dict[str, bytes]:
    """The spec's extra files as bytes (text, base64, or fetched from S3).

    Raises:
        SpecError: a reserved name, an object that is missing, a file over ``limit`` bytes.
    """
    out: dict[str, bytes] = {}
    for name, source in spec.extra_files.items():
        if name.split("/", 1)[0] == BUILD_RECORD_DIR:
            raise SpecError(f"extra_files.{name}: the folder {BUILD_RECORD_DIR!r} is reserved for the build record")
        if isinstance(source, str):
            out[name] = source.encode("utf-8")
        elif isinstance(source, ExtraText):
            out[name] = source.text.encode("utf-8")
        elif isinstance(source, ExtraBase64):
            out[name] = decode_base64(name, source.base64)
        elif isinstance(source, ExtraURI):
            out[name] = _fetch_extra(client, name, source.uri, limit)
        if len(out[name]) > limit:
            raise SpecError(
                f"extra_files.{name}: {len(out[name])} bytes, over EXPORT_MAX_EXTRA_FILE_BYTES ({limit} bytes)"
            )
    return out


def _fetch_extra(client: S3Client, name: str, uri: str, limit: int) -> bytes:
    from botocore.exceptions import ClientError

    from serializer.s3.retry import error_code

    target = parse_s3_uri(uri)
    try:
        head = client.head_object(Bucket=target.bucket, Key=target.key)
        if head["ContentLength"] > limit:
            raise SpecError(
                f"extra_files.{name}: {uri} holds {head['ContentLength']} bytes, "
                f"over EXPORT_MAX_EXTRA_FILE_BYTES ({limit} bytes)"
            )
        return bytes(client.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NoSuchBucket", "403", "AccessDenied"):
            raise SpecError(f"extra_files.{name}: {uri} cannot be read ({error_code(exc)})") from exc
        raise


def _tensor_file(value: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(value, buf)
    return buf.getvalue()


def build_record(
    spec: ExportSpec, producer: dict[str, Any], inputs: tuple[torch.Tensor, ...], outputs: Any
) -> dict[str, bytes]:
    """Extra files describing the export itself, so a consumer can check the archive without
    the model's code: the spec and producer (JSON), and the example inputs and the eager
    module's outputs (``torch.save``, loadable with ``weights_only=True``; base64 text in a
    ``.pt2``, whose extra files are text only)."""
    cpu_out = _to_cpu(outputs)
    tensors = {
        EXAMPLE_INPUTS: _tensor_file([t.detach().cpu() for t in inputs]),
        REFERENCE_OUTPUTS: _tensor_file(cpu_out),
    }
    if spec.format == "pt2":
        tensors = {
            EXAMPLE_INPUTS_TEXT: base64.b64encode(tensors[EXAMPLE_INPUTS]),
            REFERENCE_OUTPUTS_TEXT: base64.b64encode(tensors[REFERENCE_OUTPUTS]),
        }
    return {BUILD_JSON: canonical_json({"spec": spec.to_json_dict(), "producer": producer}), **tensors}


def _to_cpu(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu()
    if isinstance(value, list | tuple):
        return type(value)(_to_cpu(v) for v in value)
    if isinstance(value, dict):
        return {k: _to_cpu(v) for k, v in value.items()}
    return value


def _existing(client: S3Client, keys: Keys) -> Manifest | None:
    try:
        return read_manifest(client, keys.manifest)
    except ManifestError as exc:
        if "no manifest" in str(exc):
            return None
        raise


def result_of(manifest: Manifest, keys: Keys, *, skipped: bool) -> dict[str, Any]:
    """The task's JSON result, from a manifest."""
    return {
        "artifact_uri": keys.artifact,
        "manifest_uri": keys.manifest,
        "sha256": manifest.artifact.sha256,
        "size": manifest.artifact.size,
        "spec_hash": manifest.spec_hash,
        "extra_files": [e.name for e in manifest.extra_files],
        "skipped": skipped,
        "format": manifest.artifact.format,
        "format_version": manifest.artifact.format_version,
        "verification": manifest.verification.model_dump() if manifest.verification else None,
    }


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
    """Build, script, stream, verify and publish one export.

    Nothing is left behind on failure: an artifact written by this run is deleted before the
    error propagates, and the manifest (written last) only exists for a complete export.

    Where the export already exists it is skipped, unless ``replace``: then the new archive
    is uploaded to a staging key, verified there, copied over the old archive (server side)
    and the manifest rewritten; a failure before the copy leaves the old export as it was.
    Concurrent replacements of one export must be kept apart by the caller (the tasks hold
    a lock per export in Redis).  ``exclusive`` says the caller holds it: no other job writes
    these keys now, so an archive found without its manifest was left by a job that died,
    and is replaced the same way.  ``other_running`` says whether another job is exporting
    the same keys: a job that loses the publish race waits for its manifest while it runs.

    Raises:
        ExportError subclasses (permanent), or botocore errors (transient, for the task to retry).
    """
    report = progress or (lambda stage, info: None)
    producer = current_producer(spec.device, builder_digest(spec.builder, settings.allowed_builders))
    keys = export_keys(spec, producer.torch)
    done = _existing(client, keys)
    if done is not None and not replace:
        log.info("export %s already at %s; skipped", spec.spec_hash[:16], keys.artifact)
        return result_of(done, keys, skipped=True)
    # Replacing an export: the new archive goes to a staging key first and is verified
    # there; the old archive and manifest stay untouched until it passed.  (An archive left
    # without its manifest by a failed replacement is replaced the same way.)
    replacing = (replace and done is not None) or (
        done is None and (replace or exclusive) and _object_exists(client, keys.artifact)
    )
    promoted = False
    upload_uri = _staging_uri(keys) if replacing else keys.artifact

    started = time.monotonic()
    report(Stage.BUILDING, {})
    device = resolve_device(spec.device)
    extras = resolve_extra_files(spec, client, settings.max_extra_file_bytes)
    if spec.format == "pt2":
        from serializer.pt2.export import check_text_extras

        try:
            check_text_extras(extras)
        except InvalidExtraFile as exc:
            raise SpecError(f"extra_files: {exc}") from exc
    module = build_module(spec, settings.allowed_builders, device)
    if spec.weights:
        load_weights(module, client, spec.weights, settings.spool_dir)
    module = module.to(device).eval()
    inputs = example_inputs(spec.example_inputs or [], spec.seed, device)
    try:
        with torch.no_grad():
            reference = module(*inputs) if inputs else None
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:  # not a time limit
        raise BuildFailed(f"example_inputs: the eager module fails on them: {exc}") from exc

    if spec.format == "pt2":
        report(Stage.EXPORTING, {})
        captured: Any = to_exported_program(module, inputs, spec.dynamic_shapes)
    else:
        report(Stage.SCRIPTING, {})
        captured = to_torchscript(module, spec.method, inputs)
    if inputs:
        extras.update(build_record(spec, producer.model_dump(), inputs, reference))
    else:
        extras[BUILD_JSON] = canonical_json({"spec": spec.to_json_dict(), "producer": producer.model_dump()})

    state: dict[str, Any] = {"bytes": 0, "total": None}
    report(Stage.UPLOADING, dict(state))
    # Parts land on the upload's threads, some possibly just after the upload returned:
    # counted and reported under a lock, in order, and never after the next stage's report.
    lock = threading.Lock()
    uploading = [True]

    def on_size(total: int) -> None:
        with lock:
            state["total"] = total
            report(Stage.UPLOADING, dict(state))

    def on_bytes(n: int) -> None:
        with lock:
            state["bytes"] += n
            if uploading[0]:
                report(Stage.UPLOADING, dict(state))

    options = UploadOptions(
        part_size=settings.part_size,
        max_in_flight=settings.max_in_flight,
        checksum_algorithm=settings.checksum_algorithm,
        if_none_match=settings.conditional_publish and not replacing,
    )
    exporter: Callable[..., ArchiveInfo] = export_torchscript
    strategy: str = settings.upload_strategy
    if spec.format == "pt2":
        from serializer.pt2.export import export_pt2

        exporter, strategy = export_pt2, settings.pt2_strategy
    try:
        info = exporter(
            captured,
            upload_uri,
            client=client,
            extra_files=extras,
            options=options,
            strategy=strategy,
            spool_dir=settings.spool_dir,
            progress=on_bytes,
            on_size=on_size,
        )
    except ObjectExists:
        return _await_winner(client, keys, other_running)
    finally:
        with lock:
            uploading[0] = False

    try:
        verification = None
        if spec.should_verify:
            report(Stage.VERIFYING, {"bytes": info.size})
            verification = verify_archive(
                client, info, inputs, reference, atol=spec.atol, rtol=spec.rtol, spool_dir=settings.spool_dir
            )
            if not verification.passed and settings.verify_mismatch == "fail":
                raise VerificationFailed(
                    f"reloaded archive differs from the eager module: max abs diff {verification.max_abs_diff:g}, "
                    f"max rel diff {verification.max_rel_diff:g} (atol {spec.atol:g}, rtol {spec.rtol:g})"
                )
        report(Stage.PUBLISHING, {"bytes": info.size})
        if replacing:
            info = _promote(client, info, keys.artifact)
            promoted = True
        manifest = build_manifest(
            info,
            spec=spec.to_json_dict(),
            spec_hash=spec.spec_hash,
            producer=producer,
            verification=verification,
            metadata=spec.metadata,
        )
        try:
            write_manifest(
                client, keys.manifest, manifest, if_none_match=settings.conditional_publish and not replacing
            )
        except ObjectExists:
            return _adopt_winner(client, keys, info)
    except BaseException as exc:
        if isinstance(exc, ExportConflict):
            raise  # the archive is not provably this job's: leave it
        if not replacing:
            _delete_quietly(client, keys.artifact)
        elif promoted:
            # The old manifest no longer describes the archive: no manifest is better than a
            # wrong one.  A retry replaces the archive again; the sweeper removes it if none comes.
            _delete_quietly(client, keys.manifest)
        raise
    finally:
        if replacing:
            _delete_quietly(client, upload_uri)
    log.info("exported %s to %s (%d bytes) in %.2f s", spec.name, keys.artifact, info.size, time.monotonic() - started)
    return result_of(manifest, keys, skipped=False)


def verify_archive(
    client: S3Client,
    info: ArchiveInfo,
    inputs: tuple[torch.Tensor, ...],
    reference: Any,
    *,
    atol: float,
    rtol: float,
    spool_dir: str | None = None,
) -> Verification:
    """Reload the stored archive (checking its sha256 as it downloads) and compare its
    outputs with the eager module's.  A TorchScript archive is loaded on the CPU; a ``.pt2``
    with ``torch.export.load``, its weights on the device they were exported from.  The
    download goes to a temporary file in ``spool_dir``."""
    if info.format == "pt2":
        from serializer.pt2.load import load_pt2_artifact, program_device

        program, _ = load_pt2_artifact(client, info.uri, sha256=info.sha256, size=info.size, spool_dir=spool_dir)
        device = program_device(program)
        with torch.no_grad():
            actual = program.module()(*(t.detach().to(device) for t in inputs))
    else:
        loaded, _ = load_artifact(
            client, info.uri, map_location="cpu", sha256=info.sha256, size=info.size, spool_dir=spool_dir
        )
        with torch.no_grad():
            actual = loaded(*(t.detach().cpu() for t in inputs))
    passed, max_abs, max_rel = compare_outputs(_to_cpu(reference), actual, atol=atol, rtol=rtol)
    return Verification(
        passed=passed,
        max_abs_diff=min(max_abs, 1e300),
        max_rel_diff=min(max_rel, 1e300),
        atol=atol,
        rtol=rtol,
    )


def _object_exists(client: S3Client, uri: str) -> bool:
    from botocore.exceptions import ClientError

    from serializer.s3.retry import error_code

    target = parse_s3_uri(uri)
    try:
        client.head_object(Bucket=target.bucket, Key=target.key)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return False
        raise
    return True


def _staging_uri(keys: Keys) -> str:
    """A key of its own, next to the artifact, for a replacement's new archive."""
    return f"{keys.artifact}.staging-{uuid.uuid4().hex[:12]}"


def _promote(client: S3Client, staged: ArchiveInfo, artifact_uri: str) -> ArchiveInfo:
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


def _adopt_winner(client: S3Client, keys: Keys, info: ArchiveInfo) -> dict[str, Any]:
    """Another job published the manifest first.  Its archive is the one stored (the archive
    key is written once): where its manifest describes these bytes, the export is done."""
    done = _existing(client, keys)
    if done is not None and done.artifact.sha256 == info.sha256:
        return result_of(done, keys, skipped=True)
    raise ExportConflict(
        f"{keys.manifest} was published by another job for other bytes than {keys.artifact} holds; "
        "check the export with exportctl verify"
    )


def _await_winner(client: S3Client, keys: Keys, other_running: Callable[[], bool] | None = None) -> dict[str, Any]:
    """Another worker published the same artifact first: wait for its manifest (at least
    CONFLICT_WAIT seconds, and for as long as ``other_running`` says it is at work)."""
    deadline = time.monotonic() + CONFLICT_WAIT
    while time.monotonic() < deadline or (other_running is not None and other_running()):
        done = _existing(client, keys)
        if done is not None:
            return result_of(done, keys, skipped=True)
        time.sleep(0.5)
    raise ExportConflict(
        f"{keys.artifact} exists without a manifest after {CONFLICT_WAIT:.0f} s: another export of this spec "
        "is still running, or one crashed between archive and manifest; delete the archive to redo it"
    )


def _delete_quietly(client: S3Client, uri: str) -> None:
    target = parse_s3_uri(uri)
    try:
        client.delete_object(Bucket=target.bucket, Key=target.key)
    except Exception:
        log.exception("could not delete %s after a failed export", uri)
