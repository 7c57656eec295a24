"""Elliptic-curve key pairs for the tests of signed exports, written as PEM files."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class KeyPair:
    """A private key's PEM file and its public key's."""

    private: Path
    public: Path


def make_key_pair(
    folder: Path, name: str, curve: ec.EllipticCurve | None = None, password: bytes | None = None
) -> KeyPair:
    """A fresh key pair on ``curve`` (P-256 by default), PEM files in ``folder``."""
    private = ec.generate_private_key(curve or ec.SECP256R1())
    encryption = serialization.BestAvailableEncryption(password) if password else serialization.NoEncryption()
    pair = KeyPair(folder / f"{name}.key", folder / f"{name}.pub")
    pair.private.write_bytes(
        private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    pair.public.write_bytes(
        private.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return pair
