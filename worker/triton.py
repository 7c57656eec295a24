"""Publishing a TorchScript export into a Triton model repository in S3.

Triton reads its repository straight from the store: ``<repository>/<model>/<version>/model.pt``
(the archive, copied server side) and ``<repository>/<model>/config.pbtxt``, generated here
(platform ``pytorch_libtorch``; inputs ``INPUT__0``.., outputs ``OUTPUT__0``.., the names the
PyTorch backend binds by position; data types and dims from the export's build record: its
example inputs and the eager module's outputs on them).

:func:`triton_config` is pure; :func:`publish_to_triton` does the requests.  A version is
written once: a version that already holds another archive is refused, one that holds this
export's archive is left as it is (so publishing again only rewrites the config).
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from botocore.exceptions import ClientError

from serializer.archive.extras import EXAMPLE_INPUTS, REFERENCE_OUTPUTS
from serializer.consumer.extras import read_extra_file
from serializer.manifest.model import Manifest
from serializer.s3.client import S3Client
from serializer.s3.retry import error_code
from serializer.s3.uri import parse_s3_uri
from serializer.signing.keys import TrustedKeys
from serializer.signing.store import read_trusted_manifest

from .errors import ExportError
from .scopes import check_write
from .spec import ExportSpec
from .spec.serving import TritonTarget

if TYPE_CHECKING:
    from mypy_boto3_s3.type_defs import CopySourceTypeDef

log = logging.getLogger(__name__)

#: The Triton backend that loads TorchScript archives.
PLATFORM = "pytorch_libtorch"
#: The archive's name in a version folder, where the PyTorch backend looks for it.
MODEL_FILE = "model.pt"
CONFIG_FILE = "config.pbtxt"
#: Object metadata on the copied archive: the sha256 of its bytes, so that a publication of
#: the same export again can tell its own archive from another one at that version.
SHA256_METADATA = "sha256"
#: Largest object one CopyObject may copy; larger archives are copied in parts.
MAX_SINGLE_COPY = 5 * 1024**3
#: Triton's data type of each torch dtype (``model_config.proto``'s ``DataType``).
DATA_TYPES = {
    torch.bool: "TYPE_BOOL",
    torch.uint8: "TYPE_UINT8",
    torch.int8: "TYPE_INT8",
    torch.int16: "TYPE_INT16",
    torch.int32: "TYPE_INT32",
    torch.int64: "TYPE_INT64",
    torch.float16: "TYPE_FP16",
    torch.float32: "TYPE_FP32",
    torch.float64: "TYPE_FP64",
    torch.bfloat16: "TYPE_BF16",
}


class TritonError(ExportError):
    """Raised when an export cannot be published to Triton: not TorchScript, no build record,
    outputs Triton's PyTorch backend cannot return, or a version that holds another archive."""


@dataclass(frozen=True)
class TensorConfig:
    """One input or output of the model's config: its name, Triton data type and dims
    (without the batch dimension where the model batches; -1 for a variable one)."""

    name: str
    data_type: str
    dims: tuple[int, ...]


@dataclass(frozen=True)
class Publication:
    """Where an export was published: the archive's and the config's URIs."""

    model_uri: str
    config_uri: str
    #: False where the version already held this archive (only the config was written).
    copied: bool

    def as_dict(self) -> dict[str, Any]:
        return {"model_uri": self.model_uri, "config_uri": self.config_uri, "copied": self.copied}


def _flat_outputs(outputs: Any) -> list[torch.Tensor]:
    if isinstance(outputs, torch.Tensor):
        return [outputs]
    if isinstance(outputs, tuple | list) and outputs and all(isinstance(o, torch.Tensor) for o in outputs):
        return list(outputs)
    shown = type(outputs).__name__
    if isinstance(outputs, tuple | list):
        shown += " of " + ", ".join(sorted({type(o).__name__ for o in outputs})) if outputs else " (empty)"
    raise TritonError(
        f"the model returns a {shown}; Triton's PyTorch backend takes a tensor or a tuple of tensors "
        "(have the builder return plain tensors: transformers models with return_dict and use_cache off)"
    )


def tensor_configs(
    role: str, tensors: Sequence[torch.Tensor], *, batched: bool, dynamic: Sequence[frozenset[int]] | None = None
) -> list[TensorConfig]:
    """The config entries of ``tensors`` (``role`` ``INPUT`` or ``OUTPUT``), named
    ``<ROLE>__<i>``; ``dynamic`` gives, per tensor, the dimensions that vary (-1).

    Raises:
        TritonError: a dtype Triton has no type for, or a batched tensor without dimensions.
    """
    entries = []
    for i, tensor in enumerate(tensors):
        data_type = DATA_TYPES.get(tensor.dtype)
        if data_type is None:
            raise TritonError(f"{role.lower()} {i} is {tensor.dtype}, which Triton has no data type for")
        varying = dynamic[i] if dynamic is not None and i < len(dynamic) else frozenset()
        dims = tuple(-1 if d in varying else int(size) for d, size in enumerate(tensor.shape))
        if batched:
            if not dims:
                raise TritonError(
                    f"{role.lower()} {i} has no dimensions: with max_batch_size, dimension 0 is the batch"
                )
            dims = dims[1:]
        entries.append(TensorConfig(f"{role}__{i}", data_type, dims))
    return entries


