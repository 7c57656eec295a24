"""The consumer side against a real S3 endpoint (moto over HTTP): parallel ranged reads,
checked downloads, extra files by range reads, and ``verify_artifact``."""

from __future__ import annotations

import hashlib
import io
import threading
import zipfile
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import torch

from serializer.consumer.extras import read_extra_file
from serializer.consumer.verify import verify_artifact
from serializer.errors import ArchiveError
from serializer.manifest.model import Manifest, manifest_uri_for
from serializer.manifest.store import read_manifest, write_manifest
from serializer.s3.client import make_s3_client
from serializer.s3.options import UploadOptions
from serializer.s3.ranged import download_checked, iter_object, read_checked
from serializer.torchscript.export import export_torchscript
from serializer.torchscript.load import load_artifact
from tests.fixtures import ALL_BYTES, ParamBlob, randbytes, scripted
from worker.export import run_export
from worker.settings import Settings
from worker.spec import parse_spec

MiB = 1024**2
ALL_STEPS = ["manifest", "signature", "compatibility", "checksum", "load", "extra files", "self-check"]
LABELS = b"cat\ndog\nbird\nfish\n"


class GetCounter:
    """Counts GetObject calls on a client (by key), the most outstanding at once, and the
    bytes the responses carried, from botocore's event hooks."""

    def __init__(self, client: Any) -> None:
        self.lock = threading.Lock()
        self.by_key: Counter[str] = Counter()
        self.calls = 0
        self.bytes = 0
        self.outstanding = 0
        self.peak = 0
        events = client.meta.events
        events.register("provide-client-params.s3.GetObject", self._params)
        events.register("before-call.s3.GetObject", self._before)
        events.register("after-call.s3.GetObject", self._after)

    def _params(self, params: dict[str, Any], **_: Any) -> None:
        with self.lock:
            self.by_key[params["Key"]] += 1

    def _before(self, **_: Any) -> None:
        with self.lock:
            self.calls += 1
            self.outstanding += 1
            self.peak = max(self.peak, self.outstanding)

    def _after(self, parsed: dict[str, Any], **_: Any) -> None:
        with self.lock:
            self.outstanding -= 1
            self.bytes += int(parsed.get("ContentLength", 0) or 0)

    def reset(self) -> None:
        with self.lock:
            self.by_key.clear()
            self.calls = self.bytes = self.peak = 0


def key_of(uri: str) -> str:
    return uri.split("/", 3)[3]


def put(client: Any, bucket: str, key: str, data: bytes) -> str:
    client.put_object(Bucket=bucket, Key=key, Body=data)
    return f"s3://{bucket}/{key}"


def flip_bit(client: Any, uri: str, position: int) -> None:
    """Overwrite the object at ``uri`` with one bit of byte ``position`` flipped (same size)."""
    bucket, key = uri[5:].split("/", 1)
    data = bytearray(client.get_object(Bucket=bucket, Key=key)["Body"].read())
    data[position] ^= 0x01
    client.put_object(Bucket=bucket, Key=key, Body=bytes(data))


# -- iter_object -----------------------------------------------------------------------------

RANGE = MiB


