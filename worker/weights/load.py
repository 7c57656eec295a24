"""Loading a spec's ``weights`` from S3 into the module: a ``torch.save`` state_dict, one
safetensors file, a sharded safetensors checkpoint (its index and shards), or a Hugging
Face snapshot (a prefix ending in ``/``).

Every object read is checked against the read scopes first: the spec's own URI is checked
when the spec is, and each object derived from it (a snapshot's weights, an index's shards,
all in the same folder) here, before it is read.

Memory and disk: a safetensors checkpoint is checked whole from its headers (two small
ranged GETs per shard) before any shard is downloaded; then one shard at a time is
downloaded to the spool directory, its tensors copied one by one into the module's, and the
file removed.  The extra memory is the largest tensor plus the pages of the open shard
(file-backed, at most the largest shard); the disk is the largest shard.
"""

from __future__ import annotations

import logging
import os
import posixpath
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from botocore.exceptions import ClientError
from safetensors import safe_open

from serializer.errors import ArchiveError
from serializer.s3.client import S3Client
from serializer.s3.ranged import download_checked, read_range, read_tail
from serializer.s3.retry import error_code
from serializer.s3.uri import parse_s3_uri

from ..errors import BuildFailed
from ..scopes import check_read
from ..settings import Settings
from .fit import Located, fit_checkpoint, module_tensors
from .safetensors_format import (
    INDEX_SUFFIX,
    MAX_HEADER_BYTES,
    MAX_INDEX_BYTES,
    SAFETENSORS_SUFFIX,
    TensorInfo,
    check_shard_name,
    header_length,
    parse_header,
    parse_index,
)

log = logging.getLogger(__name__)

#: What a snapshot's weights are found as, in the order they are looked for.
SNAPSHOT_WEIGHTS = ("model.safetensors.index.json", "model.safetensors", "pytorch_model.bin")
#: The most objects a snapshot prefix may hold (its direct children; a snapshot holds tens).
MAX_SNAPSHOT_FILES = 10_000
#: The error codes that mean "missing or forbidden": one message for both.
_UNREADABLE = frozenset({"404", "NoSuchKey", "NoSuchBucket", "403", "AccessDenied"})

Kind = Literal["snapshot", "index", "safetensors", "pickle"]


def weights_kind(uri: str) -> Kind:
    """What ``weights`` names, from its form: a snapshot prefix (``.../``), a sharded
    checkpoint's index (``*.safetensors.index.json``), one safetensors file, or else a
    ``torch.save`` file (``.pt``, ``.pth``, ``.bin``, any other name)."""
    if uri.endswith("/"):
        return "snapshot"
    if uri.endswith(INDEX_SUFFIX):
        return "index"
    if uri.endswith(SAFETENSORS_SUFFIX):
        return "safetensors"
    return "pickle"


def load_weights(
    module: torch.nn.Module,
    client: S3Client,
    uri: str,
    spool_dir: str | None = None,
    strict: bool = True,
    *,
    read_scopes: Iterable[str] | None = None,
    cast_floating: bool = False,
) -> None:
    """Load the weights at ``uri`` into ``module`` (see :func:`weights_kind` for the forms).

    ``uri`` itself must already be checked against the read scopes (the spec's check);
    every object derived from it is checked against ``read_scopes`` here (default: the
    deployment's ``EXPORT_READ_SCOPES``).  ``strict``: missing and unexpected keys are
    refused (shape and dtype mismatches always are).  ``cast_floating``: a floating
    safetensors tensor of another floating dtype than the module's is cast to the module's
    (``torch.save`` files keep ``load_state_dict``'s rules).

    Raises:
        BuildFailed: an object cannot be read (missing or forbidden, one message), a file
            that is not what it claims (an invalid or oversized header or index), or a
            checkpoint that does not fit the module, naming the keys, shards and causes.
        ScopeError: an object derived from ``uri`` lies outside the read scopes; it is not read.
    """
    scopes = tuple(read_scopes) if read_scopes is not None else Settings().read_scopes
    kind = weights_kind(uri)
    if kind == "snapshot":
        uri = _snapshot_weights(client, uri, scopes)
        kind = weights_kind(uri)
    if kind == "pickle":
        _load_pickle(module, client, uri, spool_dir, strict)
        return
    shards: dict[str, dict[str, str] | None] = {uri: None}
    if kind == "index":
        shards = dict(_index_shards(client, uri, scopes))
    _load_safetensors(module, client, uri, shards, spool_dir, strict=strict, cast_floating=cast_floating)


