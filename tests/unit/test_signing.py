"""serializer.signing's keys and bundle format, and its agreement with the OpenSSF
model-signing package (its Python API and its ``model_signing`` command), on local files."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from serializer.errors import SignatureError
from serializer.manifest.model import Manifest
from serializer.signing.bundle import MAX_SIGNATURE_BYTES, SIGNATURE_NAME, sign_files, statement, verify_bundle
from serializer.signing.keys import SigningKey, TrustedKeys
from tests.signing_keys import KeyPair, make_key_pair


@pytest.fixture()
def pair(tmp_path: Path) -> KeyPair:
    return make_key_pair(tmp_path, "worker")


def _export_folder(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "torch-2.13.0"
    folder.mkdir()
    (folder / "model.pt").write_bytes(b"PK\x03\x04 an archive" * 100)
    (folder / "model.manifest.json").write_bytes(b'{"schema_version":4}')
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    return folder, files


def _bundle_parts(data: bytes) -> tuple[dict[str, object], dict[str, object]]:
    bundle = json.loads(data)
    return bundle, json.loads(base64.b64decode(bundle["dsseEnvelope"]["payload"]))


def test_round_trip_gives_the_signing_key_and_the_files(pair: KeyPair, tmp_path: Path) -> None:
    key = SigningKey.from_file(pair.private)
    _, files = _export_folder(tmp_path)
    kid, signed = verify_bundle(sign_files(key, "tiny", files), TrustedKeys.from_files([pair.public]))
    assert kid == key.key_id
    assert signed == files


@pytest.mark.parametrize("curve", [ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1()], ids=lambda c: c.name)
def test_every_supported_curve_signs_and_verifies(tmp_path: Path, curve: ec.EllipticCurve) -> None:
    pair = make_key_pair(tmp_path, curve.name, curve)
    files = {"model.pt": "ab" * 32}
    kid, _ = verify_bundle(
        sign_files(SigningKey.from_file(pair.private), "m", files), TrustedKeys.from_files([pair.public])
    )
    assert kid == SigningKey.from_file(pair.private).key_id


def test_the_statement_is_model_signings_v1_predicate() -> None:
    doc = statement("tiny", {"b": "22" * 32, "a": "11" * 32})
    assert doc["predicateType"] == "https://model_signing/signature/v1.0"
    assert [r["name"] for r in doc["predicate"]["resources"]] == ["a", "b"]
    assert doc["predicate"]["serialization"]["ignore_paths"] == [SIGNATURE_NAME]
    root = hashlib.sha256(bytes.fromhex("11" * 32) + bytes.fromhex("22" * 32)).hexdigest()
    assert doc["subject"] == [{"name": "tiny", "digest": {"sha256": root}}]


def test_a_statement_refuses_what_is_not_a_sha256() -> None:
    with pytest.raises(ValueError, match="not a sha256"):
        statement("m", {"model.pt": "xyz"})


def test_a_foreign_key_is_named_foreign(pair: KeyPair, tmp_path: Path) -> None:
    other = make_key_pair(tmp_path, "other")
    data = sign_files(SigningKey.from_file(other.private), "m", {"model.pt": "ab" * 32})
    with pytest.raises(SignatureError) as info:
        verify_bundle(data, TrustedKeys.from_files([pair.public]))
    assert info.value.kind == "foreign"
    assert "not a trusted key" in str(info.value)


def test_an_altered_statement_is_named_altered(pair: KeyPair) -> None:
    data = sign_files(SigningKey.from_file(pair.private), "m", {"model.pt": "ab" * 32})
    bundle, payload = _bundle_parts(data)
    payload["predicate"]["resources"][0]["digest"] = "cd" * 32  # type: ignore[index]
    bundle["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()  # type: ignore[index]
    with pytest.raises(SignatureError) as info:
        verify_bundle(json.dumps(bundle).encode(), TrustedKeys.from_files([pair.public]))
    assert info.value.kind == "altered"


def test_an_altered_signature_is_named_altered(pair: KeyPair) -> None:
    data = sign_files(SigningKey.from_file(pair.private), "m", {"model.pt": "ab" * 32})
    bundle, _ = _bundle_parts(data)
    sig = bytearray(base64.b64decode(bundle["dsseEnvelope"]["signatures"][0]["sig"]))  # type: ignore[index]
    sig[-1] ^= 1
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()  # type: ignore[index]
    with pytest.raises(SignatureError) as info:
        verify_bundle(json.dumps(bundle).encode(), TrustedKeys.from_files([pair.public]))
    assert info.value.kind == "altered"


def test_a_bundle_without_a_key_hint_is_tried_with_each_trusted_key(pair: KeyPair, tmp_path: Path) -> None:
    other = make_key_pair(tmp_path, "other")
    bundle, _ = _bundle_parts(sign_files(SigningKey.from_file(pair.private), "m", {"model.pt": "ab" * 32}))
    del bundle["verificationMaterial"]["publicKey"]["hint"]  # type: ignore[attr-defined]
    data = json.dumps(bundle).encode()
    kid, _ = verify_bundle(data, TrustedKeys.from_files([other.public, pair.public]))
    assert kid == SigningKey.from_file(pair.private).key_id
    with pytest.raises(SignatureError) as info:
        verify_bundle(data, TrustedKeys.from_files([other.public]))
    assert info.value.kind == "foreign"


def test_two_trusted_keys_verify_either_signer(tmp_path: Path) -> None:
    old, new = make_key_pair(tmp_path, "old"), make_key_pair(tmp_path, "new")
    trusted = TrustedKeys.from_files([old.public, new.public])
    for pair in (old, new):
        kid, _ = verify_bundle(sign_files(SigningKey.from_file(pair.private), "m", {"a": "ab" * 32}), trusted)
        assert kid == SigningKey.from_file(pair.private).key_id


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (b"not json", "not JSON"),
        (b"[]", "no mediaType"),
        (json.dumps({"mediaType": "application/x"}).encode(), "is not a"),
        (b" " * (MAX_SIGNATURE_BYTES + 1), "larger than"),
    ],
    ids=["text", "list", "media-type", "too-large"],
)
def test_what_is_not_a_bundle_is_invalid(pair: KeyPair, data: bytes, match: str) -> None:
    with pytest.raises(SignatureError, match=match) as info:
        verify_bundle(data, TrustedKeys.from_files([pair.public]))
    assert info.value.kind == "invalid"


def test_a_subject_that_does_not_add_up_is_invalid(pair: KeyPair) -> None:
    """A statement signed by the trusted key, whose subject digest is not its resources':
    what no honest signer writes."""
    key = SigningKey.from_file(pair.private)
    doc = statement("m", {"a": "ab" * 32})
    doc["subject"][0]["digest"]["sha256"] = "00" * 32
    from serializer.signing.bundle import PAYLOAD_TYPE, pae

    payload = json.dumps(doc).encode()
    bundle = {
        "mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
        "verificationMaterial": {"publicKey": {"hint": key.key_id}},
        "dsseEnvelope": {
            "payload": base64.b64encode(payload).decode(),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(key.sign(pae(payload))).decode()}],
        },
    }
    with pytest.raises(SignatureError, match="subject digest") as info:
        verify_bundle(json.dumps(bundle).encode(), TrustedKeys.from_files([pair.public]))
    assert info.value.kind == "invalid"


def test_keys_that_are_not_ec_pem_are_refused_without_being_quoted(tmp_path: Path) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_pem = rsa_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    with pytest.raises(ValueError, match="not an elliptic-curve key"):
        SigningKey.from_pem(rsa_pem)
    with pytest.raises(ValueError, match="not a PEM private key") as info:
        SigningKey.from_pem(b"-----BEGIN PRIVATE KEY-----\nc2VjcmV0\n-----END PRIVATE KEY-----\n")
    assert "c2VjcmV0" not in str(info.value)
    koblitz = ec.generate_private_key(ec.SECP256K1())
    with pytest.raises(ValueError, match="secp256k1 is not one of"):
        SigningKey.from_pem(
            koblitz.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
    (tmp_path / "x.pub").write_text("nope")
    with pytest.raises(ValueError, match="not a PEM public key"):
        TrustedKeys.from_files([tmp_path / "x.pub"])
    with pytest.raises(ValueError, match="cannot read key file"):
        TrustedKeys.from_files([tmp_path / "missing.pub"])


def test_an_encrypted_key_needs_its_password(tmp_path: Path) -> None:
    pair = make_key_pair(tmp_path, "locked", password=b"s3cret-pass")
    with pytest.raises(ValueError, match="password") as info:
        SigningKey.from_file(pair.private, password=b"wrong")
    assert "s3cret" not in str(info.value)
    assert SigningKey.from_file(pair.private, password=b"s3cret-pass").key_id
    assert "PRIVATE" not in repr(SigningKey.from_file(pair.private, password=b"s3cret-pass"))


def test_trusted_keys_from_the_environment(pair: KeyPair, tmp_path: Path) -> None:
    other = make_key_pair(tmp_path, "other")
    assert TrustedKeys.from_environment({}) is None
    assert TrustedKeys.from_environment({"EXPORT_TRUSTED_KEYS": " "}) is None
    keys = TrustedKeys.from_environment({"EXPORT_TRUSTED_KEYS": f"{pair.public}, {other.public}"})
    assert keys is not None and len(keys.keys) == 2


# -- the OpenSSF model-signing package reads what we write, and we read what it writes ----------


def test_model_signings_verifier_accepts_our_signature_and_refuses_a_changed_file(
    pair: KeyPair, tmp_path: Path
) -> None:
    from model_signing import verifying

    folder, files = _export_folder(tmp_path)
    (folder / SIGNATURE_NAME).write_bytes(sign_files(SigningKey.from_file(pair.private), "tiny", files))
    config = verifying.Config().use_elliptic_key_verifier(public_key=pair.public)
    config.verify(folder, folder / SIGNATURE_NAME)  # raises on failure
    (folder / "model.pt").write_bytes(b"PK\x03\x04 another archive")
    with pytest.raises(ValueError, match=r"Hash mismatch for 'model\.pt'"):
        verifying.Config().use_elliptic_key_verifier(public_key=pair.public).verify(folder, folder / SIGNATURE_NAME)


def test_the_model_signing_command_verifies_our_signature(pair: KeyPair, tmp_path: Path) -> None:
    folder, files = _export_folder(tmp_path)
    (folder / SIGNATURE_NAME).write_bytes(sign_files(SigningKey.from_file(pair.private), "tiny", files))
    command = [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(folder / SIGNATURE_NAME)]
    done = subprocess.run(
        [*command, "--public_key", str(pair.public), str(folder)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Verification succeeded" in done.stdout
    other = make_key_pair(tmp_path, "other")
    refused = subprocess.run(
        [*command, "--public_key", str(other.public), str(folder)],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert refused.returncode != 0


def test_we_verify_a_signature_model_signing_made(pair: KeyPair, tmp_path: Path) -> None:
    from model_signing import signing

    folder, files = _export_folder(tmp_path)
    signature = tmp_path / "theirs.sig"
    signing.Config().use_elliptic_key_signer(private_key=pair.private).sign(folder, signature)
    kid, signed = verify_bundle(signature.read_bytes(), TrustedKeys.from_files([pair.public]))
    assert kid == SigningKey.from_file(pair.private).key_id
    assert signed == files


def test_the_manifest_of_a_signed_export_names_its_key() -> None:
    """A signature entry is only valid in a manifest of the signed layout."""
    doc = {
        "schema_version": 2,
        "artifact": {
            "uri": "s3://b/m/model.pt",
            "size": 1,
            "sha256": "0" * 64,
            "format_version": 1,
            "archive_root": "m",
        },
        "spec": {},
        "spec_hash": "0" * 64,
        "extra_files": [],
        "producer": {"torch": "2", "python": "3", "export_worker": "0", "device": "cpu", "host": "h"},
        "created_at": "2026-01-01T00:00:00Z",
        "signature": {"uri": "s3://b/m/model.sig", "key_id": "a" * 64, "predicate_type": "p"},
    }
    with pytest.raises(ValueError, match="signed manifest is schema version 4"):
        Manifest.from_json(json.dumps(doc))
    doc["schema_version"] = 4
    assert Manifest.from_json(json.dumps(doc)).signature is not None