@pytest.mark.parametrize(
    "size", [0, 1, RANGE - 1, RANGE, RANGE + 1, 6 * RANGE + 123], ids=["0", "1", "r-1", "r", "r+1", "6r+"]
)
def test_iter_object_yields_exactly_the_object(s3: Any, bucket: str, size: int) -> None:
    data = randbytes(size, seed=size)
    uri = put(s3, bucket, "obj.bin", data)
    counter = GetCounter(s3)
    chunks = list(iter_object(s3, uri, size, range_size=RANGE, max_in_flight=3))
    assert b"".join(chunks) == data
    assert all(len(c) == RANGE for c in chunks[:-1])
    assert counter.calls == -(-size // RANGE)
    assert counter.peak <= 3


def test_iter_object_bounds_the_requests_in_flight(s3: Any, bucket: str) -> None:
    data = randbytes(12 * RANGE + 5, seed=3)
    uri = put(s3, bucket, "obj.bin", data)
    counter = GetCounter(s3)
    got = bytearray()
    for chunk in iter_object(s3, uri, len(data), range_size=RANGE, max_in_flight=2):
        got += chunk
        assert counter.outstanding <= 2
    assert bytes(got) == data
    assert counter.calls == 13
    assert 1 <= counter.peak <= 2


# -- read_checked ----------------------------------------------------------------------------


def test_read_checked_passes_the_right_bytes(s3: Any, bucket: str) -> None:
    data = randbytes(3 * RANGE + 7, seed=5)
    uri = put(s3, bucket, "m/model.pt", data)
    sink = io.BytesIO()
    seen: list[int] = []
    read_checked(
        s3, uri, size=len(data), sha256=hashlib.sha256(data).hexdigest(), sink=sink.write, progress=seen.append
    )
    assert sink.getvalue() == data
    assert sum(seen) == len(data)


def test_read_checked_catches_a_flipped_bit(s3: Any, bucket: str) -> None:
    data = randbytes(2 * MiB, seed=6)
    uri = put(s3, bucket, "m/model.pt", data)
    flip_bit(s3, uri, MiB + 17)
    with pytest.raises(ArchiveError, match=r"sha256 .* differs .* corrupt"):
        read_checked(s3, uri, size=len(data), sha256=hashlib.sha256(data).hexdigest(), sink=lambda b: None)


@pytest.mark.parametrize("delta", [+1, -1, +10 * MiB], ids=["one-more", "one-less", "far-more"])
def test_read_checked_catches_a_wrong_size(s3: Any, bucket: str, delta: int) -> None:
    data = randbytes(MiB + 3, seed=7)
    uri = put(s3, bucket, "m/model.pt", data)
    with pytest.raises(ArchiveError):
        read_checked(s3, uri, size=len(data) + delta, sha256=hashlib.sha256(data).hexdigest(), sink=lambda b: None)


# -- read_extra_file -------------------------------------------------------------------------

BIG_EXTRA = {"labels.txt": LABELS, "bin/all.bin": ALL_BYTES * 4}


@pytest.fixture(scope="module")
def big_archive(moto_endpoint: str) -> Iterator[tuple[Any, Manifest]]:
    """A ~500 MiB archive with extra files, stored once, and a manifest built from it."""
    from serializer.manifest.model import build_manifest
    from serializer.producer import current_producer

    client = make_s3_client(endpoint_url=moto_endpoint, max_pool_connections=8)
    bucket = "big-archive-reads"
    client.create_bucket(Bucket=bucket)
    module = scripted(ParamBlob(500 * MiB, n_params=8))
    info = export_torchscript(
        module,
        f"s3://{bucket}/big/model.pt",
        client=client,
        extra_files=BIG_EXTRA,
        options=UploadOptions(part_size=64 * MiB, max_in_flight=4),
    )
    del module
    manifest = build_manifest(info, spec={"name": "big"}, spec_hash="0" * 64, producer=current_producer("cpu"))
    yield client, manifest
    client.delete_object(Bucket=bucket, Key="big/model.pt")


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BIG_EXTRA))
def test_extra_file_with_the_manifest_is_one_small_get(big_archive: tuple[Any, Manifest], name: str) -> None:
    client, manifest = big_archive
    assert manifest.artifact.size > 500 * MiB
    counter = GetCounter(client)
    assert read_extra_file(client, manifest.artifact.uri, name, manifest=manifest) == BIG_EXTRA[name]
    assert counter.calls == 1
    assert counter.bytes == len(BIG_EXTRA[name])


@pytest.mark.slow
@pytest.mark.parametrize("name", list(BIG_EXTRA))
def test_extra_file_without_the_manifest_reads_the_end(big_archive: tuple[Any, Manifest], name: str) -> None:
    client, manifest = big_archive
    counter = GetCounter(client)
    assert read_extra_file(client, manifest.artifact.uri, name) == BIG_EXTRA[name]
    assert counter.calls <= 3
    assert counter.bytes < MiB


@pytest.mark.slow
def test_missing_extra_name_lists_the_names(big_archive: tuple[Any, Manifest]) -> None:
    client, manifest = big_archive
    with pytest.raises(ArchiveError, match=r"no extra file 'nope.txt' \(it has \['bin/all.bin', 'labels.txt'\]\)"):
        read_extra_file(client, manifest.artifact.uri, "nope.txt", manifest=manifest)
    with pytest.raises(ArchiveError, match=r"no extra file 'nope\.txt'"):
        read_extra_file(client, manifest.artifact.uri, "nope.txt")


