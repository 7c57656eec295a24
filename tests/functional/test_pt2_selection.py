"""Bulk conversion to .pt2 (``to_format``) against real exports in in-process moto: the
planner deciding TorchScript candidates as pt2 exports (the sweeper on .pt2 keys: test_sweeper.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import torch

from serializer.manifest.store import read_manifest
from serializer.pt2.versions import archive_version, export_schema_version
from serializer.s3.uri import parse_s3_uri
from tests.conftest import object_keys
from worker import bulk
from worker.bulk import Candidate, Planner, iter_candidates
from worker.errors import SpecError
from worker.export import run_export
from worker.keys import export_keys
from worker.settings import Settings
from worker.spec import ExportSpec, parse_spec

ALLOWED = ("worker.examples",)
TORCH = torch.__version__
SCHEMA = export_schema_version()


def settings(**changes: Any) -> Settings:
    return Settings(allowed_builders=ALLOWED, **changes)


def spec_data(bucket: str, **fields: Any) -> dict[str, Any]:
    data = {
        "name": "tiny",
        "builder": "worker.examples:tiny_classifier",
        "kwargs": {"in_features": 8, "hidden": 4, "classes": 2},
        "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
        "destination": f"s3://{bucket}/models",
        **fields,
    }
    return {k: v for k, v in data.items() if v is not ...}


def export(client: Any, spec: ExportSpec) -> dict[str, Any]:
    return run_export(spec, settings=settings(), client=client)


def listed(client: Any, bucket: str) -> dict[str, Candidate]:
    return {c.source: c for c in iter_candidates(client, f"s3://{bucket}/models")}


def edit_manifest(client: Any, uri: str, edit: Any) -> None:
    target = parse_s3_uri(uri)
    doc = json.loads(client.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())
    edit(doc)
    client.put_object(Bucket=target.bucket, Key=target.key, Body=json.dumps(doc).encode())


def to_pt2(client: Any, policy: Any = "if-stale") -> Planner:
    return Planner(client, settings(), policy, to_format="pt2")


# -- Planner(to_format="pt2") ---------------------------------------------------------------------


def test_a_torchscript_export_is_planned_as_a_pt2_export_next_to_it(s3: Any, bucket: str) -> None:
    spec = parse_spec(spec_data(bucket, method="trace"))
    result = export(s3, spec)
    decision = to_pt2(s3).decide(listed(s3, bucket)[result["manifest_uri"]])
    assert decision.action == "export"
    assert decision.reason == f"no export by torch {TORCH} yet (listed one: torch {TORCH})"
    assert decision.target is not None and decision.target.endswith("/model.pt2")
    assert decision.target == export_keys(spec.as_format("pt2"), TORCH).artifact
    assert decision.target.rsplit("/", 2)[0] != result["artifact_uri"].rsplit("/", 2)[0], "a folder of its own"
    assert decision.spec is not None
    assert (decision.spec["format"], "method" in decision.spec) == ("pt2", True)
    assert parse_spec(decision.spec).method == "script"


def test_after_the_pt2_export_exists_both_candidates_are_unchanged(s3: Any, bucket: str) -> None:
    result = export(s3, parse_spec(spec_data(bucket)))
    first = to_pt2(s3).decide(listed(s3, bucket)[result["manifest_uri"]])
    assert first.action == "export" and first.spec is not None
    done = export(s3, parse_spec(first.spec))
    assert done["artifact_uri"] == first.target

    candidates = listed(s3, bucket)
    assert sorted(candidates) == sorted([result["manifest_uri"], done["manifest_uri"]])
    for candidate in candidates.values():
        decision = to_pt2(s3).decide(candidate)
        assert (decision.action, decision.reason) == ("unchanged", "up to date")
        assert decision.target == done["artifact_uri"]
    # The TorchScript export stays where it was.
    assert read_manifest(s3, result["manifest_uri"]).artifact.format == "torchscript"


def test_without_to_format_the_torchscript_export_is_up_to_date(s3: Any, bucket: str) -> None:
    result = export(s3, parse_spec(spec_data(bucket)))
    decision = Planner(s3, settings(), "if-stale").decide(listed(s3, bucket)[result["manifest_uri"]])
    assert (decision.action, decision.target) == ("unchanged", result["artifact_uri"])


def test_a_spec_that_cannot_be_converted_is_invalid(s3: Any, bucket: str) -> None:
    spec = parse_spec(spec_data(bucket, name="no-inputs", example_inputs=...))
    decision = to_pt2(s3).decide(Candidate(source="catalog.jsonl:3", spec=spec))
    assert decision.action == "invalid"
    assert decision.reason.startswith("cannot convert to pt2: ")
    assert "needs example_inputs" in decision.reason
    assert (decision.name, decision.source, decision.target) == ("no-inputs", "catalog.jsonl:3", None)
    assert not decision.runs
    assert object_keys(s3, bucket) == []


def test_a_binary_base64_extra_file_cannot_be_converted(s3: Any, bucket: str) -> None:
    spec = parse_spec(spec_data(bucket, extra_files={"blob.bin": {"base64": "AAH/"}}))
    decision = to_pt2(s3).decide(Candidate(source="catalog.jsonl:1", spec=spec))
    assert decision.action == "invalid"
    assert decision.reason.startswith("cannot convert to pt2: ")
    assert "extra_files.blob.bin: not UTF-8 text" in decision.reason


@pytest.fixture()
def pt2_export(s3: Any, bucket: str) -> dict[str, Any]:
    """A pt2 export under ``s3://bucket/models``: the job's result."""
    return export(s3, parse_spec(spec_data(bucket, format="pt2")))


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        (
            lambda doc: doc["artifact"]["pt2"].update(archive_version=archive_version() + 1),
            f"PT2 archive version {archive_version() + 1}, this worker writes {archive_version()}",
        ),
        (
            lambda doc: doc["artifact"]["pt2"]["schema_version"].update(minor=SCHEMA[1] - 1),
            f"export schema {SCHEMA[0]}.{SCHEMA[1] - 1} < {SCHEMA[0]}.{SCHEMA[1]}",
        ),
        (
            lambda doc: doc["artifact"]["pt2"]["schema_version"].update(major=SCHEMA[0] - 1, minor=SCHEMA[1] + 5),
            f"export schema {SCHEMA[0] - 1}.{SCHEMA[1] + 5} < {SCHEMA[0]}.{SCHEMA[1]}",
        ),
    ],
    ids=["archive-version", "older-minor", "older-major"],
)
def test_a_stale_pt2_export_is_replaced_if_stale(
    s3: Any, bucket: str, pt2_export: dict[str, Any], edit: Any, reason: str
) -> None:
    edit_manifest(s3, pt2_export["manifest_uri"], edit)
    candidate = listed(s3, bucket)[pt2_export["manifest_uri"]]
    for planner in (Planner(s3, settings(), "if-stale"), to_pt2(s3)):
        decision = planner.decide(candidate)
        assert (decision.action, decision.reason) == ("replace", reason)
        assert decision.target == pt2_export["artifact_uri"]
    assert to_pt2(s3, "missing").decide(candidate).action == "unchanged"


