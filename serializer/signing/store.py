"""Signatures next to exports in S3: written by the worker before the manifest, checked by
a consumer before it trusts the manifest, downloads the archive or loads anything.

An export's folder holds ``model.pt`` (or ``model.pt2``), ``model.manifest.json`` and
``model.sig``; the signature covers the archive's sha256 (as the export computed it while
uploading: no second read) and the manifest's bytes as stored.  The manifest names the
signing key and where the signature is; a consumer reads the signature only from next to
the manifest, never from where a manifest says.
"""

from __future__ import annotations

import hashlib
import posixpath

from botocore.exceptions import ClientError

from ..errors import ManifestError, SignatureError
from ..manifest.model import Manifest, SignatureEntry, artifact_suffix, manifest_uri_for
from ..manifest.store import read_manifest_raw
from ..s3.client import S3Client
from ..s3.retry import error_code, is_transient
from ..s3.uri import parse_s3_uri
from .bundle import MAX_SIGNATURE_BYTES, PREDICATE_TYPE, SIGNATURE_NAME, sign_files, verify_bundle
from .keys import SigningKey, TrustedKeys

#: Content type of a stored signature: a Sigstore bundle is JSON.
SIGNATURE_CONTENT_TYPE = "application/json"


def signature_uri_for(artifact_uri: str) -> str:
    """``.../model.pt`` -> ``.../model.sig``: the one place an export's signature lives."""
    target = parse_s3_uri(artifact_uri)
    return f"s3://{target.bucket}/{posixpath.join(posixpath.dirname(target.key), SIGNATURE_NAME)}"


def signature_entry(key: SigningKey, artifact_uri: str) -> SignatureEntry:
    """What the manifest of an export signed with ``key`` says of its signature."""
    return SignatureEntry(uri=signature_uri_for(artifact_uri), key_id=key.key_id, predicate_type=PREDICATE_TYPE)


def _names(manifest_uri: str, artifact_uri: str) -> tuple[str, str]:
    return posixpath.basename(parse_s3_uri(artifact_uri).key), posixpath.basename(parse_s3_uri(manifest_uri).key)


def sign_export(
    client: S3Client, key: SigningKey, *, model_name: str, artifact_uri: str, artifact_sha256: str,
    manifest_uri: str, manifest_bytes: bytes,
) -> str:  # fmt: skip
    """Sign the archive's digest and the manifest's bytes; store the bundle at the export's
    signature key (one PutObject).  Returns its URI.  Milliseconds: nothing large is read."""
    archive_name, manifest_name = _names(manifest_uri, artifact_uri)
    files = {archive_name: artifact_sha256, manifest_name: hashlib.sha256(manifest_bytes).hexdigest()}
    uri = signature_uri_for(artifact_uri)
    target = parse_s3_uri(uri)
    client.put_object(
        Bucket=target.bucket,
        Key=target.key,
        Body=sign_files(key, model_name, files),
        ContentType=SIGNATURE_CONTENT_TYPE,
    )
    return uri


def read_signature(client: S3Client, uri: str) -> bytes | None:
    """The signature's bytes (one bounded GET), or None where there is none.

    Raises:
        SignatureError: ``invalid`` (too large, or the store refused it).
        ClientError: a transient store error.
    """
    target = parse_s3_uri(uri)
    try:
        reply = client.get_object(Bucket=target.bucket, Key=target.key, Range=f"bytes=0-{MAX_SIGNATURE_BYTES}")
        body = reply["Body"].read(MAX_SIGNATURE_BYTES + 1)
        reply["Body"].close()
    except ClientError as exc:
        code = error_code(exc)
        if code in ("NoSuchKey", "404", "InvalidRange"):
            return None
        if is_transient(exc):
            raise
        raise SignatureError("invalid", f"cannot read the signature {uri}: {code or 'refused'}") from exc
    if len(body) > MAX_SIGNATURE_BYTES:
        raise SignatureError("invalid", f"the signature {uri} is larger than {MAX_SIGNATURE_BYTES} bytes")
    return body