def test_compressed_extra_record_is_refused(s3: Any, bucket: str) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("archive/version", "3", compress_type=zipfile.ZIP_STORED)
        zf.writestr("archive/extra/x.txt", "hello " * 100, compress_type=zipfile.ZIP_DEFLATED)
        zf.writestr("archive/extra/y.txt", "plain", compress_type=zipfile.ZIP_STORED)
    uri = put(s3, bucket, "z/model.pt", buf.getvalue())
    with pytest.raises(ArchiveError, match=r"'x\.txt' .* is compressed"):
        read_extra_file(s3, uri, "x.txt")
    assert read_extra_file(s3, uri, "y.txt") == b"plain"


def test_extra_file_whose_bytes_changed_is_caught(s3: Any, bucket: str) -> None:
    client_uri = f"s3://{bucket}/small/model.pt"
    info = export_torchscript(scripted(ParamBlob(4096)), client_uri, client=s3, extra_files={"labels.txt": LABELS})
    (entry,) = [e for e in info.extra_files if e.name == "labels.txt"]
    flip_bit(s3, client_uri, entry.offset + 2)
    with pytest.raises(ArchiveError, match="CRC"):
        read_extra_file(s3, client_uri, "labels.txt")


# -- verify_artifact -------------------------------------------------------------------------


