"""export_torchscript against a real S3 API (moto over HTTP), for both strategies.

``spool`` uploads from this process, so it may use the in-process moto server.  ``fifo``
holds this process's interpreter for the whole save while a child process uploads, so its
store must run in another process (``moto_process_endpoint``): an in-process server would
never answer.  Every test also checks that no spool file, pipe or uploader process is left.
"""

from __future__ import annotations

import hashlib
import io
import socket
import uuid
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import boto3
import psutil  # type: ignore[import-untyped]
import pytest
import torch
from botocore.config import Config
from botocore.exceptions import ConnectionClosedError

from serializer.archive.extras import normalize_extra_files, sha256_hex
from serializer.archive.info import ArchiveInfo
from serializer.archive.zipindex import ZipIndex, ZipStreamIndexer
from serializer.errors import ArchiveError, InvalidExtraFile, InvalidURI, ObjectExists, UploadFailed
from serializer.s3.client import make_s3_client
from serializer.s3.options import UploadOptions
from serializer.s3.parts import MIN_PART_SIZE
from serializer.torchscript.export import Strategy, export_torchscript
from tests.conftest import object_keys, open_uploads
from tests.fixtures import ALL_BYTES, ParamBlob, RepeatInt, TinyLinear, load_archive, param_bytes, scripted

MiB = 1024**2
PART = MIN_PART_SIZE
#: Extra files of every kind: nested text with non-ASCII, every byte value, empty.
EXTRAS: dict[str, bytes | str] = {
    "notes/readme.txt": "héllo wörld\nline two\n",
    "blob.bin": ALL_BYTES,
    "empty.txt": "",
}
KEY = "models/model.pt"
UPLOADER_MODULE = "serializer.archive._fifo_child"


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture()
def s3p(moto_process_endpoint: str) -> Any:
    """A client of the moto server that runs in its own process (the one ``fifo`` needs)."""
    return make_s3_client(endpoint_url=moto_process_endpoint, max_pool_connections=8)


@pytest.fixture()
def bucketp(s3p: Any) -> str:
    """A fresh, empty bucket on the moto server process."""
    name = f"test-{uuid.uuid4().hex[:12]}"
    s3p.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def tiny() -> torch.jit.ScriptModule:
    return scripted(TinyLinear())


@pytest.fixture(scope="module")
def blob() -> torch.jit.ScriptModule:
    """About 12 MiB of parameters: three parts of 5 MiB."""
    return scripted(ParamBlob(12 * MiB, n_params=4))


def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def child_pids() -> set[int]:
    return {p.pid for p in psutil.Process().children(recursive=True)}


def uploader_processes(existing: set[int]) -> list[psutil.Process]:
    """Uploader children of this process that still exist, and any child not in ``existing``
    that is a zombie (exited but never waited for)."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            if UPLOADER_MODULE in proc.cmdline():
                found.append(proc)
        except psutil.ZombieProcess:
            if proc.pid not in existing:
                found.append(proc)
        except psutil.NoSuchProcess:
            continue
    return found


@dataclass
class Store:
    """A bucket, the client and strategy that export into it, and the spool dir they use."""

    strategy: Strategy
    client: Any
    bucket: str
    spool: Path
    #: Children of this process before the test (the moto server process among them).
    existing: set[int] = field(default_factory=child_pids)

    def uri(self, key: str = KEY) -> str:
        return f"s3://{self.bucket}/{key}"

    def export(self, module: Any, key: str = KEY, **kwargs: Any) -> ArchiveInfo:
        return export_torchscript(
            module, self.uri(key), client=self.client, strategy=self.strategy, spool_dir=str(self.spool), **kwargs
        )

    def read(self, key: str = KEY) -> bytes:
        return bytes(self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read())

    def assert_clean(self) -> None:
        """No spool file or pipe, and no uploader process, is left."""
        assert list(self.spool.iterdir()) == []
        assert uploader_processes(self.existing) == []

    def assert_nothing_stored(self) -> None:
        assert object_keys(self.client, self.bucket) == []
        assert open_uploads(self.client, self.bucket) == []


def _spool_dir(tmp_path: Path) -> Path:
    spool = tmp_path / "spool"
    spool.mkdir(parents=True)
    return spool


@pytest.fixture(params=["spool", "fifo"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Where each strategy exports: spool to the in-process server, fifo to the server process."""
    if request.param == "spool":
        client, bucket = request.getfixturevalue("s3"), request.getfixturevalue("bucket")
    else:
        client, bucket = request.getfixturevalue("s3p"), request.getfixturevalue("bucketp")
    store = Store(request.param, client, bucket, _spool_dir(tmp_path))
    yield store
    store.assert_clean()  # after every test, passed or failed


def index(data: bytes) -> ZipIndex:
    indexer = ZipStreamIndexer()
    indexer.feed(data)
    return indexer.finish()


