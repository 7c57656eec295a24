"""Signed exports against in-process moto: the worker signs each export before publishing
its manifest, the standard OpenSSF model-signing verifier accepts a downloaded export, and
consumers with trusted keys refuse what is unsigned, altered or signed by another key."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.consumer.extras import read_extra_file
from serializer.consumer.open import open_artifact, read_manifest_checked
from serializer.consumer.verify import verify_artifact
from serializer.errors import ArchiveError, ManifestError, SignatureError
from serializer.manifest.model import SIGNED_SCHEMA_VERSION
from serializer.manifest.store import read_manifest
from serializer.pt2.load import load_pt2_artifact
from serializer.s3.uri import parse_s3_uri
from serializer.signing.bundle import SIGNATURE_NAME
from serializer.signing.keys import SigningKey, TrustedKeys
from serializer.torchscript.load import load_artifact
from tests.conftest import object_keys
from tests.fixtures import settings
from tests.functional.store import put, spec_data
from tests.signing_keys import KeyPair, make_key_pair
from worker.bulk import plan
from worker.bulk.status import Action
from worker.errors import SigningKeyError
from worker.export import run_export
from worker.spec import parse_spec


@pytest.fixture()
def keys(tmp_path: Path) -> dict[str, KeyPair]:
    return {name: make_key_pair(tmp_path, name) for name in ("worker", "rotated", "stranger")}


def signed_export(s3: Any, bucket: str, pair: KeyPair, name: str = "tiny", **fields: Any) -> dict[str, Any]:
    spec = parse_spec(spec_data(bucket, name, **fields))
    return run_export(spec, settings=settings(signing_key=str(pair.private)), client=s3)


def trust(*pairs: KeyPair) -> TrustedKeys:
    return TrustedKeys.from_files([p.public for p in pairs])


def get(s3: Any, uri: str) -> bytes:
    target = parse_s3_uri(uri)
    return bytes(s3.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())


def download(s3: Any, result: dict[str, Any], folder: Path) -> Path:
    """The export's folder as the standard tool expects it: archive, manifest, signature."""
    folder.mkdir()
    for uri in (result["artifact_uri"], result["manifest_uri"], result["signature_uri"]):
        (folder / parse_s3_uri(uri).key.rsplit("/", 1)[1]).write_bytes(get(s3, uri))
    return folder


