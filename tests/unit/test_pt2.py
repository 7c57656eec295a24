""".pt2 (torch.export) archives without a store: text-only extra files, pt2 manifests and
their compatibility check, the spec's ``format`` and ``dynamic_shapes``, capturing with
torch.export."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime
from typing import Any

import pytest
import torch
from pydantic import ValidationError
from torch.export import Dim

from serializer.archive.extras import ExtraFileInfo, sha256_hex
from serializer.archive.info import ArchiveInfo, Pt2Info
from serializer.consumer.compat import check_compatibility
from serializer.errors import InvalidExtraFile, InvalidURI
from serializer.manifest.model import (
    PT2_SCHEMA_VERSION,
    TORCHSCRIPT_SCHEMA_VERSION,
    ArtifactEntry,
    ExportSchemaVersion,
    Manifest,
    Producer,
    Pt2Entry,
    build_manifest,
    manifest_uri_for,
    spec_digest,
)
from serializer.pt2.export import check_text_extras
from tests.fixtures import ALL_BYTES, EXTRA_BYTES, SCHEMA, TinyLinear, pt2_spec_data
from worker.builders import dynamic_shapes_for, to_exported_program
from worker.errors import SpecError, TorchExportFailed
from worker.spec import MAX_JSON_DEPTH, DimSpec, parse_spec

#: A spec written before ``format`` existed, and its hash as the release before .pt2 computed it.
PRE_PT2_SPEC: dict[str, Any] = {
    "name": "tiny-classifier",
    "builder": "worker.examples:tiny_classifier",
    "destination": "s3://models/prod",
    "example_inputs": [{"shape": [2, 8], "dtype": "float32"}],
    "method": "trace",
}
#: (computed with the commit before .pt2 was added; the same spec must keep it)
PRE_PT2_SPEC_HASH = "19d16341be30993e8d8bc0736fce803577e73b7686ced6c04ca9fe358e79f731"


pytestmark = pytest.mark.usefixtures("clean_env")


# -- check_text_extras ----------------------------------------------------------------------------


def test_utf8_extra_files_pass_as_text() -> None:
    assert check_text_extras(EXTRA_BYTES) == {name: v.decode("utf-8") for name, v in EXTRA_BYTES.items()}


def test_a_binary_extra_file_is_refused_by_name() -> None:
    with pytest.raises(InvalidExtraFile) as info:
        check_text_extras({"labels.txt": b"a\nb\n", "weights/blob.bin": ALL_BYTES})
    message = str(info.value)
    assert "'weights/blob.bin'" in message
    assert "not UTF-8" in message
    assert "labels.txt" not in message


# -- manifests ------------------------------------------------------------------------------------

PRODUCER = Producer(torch="2.13.0+cpu", python="3.11.9", export_worker="0.1.0", device="cpu", host="test-host")
CREATED = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def archive(fmt: str = "pt2", key: str = "team/m/model.pt2") -> ArchiveInfo:
    content = b"a\nb\n"
    return ArchiveInfo(
        uri=f"s3://models-bucket/{key}",
        size=4096,
        sha256=sha256_hex(b"the archive"),
        etag='"0123456789abcdef0123456789abcdef"',
        format_version=6,
        archive_root="archive",
        extra_files=(ExtraFileInfo(name="labels.txt", size=len(content), sha256=sha256_hex(content), offset=128),),
        format=fmt,
        pt2=Pt2Info(archive_version=0, schema_major=8, schema_minor=20) if fmt == "pt2" else None,
    )


def manifest_of(info: ArchiveInfo) -> Manifest:
    spec = {"name": "m", "format": info.format}
    return build_manifest(info, spec=spec, spec_hash=spec_digest(spec), producer=PRODUCER, created_at=CREATED)


def test_a_pt2_manifest_is_schema_3_with_its_pt2_facts() -> None:
    m = manifest_of(archive("pt2"))
    assert m.schema_version == PT2_SCHEMA_VERSION == 3
    assert m.artifact.format == "pt2"
    assert m.artifact.pt2 == Pt2Entry(archive_version=0, schema_version=ExportSchemaVersion(major=8, minor=20))
    doc = json.loads(m.to_json())
    assert doc["schema_version"] == 3
    assert doc["artifact"]["pt2"] == {"archive_version": 0, "schema_version": {"major": 8, "minor": 20}}


def test_a_torchscript_manifest_keeps_schema_2_without_a_pt2_key() -> None:
    m = manifest_of(archive("torchscript", "team/m/model.pt"))
    assert m.schema_version == TORCHSCRIPT_SCHEMA_VERSION == 2
    assert m.artifact.pt2 is None
    doc = json.loads(m.to_json())
    assert doc["schema_version"] == 2
    assert "pt2" not in doc["artifact"]
    assert doc["artifact"]["format"] == "torchscript"


ENTRY: dict[str, Any] = {
    "uri": "s3://b/m/model.pt2",
    "size": 1,
    "sha256": "0" * 64,
    "format_version": 6,
    "archive_root": "archive",
}
PT2_FACTS = {"archive_version": 0, "schema_version": {"major": 8, "minor": 20}}


def test_artifact_entry_refuses_format_pt2_without_its_facts() -> None:
    with pytest.raises(ValidationError, match=r"artifact\.pt2 is given for format pt2, and only for it"):
        ArtifactEntry.model_validate({**ENTRY, "format": "pt2"})


def test_artifact_entry_refuses_pt2_facts_on_a_torchscript_archive() -> None:
    with pytest.raises(ValidationError, match=r"artifact\.pt2 is given for format pt2, and only for it"):
        ArtifactEntry.model_validate({**ENTRY, "format": "torchscript", "pt2": PT2_FACTS})


def test_artifact_entry_of_each_format_with_what_it_needs() -> None:
    assert ArtifactEntry.model_validate({**ENTRY, "format": "pt2", "pt2": PT2_FACTS}).pt2 is not None
    assert ArtifactEntry.model_validate(ENTRY).format == "torchscript"


@pytest.mark.parametrize(
    ("artifact", "manifest"),
    [
        ("s3://bkt/m/h/torch-2.13.0_cpu/model.pt2", "s3://bkt/m/h/torch-2.13.0_cpu/model.manifest.json"),
        ("s3://bkt/m/model.pt", "s3://bkt/m/model.manifest.json"),
        ("s3://bkt/model.pt2", "s3://bkt/model.manifest.json"),
    ],
)
def test_manifest_uri_for_either_suffix(artifact: str, manifest: str) -> None:
    assert manifest_uri_for(artifact) == manifest


@pytest.mark.parametrize(
    "artifact", ["s3://bkt/m/model.pt2x", "s3://bkt/m/model.pt2.staging-abc", "s3://bkt/m/model.pt3"]
)
def test_manifest_uri_for_other_suffixes_is_refused(artifact: str) -> None:
    with pytest.raises(InvalidURI, match=r"'\.pt' or '\.pt2'"):
        manifest_uri_for(artifact)


def test_a_v3_manifest_round_trips_through_json() -> None:
    m = manifest_of(archive("pt2"))
    again = Manifest.from_json(m.to_json())
    assert again == m
    assert again.to_json() == m.to_json()
    assert again.artifact.pt2 is not None and again.artifact.pt2.schema_version.minor == 20


# -- check_compatibility for pt2 ------------------------------------------------------------------


def pt2_manifest(
    *, archive_version: int = 0, schema: tuple[int, int] = SCHEMA, torch_version: str = "2.13.0"
) -> Manifest:
    return Manifest(
        artifact=ArtifactEntry(
            uri="s3://bucket/m/model.pt2",
            size=1,
            sha256="0" * 64,
            format="pt2",
            format_version=6,
            archive_root="archive",
            pt2=Pt2Entry(
                archive_version=archive_version,
                schema_version=ExportSchemaVersion(major=schema[0], minor=schema[1]),
            ),
        ),
        spec={"name": "m", "format": "pt2"},
        spec_hash="0" * 64,
        extra_files=[],
        producer=Producer(torch=torch_version, python="3.11", export_worker="0", device="cpu", host="h"),
        created_at=CREATED,
    )


def compat(m: Manifest, **kwargs: Any) -> Any:
    return check_compatibility(m, local_torch="2.13.0+cpu", max_format_version=10, **kwargs)


def test_same_archive_version_and_schema_is_compatible() -> None:
    got = compat(pt2_manifest())
    assert got.ok
    assert "PT2 archive version 0" in got.reason
    assert f"export schema {SCHEMA[0]}.{SCHEMA[1]}" in got.reason
    assert "newer" not in got.reason


def test_another_archive_version_is_refused_naming_it() -> None:
    got = compat(pt2_manifest(archive_version=1))
    assert not got.ok
    assert "PT2 archive version 1" in got.reason
    assert "reads archive version 0 only" in got.reason


@pytest.mark.parametrize(
    ("major", "advice"), [(SCHEMA[0] + 1, "upgrade torch"), (SCHEMA[0] - 1, "re-export it with this torch")]
)
def test_another_schema_major_is_refused(major: int, advice: str) -> None:
    got = compat(pt2_manifest(schema=(major, 0)))
    assert not got.ok
    assert f"export schema {major}.0" in got.reason
    assert f"reads schema {SCHEMA[0]}.x only" in got.reason
    assert advice in got.reason


def test_a_newer_schema_minor_loads_with_a_warning() -> None:
    got = compat(pt2_manifest(schema=(SCHEMA[0], SCHEMA[1] + 1)))
    assert got.ok
    assert "newer" in got.reason
    assert f"export schema {SCHEMA[0]}.{SCHEMA[1] + 1}" in got.reason


def test_an_older_schema_minor_is_compatible_without_a_warning() -> None:
    got = compat(pt2_manifest(schema=(SCHEMA[0], max(SCHEMA[1] - 1, 0))))
    assert got.ok
    assert "newer" not in got.reason


def test_a_newer_torch_with_the_same_schema_loads_with_a_warning() -> None:
    got = compat(pt2_manifest(torch_version="2.14.0"))
    assert got.ok
    assert "newer torch (2.14.0" in got.reason


def test_the_reading_side_can_be_given_explicitly() -> None:
    theirs = pt2_manifest(archive_version=3, schema=(SCHEMA[0] + 1, 2))
    assert not compat(theirs).ok, "this torch reads neither"
    got = compat(theirs, pt2_archive_version=3, export_schema=(SCHEMA[0] + 1, 2))
    assert got.ok
    assert "newer" not in got.reason
    refused = compat(pt2_manifest(), pt2_archive_version=3, export_schema=SCHEMA)
    assert not refused.ok
    assert "reads archive version 3 only" in refused.reason


def test_an_archive_version_given_alone_is_honoured() -> None:
    got = compat(pt2_manifest(archive_version=3), pt2_archive_version=3)
    assert got.ok, got.reason


# -- the spec: format and dynamic_shapes ----------------------------------------------------------


def refused(data: dict[str, Any]) -> str:
    with pytest.raises(SpecError) as info:
        parse_spec(data)
    return str(info.value)


def test_format_defaults_to_torchscript_and_earlier_specs_keep_their_hash() -> None:
    spec = parse_spec(PRE_PT2_SPEC)
    assert spec.format == "torchscript"
    assert spec.dynamic_shapes is None
    data = spec.to_json_dict()
    assert "format" not in data
    assert "dynamic_shapes" not in data
    assert spec.spec_hash == spec_digest(data) == PRE_PT2_SPEC_HASH
    assert parse_spec({**PRE_PT2_SPEC, "format": "torchscript"}).spec_hash == PRE_PT2_SPEC_HASH


def test_a_pt2_spec_carries_its_format_in_json_and_hash() -> None:
    spec = parse_spec(pt2_spec_data())
    assert spec.to_json_dict()["format"] == "pt2"
    assert spec.spec_hash == spec_digest(spec.to_json_dict())
    assert spec.spec_hash != parse_spec(pt2_spec_data(format=...)).spec_hash


def test_pt2_needs_example_inputs() -> None:
    assert "format 'pt2' needs example_inputs" in refused(pt2_spec_data(example_inputs=...))
    assert "format 'pt2' needs example_inputs" in refused(pt2_spec_data(example_inputs=[]))


def test_pt2_refuses_method_trace() -> None:
    message = refused(pt2_spec_data(method="trace"))
    assert "method 'trace' applies to format 'torchscript'" in message
    assert parse_spec(pt2_spec_data(method="script")).format == "pt2"


def test_dynamic_shapes_are_refused_for_torchscript() -> None:
    message = refused(pt2_spec_data(format=..., dynamic_shapes=[{"0": {"name": "batch"}}]))
    assert "dynamic_shapes apply to format 'pt2' only" in message


@pytest.mark.parametrize("entries", [[], [None, None], [{"0": "auto"}, {"0": "auto"}]])
def test_dynamic_shapes_need_one_entry_per_input(entries: list[Any]) -> None:
    message = refused(pt2_spec_data(dynamic_shapes=entries))
    assert f"dynamic_shapes has {len(entries)} entries, example_inputs 1" in message


@pytest.mark.parametrize("key", ["2", "7", "x", "-1", "0.5", "²", "\uff11", " 1"])
def test_a_dimension_index_must_be_within_the_input_rank(key: str) -> None:
    message = refused(pt2_spec_data(dynamic_shapes=[{key: {"name": "batch"}}]))
    assert f"dynamic_shapes.0: {key!r} is not a dimension index" in message


def test_a_dimension_index_of_a_given_value_is_bounded() -> None:
    given = [{"value": [[1.0, 2.0]]}]
    message = refused(pt2_spec_data(example_inputs=given, dynamic_shapes=[{str(MAX_JSON_DEPTH): "auto"}]))
    assert f"{str(MAX_JSON_DEPTH)!r} is not a dimension index" in message
    assert parse_spec(pt2_spec_data(example_inputs=given, dynamic_shapes=[{"0": "auto"}])).dynamic_shapes is not None


def test_the_error_names_the_rank_of_the_input() -> None:
    assert "(input 0 has 2 dimensions)" in refused(pt2_spec_data(dynamic_shapes=[{"2": "auto"}]))


def test_one_dimension_name_with_other_bounds_is_refused() -> None:
    inputs = [{"shape": [2, 8]}, {"shape": [2, 3]}]
    shapes = [{"0": {"name": "batch", "min": 1, "max": 64}}, {"0": {"name": "batch", "min": 1, "max": 32}}]
    message = refused(pt2_spec_data(example_inputs=inputs, dynamic_shapes=shapes))
    assert "dynamic_shapes.1.0: dimension 'batch' is given other bounds" in message


def test_one_dimension_name_shared_with_equal_bounds_is_accepted() -> None:
    inputs = [{"shape": [2, 8]}, {"shape": [2, 3]}]
    shapes = [{"0": {"name": "batch", "max": 64}}, {"0": {"name": "batch", "max": 64}}]
    spec = parse_spec(pt2_spec_data(example_inputs=inputs, dynamic_shapes=shapes))
    assert spec.dynamic_shapes is not None and len(spec.dynamic_shapes) == 2
    assert spec.to_json_dict()["dynamic_shapes"] == [
        {"0": {"name": "batch", "min": None, "max": 64}},
        {"0": {"name": "batch", "min": None, "max": 64}},
    ]


def test_min_above_max_is_refused() -> None:
    assert "min 9 is above max 3" in refused(pt2_spec_data(dynamic_shapes=[{"0": {"name": "b", "min": 9, "max": 3}}]))


@pytest.mark.parametrize("name", ["1batch", "a-b", "", "batch size", "x" * 65, "é"])
def test_a_dimension_name_must_be_an_identifier(name: str) -> None:
    message = refused(pt2_spec_data(dynamic_shapes=[{"0": {"name": name}}]))
    assert "dimension name must be a Python identifier" in message


def test_a_binary_base64_extra_file_is_refused_for_pt2_only() -> None:
    extra = {"blob.bin": {"base64": base64.b64encode(ALL_BYTES).decode()}}
    message = refused(pt2_spec_data(extra_files=extra))
    assert "extra_files.blob.bin: not UTF-8 text" in message
    assert parse_spec(pt2_spec_data(format=..., extra_files=extra)).format == "torchscript"
    text = {"notes.txt": {"base64": base64.b64encode("chién\n".encode()).decode()}}
    assert parse_spec(pt2_spec_data(extra_files=text)).format == "pt2"


def test_as_format_pt2_of_a_trace_spec() -> None:
    spec = parse_spec(PRE_PT2_SPEC)
    converted = spec.as_format("pt2")
    assert (converted.format, converted.method) == ("pt2", "script")
    assert converted.example_inputs == spec.example_inputs
    assert {k: v for k, v in converted.to_json_dict().items() if k not in ("format", "method")} == {
        k: v for k, v in spec.to_json_dict().items() if k != "method"
    }
    assert converted.spec_hash != spec.spec_hash
    assert spec.as_format("torchscript") is spec


def test_as_format_torchscript_drops_dynamic_shapes() -> None:
    spec = parse_spec(pt2_spec_data(dynamic_shapes=[{"0": {"name": "batch"}}]))
    back = spec.as_format("torchscript")
    assert (back.format, back.dynamic_shapes, back.method) == ("torchscript", None, "script")
    assert "format" not in back.to_json_dict()


def test_as_format_of_a_spec_without_example_inputs_raises() -> None:
    spec = parse_spec(pt2_spec_data(format=..., example_inputs=...))
    with pytest.raises(SpecError, match="format 'pt2' needs example_inputs"):
        spec.as_format("pt2")


# -- capturing with torch.export ------------------------------------------------------------------


def test_dynamic_shapes_for_shares_one_dim_per_name_and_maps_auto() -> None:
    batch = DimSpec(name="batch", min=1, max=64)
    got = dynamic_shapes_for([{"0": batch, "1": "auto"}, None, {"0": DimSpec(name="batch", min=1, max=64)}])
    assert got is not None and len(got) == 3
    first, second, third = got
    assert second is None
    assert first[0] is third[0], "one Dim per name: torch.export keeps them equal"
    assert (first[0].__name__, first[0].min, first[0].max) == ("batch", 1, 64)
    assert first[1] is Dim.AUTO
    assert set(first) == {0, 1}, "keys are dimension indices as ints"
    assert dynamic_shapes_for(None) is None


class DataDependent(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return x + 1
        return x - 1


def test_data_dependent_control_flow_fails_with_torchs_message() -> None:
    with pytest.raises(TorchExportFailed) as info:
        to_exported_program(DataDependent(), (torch.ones(2, 3),))
    cause = info.value.__cause__
    assert cause is not None
    message = str(info.value)
    assert message.startswith(f"torch.export.export failed: {type(cause).__name__}: ")
    assert str(cause).strip().splitlines()[0].strip() in message
    assert "data-dependent" in message


def test_a_dynamic_dimension_that_specializes_fails_with_torchs_message() -> None:
    batch = DimSpec(name="batch", min=1, max=64)
    with pytest.raises(TorchExportFailed) as info:
        to_exported_program(TinyLinear().eval(), (torch.ones(1, 4),), [{"0": batch}])
    message = str(info.value)
    assert "Constraints violated (batch)" in message
    assert "specialized it to be a constant (1)" in message


def test_a_dynamic_dimension_exports_a_program_for_other_sizes() -> None:
    module = TinyLinear().eval()
    program = to_exported_program(module, (torch.ones(2, 4),), [{"0": DimSpec(name="batch", max=64)}])
    x = torch.randn(7, 4, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.equal(program.module()(x), module(x))