def check_signed(
    client: S3Client, manifest_uri: str, manifest: Manifest, manifest_bytes: bytes, trusted: TrustedKeys
) -> str:
    """Check that a trusted key signed this manifest (its bytes as read) and its archive's
    digest; returns the key's id.  The archive itself is checked against the manifest's
    sha256 when it is downloaded: that digest is now a signed one.

    Raises:
        SignatureError: ``unsigned``, ``altered``, ``foreign`` or ``invalid``, naming the export.
        ClientError: a transient store error.
    """
    where = manifest.artifact.uri
    uri = signature_uri_for(manifest.artifact.uri)
    if signature_uri_for(manifest_uri) != uri:
        raise SignatureError("altered", f"{manifest_uri} describes an archive in another folder ({where})")
    data = read_signature(client, uri)
    if data is None:
        said = "the manifest says it was exported without a signing key" if manifest.signature is None else (
            f"the manifest names a signature by key {manifest.signature.key_id[:16]}..., but none is stored"
        )  # fmt: skip
        raise SignatureError("unsigned", f"{where}: no signature at {uri} ({said})")
    try:
        kid, files = verify_bundle(data, trusted)
    except SignatureError as exc:
        raise SignatureError(exc.kind, f"{where}: {exc.detail} ({uri})") from None
    archive_name, manifest_name = _names(manifest_uri, manifest.artifact.uri)
    if set(files) != {archive_name, manifest_name}:
        raise SignatureError(
            "altered", f"{where}: the signature covers {sorted(files)}, not {sorted({archive_name, manifest_name})}"
        )
    if files[manifest_name] != hashlib.sha256(manifest_bytes).hexdigest():
        raise SignatureError("altered", f"{where}: the manifest was altered after it was signed")
    if files[archive_name] != manifest.artifact.sha256:
        raise SignatureError("altered", f"{where}: the archive's signed sha256 is not the manifest's")
    if manifest.signature is None or manifest.signature.key_id != kid:  # signed, so written so by the worker
        raise SignatureError("invalid", f"{where}: the manifest does not name the key that signed it")
    return kid


def read_trusted_manifest(client: S3Client, uri: str, trusted: TrustedKeys | None) -> Manifest:
    """The manifest for ``uri`` (an artifact's or a manifest's), checked to describe its
    artifact and, with ``trusted``, signed by one of those keys (with its archive's digest).

    Raises:
        ManifestError: no valid manifest for ``uri``, or one describing another artifact.
        SignatureError: ``trusted`` given, and the export is unsigned, altered or foreign-signed.
        ClientError: a transient store error.
    """
    manifest, raw, manifest_uri = read_manifest_in_place(client, uri)
    if trusted is not None:
        check_signed(client, manifest_uri, manifest, raw, trusted)
    return manifest


def read_manifest_in_place(client: S3Client, uri: str) -> tuple[Manifest, bytes, str]:
    """The manifest for ``uri`` (an artifact's or a manifest's), its bytes and its URI,
    checked to describe the artifact next to it.

    Raises:
        ManifestError: no valid manifest for ``uri``, or one describing another artifact.
    """
    manifest_uri = manifest_uri_for(uri) if artifact_suffix(uri) is not None else uri
    manifest, raw = read_manifest_raw(client, manifest_uri)
    if artifact_suffix(uri) is not None and manifest.artifact.uri != uri:
        raise ManifestError(f"manifest next to {uri} describes {manifest.artifact.uri}")
    if manifest_uri_for(manifest.artifact.uri) != manifest_uri:
        raise ManifestError(f"manifest {manifest_uri} describes {manifest.artifact.uri}, which is not next to it")
    return manifest, raw, manifest_uri


def resolve_trusted(trusted: TrustedKeys | None) -> TrustedKeys | None:
    """``trusted``, or where None the keys ``EXPORT_TRUSTED_KEYS`` names (None: no check).

    Raises:
        SignatureError: ``EXPORT_TRUSTED_KEYS`` names a file that is not a usable key.
    """
    if trusted is not None:
        return trusted
    try:
        return TrustedKeys.from_environment()
    except ValueError as exc:
        raise SignatureError("invalid", f"EXPORT_TRUSTED_KEYS: {exc}") from None


def signed_digest(
    client: S3Client, uri: str, sha256: str | None, size: int | None, trusted: TrustedKeys | None
) -> tuple[str | None, int | None]:
    """``(sha256, size)`` to check a download against: with ``trusted``, the signed
    manifest's (the caller's, if given, must agree); without, the caller's.

    Raises:
        SignatureError: the export's signature does not verify.
        ArchiveError: the caller's digest or size is not the signed one.
    """
    if trusted is None:
        return sha256, size
    manifest = read_trusted_manifest(client, uri, trusted)
    if (sha256 is not None and sha256 != manifest.artifact.sha256) or (
        size is not None and size != manifest.artifact.size
    ):
        raise SignatureError("altered", f"{uri}: the sha256 or size given is not the signed manifest's")
    return manifest.artifact.sha256, manifest.artifact.size