# -- signing at export --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_a_signed_export_verifies_with_the_model_signing_command(
    s3: Any, bucket: str, keys: dict[str, KeyPair], tmp_path: Path, fmt: str
) -> None:
    result = signed_export(s3, bucket, keys["worker"], format=fmt)
    assert result["signature_uri"] == result["artifact_uri"].rsplit("/", 1)[0] + "/" + SIGNATURE_NAME
    manifest = read_manifest(s3, result["manifest_uri"])
    assert manifest.schema_version == SIGNED_SCHEMA_VERSION
    assert manifest.signature is not None
    assert manifest.signature.key_id == SigningKey.from_file(keys["worker"].private).key_id
    assert manifest.signature.uri == result["signature_uri"]
    folder = download(s3, result, tmp_path / "export")
    command = [sys.executable, "-m", "model_signing", "verify", "key", "--signature", str(folder / SIGNATURE_NAME)]
    done = subprocess.run(
        [*command, "--public_key", str(keys["worker"].public), str(folder)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout + done.stderr
    stranger = subprocess.run(
        [*command, "--public_key", str(keys["stranger"].public), str(folder)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert stranger.returncode != 0


def test_without_a_key_exports_are_unsigned_and_the_manifest_says_so(s3: Any, bucket: str) -> None:
    spec = parse_spec(spec_data(bucket))
    result = run_export(spec, settings=settings(), client=s3)
    assert result["signature_uri"] is None
    raw = json.loads(get(s3, result["manifest_uri"]))
    assert "signature" not in raw and raw["schema_version"] == 2  # the layout older readers know
    assert read_manifest(s3, result["manifest_uri"]).signature is None
    assert not any(k.endswith(SIGNATURE_NAME) for k in object_keys(s3, bucket))


def test_a_key_that_cannot_sign_fails_the_job_before_any_work(s3: Any, bucket: str, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nnot a key\n-----END PRIVATE KEY-----\n")
    spec = parse_spec(spec_data(bucket))
    with pytest.raises(SigningKeyError, match="not a PEM private key"):
        run_export(spec, settings=settings(signing_key=str(bad)), client=s3)
    assert object_keys(s3, bucket) == []


def test_a_signing_key_given_as_a_secret_signs_the_same_way(s3: Any, bucket: str, keys: dict[str, KeyPair]) -> None:
    spec = parse_spec(spec_data(bucket))
    pem = keys["worker"].private.read_text()
    result = run_export(spec, settings=settings(signing_key_pem=pem), client=s3)
    module, _, _ = open_artifact(s3, result["artifact_uri"], trusted_keys=trust(keys["worker"]))
    assert isinstance(module, torch.jit.ScriptModule)


# -- verification before loading ----------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_trusted_keys_load_a_signed_export(s3: Any, bucket: str, keys: dict[str, KeyPair], fmt: str) -> None:
    result = signed_export(s3, bucket, keys["worker"], format=fmt)
    _, manifest, _ = open_artifact(s3, result["artifact_uri"], trusted_keys=trust(keys["worker"]))
    assert manifest.artifact.sha256 == result["sha256"]
    report = verify_artifact(s3, result["artifact_uri"], trusted_keys=trust(keys["worker"]))
    assert report.ok, report.steps
    assert [s.name for s in report.steps][:2] == ["manifest", "signature"]
    if fmt == "pt2":
        program, _ = load_pt2_artifact(s3, result["artifact_uri"], trusted_keys=trust(keys["worker"]))
        assert isinstance(program, torch.export.ExportedProgram)
    else:
        module, _ = load_artifact(s3, result["artifact_uri"], trusted_keys=trust(keys["worker"]))
        assert isinstance(module, torch.jit.ScriptModule)


def _every_loader(s3: Any, uri: str, trusted: TrustedKeys) -> list[str]:
    """Each consumer entry point on ``uri`` under ``trusted``: the messages of their refusals."""
    messages = []
    for load in (
        lambda: open_artifact(s3, uri, trusted_keys=trusted),
        lambda: read_manifest_checked(s3, uri, trusted_keys=trusted),
        lambda: load_artifact(s3, uri, trusted_keys=trusted),
    ):
        with pytest.raises(ArchiveError) as info:
            load()
        messages.append(str(info.value))
    report = verify_artifact(s3, uri, trusted_keys=trusted)
    assert not report.ok and report.steps[-1].name == "signature", report.steps
    assert [s.name for s in report.steps] == ["manifest", "signature"]  # nothing downloaded or loaded
    messages.append(report.steps[-1].detail)
    return messages


def test_an_unsigned_export_is_refused_as_unsigned(s3: Any, bucket: str, keys: dict[str, KeyPair]) -> None:
    result = run_export(parse_spec(spec_data(bucket)), settings=settings(), client=s3)
    for message in _every_loader(s3, result["artifact_uri"], trust(keys["worker"])):
        assert message.startswith("unsigned: ") or "unsigned: " in message, message
        assert "exported without a signing key" in message


def test_a_foreign_signed_export_is_refused_as_foreign(s3: Any, bucket: str, keys: dict[str, KeyPair]) -> None:
    result = signed_export(s3, bucket, keys["stranger"])
    for message in _every_loader(s3, result["artifact_uri"], trust(keys["worker"])):
        assert "foreign: " in message and "not a trusted key" in message, message


def test_an_altered_manifest_is_refused_as_altered(s3: Any, bucket: str, keys: dict[str, KeyPair]) -> None:
    result = signed_export(s3, bucket, keys["worker"])
    doc = json.loads(get(s3, result["manifest_uri"]))
    doc["verification"]["max_abs_diff"] = 0.0  # a small lie, still a valid manifest
    doc["metadata"] = {"owner": "someone else"}
    put(s3, result["manifest_uri"], json.dumps(doc, sort_keys=True, separators=(",", ":")))
    for message in _every_loader(s3, result["artifact_uri"], trust(keys["worker"])):
        assert "altered: " in message and "manifest was altered" in message, message


def test_a_removed_signature_is_refused_as_unsigned(s3: Any, bucket: str, keys: dict[str, KeyPair]) -> None:
    result = signed_export(s3, bucket, keys["worker"])
    target = parse_s3_uri(result["signature_uri"])
    s3.delete_object(Bucket=target.bucket, Key=target.key)
    for message in _every_loader(s3, result["artifact_uri"], trust(keys["worker"])):
        assert "unsigned: " in message and "none is stored" in message, message


def test_an_altered_signature_is_refused(s3: Any, bucket: str, keys: dict[str, KeyPair]) -> None:
    result = signed_export(s3, bucket, keys["worker"])
    bundle = json.loads(get(s3, result["signature_uri"]))
    sig = bundle["dsseEnvelope"]["signatures"][0]["sig"]
    bundle["dsseEnvelope"]["signatures"][0]["sig"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    put(s3, result["signature_uri"], json.dumps(bundle))
    for message in _every_loader(s3, result["artifact_uri"], trust(keys["worker"])):
        assert "altered: " in message or "invalid: " in message, message


def test_an_altered_archive_is_refused_before_torch_loads_it(s3: Any, bucket: str, keys: dict[str, KeyPair]) -> None:
    """The archive's digest is in the signed manifest: other bytes at its key fail the
    checked download, whatever they are."""
    result = signed_export(s3, bucket, keys["worker"])
    other = signed_export(
        s3, bucket, keys["worker"], name="other", kwargs={"in_features": 8, "hidden": 6, "classes": 2}
    )
    put(s3, result["artifact_uri"], get(s3, other["artifact_uri"]))
    with pytest.raises(ArchiveError, match=r"expected|sha256"):
        open_artifact(s3, result["artifact_uri"], trusted_keys=trust(keys["worker"]))
    report = verify_artifact(s3, result["artifact_uri"], trusted_keys=trust(keys["worker"]))
    assert [(s.name, s.ok) for s in report.steps][-2:] == [("compatibility", True), ("checksum", False)]


def test_a_signed_export_copied_to_another_spec_folder_is_refused(
    s3: Any, bucket: str, keys: dict[str, KeyPair]
) -> None:
    """All three files of a genuine export copied over another's: the manifest names its own
    archive, which is not the one next to it."""
    genuine = signed_export(s3, bucket, keys["worker"])
    victim = signed_export(s3, bucket, keys["worker"], name="victim")
    for a, b in (
        ("artifact_uri", "artifact_uri"),
        ("manifest_uri", "manifest_uri"),
        ("signature_uri", "signature_uri"),
    ):
        put(s3, victim[b], get(s3, genuine[a]))
    with pytest.raises(ManifestError, match="describes"):
        open_artifact(s3, victim["artifact_uri"], trusted_keys=trust(keys["worker"]))


def test_key_rotation_trusts_both_keys_until_the_old_one_is_dropped(
    s3: Any, bucket: str, keys: dict[str, KeyPair]
) -> None:
    old = signed_export(s3, bucket, keys["worker"], name="old")
    new = signed_export(s3, bucket, keys["rotated"], name="new")
    both = trust(keys["worker"], keys["rotated"])
    for result in (old, new):
        open_artifact(s3, result["artifact_uri"], trusted_keys=both)
    open_artifact(s3, new["artifact_uri"], trusted_keys=trust(keys["rotated"]))
    with pytest.raises(SignatureError) as info:
        open_artifact(s3, old["artifact_uri"], trusted_keys=trust(keys["rotated"]))
    assert info.value.kind == "foreign"


def test_trusted_keys_come_from_the_environment(
    s3: Any, bucket: str, keys: dict[str, KeyPair], monkeypatch: pytest.MonkeyPatch
) -> None:
    unsigned = run_export(parse_spec(spec_data(bucket)), settings=settings(), client=s3)
    open_artifact(s3, unsigned["artifact_uri"])  # no keys anywhere: not checked
    monkeypatch.setenv("EXPORT_TRUSTED_KEYS", str(keys["worker"].public))
    with pytest.raises(SignatureError, match="unsigned"):
        open_artifact(s3, unsigned["artifact_uri"])
    with pytest.raises(SignatureError, match="unsigned"):
        load_artifact(s3, unsigned["artifact_uri"])


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_keys_given_to_open_artifact_win_over_the_environment_and_are_checked_once(
    s3: Any, bucket: str, keys: dict[str, KeyPair], monkeypatch: pytest.MonkeyPatch, fmt: str
) -> None:
    result = signed_export(s3, bucket, keys["worker"], name=f"once-{fmt}", format=fmt)
    # The environment trusts another key: the caller's keys are the ones that count.
    monkeypatch.setenv("EXPORT_TRUSTED_KEYS", str(keys["stranger"].public))
    signature_gets: list[str] = []
    s3.meta.events.register(
        "before-parameter-build.s3.GetObject",
        lambda params, **_: signature_gets.append(params["Key"]) if params["Key"].endswith(SIGNATURE_NAME) else None,
    )
    open_artifact(s3, result["artifact_uri"], trusted_keys=trust(keys["worker"]))
    assert len(signature_gets) == 1, signature_gets
    with pytest.raises(SignatureError) as info:
        open_artifact(s3, result["artifact_uri"])  # the environment's keys
    assert info.value.kind == "foreign"


def test_an_extra_file_is_read_through_a_signed_manifest(s3: Any, bucket: str, keys: dict[str, KeyPair]) -> None:
    result = signed_export(s3, bucket, keys["worker"], extra_files={"labels.txt": "cat\ndog\n"})
    manifest = read_manifest_checked(s3, result["artifact_uri"], trusted_keys=trust(keys["worker"]))
    assert read_extra_file(s3, result["artifact_uri"], "labels.txt", manifest=manifest) == b"cat\ndog\n"


# -- the worker and bulk runs ------------------------------------------------------------------


def test_a_signing_worker_replaces_an_unsigned_export_instead_of_skipping_it(
    s3: Any, bucket: str, keys: dict[str, KeyPair]
) -> None:
    spec = parse_spec(spec_data(bucket))
    unsigned = run_export(spec, settings=settings(), client=s3)
    again = run_export(spec, settings=settings(), client=s3)
    assert again["skipped"] is True
    signed = run_export(spec, settings=settings(signing_key=str(keys["worker"].private)), client=s3)
    assert signed["skipped"] is False and signed["artifact_uri"] == unsigned["artifact_uri"]
    open_artifact(s3, signed["artifact_uri"], trusted_keys=trust(keys["worker"]))
    skipped = run_export(spec, settings=settings(signing_key=str(keys["worker"].private)), client=s3)
    assert skipped["skipped"] is True


def test_a_bulk_run_with_trusted_keys_uses_only_signed_manifests(
    s3: Any, bucket: str, keys: dict[str, KeyPair]
) -> None:
    signed = signed_export(s3, bucket, keys["worker"], name="signed")
    unsigned = run_export(parse_spec(spec_data(bucket, "unsigned")), settings=settings(), client=s3)
    foreign = signed_export(s3, bucket, keys["stranger"], name="foreign")
    altered = signed_export(s3, bucket, keys["worker"], name="altered")
    doc = json.loads(get(s3, altered["manifest_uri"]))
    doc["metadata"] = {"x": 1}
    put(s3, altered["manifest_uri"], json.dumps(doc, sort_keys=True, separators=(",", ":")))

    decisions = {
        d.source: d
        for d in plan(s3, f"s3://{bucket}/models", "always", settings(trusted_keys=(str(keys["worker"].public),)))
    }
    assert decisions[signed["manifest_uri"]].action is Action.REPLACE
    for result, kind in ((unsigned, "unsigned"), (foreign, "foreign"), (altered, "altered")):
        decision = decisions[result["manifest_uri"]]
        assert decision.action is Action.INVALID and decision.reason == f"not trusted: {kind}", decision
    untrusting = {d.source: d.action for d in plan(s3, f"s3://{bucket}/models", "always", settings())}
    assert set(untrusting.values()) == {Action.REPLACE}