def snapshot_files(client: S3Client, prefix_uri: str, *, read_scopes: Iterable[str] | None = None) -> dict[str, str]:
    """The files directly under a snapshot prefix (``s3://bucket/models/bert/``): name -> URI.

    Raises:
        ScopeError: the prefix lies outside ``read_scopes`` (default: the deployment's).
        BuildFailed: the prefix cannot be listed, or holds more than :data:`MAX_SNAPSHOT_FILES`.
    """
    scopes = tuple(read_scopes) if read_scopes is not None else Settings().read_scopes
    check_read(scopes, prefix_uri, "weights")
    return _list_snapshot(client, prefix_uri)


def _list_snapshot(client: S3Client, prefix_uri: str) -> dict[str, str]:
    target = parse_s3_uri(prefix_uri)
    prefix = target.key if target.key.endswith("/") else target.key + "/"
    files: dict[str, str] = {}
    token: str | None = None
    while True:
        kwargs: dict[str, Any] = {"Bucket": target.bucket, "Prefix": prefix, "Delimiter": "/", "MaxKeys": 1000}
        if token:
            kwargs["ContinuationToken"] = token
        try:
            page = client.list_objects_v2(**kwargs)
        except ClientError as exc:
            raise _unreadable(exc, prefix_uri) from None
        for item in page.get("Contents", []):
            name = str(item["Key"])[len(prefix) :]
            if name:
                files[name] = f"s3://{target.bucket}/{prefix}{name}"
        if len(files) > MAX_SNAPSHOT_FILES:
            raise BuildFailed(f"weights {prefix_uri} holds more than {MAX_SNAPSHOT_FILES} files; is it a snapshot?")
        token = page.get("NextContinuationToken") if page.get("IsTruncated") else None
        if not token:
            return files


def _snapshot_weights(client: S3Client, prefix_uri: str, scopes: Sequence[str]) -> str:
    """The URI of a snapshot's weights (:data:`SNAPSHOT_WEIGHTS`, in order), checked against the scopes."""
    files = _list_snapshot(client, prefix_uri)
    for name in SNAPSHOT_WEIGHTS:
        if name in files:
            check_read(scopes, files[name], "weights")
            log.info("weights: snapshot %s, loading %s", prefix_uri, name)
            return files[name]
    shown = ", ".join(sorted(files)[:20]) + (f", and {len(files) - 20} more" if len(files) > 20 else "")
    raise BuildFailed(
        f"weights {prefix_uri} holds no {', '.join(SNAPSHOT_WEIGHTS[:-1])} or {SNAPSHOT_WEIGHTS[-1]} "
        f"(found: {shown or 'nothing'}); name the weights file itself, or copy the snapshot's weights there"
    )


def _index_shards(client: S3Client, uri: str, scopes: Sequence[str]) -> dict[str, dict[str, str]]:
    """Shard URI -> the tensors the index puts in it; each shard checked against the scopes."""
    try:
        data = read_tail(client, uri, MAX_INDEX_BYTES + 1, max_bytes=MAX_INDEX_BYTES + 1, what="index").data
    except ClientError as exc:
        raise _unreadable(exc, uri) from None
    except ArchiveError as exc:
        raise BuildFailed(f"weights {uri}: {exc}") from exc
    try:
        weight_map = parse_index(data)
    except ValueError as exc:
        raise BuildFailed(f"weights {uri}: {exc}") from None
    bucket, key = parse_s3_uri(uri)
    folder = key.rpartition("/")[0]
    shards: dict[str, dict[str, str]] = {}
    for tensor, shard in weight_map.items():
        shard_uri = f"s3://{bucket}/{posixpath.join(folder, check_shard_name(shard))}"
        shards.setdefault(shard_uri, {})[tensor] = shard
    for shard_uri in shards:
        check_read(scopes, shard_uri, "weights")
    return shards


@dataclass(frozen=True)
class _Shard:
    """One safetensors file: its URI, size and the tensors its header describes."""

    uri: str
    size: int
    tensors: dict[str, TensorInfo]

    @property
    def name(self) -> str:
        return posixpath.basename(parse_s3_uri(self.uri).key)