def version_record(data: bytes, root: str) -> int:
    """The archive's format version as zipfile reads it (``.data/version``, else ``version``)."""
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = set(zf.namelist())
        name = f"{root}/.data/version" if f"{root}/.data/version" in names else f"{root}/version"
        return int(zf.read(name))


def assert_stored(store: Store, info: ArchiveInfo, key: str = KEY) -> bytes:
    """The stored object is the one ``info`` describes; returns its bytes."""
    data = store.read(key)
    assert info.uri == store.uri(key)
    assert info.size == len(data)
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    head = store.client.head_object(Bucket=store.bucket, Key=key)
    assert info.etag == head["ETag"]
    assert head["ContentType"] == "application/zip"
    assert open_uploads(store.client, store.bucket) == []
    return data


# -- success ------------------------------------------------------------------------------


def test_round_trip_with_extra_files(store: Store, tiny: torch.jit.ScriptModule) -> None:
    info = store.export(tiny, extra_files=EXTRAS)
    data = assert_stored(store, info)
    expected = normalize_extra_files(EXTRAS)

    loaded, extras = load_archive(data, list(EXTRAS))
    assert extras == expected
    assert extras["blob.bin"] == ALL_BYTES
    x = TinyLinear().example_input(batch=5)
    torch.testing.assert_close(loaded(x), tiny(x), rtol=0, atol=0)
    torch.testing.assert_close(loaded(x), TinyLinear()(x), rtol=0, atol=0)

    # Each extra file's offset slices the stored object to exactly its bytes.
    assert [e.name for e in info.extra_files] == sorted(EXTRAS)
    for e in info.extra_files:
        assert data[e.offset : e.offset + e.size] == expected[e.name]
        assert (e.size, e.sha256) == (len(expected[e.name]), sha256_hex(expected[e.name]))

    assert info.archive_root == "archive"
    assert type(info.format_version) is int
    assert info.format_version == version_record(data, info.archive_root)
    assert info.version_id is None


def test_module_with_int_input(store: Store) -> None:
    module = scripted(RepeatInt())
    info = store.export(module)
    data = assert_stored(store, info)
    loaded, _ = load_archive(data)
    torch.testing.assert_close(loaded(3), module(3), rtol=0, atol=0)
    assert info.extra_files == ()


def test_multipart_model(store: Store, blob: torch.jit.ScriptModule) -> None:
    progress: list[int] = []
    options = UploadOptions(part_size=PART, max_in_flight=2)
    info = store.export(blob, extra_files=EXTRAS, options=options, progress=progress.append)
    data = assert_stored(store, info)
    assert info.size > param_bytes(blob) >= 12 * MiB - 4
    assert info.etag.endswith('-3"')  # three parts of 5 MiB
    assert sum(progress) == info.size

    loaded, extras = load_archive(data, list(EXTRAS))
    assert extras == normalize_extra_files(EXTRAS)
    for (name, got), (_, want) in zip(loaded.state_dict().items(), blob.state_dict().items(), strict=True):
        assert torch.equal(got, want), name
    x = torch.linspace(-1, 1, 7)
    torch.testing.assert_close(loaded(x), blob(x), rtol=0, atol=0)
    for e in info.extra_files:
        assert data[e.offset : e.offset + e.size] == normalize_extra_files(EXTRAS)[e.name]


def test_conditional_publish_onto_a_new_key(store: Store, tiny: torch.jit.ScriptModule) -> None:
    info = store.export(tiny, extra_files=EXTRAS, options=UploadOptions(if_none_match=True))
    assert_stored(store, info)


def test_strategies_give_the_same_records(
    s3: Any, bucket: str, s3p: Any, bucketp: str, tiny: torch.jit.ScriptModule, tmp_path: Path
) -> None:
    spool = Store("spool", s3, bucket, _spool_dir(tmp_path / "a"))
    fifo = Store("fifo", s3p, bucketp, _spool_dir(tmp_path / "b"))
    infos = [s.export(tiny, extra_files=EXTRAS) for s in (spool, fifo)]
    datas = [assert_stored(s, i) for s, i in zip((spool, fifo), infos, strict=True)]
    # The serialization id is random per save; every other record is identical.
    records = [[r for r in index(d).records if not r.name.endswith(".data/serialization_id")] for d in datas]
    assert records[0] == records[1]
    assert len(records[0]) == len(index(datas[0]).records) - 1
    assert infos[0].extra_files == infos[1].extra_files
    assert (infos[0].format_version, infos[0].archive_root) == (infos[1].format_version, infos[1].archive_root)
    spool.assert_clean()
    fifo.assert_clean()


# -- refused before anything is uploaded --------------------------------------------------


@pytest.mark.parametrize("name", ["../escape.txt", "manifest.json", "bidi\u202etxt"])
def test_bad_extra_name_uploads_nothing(store: Store, tiny: torch.jit.ScriptModule, name: str) -> None:
    with pytest.raises(InvalidExtraFile):
        store.export(tiny, extra_files={"fine.txt": "ok", name: "x"})
    store.assert_nothing_stored()
    store.assert_clean()