def _dynamic_of(dynamic_shapes: Any, count: int) -> list[frozenset[int]] | None:
    """Per input, the dimensions a spec's ``dynamic_shapes`` makes vary."""
    if not isinstance(dynamic_shapes, list):
        return None
    return [frozenset(int(k) for k in (entry or {})) for entry in dynamic_shapes[:count]]


def _block(kind: str, entries: Sequence[TensorConfig]) -> list[str]:
    lines = [f"{kind} ["]
    for n, entry in enumerate(entries):
        dims = ", ".join(str(d) for d in entry.dims) if entry.dims else "1"
        lines += ["  {", f'    name: "{entry.name}"', f"    data_type: {entry.data_type}", f"    dims: [ {dims} ]"]
        if not entry.dims:  # a scalar: Triton wants one dimension, reshaped away
            lines.append("    reshape: { shape: [ ] }")
        lines.append("  }" + ("," if n < len(entries) - 1 else ""))
    return [*lines, "]"]


def triton_config(
    model_name: str,
    inputs: Sequence[torch.Tensor],
    outputs: Any,
    *,
    max_batch_size: int = 0,
    dynamic_shapes: Any = None,
) -> str:
    """The ``config.pbtxt`` of a model with these example ``inputs`` and the ``outputs`` it
    returned on them (a tensor, or a tuple or list of tensors).

    With ``max_batch_size`` > 0, dimension 0 of every input and output is Triton's batch and
    left out of ``dims``; ``dynamic_shapes`` (a spec's, where it has them) marks the inputs'
    varying dimensions -1.

    Raises:
        TritonError: outputs that are not tensors, dtypes Triton lacks, no inputs.
    """
    if not inputs:
        raise TritonError("the export has no example inputs; Triton's config takes the inputs' shapes from them")
    batched = max_batch_size > 0
    dynamic = _dynamic_of(dynamic_shapes, len(inputs))
    lines = [f'name: "{model_name}"', f'platform: "{PLATFORM}"', f"max_batch_size: {max_batch_size}"]
    lines += _block("input", tensor_configs("INPUT", inputs, batched=batched, dynamic=dynamic))
    lines += _block("output", tensor_configs("OUTPUT", _flat_outputs(outputs), batched=batched))
    return "\n".join(lines) + "\n"


def target_uris(repository: str, model_name: str, version: int) -> tuple[str, str]:
    """The archive's and the config's URIs in a repository."""
    base = f"{repository.rstrip('/')}/{model_name}"
    return f"{base}/{version}/{MODEL_FILE}", f"{base}/{CONFIG_FILE}"


def _record(client: S3Client, manifest: Manifest) -> tuple[list[torch.Tensor], Any]:
    """The export's example inputs and reference outputs, from its archive (range reads)."""
    names = {entry.name for entry in manifest.extra_files}
    if not {EXAMPLE_INPUTS, REFERENCE_OUTPUTS} <= names:
        raise TritonError(
            f"{manifest.artifact.uri} has no example inputs and reference outputs in its build record; "
            "export it with example_inputs to publish it to Triton"
        )
    loaded = [
        torch.load(
            io.BytesIO(read_extra_file(client, manifest.artifact.uri, name, manifest=manifest)), weights_only=True
        )
        for name in (EXAMPLE_INPUTS, REFERENCE_OUTPUTS)
    ]
    return list(loaded[0]), loaded[1]


def _held_sha256(client: S3Client, uri: str) -> str | None:
    """The sha256 metadata of the object at ``uri`` ("" without it), or None where there is none."""
    target = parse_s3_uri(uri)
    try:
        head = client.head_object(Bucket=target.bucket, Key=target.key)
    except ClientError as exc:
        if error_code(exc) in ("404", "NoSuchKey", "NotFound"):
            return None
        raise
    return str(head.get("Metadata", {}).get(SHA256_METADATA, ""))


