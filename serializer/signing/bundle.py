"""The OpenSSF Model Signing format, without the model on disk: an in-toto statement of
(file name, sha256) pairs, in a DSSE envelope, in a Sigstore bundle (JSON).

Pure: digests in, bundle bytes out, and back.  What ``model_signing verify key`` reads:
the statement's ``serialization`` says files hashed whole with sha256, the signature file
itself ignored, so the standard verifier checks a folder holding the export's files.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from typing import Any

from ..errors import SignatureError
from .keys import SigningKey, TrustedKeys

#: DSSE payload type of an in-toto statement.
PAYLOAD_TYPE = "application/vnd.in-toto+json"
#: in-toto statement layout, v1.
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
#: The model-signing predicate this writes (v1.0 of OpenSSF model signing).
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
#: The Sigstore bundle version model-signing writes for key-based signatures.
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
#: The signature's file name next to the export (model-signing's default name).
SIGNATURE_NAME = "model.sig"
#: Largest signature read: a bundle over a few files is about 2 KiB.
MAX_SIGNATURE_BYTES = 256 * 1024
_SHA256_HEX = frozenset("0123456789abcdef")


def pae(payload: bytes) -> bytes:
    """DSSE's pre-authentication encoding of ``payload``: what the key signs."""
    return b"DSSEv1 %d %s %d %s" % (len(PAYLOAD_TYPE), PAYLOAD_TYPE.encode(), len(payload), payload)


def _is_sha256(value: object) -> bool:
    return isinstance(value, str) and len(value) == 64 and set(value) <= _SHA256_HEX


def statement(model_name: str, files: Mapping[str, str]) -> dict[str, Any]:
    """The in-toto statement of ``files`` (name -> sha256 hex): each a resource, sorted by
    name; the subject's digest is sha256 over the resources' digests in that order."""
    if not files:
        raise ValueError("a statement covers at least one file")
    for name, digest in files.items():
        if not _is_sha256(digest):
            raise ValueError(f"{name}: {digest!r} is not a sha256 hex digest")
    names = sorted(files)
    root = hashlib.sha256(b"".join(bytes.fromhex(files[n]) for n in names)).hexdigest()
    return {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": model_name, "digest": {"sha256": root}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "serialization": {
                "method": "files",
                "hash_type": "sha256",
                "allow_symlinks": False,
                "ignore_paths": [SIGNATURE_NAME],
            },
            "resources": [{"name": n, "algorithm": "sha256", "digest": files[n]} for n in names],
        },
    }


def sign_files(key: SigningKey, model_name: str, files: Mapping[str, str]) -> bytes:
    """The bundle (JSON bytes) signing ``files`` (name -> sha256 hex) with ``key``."""
    payload = json.dumps(statement(model_name, files), sort_keys=True, separators=(",", ":")).encode()
    bundle = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key.key_id}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(key.sign(pae(payload))).decode(), "keyid": ""}],
        },
    }
    return json.dumps(bundle, indent=2).encode()


def _field(data: Any, *path: str) -> Any:
    for name in path:
        if not isinstance(data, dict) or name not in data:
            raise SignatureError("invalid", f"the signature has no {'.'.join(path)}")
        data = data[name]
    return data


def _b64(value: Any, what: str) -> bytes:
    if not isinstance(value, str):
        raise SignatureError("invalid", f"the signature's {what} is not base64 text")
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SignatureError("invalid", f"the signature's {what} is not base64") from None


def _json(data: bytes, what: str) -> Any:
    try:
        return json.loads(data)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise SignatureError("invalid", f"{what} is not JSON") from None


def verify_bundle(data: bytes, trusted: TrustedKeys) -> tuple[str, dict[str, str]]:
    """Check a bundle's signature against ``trusted`` and read its statement.

    Returns:
        The signing key's id, and the signed files (name -> sha256 hex).

    Raises:
        SignatureError: ``invalid`` (not a bundle of this format, or a statement whose
            digests do not add up), ``foreign`` or ``altered``.
    """
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureError("invalid", f"the signature is larger than {MAX_SIGNATURE_BYTES} bytes")
    bundle = _json(data, "the signature")
    if _field(bundle, "mediaType") != BUNDLE_MEDIA_TYPE:
        raise SignatureError("invalid", f"the signature is not a {BUNDLE_MEDIA_TYPE} bundle")
    envelope = _field(bundle, "dsseEnvelope")
    if _field(envelope, "payloadType") != PAYLOAD_TYPE:
        raise SignatureError("invalid", f"the signed payload is not {PAYLOAD_TYPE}")
    signatures = _field(envelope, "signatures")
    if not isinstance(signatures, list) or len(signatures) != 1:
        raise SignatureError("invalid", "the envelope must hold exactly one signature")
    payload = _b64(_field(envelope, "payload"), "payload")
    signature = _b64(_field(signatures[0], "sig"), "signature")
    hint = bundle.get("verificationMaterial", {}).get("publicKey", {}).get("hint")
    kid = trusted.verify(signature, pae(payload), hint if isinstance(hint, str) else None)
    return kid, _signed_files(_json(payload, "the signed statement"))


def _signed_files(signed: Any) -> dict[str, str]:
    """The (name, sha256) pairs of a verified statement, checked to add up."""
    if _field(signed, "_type") != STATEMENT_TYPE or _field(signed, "predicateType") != PREDICATE_TYPE:
        raise SignatureError("invalid", f"the statement is not a {PREDICATE_TYPE} in-toto statement")
    resources = _field(signed, "predicate", "resources")
    subjects = _field(signed, "subject")
    if not isinstance(resources, list) or not isinstance(subjects, list) or len(subjects) != 1:
        raise SignatureError("invalid", "the statement needs one subject and a list of resources")
    files: dict[str, str] = {}
    for item in resources:
        name, algorithm, digest = (_field(item, k) for k in ("name", "algorithm", "digest"))
        if not isinstance(name, str) or algorithm != "sha256" or not _is_sha256(digest) or name in files:
            raise SignatureError("invalid", "a resource of the statement is not a unique (name, sha256) pair")
        files[name] = digest
    root = hashlib.sha256(b"".join(bytes.fromhex(files[n]) for n in sorted(files))).hexdigest()
    if _field(subjects[0], "digest", "sha256") != root:
        raise SignatureError("invalid", "the statement's subject digest does not match its resources")
    return files