def test_a_newer_export_schema_is_not_stale(s3: Any, bucket: str, pt2_export: dict[str, Any]) -> None:
    edit_manifest(
        s3, pt2_export["manifest_uri"], lambda doc: doc["artifact"]["pt2"]["schema_version"].update(minor=SCHEMA[1] + 1)
    )
    decision = to_pt2(s3).decide(listed(s3, bucket)[pt2_export["manifest_uri"]])
    assert (decision.action, decision.reason) == ("unchanged", "up to date")


def test_stale_reasons_compare_with_the_planners_own_pt2_versions(s3: Any, pt2_export: dict[str, Any]) -> None:
    manifest = read_manifest(s3, pt2_export["manifest_uri"])
    builder = manifest.producer.builder
    assert Planner(s3, settings(), "if-stale").stale_reasons(manifest, builder, "pt2") == []
    newer = Planner(s3, settings(), "if-stale", pt2_archive_version=7, export_schema=(SCHEMA[0], SCHEMA[1] + 3))
    assert newer.stale_reasons(manifest, builder, "pt2") == [
        f"PT2 archive version {archive_version()}, this worker writes 7",
        f"export schema {SCHEMA[0]}.{SCHEMA[1]} < {SCHEMA[0]}.{SCHEMA[1] + 3}",
    ]
    assert Planner(s3, settings(), "if-stale").stale_reasons(manifest, builder, "torchscript") == [
        "format pt2, wanted torchscript"
    ]


@pytest.mark.parametrize("to_format", ["onnx", "PT2", "pt"])
def test_an_unknown_target_format_is_refused(s3: Any, to_format: str) -> None:
    with pytest.raises(SpecError, match=f"to_format must be one of torchscript, pt2, got {to_format!r}"):
        Planner(s3, settings(), "if-stale", to_format=to_format)  # type: ignore[arg-type]


def test_a_dry_run_to_pt2_plans_a_conversion_per_torchscript_export(s3: Any, bucket: str) -> None:
    result = export(s3, parse_spec(spec_data(bucket)))
    report_uri = f"s3://{bucket}/reports/dry.json"
    summary = bulk.dry_run(
        s3, f"s3://{bucket}/models", "if-stale", settings(), run_id="r1", report_uri=report_uri, to_format="pt2"
    )
    assert summary["to_format"] == "pt2"
    assert summary["would"] == {"export": 1, "replace": 0, "unchanged": 0, "invalid": 0}
    target = parse_s3_uri(report_uri)
    stored = json.loads(s3.get_object(Bucket=target.bucket, Key=target.key)["Body"].read())
    (planned,) = stored["plan"]
    assert (planned["action"], planned["source"]) == ("export", result["manifest_uri"])
    assert planned["target"].endswith("/model.pt2")
    assert stored["to_format"] == "pt2"
    assert sorted(object_keys(s3, bucket)) == sorted(
        parse_s3_uri(u).key for u in (result["artifact_uri"], result["manifest_uri"], report_uri)
    ), "planning writes nothing but its report"


def test_to_torchscript_plans_a_torchscript_export_of_a_pt2_one(s3: Any, bucket: str) -> None:
    spec = parse_spec(spec_data(bucket, format="pt2", dynamic_shapes=[{"0": {"name": "batch", "max": 64}}]))
    result = export(s3, spec)
    planner = Planner(s3, settings(), "if-stale", to_format="torchscript")
    decision = planner.decide(listed(s3, bucket)[result["manifest_uri"]])
    assert decision.action == "export"
    assert decision.target is not None and decision.target.endswith("/model.pt")
    assert decision.spec is not None and "format" not in decision.spec and "dynamic_shapes" not in decision.spec
