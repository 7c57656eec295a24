""".pt2 (torch.export) archives in S3 (in-process moto): the write-only stream torch saves
into, ``export_pt2`` with both strategies (what is stored, and that a failure leaves nothing),
and whole pt2 jobs (``run_export``, verification, loading, extra files by range)."""

from __future__ import annotations

import array
import base64
import hashlib
import io
import json
import threading
import time
import uuid
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
import torch
from botocore.exceptions import ClientError

from serializer.archive.extras import BUILD_JSON, EXAMPLE_INPUTS_TEXT, REFERENCE_OUTPUTS_TEXT, sha256_hex
from serializer.archive.info import ArchiveInfo, Pt2Info
from serializer.archive.upload import CONTENT_TYPE
from serializer.archive.zipindex import ZipStreamIndexer
from serializer.consumer.extras import read_extra_file
from serializer.consumer.open import open_artifact
from serializer.consumer.verify import verify_artifact
from serializer.errors import ArchiveError, InvalidExtraFile, ObjectExists, UploadFailed
from serializer.manifest.model import (
    PT2_SCHEMA_VERSION,
    ExportSchemaVersion,
    Manifest,
    Pt2Entry,
)
from serializer.manifest.store import read_manifest
from serializer.pt2.export import Pt2Strategy, UploadStream, export_pt2
from serializer.pt2.versions import archive_version
from serializer.s3.client import make_s3_client
from serializer.s3.multipart import MultipartWriter
from serializer.s3.options import UploadOptions
from serializer.s3.uri import parse_s3_uri
from tests.conftest import object_keys, open_uploads
from tests.fixtures import ALL_BYTES, EXTRA_BYTES, EXTRAS, SCHEMA, ParamBlob, TinyLinear, pt2_spec_data
from worker.errors import SpecError
from worker.examples import tiny_classifier
from worker.export import run_export
from worker.settings import Settings
from worker.spec import ExportSpec, parse_spec

MiB = 1024**2
#: A program large enough for several 5 MiB parts (the smallest part S3 takes).
BIG_BYTES = 16 * MiB
PART = 5 * MiB
STRATEGIES: list[Pt2Strategy] = ["stream", "spool"]


pytestmark = pytest.mark.usefixtures("clean_env")


@pytest.fixture(scope="module")
def tiny() -> tuple[TinyLinear, torch.Tensor, torch.export.ExportedProgram]:
    """A small module, an input, and its exported program."""
    module = TinyLinear().eval()
    x = module.example_input()
    return module, x, torch.export.export(module, (x,))


@pytest.fixture(scope="module")
def big() -> torch.export.ExportedProgram:
    """A program whose archive takes four 5 MiB parts."""
    return torch.export.export(ParamBlob(BIG_BYTES).eval(), (torch.ones(3),))


def get(client: Any, uri: str, byte_range: str | None = None) -> bytes:
    target = parse_s3_uri(uri)
    extra = {"Range": byte_range} if byte_range else {}
    return bytes(client.get_object(Bucket=target.bucket, Key=target.key, **extra)["Body"].read())


def put(client: Any, uri: str, body: bytes) -> None:
    target = parse_s3_uri(uri)
    client.put_object(Bucket=target.bucket, Key=target.key, Body=body)


def record_names(data: bytes) -> list[str]:
    return zipfile.ZipFile(io.BytesIO(data)).namelist()


class CallCounter:
    """Counts S3 operations of a client as they are sent, through botocore's own events."""

    def __init__(self, client: Any, *operations: str) -> None:
        self.calls = dict.fromkeys(operations, 0)
        self._lock = threading.Lock()
        for op in operations:
            client.meta.events.register(f"before-call.s3.{op}", self._count(op))

    def _count(self, op: str) -> Any:
        def handler(**_: Any) -> None:
            with self._lock:
                self.calls[op] += 1

        return handler


# -- UploadStream --------------------------------------------------------------------------------


@pytest.fixture()
def stream_to(s3: Any, bucket: str) -> Iterator[tuple[UploadStream, MultipartWriter, str]]:
    """An UploadStream into a writer of ``s3://bucket/stream/object``; the writer is aborted
    at the end where the test left it open."""
    writer = MultipartWriter(s3, bucket, "stream/object")
    yield UploadStream(writer, ZipStreamIndexer()), writer, f"s3://{bucket}/stream/object"
    writer.abort()