@pytest.fixture()
def test_builders(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EXPORT_ALLOWED_BUILDERS", "worker.examples,tests.fixtures")


def export(client: Any, bucket: str, **fields: Any) -> dict[str, Any]:
    spec = {
        "name": "tiny-classifier",
        "builder": "worker.examples:tiny_classifier",
        "example_inputs": [{"shape": [2, 16], "dtype": "float32"}],
        "extra_files": {"labels.txt": LABELS.decode()},
        "destination": f"s3://{bucket}/exports",
        **fields,
    }
    return run_export(parse_spec(spec), settings=Settings(), client=client)


def step_names(report: Any) -> list[str]:
    return [s.name for s in report.steps]


@pytest.mark.usefixtures("test_builders")
@pytest.mark.parametrize("size", ["tiny", "12MiB"])
def test_verify_passes_every_step(s3: Any, bucket: str, size: str) -> None:
    if size == "tiny":
        result = export(s3, bucket)
    else:
        result = export(
            s3,
            bucket,
            name="blob",
            builder="tests.fixtures:param_blob",
            kwargs={"total_bytes": 12 * MiB, "n_params": 3},
            example_inputs=[{"shape": [4]}],
        )
        assert result["size"] > 12 * MiB
    seen: list[int] = []
    manifests: list[Manifest] = []
    report = verify_artifact(s3, result["artifact_uri"], progress=seen.append, on_manifest=manifests.append)
    assert report.ok, report.steps
    assert step_names(report) == ALL_STEPS
    assert all(s.ok for s in report.steps)
    assert sum(seen) == result["size"]
    assert manifests[0].artifact.uri == result["artifact_uri"]
    # By the manifest's URI too.
    assert verify_artifact(s3, result["manifest_uri"]).ok


@pytest.mark.usefixtures("test_builders")
def test_verify_catches_a_flipped_bit(s3: Any, bucket: str) -> None:
    result = export(s3, bucket)
    flip_bit(s3, result["artifact_uri"], result["size"] // 2)
    report = verify_artifact(s3, result["artifact_uri"])
    assert not report.ok
    assert step_names(report) == ["manifest", "signature", "compatibility", "checksum"]
    assert not report.steps[-1].ok
    assert "sha256" in report.steps[-1].detail


@pytest.mark.usefixtures("test_builders")
def test_verify_refuses_a_newer_format_before_downloading(s3: Any, bucket: str) -> None:
    result = export(s3, bucket)
    manifest = read_manifest(s3, result["manifest_uri"])
    newer = manifest.model_copy(update={"artifact": manifest.artifact.model_copy(update={"format_version": 99})})
    write_manifest(s3, result["manifest_uri"], newer)
    counter = GetCounter(s3)
    report = verify_artifact(s3, result["artifact_uri"])
    assert not report.ok
    assert step_names(report) == ["manifest", "signature", "compatibility"]
    assert "format version 99" in report.steps[-1].detail
    assert counter.by_key[key_of(result["artifact_uri"])] == 0, "the archive was downloaded"
    assert counter.by_key[key_of(result["manifest_uri"])] == 1


@pytest.mark.usefixtures("test_builders")
def test_verify_of_a_manifest_claiming_more_bytes_fails_at_checksum(s3: Any, bucket: str) -> None:
    result = export(s3, bucket)
    manifest = read_manifest(s3, result["manifest_uri"])
    longer = manifest.artifact.model_copy(update={"size": manifest.artifact.size + 20 * MiB})
    write_manifest(s3, result["manifest_uri"], manifest.model_copy(update={"artifact": longer}))
    report = verify_artifact(s3, result["artifact_uri"])
    assert step_names(report) == ["manifest", "signature", "compatibility", "checksum"]
    assert not report.ok
    assert "shorter than" in report.steps[-1].detail


def test_verify_without_a_manifest_fails_at_manifest(s3: Any, bucket: str) -> None:
    uri = f"s3://{bucket}/orphan/model.pt"
    export_torchscript(scripted(ParamBlob(1024)), uri, client=s3)
    report = verify_artifact(s3, uri)
    assert not report.ok
    assert step_names(report) == ["manifest"]
    assert "no manifest" in report.steps[0].detail


def test_verify_of_a_manifest_whose_artifact_is_gone_fails_at_checksum(s3: Any, bucket: str) -> None:
    result = export(s3, bucket)
    s3.delete_object(Bucket=bucket, Key=key_of(result["artifact_uri"]))
    report = verify_artifact(s3, result["artifact_uri"])
    assert not report.ok
    assert step_names(report) == ["manifest", "signature", "compatibility", "checksum"]
    assert "NoSuchKey" in report.steps[-1].detail or "Not Found" in report.steps[-1].detail


# -- load_artifact / download_checked --------------------------------------------------------


def test_download_and_load_check_the_digest(s3: Any, bucket: str, tmp_path: Any) -> None:
    uri = f"s3://{bucket}/load/model.pt"
    info = export_torchscript(scripted(ParamBlob(3 * MiB)), uri, client=s3, extra_files={"labels.txt": LABELS})
    module, extras = load_artifact(s3, uri, extra_names=["labels.txt"], sha256=info.sha256, size=info.size)
    assert extras == {"labels.txt": LABELS}
    assert module(torch.ones(2)).shape == (2,)
    wrong = "f" * 64
    with pytest.raises(ArchiveError, match="sha256"):
        download_checked(s3, uri, str(tmp_path / "a.pt"), sha256=wrong)
    with pytest.raises(ArchiveError, match="sha256"):
        load_artifact(s3, uri, sha256=wrong)
    with pytest.raises(ArchiveError, match="expected"):
        load_artifact(s3, uri, sha256=info.sha256, size=info.size + 1)
    assert manifest_uri_for(uri).endswith("model.manifest.json")


def test_open_artifact_returns_module_and_manifest(s3: Any, bucket: str) -> None:
    from serializer.consumer.open import open_artifact

    result = export(s3, bucket)
    module, manifest, extras = open_artifact(s3, result["artifact_uri"], extra_names=["labels.txt"])
    assert manifest.artifact.uri == result["artifact_uri"]
    assert manifest.artifact.sha256 == result["sha256"]
    assert extras["labels.txt"] == LABELS
    assert all(p.device.type == "cpu" for p in module.parameters())


def test_open_artifact_refuses_a_newer_format_before_downloading(s3: Any, bucket: str) -> None:
    from serializer.consumer.open import open_artifact
    from serializer.errors import ArchiveError
    from serializer.manifest.store import read_manifest, write_manifest

    result = export(s3, bucket, name="newer")
    manifest = read_manifest(s3, result["manifest_uri"])
    newer = manifest.model_copy(update={"artifact": manifest.artifact.model_copy(update={"format_version": 99})})
    write_manifest(s3, result["manifest_uri"], newer)
    fetched: list[str] = []
    s3.meta.events.register("before-call.s3.GetObject", lambda params, **_: fetched.append(params["url_path"]))
    with pytest.raises(ArchiveError, match="format version 99"):
        open_artifact(s3, result["artifact_uri"])
    assert any(p.endswith("/model.manifest.json") for p in fetched)  # the hook saw the manifest's GET
    assert not any(p.endswith("/model.pt") for p in fetched)
