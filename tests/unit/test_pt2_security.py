"""Loading a hostile ``.pt2``: every way torch 2.13's loader can run code from an archive is
refused before torch reads it, and the payload never runs.

Each hostile archive is a real ``torch.export.save`` archive rewritten with ``zipfile``;
its payload is a pickle that would create a marker file when unpickled.
"""

from __future__ import annotations

import json
import pickle
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.errors import ArchiveError
from serializer.pt2 import _weights_only_loads, check_pt2_payloads, export_pt2, load_pt2_file

Entries = list[tuple[str, bytes]]

_TENSOR_META = {
    "dtype": 1,  # uint8: any payload size passes torch's size check
    "sizes": [],
    "requires_grad": False,
    "device": {"type": "cpu", "index": None},
    "strides": [],
    "storage_offset": {"as_int": 0},
    "layout": 7,
}


class _Marker:
    """Unpickling it writes a file: proof that code ran."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (f"__import__('pathlib').Path({self.path!r}).write_text('ran')",))


@pytest.fixture()
def good(tmp_path: Path) -> Path:
    path = tmp_path / "archive.pt2"  # torch names the zip's root folder after the file
    program = torch.export.export(torch.nn.Linear(3, 2), (torch.randn(2, 3),))
    torch.export.save(program, str(path), extra_files={"labels.txt": "a\nb\n"})
    return path


@pytest.fixture()
def marker(tmp_path: Path) -> Path:
    return tmp_path / "code-ran"


def _rewrite(good: Path, out: Path, change: Callable[[Entries], Entries]) -> Path:
    with zipfile.ZipFile(good) as src:
        entries = [(info.filename, src.read(info)) for info in src.infolist()]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate name", category=UserWarning)
        for name, data in change(entries):
            dst.writestr(name, data)
    return out


def _constants(config: dict[str, Any]) -> Callable[[Entries], Entries]:
    def change(entries: Entries) -> Entries:
        return [
            (name, json.dumps({"config": config}).encode() if name.endswith("model_constants_config.json") else data)
            for name, data in entries
        ]

    return change


def _hostile(kind: str, evil: bytes) -> Callable[[Entries], Entries]:
    if kind == "legacy weights file":
        return lambda entries: [*entries, ("archive/data/weights/model.pt", evil)]
    if kind == "legacy constants file":
        return lambda entries: [*entries, ("archive/data/constants/model.pt", evil)]
    if kind in ("opaque object", "custom object"):
        prefix = "opaque_obj_0" if kind == "opaque object" else "custom_obj_0"
        meta = {"path_name": prefix, "is_param": False, "use_pickle": False, "tensor_meta": _TENSOR_META}
        base = _constants({"obj": meta})
        return lambda entries: [*base(entries), (f"archive/data/constants/{prefix}", evil)]
    if kind == "pickled weight":

        def change(entries: Entries) -> Entries:
            out = []
            for name, data in entries:
                if name.endswith("model_weights_config.json"):
                    config = json.loads(data)
                    for meta in config["config"].values():
                        meta["use_pickle"] = True
                    out.append((name, json.dumps(config).encode()))
                else:
                    out.append((name, data))
            return out

        return change
    if kind == "duplicate config":
        meta = {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True, "tensor_meta": None}

        def change(entries: Entries) -> Entries:
            out: Entries = []
            for name, data in entries:
                if name.endswith("model_constants_config.json"):
                    out.append((name, json.dumps({"config": {"obj": meta}}).encode()))  # torch reads this copy
                out.append((name, data))
            return [*out, ("archive/data/constants/opaque_obj_0", evil)]

        return change
    if kind == "pickled sample inputs":
        return lambda entries: [
            (name, evil if name.endswith("data/sample_inputs/model.pt") else data) for name, data in entries
        ]
    if kind == "aotinductor library":
        return lambda entries: [*entries, ("archive/data/aotinductor/model/model.so", b"\x7fELF")]
    if kind == "second root":
        return lambda entries: [*entries, ("other/data/weights/model.pt", evil)]
    raise AssertionError(kind)


HOSTILE = [
    "legacy weights file",
    "legacy constants file",
    "opaque object",
    "custom object",
    "pickled weight",
    "duplicate config",
    "pickled sample inputs",
    "aotinductor library",
    "second root",
]


@pytest.mark.parametrize("kind", HOSTILE)
def test_a_hostile_archive_is_refused_and_its_code_never_runs(
    kind: str, good: Path, marker: Path, tmp_path: Path
) -> None:
    evil = pickle.dumps(_Marker(marker), protocol=2)
    path = _rewrite(good, tmp_path / "hostile.pt2", _hostile(kind, evil))
    with pytest.raises(ArchiveError, match="refused"):
        load_pt2_file(str(path), source="s3://bucket/x/model.pt2")
    assert not marker.exists(), f"{kind}: the archive's code ran"


def test_the_payload_would_run_without_the_check(good: Path, marker: Path, tmp_path: Path) -> None:
    # The hostile archives above are real threats: torch's own loader runs this one.
    from torch.export.pt2_archive._package import load_pt2

    evil = pickle.dumps(_Marker(marker), protocol=2)
    path = _rewrite(good, tmp_path / "hostile.pt2", _hostile("opaque object", evil))
    load_pt2(str(path))
    assert marker.read_text() == "ran"


def test_behind_the_check_torch_loads_are_weights_only(good: Path, marker: Path, tmp_path: Path) -> None:
    from torch.export.pt2_archive._package import load_pt2

    evil = pickle.dumps(_Marker(marker), protocol=2)
    path = _rewrite(good, tmp_path / "hostile.pt2", _hostile("legacy weights file", evil))
    with _weights_only_loads(), pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load_pt2(str(path))
    assert not marker.exists()


def test_the_weights_only_switch_is_restored(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    monkeypatch.delenv("TORCH_FORCE_WEIGHTS_ONLY_LOAD", raising=False)
    with _weights_only_loads():
        assert os.environ["TORCH_FORCE_WEIGHTS_ONLY_LOAD"] == "1"
        assert "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD" not in os.environ
    assert os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    assert "TORCH_FORCE_WEIGHTS_ONLY_LOAD" not in os.environ


def test_a_plain_archive_with_buffers_and_constants_passes(tmp_path: Path) -> None:
    class WithState(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.norm = torch.nn.BatchNorm1d(4)
            self.offset = torch.ones(4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = self.norm(x) + self.offset
            return out

    module = WithState().eval()
    path = tmp_path / "plain.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(3, 4),)), str(path), extra_files={"a.txt": "x"})
    check_pt2_payloads(str(path))
    program, extras = load_pt2_file(str(path))
    assert extras == {"a.txt": b"x"}
    x = torch.randn(3, 4)
    torch.testing.assert_close(program.module()(x), module(x))


def test_a_cuda_program_is_refused_on_a_host_without_cuda(good: Path, tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA: a CUDA program loads here")

    def to_cuda(entries: Entries) -> Entries:
        out = []
        for name, data in entries:
            if name.endswith("model_weights_config.json"):
                config = json.loads(data)
                for meta in config["config"].values():
                    meta["tensor_meta"]["device"] = {"type": "cuda", "index": 0}
                out.append((name, json.dumps(config).encode()))
            else:
                out.append((name, data))
        return out

    path = _rewrite(good, tmp_path / "cuda.pt2", to_cuda)
    with pytest.raises(ArchiveError, match=r"exported on CUDA.*no CUDA"):
        check_pt2_payloads(str(path))


def test_a_program_with_tensor_subclass_weights_is_refused_before_anything_is_written(s3: Any, bucket: str) -> None:
    from torch.testing._internal.two_tensor import TwoTensor

    class Sub(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.weight = torch.nn.Parameter(TwoTensor(torch.ones(3), torch.ones(3)))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            out: torch.Tensor = x * self.weight
            return out

    program = torch.export.export(Sub(), (torch.ones(3),))
    with pytest.raises(ArchiveError, match=r"pickles \(weight"):
        export_pt2(program, f"s3://{bucket}/m/model.pt2", client=s3)
    assert s3.list_objects_v2(Bucket=bucket).get("KeyCount", 0) == 0