def test_upload_stream_is_a_seekable_write_only_target(stream_to: Any) -> None:
    stream, _, _ = stream_to
    assert stream.seekable()
    assert stream.writable()
    assert not stream.readable()


def test_seeks_to_the_current_position_are_allowed_and_writing_goes_on(s3: Any, stream_to: Any) -> None:
    stream, writer, uri = stream_to
    assert stream.seek(0) == 0, "at the start, 0 is the current position: not a rewind"
    assert stream.write(b"abcde") == 5
    assert stream.tell() == 5
    assert stream.seek(5) == 5
    assert stream.seek(0, io.SEEK_CUR) == 5
    assert stream.seek(0, io.SEEK_END) == 5
    assert stream.write(b"fg") == 2
    writer.close()
    assert get(s3, uri) == b"abcdefg"


def test_rewind_after_writes_ends_the_stream(s3: Any, stream_to: Any) -> None:
    stream, writer, uri = stream_to
    stream.write(b"abc")
    assert stream.seek(0) == 0
    assert stream.tell() == 0
    # torch's C++ writer calls write: a refused write is kept, and raised once the save returned.
    stream.write(b"late")
    with pytest.raises(io.UnsupportedOperation, match="rewound"):
        stream.raise_failure()
    assert writer.tell() == 3, "the refused bytes never reached the upload"
    writer.close()
    assert get(s3, uri) == b"abc"


@pytest.mark.parametrize(
    ("offset", "whence"),
    [(2, io.SEEK_SET), (10, io.SEEK_SET), (-1, io.SEEK_CUR), (1, io.SEEK_CUR), (-2, io.SEEK_END)],
)
def test_seeking_anywhere_else_is_refused(stream_to: Any, offset: int, whence: int) -> None:
    stream, _, _ = stream_to
    stream.write(b"abcdef")
    with pytest.raises(io.UnsupportedOperation, match="already streamed"):
        stream.seek(offset, whence)
    assert stream.tell() == 6


def test_after_the_rewind_the_old_end_is_out_of_reach(stream_to: Any) -> None:
    stream, _, _ = stream_to
    stream.write(b"abcdef")
    stream.seek(0)
    assert stream.seek(0) == 0
    with pytest.raises(io.UnsupportedOperation):
        stream.seek(6)


def test_memoryview_input_is_copied_before_write_returns(s3: Any, stream_to: Any) -> None:
    stream, writer, uri = stream_to
    source = bytearray(b"hello world")
    assert stream.write(memoryview(source)) == len(source)
    source[:] = b"X" * len(source)  # torch reuses its buffers once write returns
    numbers = array.array("i", [1, 2, 3])
    assert stream.write(memoryview(numbers)) == numbers.itemsize * 3, "the byte count, not the item count"
    writer.close()
    assert get(s3, uri) == b"hello world" + numbers.tobytes()


