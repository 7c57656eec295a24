"""What a selection says is data, not trusted (worker/bulk/selection.py, planner.py, the
skip path of worker/export/job.py, ``exportctl ls``), against in-process moto: planted or
copied manifests, manifests that cannot be parsed, catalogs on disk outside
``EXPORT_CATALOG_DIR``, catalog text in reasons."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.manifest.model import MANIFEST_SUFFIX, MAX_MANIFEST_BYTES
from serializer.manifest.store import read_manifest
from serializer.s3.uri import parse_s3_uri
from tests.conftest import object_keys, open_uploads
from tests.fixtures import settings
from tests.functional.store import export, get_json, put, spec_data
from worker import bulk
from worker.bulk import iter_candidates, plan
from worker.cli.consumer import ls
from worker.errors import SpecError
from worker.export import run_export
from worker.keys import export_keys
from worker.spec import parse_spec

TORCH = torch.__version__
#: A string that stands for a file's private text: it must never reach a reason or report.
SECRET = "hunter2-private-text"

pytestmark = pytest.mark.usefixtures("clean_env")


def by_source(client: Any, prefix: str) -> dict[str, Any]:
    return {c.source: c for c in iter_candidates(client, prefix)}


def count_requests(client: Any, bucket: str) -> list[str]:
    """Every request ``client`` sends to ``bucket`` from now on, by operation name."""
    seen: list[str] = []

    def note(params: dict[str, Any], model: Any, **_: Any) -> None:
        if params.get("Bucket") == bucket:
            seen.append(model.name)

    client.meta.events.register("provide-client-params.s3.*", note)
    return seen


# -- a manifest is used only at the keys its spec maps to, with a hash that recomputes ----------


def planted(client: Any, bucket: str, doc: dict[str, Any], folder: str = "planted") -> str:
    uri = f"s3://{bucket}/models/{folder}/model{MANIFEST_SUFFIX}"
    put(client, uri, json.dumps(doc))
    return uri


def test_a_planted_manifest_with_a_foreign_builder_and_destination_is_invalid(s3: Any, bucket: str) -> None:
    foreign = f"{bucket}-other"
    s3.create_bucket(Bucket=foreign)
    _, result = export(s3, bucket)
    doc = get_json(s3, result["manifest_uri"])
    evil = {**doc["spec"], "builder": "tests.never_import:build", "destination": f"s3://{foreign}/stolen"}
    doc["spec"] = evil
    # Made to look right: its hash recomputes, and it lies at the keys the evil spec maps to.
    doc["spec_hash"] = parse_spec(evil).spec_hash
    keys = export_keys(parse_spec(evil), TORCH)
    doc["artifact"]["uri"] = keys.artifact
    target = keys.manifest.replace(f"s3://{foreign}/", f"s3://{bucket}/models/")
    put(s3, target, json.dumps(doc))
    requests = count_requests(s3, foreign)

    decisions = {d.source: d for d in plan(s3, f"s3://{bucket}/models", "always", settings())}

    assert decisions[target].action == "invalid"
    assert "not trusted" in decisions[target].reason
    assert decisions[result["manifest_uri"]].action == "replace", "the legitimate export is still decided"
    assert requests == [], "nothing read from or written to the foreign bucket"
    assert object_keys(s3, foreign) == []


def test_a_spec_read_back_names_a_builder_outside_the_allow_list(s3: Any, bucket: str) -> None:
    # At its own keys and with a hash that recomputes, but the builder is not allowed.
    spec = parse_spec(spec_data(bucket, "evil", builder="tests.never_import:build"))
    _, result = export(s3, bucket)
    doc = get_json(s3, result["manifest_uri"])
    keys = export_keys(spec, TORCH)
    doc.update(spec=spec.to_json_dict(), spec_hash=spec.spec_hash)
    doc["artifact"]["uri"] = keys.artifact
    put(s3, keys.manifest, json.dumps(doc))
    decisions = {d.source: d for d in plan(s3, f"s3://{bucket}/models", "always", settings())}
    assert decisions[keys.manifest].action == "invalid"
    assert "EXPORT_ALLOWED_BUILDERS" in decisions[keys.manifest].reason
    assert decisions[result["manifest_uri"]].action == "replace"


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (lambda doc, _: doc["spec"].update(name="other"), "its spec_hash does not recompute from its spec"),
        (
            lambda doc, bucket: doc["artifact"].update(uri=f"s3://{bucket}-other/x/model.pt"),
            "its artifact is not s3://",
        ),
        (lambda doc, _: doc["producer"].update(torch="2.0.0"), "it lies at "),
    ],
    ids=["spec-hash", "artifact-uri", "torch"],
)
def test_a_manifest_that_is_not_its_specs_export_is_invalid(s3: Any, bucket: str, edit: Any, reason: str) -> None:
    _, result = export(s3, bucket)
    _, other = export(s3, bucket, "other")
    doc = get_json(s3, result["manifest_uri"])
    edit(doc, bucket)
    put(s3, result["manifest_uri"], json.dumps(doc))
    candidates = by_source(s3, f"s3://{bucket}/models")
    bad = candidates[result["manifest_uri"]]
    assert bad.spec is None and bad.error is not None and bad.error.startswith(f"not trusted: {reason}")
    assert candidates[other["manifest_uri"]].error is None, "the other export is a candidate still"


def test_a_copy_of_a_manifest_at_another_key_is_invalid(s3: Any, bucket: str) -> None:
    _, result = export(s3, bucket)
    copy = planted(s3, bucket, get_json(s3, result["manifest_uri"]))
    decisions = {d.source: d for d in plan(s3, f"s3://{bucket}/models", "if-stale", settings())}
    assert decisions[copy].action == "invalid"
    assert decisions[copy].reason.startswith(f"not trusted: it lies at {copy}, not at {result['manifest_uri']}")
    assert decisions[result["manifest_uri"]].action == "unchanged"


# -- objects that cannot be parsed are invalid, never fatal --------------------------------------


def deep(levels: int) -> str:
    return '{"a":' * levels + "1" + "}" * levels


def test_objects_that_cannot_be_parsed_are_invalid_and_the_rest_is_decided(s3: Any, bucket: str) -> None:
    _, result = export(s3, bucket, "good")
    base = f"s3://{bucket}/models"
    odd = {
        f"{base}/deep/model{MANIFEST_SUFFIX}": deep(100_000),  # RecursionError in json.loads
        f"{base}/deep2/model{MANIFEST_SUFFIX}": '{"schema_version": 2, "spec": ' + deep(200) + "}",
        f"{base}/latin1/model{MANIFEST_SUFFIX}": b'{"spec": "caf\xe9"}',
        f"{base}/empty/model{MANIFEST_SUFFIX}": b"",
        f"{base}/ctl\x01key/model{MANIFEST_SUFFIX}": json.dumps(get_json(s3, result["manifest_uri"])),
    }
    for uri, body in odd.items():
        target = parse_s3_uri(uri.replace("\x01", "x"))
        key = target.key.replace("ctlxkey", "ctl\x01key")
        s3.put_object(Bucket=target.bucket, Key=key, Body=body.encode() if isinstance(body, str) else body)

    decisions = {d.source: d for d in plan(s3, base, "always", settings())}

    assert decisions[result["manifest_uri"]].action == "replace"
    assert sorted(decisions) == sorted([*odd, result["manifest_uri"]])
    reasons = {uri: decisions[uri].reason for uri in odd}
    assert all(decisions[uri].action == "invalid" for uri in odd), reasons
    assert "nested deeper" in reasons[f"{base}/deep/model{MANIFEST_SUFFIX}"]
    assert "nested deeper" in reasons[f"{base}/deep2/model{MANIFEST_SUFFIX}"]
    assert "not UTF-8" in reasons[f"{base}/latin1/model{MANIFEST_SUFFIX}"]
    assert "empty" in reasons[f"{base}/empty/model{MANIFEST_SUFFIX}"]
    assert "control characters" in reasons[f"{base}/ctl\x01key/model{MANIFEST_SUFFIX}"]


def test_a_manifest_over_the_size_cap_is_refused_with_a_bounded_read(s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/models/huge/model{MANIFEST_SUFFIX}"
    put(s3, uri, b'{"pad": "' + b"x" * (MAX_MANIFEST_BYTES + 10) + b'"}')
    ranges: list[str] = []
    s3.meta.events.register(
        "provide-client-params.s3.GetObject", lambda params, **_: ranges.append(params.get("Range"))
    )
    (candidate,) = iter_candidates(s3, f"s3://{bucket}/models")
    assert candidate.spec is None and candidate.error is not None
    assert f"larger than {MAX_MANIFEST_BYTES} bytes" in candidate.error
    assert ranges == [f"bytes=0-{MAX_MANIFEST_BYTES}"], "one GET, of at most the cap and a byte"


# -- catalogs on disk ----------------------------------------------------------------------------


def test_a_catalog_on_disk_is_refused_without_a_catalog_dir(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "specs.jsonl"
    path.write_text(json.dumps(spec_data(bucket)) + "\n")
    with pytest.raises(SpecError, match="set EXPORT_CATALOG_DIR"):
        list(plan(s3, str(path), "always", settings()))


@pytest.mark.parametrize("how", ["outside", "dotdot", "symlink"])
def test_a_catalog_outside_the_catalog_dir_is_refused(s3: Any, bucket: str, tmp_path: Path, how: str) -> None:
    allowed = tmp_path / "catalogs"
    allowed.mkdir()
    outside = tmp_path / "private"
    outside.mkdir()
    secret = outside / "specs.jsonl"
    secret.write_text(json.dumps(spec_data(bucket, metadata={"token": SECRET})) + "\n")
    source = {
        "outside": str(secret),
        "dotdot": f"{allowed}/../private/specs.jsonl",
        "symlink": str(allowed / "link.jsonl"),
    }[how]
    if how == "symlink":
        os.symlink(secret, source)
    with pytest.raises(SpecError, match="outside EXPORT_CATALOG_DIR") as info:
        list(plan(s3, source, "always", settings(catalog_dir=str(allowed))))
    assert SECRET not in str(info.value)
    # The legitimate case: a catalog inside the folder is read.
    (allowed / "ok.jsonl").write_text(json.dumps(spec_data(bucket)) + "\n")
    decisions = list(plan(s3, str(allowed / "ok.jsonl"), "always", settings(catalog_dir=str(allowed))))
    assert [d.action for d in decisions] == ["export"]


def test_a_fifo_in_the_catalog_dir_is_refused_not_waited_on(s3: Any, tmp_path: Path) -> None:
    fifo = tmp_path / "specs.jsonl"
    os.mkfifo(fifo)
    with pytest.raises(SpecError, match="cannot be read"):
        list(plan(s3, str(fifo), "always", settings(catalog_dir=str(tmp_path))))


@pytest.mark.parametrize("where", ["disk", "s3"])
def test_a_bad_catalog_lines_text_never_reaches_the_report(s3: Any, bucket: str, tmp_path: Path, where: str) -> None:
    lines = [
        json.dumps(spec_data(bucket, "good")),
        json.dumps({SECRET: 1, "name": "n", "builder": f"{SECRET}:x", "destination": f"s3://{bucket}/m"}),
        json.dumps(spec_data(bucket, "dev", device=SECRET)),
        json.dumps(spec_data(bucket, SECRET + "/bad")),
        SECRET + " is not JSON",
    ]
    text = "\n".join(lines) + "\n"
    if where == "disk":
        (tmp_path / "specs.jsonl").write_text(text)
        source = str(tmp_path / "specs.jsonl")
    else:
        source = f"s3://{bucket}/catalogs/specs.jsonl"
        put(s3, source, text)
    report_uri = f"s3://{bucket}/reports/run.json"
    summary = bulk.dry_run(s3, source, "always", settings(catalog_dir=str(tmp_path)), run_id="r", report_uri=report_uri)
    assert summary["would"]["export"] == 1 and summary["would"]["invalid"] == 4
    report = get_json(s3, report_uri)
    reasons = [row["reason"] for row in report["plan"] if row["action"] == "invalid"]
    assert reasons[0] == f"{source}:2: invalid spec: builder: value_error; spec: extra_forbidden"
    assert reasons[1] == f"{source}:3: invalid spec: device: value_error"
    assert reasons[2].startswith(f"{source}:4: invalid spec: name: ")
    assert reasons[3].startswith(f"{source}:5: not JSON: Expecting value: line 1 column 1")
    assert SECRET not in json.dumps(report)


def test_a_yaml_errors_text_is_not_quoted(s3: Any, bucket: str, tmp_path: Path) -> None:
    path = tmp_path / "specs.yaml"
    path.write_text(f"- name: [{SECRET}\n")
    with pytest.raises(SpecError, match="not valid YAML") as info:
        list(plan(s3, str(path), "always", settings(catalog_dir=str(tmp_path))))
    assert "line 2, column 1" in str(info.value)
    assert SECRET not in str(info.value)


# -- the skip path of one export -----------------------------------------------------------------


def test_a_manifest_planted_at_a_specs_keys_does_not_make_it_skipped(s3: Any, bucket: str) -> None:
    # Another spec's real export, its manifest copied to the keys of the spec to export.
    _, decoy = export(s3, bucket, "decoy")
    spec = parse_spec(spec_data(bucket, "victim"))
    keys = export_keys(spec, TORCH)
    put(s3, keys.manifest, json.dumps(get_json(s3, decoy["manifest_uri"])))

    result = run_export(spec, settings=settings(), client=s3)

    assert result["skipped"] is False, "the planted manifest was taken as the export"
    assert result["artifact_uri"] == keys.artifact
    stored = read_manifest(s3, keys.manifest)
    assert stored.spec_hash == spec.spec_hash and stored.artifact.uri == keys.artifact
    assert open_uploads(s3, bucket) == []
    assert not [k for k in object_keys(s3, bucket) if ".staging-" in k]
    # Now the export is there: it is skipped, as before.
    assert run_export(spec, settings=settings(), client=s3)["skipped"] is True


@pytest.mark.parametrize("body", [b"{not json", deep(100_000).encode()], ids=["not-json", "deep"])
def test_an_unreadable_manifest_at_a_specs_keys_is_replaced(s3: Any, bucket: str, body: bytes) -> None:
    spec = parse_spec(spec_data(bucket))
    keys = export_keys(spec, TORCH)
    put(s3, keys.manifest, body)
    result = run_export(spec, settings=settings(), client=s3)
    assert result["skipped"] is False
    assert read_manifest(s3, keys.manifest).spec_hash == spec.spec_hash


# -- exportctl ls --------------------------------------------------------------------------------


def test_ls_lists_the_good_manifests_and_shows_the_bad_ones(
    s3: Any, bucket: str, capsys: pytest.CaptureFixture[str]
) -> None:
    _, a = export(s3, bucket, "a")
    _, b = export(s3, bucket, "b")
    put(s3, f"s3://{bucket}/models/aa/model{MANIFEST_SUFFIX}", deep(100_000))
    s3.put_object(Bucket=bucket, Key=f"models/ab\x02/model{MANIFEST_SUFFIX}", Body=b"{}")
    status = ls(argparse.Namespace(prefix=f"s3://{bucket}/models", json=True, workers=4))
    captured = capsys.readouterr()
    rows = [json.loads(line) for line in captured.out.splitlines()]
    assert [r["artifact_uri"] for r in rows] == [a["artifact_uri"], b["artifact_uri"]]
    assert set(rows[0]) == {
        "name", "artifact_uri", "size", "torch", "format", "format_version", "created_at", "verified"
    }  # fmt: skip
    assert status == 1, "some manifests were invalid"
    assert f"invalid s3://{bucket}/models/aa/model{MANIFEST_SUFFIX}" in captured.err
    assert "nested deeper" in captured.err
    assert f"models/ab\\x02/model{MANIFEST_SUFFIX}" in captured.err
