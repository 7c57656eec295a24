"""The operator check on real archives: hostile ones that call ``aten::from_file`` write a
file through torch's own loader and are refused by ours before torch sees them, with
nothing written; the bundled example and common architectures pass and load, in both
formats, from files and from S3 (in-process moto).
"""

from __future__ import annotations

import io
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.errors import ArchiveError
from serializer.pt2.check import check_pt2_payloads
from serializer.pt2.load import load_pt2_artifact, load_pt2_file
from serializer.torchscript.check import check_torchscript_archive
from serializer.torchscript.load import load_artifact, load_torchscript_file
from tests.operator_archives import (
    PAYLOAD,
    add_from_file,
    architectures,
    from_file_pt2,
    from_file_torchscript,
    payload_input,
    plain_pt2,
    rewrite_program,
    save_architecture,
    torch_writes,
)

HOSTILE = {"torchscript": from_file_torchscript, "pt2": from_file_pt2}
SUFFIX = {"torchscript": ".pt", "pt2": ".pt2"}


@pytest.fixture()
def target(tmp_path: Path) -> Path:
    """Where the hostile archives write: a ``.pth`` file in a site-packages of the test's own."""
    site = tmp_path / "site-packages"
    site.mkdir()
    return site / "evil.pth"


@pytest.mark.parametrize("kind", ["torchscript", "pt2"])
def test_torchs_own_loader_writes_the_file(kind: str, target: Path, tmp_path: Path) -> None:
    # The threat is real: torch.jit.load (for a .pt2, torch.export.load and a run on the
    # inputs, as a self-check does) maps the file and writes the payload into it.
    archive = HOSTILE[kind](tmp_path / f"hostile{SUFFIX[kind]}", target)
    proc = torch_writes(archive, kind, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert target.read_bytes() == PAYLOAD


def test_ours_refuses_the_torchscript_archive_before_torch_loads_it(
    target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = from_file_torchscript(tmp_path / "hostile.pt", target)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.jit.load was called on a refused archive")

    monkeypatch.setattr(torch.jit, "load", never)
    with pytest.raises(ArchiveError) as info:
        load_torchscript_file(str(archive), source="s3://bucket/hostile/model.pt")
    message = str(info.value)
    assert message.startswith("s3://bucket/hostile/model.pt: refused: code/__torch__/")
    assert "calls aten::from_file (file access)" in message
    assert not target.exists()


def test_ours_refuses_the_pt2_archive_before_torch_loads_it(
    target: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serializer.pt2.load as pt2_load

    archive = from_file_pt2(tmp_path / "hostile.pt2", target)

    def never(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("torch.export.load was called on a refused archive")

    monkeypatch.setattr(pt2_load, "load_pt2", never)
    with pytest.raises(ArchiveError) as info:
        load_pt2_file(str(archive), source="s3://bucket/hostile/model.pt2")
    assert str(info.value) == (
        "s3://bucket/hostile/model.pt2: refused: models/model.json node 'mapped' calls aten::from_file (file access)"
    )
    assert not target.exists()


@pytest.mark.parametrize("kind", ["torchscript", "pt2"])
def test_every_loader_path_from_s3_refuses_it_with_nothing_written(
    s3: Any, bucket: str, kind: str, target: Path, tmp_path: Path
) -> None:
    archive = HOSTILE[kind](tmp_path / f"hostile{SUFFIX[kind]}", target)
    key = f"hostile/model{SUFFIX[kind]}"
    s3.put_object(Bucket=bucket, Key=key, Body=archive.read_bytes())
    spool = tmp_path / "spool"
    spool.mkdir()
    load = load_artifact if kind == "torchscript" else load_pt2_artifact
    with pytest.raises(ArchiveError, match=r"refused: .* calls aten::from_file \(file access\)") as info:
        load(s3, f"s3://{bucket}/{key}", spool_dir=str(spool))
    assert f"s3://{bucket}/{key}" in str(info.value)
    assert not target.exists()
    assert list(spool.iterdir()) == [], "the download was left behind"


def test_a_python_callable_as_a_node_target_is_refused(tmp_path: Path, target: Path) -> None:
    # torch resolves "torch.from_file" as an attribute path and calls what it finds.
    plain = plain_pt2(tmp_path / "plain.pt2")
    archive = rewrite_program(plain, tmp_path / "hostile.pt2", add_from_file(target, op="torch.from_file"))
    with pytest.raises(ArchiveError, match=r"node 'mapped' calls torch.from_file \(a Python callable"):
        load_pt2_file(str(archive))
    assert not target.exists()


def test_a_refused_node_in_a_sub_graph_is_found(tmp_path: Path) -> None:
    from tests.operator_archives import Branches

    plain = save_architecture("pt2", "export", Branches().eval(), (torch.randn(3, 4),), tmp_path / "cond.pt2")

    def into_branch(program: dict[str, Any]) -> None:
        (cond,) = [n for n in program["graph_module"]["graph"]["nodes"] if n["target"].endswith("higher_order.cond")]
        branch = next(i["arg"]["as_graph"]["graph"] for i in cond["inputs"] if "as_graph" in i["arg"])
        branch["nodes"][0]["target"] = "torch.ops.aten.save.default"

    archive = rewrite_program(plain, tmp_path / "hostile.pt2", into_branch)
    with pytest.raises(ArchiveError, match=r"calls aten::save \(file access\)"):
        check_pt2_payloads(str(archive))


# -- TorchScript records ---------------------------------------------------------------------


def _edit(archive: Path, out: Path, extra: dict[str, bytes], drop: str = "") -> Path:
    with zipfile.ZipFile(archive) as src:
        entries = [(i.filename, src.read(i)) for i in src.infolist() if not (drop and i.filename.endswith(drop))]
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as dst, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Duplicate name", category=UserWarning)
        for name, data in [*entries, *extra.items()]:
            dst.writestr(name, data)
    return out


@pytest.fixture()
def plain_ts(tmp_path: Path) -> Path:
    return save_architecture("torchscript", "script", torch.nn.Linear(3, 2), (torch.randn(1, 3),), tmp_path / "a.pt")


@pytest.mark.parametrize(
    ("extra", "refusal"),
    [
        ({"a/bytecode.pkl": b"\x80\x02."}, "records that a torch.jit.save archive does not hold (bytecode.pkl)"),
        ({"a/model.json": b"{}"}, "does not hold (model.json)"),
        ({"a/code/__torch__/x.txt": b""}, "does not hold (code/__torch__/x.txt)"),
        ({"a/code/../evil.py": b""}, "does not hold (code/../evil.py)"),
        ({"other/data.pkl": b""}, "records under 2 root folders"),
        ({"a/data.pkl": b"\x80\x02."}, "the zip names a record twice"),
        ({"a/code/__torch__/evil.py": b"x = ops.c10d.allreduce_(y)\n"}, "calls c10d::allreduce_"),
        ({"a/code/__torch__/evil.py": b"def f(:\n"}, "code/__torch__/evil.py does not parse"),
        ({"a/constants.pkl": b"\x80\x02cos\nsystem\nq\x00."}, "constants.pkl unpickles os.system"),
    ],
)
def test_archives_with_other_records_are_refused(
    plain_ts: Path, tmp_path: Path, extra: dict[str, bytes], refusal: str
) -> None:
    drop = "a/constants.pkl" if "a/constants.pkl" in extra else ""
    archive = _edit(plain_ts, tmp_path / "odd.pt", extra, drop=drop)
    with pytest.raises(ArchiveError) as info:
        check_torchscript_archive(str(archive))
    assert refusal in str(info.value)


def test_a_code_record_over_the_limit_is_refused_unread(
    plain_ts: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import serializer.torchscript.check as check

    monkeypatch.setattr(check, "MAX_CODE_RECORD", 1024)
    archive = _edit(plain_ts, tmp_path / "big.pt", {"a/code/__torch__/big.py": b"x = 1\n" * 1000})
    with pytest.raises(ArchiveError, match=r"code/__torch__/big.py is too large to check \(6000 bytes\)"):
        check_torchscript_archive(str(archive))


def test_extra_files_are_not_checked_as_code_or_pickles(plain_ts: Path, tmp_path: Path) -> None:
    # The model's own data: torch.jit.load never compiles or unpickles extra files.
    extras = {"a/extra/notes.py": b"torch.from_file('/x', True, 6)\n", "a/extra/vocab.pkl": b"\x80\x04cos\nsystem\n."}
    check_torchscript_archive(str(_edit(plain_ts, tmp_path / "extras.pt", extras)))


def test_a_non_zip_is_refused_as_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(b"not a zip")
    with pytest.raises(ArchiveError, match="not a readable TorchScript archive"):
        check_torchscript_archive(str(path))


# -- what passes -----------------------------------------------------------------------------


def _run(module: Any, inputs: tuple[torch.Tensor, ...]) -> Any:
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module(*inputs)


@pytest.mark.parametrize(
    ("name", "make", "inputs"), list(architectures("torchscript")), ids=lambda v: v if isinstance(v, str) else ""
)
@pytest.mark.parametrize("how", ["script", "trace"])
def test_common_architectures_pass_as_torchscript(name: str, make: Any, inputs: Any, how: str, tmp_path: Path) -> None:
    module, args = make(), inputs()
    path = save_architecture("torchscript", how, module, args, tmp_path / f"{name}.pt")
    loaded, _ = load_torchscript_file(str(path))
    torch.testing.assert_close(_run(loaded, args), _run(module, args))


@pytest.mark.parametrize(
    ("name", "make", "inputs"), list(architectures("pt2")), ids=lambda v: v if isinstance(v, str) else ""
)
def test_common_architectures_pass_as_pt2(name: str, make: Any, inputs: Any, tmp_path: Path) -> None:
    module, args = make(), inputs()
    path = save_architecture("pt2", "export", module, args, tmp_path / f"{name}.pt2")
    program, _ = load_pt2_file(str(path))
    torch.testing.assert_close(_run(program.module(), args), _run(module, args))


@pytest.mark.parametrize("fmt", ["torchscript", "pt2"])
def test_the_bundled_example_exports_and_loads_through_the_check(s3: Any, bucket: str, fmt: str) -> None:
    from serializer.consumer.open import open_artifact
    from worker.export import run_export
    from worker.settings import Settings
    from worker.spec import parse_spec

    spec = parse_spec(
        {
            "name": "tiny-classifier",
            "builder": "worker.examples:tiny_classifier",
            "example_inputs": [{"shape": [2, 16], "dtype": "float32"}],
            "destination": f"s3://{bucket}/example-{fmt}",
            "format": fmt,
        }
    )
    result = run_export(spec, settings=Settings(allowed_builders=("worker.examples",)), client=s3)
    loaded, manifest, _ = open_artifact(s3, result["artifact_uri"])
    module = loaded.module() if fmt == "pt2" else loaded
    assert manifest.artifact.format == fmt
    assert _run(module, (torch.randn(2, 16),)).shape == (2, 4)


def test_an_archive_saved_to_a_buffer_passes(tmp_path: Path) -> None:
    # torch.jit.save to a buffer names the root "archive", as the exporter's file does.
    buffer = io.BytesIO()
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), buffer, _extra_files={"labels.txt": "a\nb\n"})
    path = tmp_path / "x.pt"
    path.write_bytes(buffer.getvalue())
    check_torchscript_archive(str(path))
    assert payload_input().numel() == len(PAYLOAD)