def test_a_zip_written_through_a_reused_buffer_is_indexed_right(s3: Any, bucket: str) -> None:
    # A real zip, handed over in small memoryviews of one buffer that is overwritten
    # between writes: the index built on the way must describe the zip, not the buffer.
    raw = io.BytesIO()
    with zipfile.ZipFile(raw, "w", compression=zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/extra/a.txt", "first file")
        zf.writestr("archive/extra/b.txt", "second file, longer")
    data = raw.getvalue()
    writer, indexer = MultipartWriter(s3, bucket, "zip/object"), ZipStreamIndexer()
    stream = UploadStream(writer, indexer)
    buf = bytearray(7)
    for start in range(0, len(data), len(buf)):
        chunk = data[start : start + len(buf)]
        buf[: len(chunk)] = chunk
        stream.write(memoryview(buf)[: len(chunk)])
    stream.raise_failure()
    index = indexer.finish()
    writer.close()
    assert get(s3, f"s3://{bucket}/zip/object") == data
    records = index.by_name
    for name, content in [("archive/extra/a.txt", b"first file"), ("archive/extra/b.txt", b"second file, longer")]:
        record = records[name]
        assert record.size == len(content)
        assert data[record.data_offset : record.data_offset + record.size] == content
        assert index.read_small(name) == content, "small records in the tail are kept as written"


# -- export_pt2: what is stored -------------------------------------------------------------------


@pytest.fixture(scope="module")
def stored(in_process_s3: None, tiny: Any) -> dict[str, tuple[ArchiveInfo, bytes]]:
    """The tiny program exported with the extra files by each strategy: info and stored bytes."""
    client = make_s3_client(max_pool_connections=8)
    name = f"pt2-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    out: dict[str, tuple[ArchiveInfo, bytes]] = {}
    for strategy in STRATEGIES:
        uri = f"s3://{name}/{strategy}/model.pt2"
        info = export_pt2(tiny[2], uri, client=client, extra_files=EXTRAS, strategy=strategy)
        out[strategy] = (info, get(client, uri))
    return out


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_export_pt2_describes_the_stored_object(stored: Any, strategy: Pt2Strategy) -> None:
    info, data = stored[strategy]
    assert info.uri.endswith(f"/{strategy}/model.pt2")
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.format == "pt2"
    assert info.archive_root == "archive"
    assert info.pt2 == Pt2Info(archive_version=0, schema_major=SCHEMA[0], schema_minor=SCHEMA[1])
    assert info.pt2.archive_version == archive_version() == 0
    assert info.pt2.schema == f"{SCHEMA[0]}.{SCHEMA[1]}"
    assert zipfile.ZipFile(io.BytesIO(data)).read("archive/archive_version").strip() == b"0"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_object_is_a_zip_with_its_etag_and_content_type(s3: Any, stored: Any, strategy: Pt2Strategy) -> None:
    info, _ = stored[strategy]
    target = parse_s3_uri(info.uri)
    head = s3.head_object(Bucket=target.bucket, Key=target.key)
    assert head["ETag"] == info.etag
    assert head["ContentType"] == CONTENT_TYPE
    assert head["ContentLength"] == info.size


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_extra_files_are_listed_with_their_digest_and_offset(s3: Any, stored: Any, strategy: Pt2Strategy) -> None:
    info, data = stored[strategy]
    assert sorted(e.name for e in info.extra_files) == sorted(EXTRAS)
    for entry in info.extra_files:
        expected = EXTRA_BYTES[entry.name]
        assert entry.size == len(expected)
        assert entry.sha256 == sha256_hex(expected)
        assert data[entry.offset : entry.offset + entry.size] == expected
        if entry.size:  # a range read at the offset gives the file, without the archive
            ranged = get(s3, info.uri, f"bytes={entry.offset}-{entry.offset + entry.size - 1}")
            assert ranged == expected


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_the_stored_archive_loads_with_torch_export_load(tiny: Any, stored: Any, strategy: Pt2Strategy) -> None:
    module, x, _ = tiny
    _, data = stored[strategy]
    extras: dict[str, Any] = dict.fromkeys(EXTRAS, "")
    loaded = torch.export.load(io.BytesIO(data), extra_files=extras)
    assert isinstance(loaded, torch.export.ExportedProgram)
    other = torch.randn(5, 4, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        for inputs in (x, other[:2]):
            assert torch.equal(loaded.module()(inputs), module(inputs))
    assert extras == {name: v.decode() for name, v in EXTRA_BYTES.items()}


def test_both_strategies_write_the_same_records(stored: Any) -> None:
    stream_names = record_names(stored["stream"][1])
    assert stream_names == record_names(stored["spool"][1])
    assert "archive/archive_version" in stream_names
    assert {f"archive/extra/{name}" for name in EXTRAS} <= set(stream_names)


# -- export_pt2: a failure leaves nothing ---------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_binary_extra_file_is_refused_and_nothing_is_written(
    s3: Any, bucket: str, tiny: Any, strategy: Pt2Strategy
) -> None:
    with pytest.raises(InvalidExtraFile, match=r"'blob\.bin'"):
        export_pt2(
            tiny[2],
            f"s3://{bucket}/m/model.pt2",
            client=s3,
            extra_files={"labels.txt": "a\n", "blob.bin": ALL_BYTES},
            strategy=strategy,
        )
    assert object_keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_module_that_is_not_an_exported_program_is_refused(s3: Any, bucket: str, strategy: Pt2Strategy) -> None:
    with pytest.raises(ArchiveError, match="expected an ExportedProgram"):
        export_pt2(TinyLinear(), f"s3://{bucket}/m/model.pt2", client=s3, strategy=strategy)  # type: ignore[arg-type]
    assert object_keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []


def test_an_unknown_strategy_is_refused_before_anything_is_written(s3: Any, bucket: str, tiny: Any) -> None:
    with pytest.raises(ValueError, match="unknown strategy 'fifo'"):
        export_pt2(tiny[2], f"s3://{bucket}/m/model.pt2", client=s3, strategy="fifo")  # type: ignore[arg-type]
    assert object_keys(s3, bucket) == []
    assert open_uploads(s3, bucket) == []


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_conditional_upload_onto_an_existing_key_leaves_it_untouched(
    s3: Any, bucket: str, big: Any, strategy: Pt2Strategy
) -> None:
    uri = f"s3://{bucket}/m/model.pt2"
    put(s3, uri, b"the other writer's archive")
    counter = CallCounter(s3, "UploadPart", "AbortMultipartUpload")
    with pytest.raises(ObjectExists, match="already exists"):
        export_pt2(big, uri, client=s3, options=UploadOptions(part_size=PART, if_none_match=True), strategy=strategy)
    assert counter.calls["UploadPart"] >= 3, "the archive was streamed in parts before the publish failed"
    assert counter.calls["AbortMultipartUpload"] == 1
    assert open_uploads(s3, bucket) == []
    assert object_keys(s3, bucket) == ["m/model.pt2"]
    assert get(s3, uri) == b"the other writer's archive"


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_part_refused_during_the_save_aborts_the_upload(
    s3: Any, bucket: str, big: Any, strategy: Pt2Strategy
) -> None:
    sent = [0]

    def refuse_the_second_part(**_: Any) -> None:
        sent[0] += 1
        if sent[0] == 2:
            raise ClientError({"Error": {"Code": "AccessDenied", "Message": "injected"}}, "UploadPart")

    s3.meta.events.register("before-call.s3.UploadPart", refuse_the_second_part)
    with pytest.raises(UploadFailed, match="AccessDenied"):
        export_pt2(
            big, f"s3://{bucket}/m/model.pt2", client=s3, options=UploadOptions(part_size=PART), strategy=strategy
        )
    assert sent[0] >= 2, "a multipart upload was under way when the part was refused"
    assert open_uploads(s3, bucket) == []
    assert object_keys(s3, bucket) == []


def test_the_stream_strategy_keeps_at_most_max_in_flight_parts_uploading(s3: Any, bucket: str, big: Any) -> None:
    lock, now, peak, parts = threading.Lock(), [0], [0], [0]

    def started(**_: Any) -> None:
        with lock:
            now[0] += 1
            parts[0] += 1
            peak[0] = max(peak[0], now[0])
        time.sleep(0.15)  # a slow store: the save runs ahead of the uploads

    def finished(**_: Any) -> None:
        with lock:
            now[0] -= 1

    s3.meta.events.register("before-call.s3.UploadPart", started)
    s3.meta.events.register("after-call.s3.UploadPart", finished)
    info = export_pt2(
        big, f"s3://{bucket}/m/model.pt2", client=s3, options=UploadOptions(part_size=PART, max_in_flight=2)
    )
    assert parts[0] == -(-info.size // PART) >= 4
    assert peak[0] == 2, "parts upload two at a time, never more"
    assert info.sha256 == hashlib.sha256(get(s3, info.uri)).hexdigest()


# -- whole jobs: run_export with format pt2 -------------------------------------------------------


JOB_EXTRAS: dict[str, Any] = {"labels.txt": "cat\ndog\n", "docs/notes.md": {"text": "# notes\nchién\n"}}


def job_spec(bucket: str, **changes: Any) -> ExportSpec:
    return parse_spec(pt2_spec_data(destination=f"s3://{bucket}/models", **{"extra_files": JOB_EXTRAS, **changes}))


def key_of(uri: str) -> str:
    return parse_s3_uri(uri).key


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_pt2_job_writes_model_pt2_next_to_its_manifest(s3: Any, bucket: str, strategy: Pt2Strategy) -> None:
    spec = job_spec(bucket)
    result = run_export(spec, settings=Settings(pt2_strategy=strategy), client=s3)
    assert result["artifact_uri"].endswith(
        f"/{spec.spec_hash[:16]}/torch-{torch.__version__.replace('+', '_')}/model.pt2"
    )
    assert result["manifest_uri"] == result["artifact_uri"][: -len("model.pt2")] + "model.manifest.json"
    assert result["skipped"] is False
    assert result["verification"] is not None and result["verification"]["passed"] is True
    assert sorted(object_keys(s3, bucket)) == sorted([key_of(result["artifact_uri"]), key_of(result["manifest_uri"])])
    assert open_uploads(s3, bucket) == []
    manifest = read_manifest(s3, result["manifest_uri"])
    assert manifest.schema_version == PT2_SCHEMA_VERSION
    assert manifest.artifact.format == "pt2"
    assert manifest.artifact.pt2 == Pt2Entry(
        archive_version=archive_version(), schema_version=ExportSchemaVersion(major=SCHEMA[0], minor=SCHEMA[1])
    )
    assert manifest.spec == spec.to_json_dict()
    assert sorted(result["extra_files"]) == sorted(
        [BUILD_JSON, EXAMPLE_INPUTS_TEXT, REFERENCE_OUTPUTS_TEXT, "labels.txt", "docs/notes.md"]
    )
    data = get(s3, result["artifact_uri"])
    assert manifest.artifact.sha256 == hashlib.sha256(data).hexdigest() == result["sha256"]


def test_a_second_pt2_run_is_skipped(s3: Any, bucket: str) -> None:
    spec = job_spec(bucket)
    first = run_export(spec, settings=Settings(), client=s3)
    before = get(s3, first["manifest_uri"])
    again = run_export(spec, settings=Settings(), client=s3)
    assert again["skipped"] is True
    assert (again["artifact_uri"], again["sha256"]) == (first["artifact_uri"], first["sha256"])
    assert get(s3, first["manifest_uri"]) == before


def test_replacing_a_pt2_export_goes_through_a_staging_key(s3: Any, bucket: str) -> None:
    spec = job_spec(bucket)
    first = run_export(spec, settings=Settings(), client=s3)
    old = read_manifest(s3, first["manifest_uri"])
    written: list[str] = []
    s3.meta.events.register("before-parameter-build.s3.PutObject", lambda params, **_: written.append(params["Key"]))
    again = run_export(spec, settings=Settings(), client=s3, replace=True)
    assert again["skipped"] is False
    assert again["artifact_uri"] == first["artifact_uri"]
    staged = [k for k in written if ".staging-" in k]
    assert len(staged) == 1 and staged[0].startswith(key_of(first["artifact_uri"]) + ".staging-")
    assert key_of(first["artifact_uri"]) not in written, "the archive key is only written by the copy"
    assert sorted(object_keys(s3, bucket)) == sorted([key_of(again["artifact_uri"]), key_of(again["manifest_uri"])])
    assert open_uploads(s3, bucket) == []
    new = read_manifest(s3, again["manifest_uri"])
    assert new.created_at > old.created_at
    assert new.artifact.uri == again["artifact_uri"]
    assert new.artifact.sha256 == hashlib.sha256(get(s3, again["artifact_uri"])).hexdigest()
    assert read_extra_file(s3, again["artifact_uri"], "labels.txt", manifest=new) == b"cat\ndog\n"


@pytest.fixture(scope="module")
def published(in_process_s3: None) -> tuple[str, dict[str, Any]]:
    """A pt2 export, shared by the tests that only read it: its bucket and the job's result."""
    client = make_s3_client(max_pool_connections=8)
    name = f"pt2-job-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name, run_export(job_spec(name), settings=Settings(), client=client)


@pytest.mark.parametrize("which", ["artifact_uri", "manifest_uri"])
def test_verify_passes_every_step_for_pt2(s3: Any, published: Any, which: str) -> None:
    _, result = published
    report = verify_artifact(s3, result[which])
    assert [(s.name, s.ok) for s in report.steps] == [
        ("manifest", True),
        ("signature", True),
        ("compatibility", True),
        ("checksum", True),
        ("load", True),
        ("extra files", True),
        ("self-check", True),
    ]
    assert report.ok
    assert "torch.export.load" in report.steps[4].detail


def tamper_with_extra_file(client: Any, uri: str, name: str) -> Manifest:
    """Rewrite the stored archive with one byte changed inside extra file ``name``."""
    manifest = read_manifest(client, uri)
    entry = next(e for e in manifest.extra_files if e.name == name)
    data = bytearray(get(client, uri))
    data[entry.offset] ^= 0x01
    put(client, uri, bytes(data))
    return manifest


def test_a_tampered_extra_file_fails_verification_at_the_checksum(s3: Any, bucket: str) -> None:
    result = run_export(job_spec(bucket), settings=Settings(), client=s3)
    tamper_with_extra_file(s3, result["artifact_uri"], "labels.txt")
    report = verify_artifact(s3, result["artifact_uri"])
    assert not report.ok
    assert [(s.name, s.ok) for s in report.steps] == [
        ("manifest", True),
        ("signature", True),
        ("compatibility", True),
        ("checksum", False),
    ]
    assert "sha256" in report.steps[-1].detail


def test_a_tampered_extra_file_is_refused_by_a_range_read(s3: Any, bucket: str) -> None:
    result = run_export(job_spec(bucket), settings=Settings(), client=s3)
    manifest = tamper_with_extra_file(s3, result["artifact_uri"], "labels.txt")
    with pytest.raises(ArchiveError, match="differs from its manifest sha256"):
        read_extra_file(s3, result["artifact_uri"], "labels.txt", manifest=manifest)


def test_open_artifact_gives_an_exported_program(s3: Any, published: Any) -> None:
    _, result = published
    program, manifest, extras = open_artifact(s3, result["artifact_uri"], extra_names=["labels.txt", "docs/notes.md"])
    assert isinstance(program, torch.export.ExportedProgram)
    assert manifest.artifact.format == "pt2"
    assert extras == {"labels.txt": b"cat\ndog\n", "docs/notes.md": "# notes\nchién\n".encode()}
    eager = tiny_classifier(in_features=8, hidden=4, classes=2).eval()
    x = torch.randn(2, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        assert torch.allclose(program.module()(x), eager(x))


def test_open_artifact_refuses_a_map_location_other_than_the_export_device_for_pt2(s3: Any, published: Any) -> None:
    _, result = published
    with pytest.raises(ValueError, match=r"map_location 'cuda'.*cannot move it"):
        open_artifact(s3, result["artifact_uri"], map_location="cuda")
    # The device it was exported on (the README's consumer example passes it) is fine.
    program, manifest, _ = open_artifact(s3, result["artifact_uri"], map_location="cpu")
    assert manifest.producer.device == "cpu"
    assert isinstance(program, torch.export.ExportedProgram)


def test_read_extra_file_with_and_without_the_manifest(s3: Any, published: Any) -> None:
    _, result = published
    uri = result["artifact_uri"]
    manifest = read_manifest(s3, result["manifest_uri"])
    for name in ("labels.txt", "docs/notes.md", BUILD_JSON):
        assert read_extra_file(s3, uri, name, manifest=manifest) == read_extra_file(s3, uri, name)
    assert read_extra_file(s3, uri, "labels.txt") == b"cat\ndog\n"
    record = json.loads(read_extra_file(s3, uri, BUILD_JSON))
    assert record["spec"]["format"] == "pt2"
    inputs = torch.load(io.BytesIO(base64.b64decode(read_extra_file(s3, uri, EXAMPLE_INPUTS_TEXT))), weights_only=True)
    assert [tuple(t.shape) for t in inputs] == [(2, 8)]


def test_a_pt2_job_with_dynamic_shapes_runs_on_another_batch_size(s3: Any, bucket: str) -> None:
    spec = job_spec(bucket, dynamic_shapes=[{"0": {"name": "batch", "min": 1, "max": 64}}])
    result = run_export(spec, settings=Settings(), client=s3)
    assert result["verification"]["passed"] is True
    program, _, _ = open_artifact(s3, result["artifact_uri"])
    eager = tiny_classifier(in_features=8, hidden=4, classes=2).eval()
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        out = program.module()(x)
        assert out.shape == (5, 2)
        assert torch.allclose(out, eager(x))


def test_a_binary_extra_file_from_s3_fails_the_pt2_job_naming_it(s3: Any, bucket: str) -> None:
    put(s3, f"s3://{bucket}/assets/blob.bin", ALL_BYTES)
    spec = job_spec(bucket, extra_files={"labels.txt": "a\n", "blob.bin": {"uri": f"s3://{bucket}/assets/blob.bin"}})
    with pytest.raises(SpecError) as info:
        run_export(spec, settings=Settings(), client=s3)
    assert "'blob.bin'" in str(info.value)
    assert "not UTF-8" in str(info.value)
    assert object_keys(s3, bucket) == ["assets/blob.bin"]
    assert open_uploads(s3, bucket) == []