def _load_safetensors(
    module: torch.nn.Module,
    client: S3Client,
    uri: str,
    shards: dict[str, dict[str, str] | None],
    spool_dir: str | None,
    *,
    strict: bool,
    cast_floating: bool,
) -> None:
    """Check every shard's header against the index and the module, then load shard by shard."""
    read = [_read_header(client, shard_uri) for shard_uri in shards]
    found: dict[str, Located] = {}
    for shard in read:
        listed = shards[shard.uri]
        if listed is not None and set(listed) != set(shard.tensors):
            absent = sorted(set(listed) - set(shard.tensors))
            extra = sorted(set(shard.tensors) - set(listed))
            raise BuildFailed(
                f"weights {uri}: the index and shard {shard.name} disagree "
                f"(in the index only: {', '.join(absent[:5]) or 'none'}; in the shard only: "
                f"{', '.join(extra[:5]) or 'none'})"
            )
        for name, info in shard.tensors.items():
            found[name] = Located(info, shard.name)
    fit = fit_checkpoint(module_tensors(module), found, cast_floating=cast_floating)
    problems = fit.problems(strict=strict)
    if problems:
        raise BuildFailed(f"weights {uri} do not fit the module: {problems}")
    if fit.cast:
        log.info("weights %s: %d floating tensors cast to the module's dtype", uri, len(fit.cast))
    for shard in read:
        wanted = [name for name in shard.tensors if name in fit.load]
        if wanted:
            _load_shard(client, shard, wanted, fit.load, spool_dir)


def _read_header(client: S3Client, uri: str) -> _Shard:
    """A safetensors object's header, read by two ranged GETs (8 bytes, then the header)."""
    try:
        first = read_range(client, uri, 0, 8, max_bytes=8, what="header length")
        n = header_length(first.data, first.total)
        header = read_range(
            client, uri, 8, n, max_bytes=MAX_HEADER_BYTES, what="header", etag=first.etag, total=first.total
        )
        tensors = parse_header(header.data, first.total - 8 - n)
    except ClientError as exc:
        if error_code(exc) == "InvalidRange":  # shorter than 8 bytes: an empty object
            raise BuildFailed(f"weights {uri}: not a safetensors file (empty)") from None
        raise _unreadable(exc, uri) from None
    except (ArchiveError, ValueError) as exc:
        raise BuildFailed(f"weights {uri}: {exc}") from None
    return _Shard(uri, first.total, tensors)


def _load_shard(
    client: S3Client, shard: _Shard, names: list[str], targets: dict[str, torch.Tensor], spool_dir: str | None
) -> None:
    """Download one shard, copy its tensors ``names`` into ``targets``, remove the file."""
    with tempfile.TemporaryDirectory(prefix="export-worker-weights-", dir=spool_dir) as tmp:
        path = os.path.join(tmp, "shard.safetensors")
        try:
            download_checked(client, shard.uri, path, size=shard.size)
        except ClientError as exc:
            raise _unreadable(exc, shard.uri) from None
        except ArchiveError as exc:
            raise BuildFailed(f"weights {shard.uri}: {exc}") from exc
        try:
            with safe_open(path, framework="pt", device="cpu") as f:
                if set(f.keys()) != set(shard.tensors):
                    raise BuildFailed(f"weights {shard.uri} was replaced while being read; load it again")
                with torch.no_grad():
                    for name in names:
                        tensor = f.get_tensor(name)
                        if tuple(tensor.shape) != shard.tensors[name].shape:
                            raise BuildFailed(f"weights {shard.uri} was replaced while being read; load it again")
                        targets[name].copy_(tensor)
                        del tensor
        except BuildFailed:
            raise
        except Exception as exc:  # safetensors' own checks: a file its header does not describe
            raise BuildFailed(f"weights {shard.uri}: not a valid safetensors file: {exc}") from exc
    log.info("weights: loaded %d tensors from %s", len(names), shard.uri)


def _load_pickle(module: torch.nn.Module, client: S3Client, uri: str, spool_dir: str | None, strict: bool) -> None:
    """A ``torch.save`` state_dict, loaded with ``torch.load(weights_only=True)``.

    The checkpoint goes to a temporary file (memory-mapped by torch, not read into memory),
    and ``weights_only=True`` refuses any pickle that would run code.
    """
    target = parse_s3_uri(uri)
    with tempfile.TemporaryDirectory(prefix="export-worker-weights-", dir=spool_dir) as tmp:
        path = os.path.join(tmp, "weights.pt")
        try:
            client.download_file(target.bucket, target.key, path)
        except ClientError as exc:
            raise _unreadable(exc, uri) from None
        try:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:
            raise BuildFailed(
                f"weights {uri} are not a plain state_dict (weights_only=True refused it): {exc}"
            ) from exc
        if not isinstance(state, dict):
            raise BuildFailed(f"weights {uri} hold a {type(state).__name__}, not a state_dict")
        try:
            module.load_state_dict(state, strict=strict)
        except RuntimeError as exc:
            raise BuildFailed(f"weights {uri} do not fit the module: {exc}") from exc


def _unreadable(exc: ClientError, uri: str) -> BaseException:
    """One message for a missing and a forbidden object (which of the two it is is not the
    submitter's to learn); any other error as it is (transient ones are retried by the task)."""
    if error_code(exc) in _UNREADABLE:
        return BuildFailed(f"weights {uri} cannot be read")
    return exc