def _copy(client: S3Client, manifest: Manifest, model_uri: str) -> None:
    source, target = parse_s3_uri(manifest.artifact.uri), parse_s3_uri(model_uri)
    copy_source: CopySourceTypeDef = {"Bucket": source.bucket, "Key": source.key}
    metadata = {SHA256_METADATA: manifest.artifact.sha256}
    if manifest.artifact.size <= MAX_SINGLE_COPY:
        extra: dict[str, Any] = {"CopySourceIfMatch": manifest.artifact.etag} if manifest.artifact.etag else {}
        client.copy_object(
            Bucket=target.bucket, Key=target.key, CopySource=copy_source, Metadata=metadata,
            MetadataDirective="REPLACE", **extra,
        )  # fmt: skip
    else:
        client.copy(
            copy_source, target.bucket, target.key, ExtraArgs={"Metadata": metadata, "MetadataDirective": "REPLACE"}
        )


def publish_to_triton(
    client: S3Client,
    uri: str,
    repository: str,
    model_name: str,
    version: int,
    *,
    max_batch_size: int = 0,
    write_scopes: Sequence[str] | None = None,
    trusted: TrustedKeys | None = None,
    expected_sha256: str | None = None,
) -> Publication:
    """Publish the TorchScript export at ``uri`` (its archive or manifest) as ``version`` of
    ``model_name`` in the Triton repository ``repository``: a server-side copy of the archive
    to ``<repository>/<model>/<version>/model.pt`` (copied only where the manifest's ETag
    still matches), then its ``config.pbtxt``.  Where the config cannot be written, a copy
    made here is deleted again.

    ``write_scopes`` (the deployment's, where given) must cover both keys; ``trusted`` keys,
    where given, must have signed the export; ``expected_sha256`` is the archive the caller
    means (a job's own export).

    Raises:
        ScopeError: a key outside ``write_scopes``, before any request.
        TritonError: a .pt2 export, no build record, outputs Triton cannot take, another
            archive at that version, or a manifest of other bytes than expected.
        ManifestError, SignatureError: no valid (trusted) manifest for ``uri``.
    """
    model_uri, config_uri = target_uris(repository, model_name, version)
    if write_scopes is not None:
        check_write(write_scopes, model_uri, "triton.repository")
        check_write(write_scopes, config_uri, "triton.repository")
    manifest = read_trusted_manifest(client, uri, trusted)
    if manifest.artifact.format != "torchscript":
        raise TritonError(
            f"{manifest.artifact.uri} is a {manifest.artifact.format} export; Triton's pytorch_libtorch backend "
            "loads TorchScript only: export the model with format 'torchscript'"
        )
    if expected_sha256 is not None and manifest.artifact.sha256 != expected_sha256:
        raise TritonError(f"{manifest.artifact.uri} now holds other bytes than this export; publish it again")
    inputs, outputs = _record(client, manifest)
    config = triton_config(
        model_name, inputs, outputs, max_batch_size=max_batch_size, dynamic_shapes=manifest.spec.get("dynamic_shapes")
    )
    held = _held_sha256(client, model_uri)
    if held is not None and held != manifest.artifact.sha256:
        raise TritonError(
            f"{model_uri} already holds another archive; a Triton version is written once: publish a new version"
        )
    with ExitStack() as undo:
        if held is None:
            _copy(client, manifest, model_uri)
            undo.callback(_delete_quietly, client, model_uri)
        target = parse_s3_uri(config_uri)
        client.put_object(Bucket=target.bucket, Key=target.key, Body=config.encode(), ContentType="text/plain")
        undo.pop_all()
    log.info("published %s to Triton as %s (version %d)", manifest.artifact.uri, model_uri, version)
    return Publication(model_uri, config_uri, copied=held is None)


def _delete_quietly(client: S3Client, uri: str) -> None:
    target = parse_s3_uri(uri)
    try:
        client.delete_object(Bucket=target.bucket, Key=target.key)
    except Exception:
        log.exception("could not delete %s after a failed Triton publication", uri)


def publish_spec_export(
    client: S3Client, spec: ExportSpec, result: dict[str, Any], write_scopes: Sequence[str]
) -> dict[str, Any] | None:
    """Publish a finished export job's archive where its spec's ``triton`` option says; the
    publication, for the job's result (None without the option).

    Raises:
        ScopeError, TritonError: as :func:`publish_to_triton`.
    """
    target: TritonTarget | None = spec.triton
    if target is None:
        return None
    publication = publish_to_triton(
        client, result["artifact_uri"], target.repository, target.model_name or spec.name, target.version,
        max_batch_size=target.max_batch_size, write_scopes=write_scopes, expected_sha256=result["sha256"],
    )  # fmt: skip
    return publication.as_dict()


def check_triton_scopes(spec: ExportSpec, write_scopes: Sequence[str]) -> None:
    """Refuse a spec whose Triton repository lies outside ``write_scopes`` (before any work).

    Raises:
        ScopeError: naming ``triton.repository``.
    """
    if spec.triton is not None:
        for uri in target_uris(spec.triton.repository, spec.triton.model_name or spec.name, spec.triton.version):
            check_write(write_scopes, uri, "triton.repository")
