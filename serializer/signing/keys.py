"""Signing keys and trusted public keys: elliptic-curve keys in PEM, named by key id."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from ..errors import SignatureError

#: The curves the OpenSSF model-signing verifier accepts (Sigstore's), and each one's hash.
CURVE_HASHES: Mapping[str, type[hashes.HashAlgorithm]] = {
    "secp256r1": hashes.SHA256,
    "secp384r1": hashes.SHA384,
    "secp521r1": hashes.SHA512,
}
#: The environment variable a consumer's trusted public keys come from: PEM files,
#: separated by commas (or the platform's path separator).
TRUSTED_KEYS_ENV = "EXPORT_TRUSTED_KEYS"
#: Largest key file read: a PEM key is a few hundred bytes.
MAX_KEY_FILE_BYTES = 64 * 1024


def key_id(public_key: ec.EllipticCurvePublicKey) -> str:
    """The key's id, as model-signing's bundles hint it: sha256 (hex) of its PEM
    SubjectPublicKeyInfo."""
    pem = public_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(pem).hexdigest()


def _curve_hash(public_key: ec.EllipticCurvePublicKey, where: str) -> hashes.HashAlgorithm:
    algorithm = CURVE_HASHES.get(public_key.curve.name)
    if algorithm is None:
        raise ValueError(f"{where}: curve {public_key.curve.name} is not one of {', '.join(CURVE_HASHES)}")
    return algorithm()


def _read_key_file(path: str | os.PathLike[str]) -> bytes:
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ValueError(f"cannot read key file {os.fspath(path)}: {exc.strerror or exc}") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ValueError(f"key file {os.fspath(path)} is larger than {MAX_KEY_FILE_BYTES} bytes: not a PEM key")
    return data


@dataclass(frozen=True, repr=False)
class SigningKey:
    """An elliptic-curve private key exports are signed with (never shown: no repr)."""

    _private: ec.EllipticCurvePrivateKey

    @classmethod
    def from_pem(cls, data: bytes, *, password: bytes | None = None, where: str = "signing key") -> SigningKey:
        """Raises ValueError: not a PEM elliptic-curve private key on a supported curve, or a
        wrong password (the message never quotes the key)."""
        try:
            private = serialization.load_pem_private_key(data, password)
        except (ValueError, TypeError) as exc:
            reason = "wrong or missing password" if "password" in str(exc).lower() else "not a PEM private key"
            raise ValueError(f"{where}: {reason}") from None
        if not isinstance(private, ec.EllipticCurvePrivateKey):
            raise ValueError(f"{where}: not an elliptic-curve key ({type(private).__name__})")
        _curve_hash(private.public_key(), where)
        return cls(private)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str], *, password: bytes | None = None) -> SigningKey:
        return cls.from_pem(_read_key_file(path), password=password, where=f"signing key {os.fspath(path)}")

    @property
    def key_id(self) -> str:
        return key_id(self._private.public_key())

    def public_pem(self) -> bytes:
        """The public half, PEM: what consumers put among their trusted keys."""
        return self._private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    def sign(self, data: bytes) -> bytes:
        """A DER ECDSA signature of ``data``, hashed as the curve asks."""
        public = self._private.public_key()
        return self._private.sign(data, ec.ECDSA(_curve_hash(public, "signing key")))

    def __repr__(self) -> str:
        return f"SigningKey(key_id={self.key_id[:16]}...)"


@dataclass(frozen=True)
class TrustedKeys:
    """The public keys a consumer trusts, by key id; several at once for a key rotation."""

    keys: Mapping[str, ec.EllipticCurvePublicKey]

    def __post_init__(self) -> None:
        if not self.keys:
            raise ValueError("no trusted keys given")

    @classmethod
    def from_pems(cls, pems: Iterable[bytes], *, where: str = "trusted key") -> TrustedKeys:
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for n, data in enumerate(pems):
            try:
                public = serialization.load_pem_public_key(data)
            except (ValueError, TypeError):
                raise ValueError(f"{where} #{n + 1}: not a PEM public key") from None
            if not isinstance(public, ec.EllipticCurvePublicKey):
                raise ValueError(f"{where} #{n + 1}: not an elliptic-curve key ({type(public).__name__})")
            _curve_hash(public, f"{where} #{n + 1}")
            keys[key_id(public)] = public
        return cls(keys)

    @classmethod
    def from_files(cls, paths: Iterable[str | os.PathLike[str]]) -> TrustedKeys:
        """Raises ValueError: no files, or one that is unreadable or not an EC public key."""
        keys: dict[str, ec.EllipticCurvePublicKey] = {}
        for path in paths:
            keys.update(cls.from_pems([_read_key_file(path)], where=f"trusted key {os.fspath(path)}").keys)
        return cls(keys)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None) -> TrustedKeys | None:
        """The keys ``EXPORT_TRUSTED_KEYS`` names, or None where it is unset or empty."""
        value = (os.environ if environ is None else environ).get(TRUSTED_KEYS_ENV, "")
        paths = [p.strip() for p in value.replace(os.pathsep, ",").split(",") if p.strip()]
        return cls.from_files(Path(p) for p in paths) if paths else None

    def verify(self, signature: bytes, data: bytes, hint: str | None) -> str:
        """The id of the trusted key whose signature over ``data`` this is.

        Raises:
            SignatureError: ``foreign`` (the hinted key is not trusted, or no trusted key
                made it) or ``altered`` (the hinted trusted key did not sign these bytes).
        """
        if hint:
            public = self.keys.get(hint)
            if public is None:
                raise SignatureError("foreign", f"signed by key {hint[:16]}..., which is not a trusted key")
            candidates = [(hint, public)]
        else:  # older bundles name no key: try each
            candidates = list(self.keys.items())
        for kid, public in candidates:
            try:
                public.verify(signature, data, ec.ECDSA(_curve_hash(public, "trusted key")))
            except InvalidSignature:
                continue
            return kid
        if hint:
            raise SignatureError("altered", "the signature does not match the signed statement: it was altered")
        raise SignatureError("foreign", "no trusted key made this signature")
