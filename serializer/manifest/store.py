"""Manifests in S3: one PutObject to write, one GET to read and validate."""

from __future__ import annotations

from typing import Any

from botocore.exceptions import ClientError

from ..errors import ManifestError
from ..s3.client import S3Client
from ..s3.limits import ReadLimits, env_name, resolve_limits
from ..s3.multipart import MultipartWriter
from ..s3.ranged import parse_content_range
from ..s3.retry import error_code, is_transient
from ..s3.uri import parse_s3_uri
from .model import MAX_MANIFEST_BYTES, Manifest, artifact_suffix, manifest_uri_for


def write_manifest(client: S3Client, uri: str, manifest: Manifest, *, if_none_match: bool = False) -> None:
    """Store ``manifest`` at ``uri`` with one PutObject (small; atomic by nature).

    Raises:
        ObjectExists: ``if_none_match`` is set and a manifest is already there.
        UploadFailed: the store refused it.
    """
    target = parse_s3_uri(uri)
    with MultipartWriter(
        client,
        target.bucket,
        target.key,
        if_none_match=if_none_match,
        extra_args={"ContentType": "application/json"},
    ) as writer:
        writer.write(manifest.to_json())


def read_manifest(client: S3Client, uri: str, *, limits: ReadLimits | None = None) -> Manifest:
    """Fetch and validate the manifest at ``uri`` (a manifest's URI or its artifact's).

    One ranged GET of at most ``max_manifest_bytes + 1`` bytes (``limits``, default
    :meth:`ReadLimits.from_env`; never more than ``MAX_MANIFEST_BYTES``): a larger object is
    refused from its reply's size, without its body being read.

    Raises:
        ManifestError: missing, unreadable, too large or invalid.
        ClientError: a transient store error (5xx, throttling), after botocore's retries.
        InvalidReadLimit: an ``EXPORT_READ_*`` variable is invalid.
    """
    return read_manifest_raw(client, uri, limits=limits)[0]


def read_manifest_raw(client: S3Client, uri: str, *, limits: ReadLimits | None = None) -> tuple[Manifest, bytes]:
    """:func:`read_manifest`, with the bytes as stored (what a signature covers)."""
    if artifact_suffix(uri) is not None:
        uri = manifest_uri_for(uri)
    cap = min(resolve_limits(limits).max_manifest_bytes, MAX_MANIFEST_BYTES)
    target = parse_s3_uri(uri)
    try:
        reply = client.get_object(Bucket=target.bucket, Key=target.key, Range=f"bytes=0-{cap}")
    except ClientError as exc:
        code = error_code(exc)
        if code in ("NoSuchKey", "NoSuchBucket", "404"):
            raise ManifestError(f"no manifest at {uri} ({code})") from exc
        if code == "InvalidRange":  # an empty object has no byte 0
            raise ManifestError(f"manifest {uri} is empty") from exc
        if is_transient(exc):
            raise  # a store that failed to answer: the caller may try again
        raise ManifestError(f"cannot read manifest {uri}: {code or exc}") from exc
    body = _bounded_body(uri, reply, cap)
    try:
        return Manifest.from_json(body), body
    except ManifestError as exc:
        raise ManifestError(f"{uri}: {exc}") from None


def _bounded_body(uri: str, reply: Any, cap: int) -> bytes:
    """A manifest reply's body, refused before it is read when the object is over ``cap``;
    read with a bound either way."""
    stream = reply["Body"]
    try:
        parsed = parse_content_range(str(reply.get("ContentRange") or ""))
        size = parsed[2] if parsed is not None else int(reply.get("ContentLength", 0))
        if size > cap:
            raise ManifestError(
                f"manifest {uri} is {size} bytes, larger than {cap} bytes "
                f"(the read limit, {env_name('max_manifest_bytes')}; at most {MAX_MANIFEST_BYTES})"
            )
        body = bytes(stream.read(size + 1))
    finally:
        stream.close()
    if len(body) != size:
        raise ManifestError(f"manifest {uri}: read {len(body)} bytes of its {size}")
    return body