def test_module_that_is_not_scripted(store: Store) -> None:
    with pytest.raises(ArchiveError, match="expected a ScriptModule"):
        store.export(TinyLinear())
    store.assert_nothing_stored()
    store.assert_clean()


def test_bad_uri_and_strategy(store: Store, tiny: torch.jit.ScriptModule) -> None:
    with pytest.raises(InvalidURI):
        export_torchscript(tiny, "file:///tmp/model.pt", client=store.client, strategy=store.strategy)
    with pytest.raises(ValueError, match="unknown strategy"):
        export_torchscript(tiny, store.uri(), client=store.client, strategy="tape", spool_dir=str(store.spool))  # type: ignore[arg-type]
    store.assert_nothing_stored()


# -- failures -----------------------------------------------------------------------------


@pytest.mark.parametrize("big", [False, True], ids=["small", "multipart"])
def test_conditional_publish_onto_an_existing_key(
    store: Store, tiny: torch.jit.ScriptModule, blob: torch.jit.ScriptModule, big: bool
) -> None:
    store.client.put_object(Bucket=store.bucket, Key=KEY, Body=b"the old model")
    options = UploadOptions(part_size=PART, if_none_match=True)
    with pytest.raises(ObjectExists, match="already exists"):
        store.export(blob if big else tiny, extra_files=EXTRAS, options=options)
    assert store.read() == b"the old model"
    assert object_keys(store.client, store.bucket) == [KEY]
    assert open_uploads(store.client, store.bucket) == []
    store.assert_clean()


@pytest.fixture()
def s3_dropping_parts(moto_endpoint: str) -> Any:
    """A client, botocore retries off, whose every UploadPart loses its connection."""
    config = Config(max_pool_connections=8, retries={"mode": "standard", "total_max_attempts": 1})
    client = boto3.Session().client("s3", endpoint_url=moto_endpoint, config=config)

    def drop(request: Any, **kwargs: Any) -> None:
        raise ConnectionClosedError(endpoint_url=request.url)

    client.meta.events.register("before-send.s3.UploadPart", drop)
    return client


def test_spool_upload_that_always_fails(
    s3_dropping_parts: Any, bucket: str, blob: torch.jit.ScriptModule, tmp_path: Path
) -> None:
    store = Store("spool", s3_dropping_parts, bucket, _spool_dir(tmp_path))
    with pytest.raises(UploadFailed, match="Connection was closed") as info:
        store.export(blob, options=UploadOptions(part_size=PART, max_in_flight=2))
    assert f"s3://{bucket}/{KEY}" in str(info.value)
    store.assert_nothing_stored()
    store.assert_clean()


@pytest.mark.parametrize("big", [False, True], ids=["small", "multipart"])
def test_bucket_that_does_not_exist(
    store: Store, tiny: torch.jit.ScriptModule, blob: torch.jit.ScriptModule, big: bool
) -> None:
    # For fifo and a multipart model the upload fails while torch is still saving into the
    # pipe: the uploader must keep reading to the end, or the save aborts this process.
    missing = Store(store.strategy, store.client, f"missing-{uuid.uuid4().hex[:8]}", store.spool)
    with pytest.raises(UploadFailed, match="NoSuchBucket"):
        missing.export(blob if big else tiny, options=UploadOptions(part_size=PART))
    store.assert_nothing_stored()
    store.assert_clean()


def test_fifo_unreachable_endpoint(tiny: torch.jit.ScriptModule, tmp_path: Path) -> None:
    client = make_s3_client(endpoint_url=f"http://127.0.0.1:{closed_port()}", max_pool_connections=8)
    store = Store("fifo", client, "unreachable", _spool_dir(tmp_path))
    with pytest.raises(UploadFailed, match="Could not connect"):
        store.export(tiny, extra_files=EXTRAS)
    store.assert_clean()


def test_fifo_save_error_after_the_uploader_exited(
    s3p: Any, bucketp: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # When the save fails the uploader reports and exits; telling it not to commit then
    # writes to a closed pipe, which must not replace the save's error.
    import serializer.archive.fifo as fifo

    receive = fifo._receive

    def receive_then_wait(child: Any, timeout: float, *, keep_error: bool = False) -> dict[str, Any]:
        message = receive(child, timeout, keep_error=keep_error)
        if "error" in message:
            child.wait(timeout=30)
        return message

    monkeypatch.setattr(fifo, "_receive", receive_then_wait)
    store = Store("fifo", s3p, bucketp, _spool_dir(tmp_path))
    with pytest.raises(ArchiveError, match="expected a ScriptModule"):
        store.export(TinyLinear())
    store.assert_nothing_stored()
    store.assert_clean()
    store.assert_clean()
