"""A C++ consumer of exported artifacts: examples/cpp built against the wheel's libtorch.

The example is configured and built once per session into a temporary folder, then run on
an archive made by the project's own exporter and downloaded from S3, as a consumer would.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from serializer.torchscript.export import export_torchscript
from tests.fixtures import ALL_BYTES, TinyLinear, scripted

#: The example's source folder.
SOURCE = Path(__file__).resolve().parents[2] / "examples" / "cpp"
#: Seconds allowed for configuring and for building (one .cpp against libtorch).
BUILD_TIMEOUT = 600
#: Seconds allowed for one run of the program.
RUN_TIMEOUT = 120
#: Input shape passed as ``--input N,M``.
ROWS, COLS = 3, 4
LABELS = "cat\ndog\n"


def _compiler() -> str | None:
    return shutil.which("g++") or shutil.which("c++")


@pytest.fixture(scope="session")
def load_artifact_bin(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The built ``load_artifact`` program (Release, two jobs)."""
    if shutil.which("cmake") is None:
        pytest.skip("cmake is not on the PATH: the C++ example cannot be built")
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C++ compiler (g++ or c++) on the PATH: the C++ example cannot be built")
    import torch.utils

    build = tmp_path_factory.mktemp("cpp-build")
    start = time.monotonic()
    for cmd in (
        [
            "cmake",
            "-S",
            str(SOURCE),
            "-B",
            str(build),
            f"-DCMAKE_PREFIX_PATH={torch.utils.cmake_prefix_path}",
            f"-DCMAKE_CXX_COMPILER={compiler}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        ["cmake", "--build", str(build), "-j2"],
    ):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=BUILD_TIMEOUT, check=False)
        assert proc.returncode == 0, f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}"
    print(f"built examples/cpp in {time.monotonic() - start:.1f} s")
    binary = build / "load_artifact"
    assert binary.is_file()
    return binary


def _run(binary: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=RUN_TIMEOUT, check=False)


def _records(stdout: str) -> list[tuple[str, str]]:
    """``key: value`` lines of the program's output, in order."""
    records = []
    for line in stdout.splitlines():
        key, _, value = line.partition(":")
        records.append((key, value.removeprefix(" ")))
    return records


def test_cpp_loads_exported_artifact(load_artifact_bin: Path, s3: Any, bucket: str, tmp_path: Path) -> None:
    model = TinyLinear(in_features=COLS, out_features=3)
    module = scripted(model)
    uri = f"s3://{bucket}/x/model.pt"
    export_torchscript(module, uri, client=s3, extra_files={"labels.txt": LABELS, "blob.bin": ALL_BYTES})
    archive = tmp_path / "model.pt"
    s3.download_file(bucket, "x/model.pt", str(archive))

    proc = _run(load_artifact_bin, str(archive), "labels.txt", "blob.bin", "--input", f"{ROWS},{COLS}")
    assert proc.returncode == 0, proc.stderr
    records = _records(proc.stdout)
    assert records[:3] == [
        ("extra", f"labels.txt {len(LABELS.encode())}"),
        ("text", "cat\\ndog\\n"),
        ("extra", f"blob.bin {len(ALL_BYTES)}"),  # not UTF-8: size only, no text line
    ]
    fields = dict(records[3:])
    assert fields["output_shape"].split() == ["3", "3"]
    got = torch.tensor([float(v) for v in fields["output"].split()], dtype=torch.float32).reshape(3, 3)

    x = torch.arange(ROWS * COLS).reshape(ROWS, COLS).to(torch.float32) / (ROWS * COLS)
    with torch.no_grad():
        expected = module(x)
    assert torch.allclose(got, expected, atol=1e-5), (got, expected)
    assert torch.count_nonzero(expected) > 0  # relu left something to compare


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot open archive"),
        (b"not a zip archive\n", "cannot load"),
        (b"PK\x03\x04" + bytes(64), "cannot load"),
    ],
    ids=["missing", "garbage", "truncated-zip"],
)
def test_cpp_reports_bad_archive(load_artifact_bin: Path, tmp_path: Path, content: bytes | None, message: str) -> None:
    archive = tmp_path / "model.pt"
    if content is not None:
        archive.write_bytes(content)
    proc = _run(load_artifact_bin, str(archive), "labels.txt")
    assert proc.returncode > 0, (proc.returncode, proc.stderr)  # negative: killed by a signal
    assert message in proc.stderr
    assert "output:" not in proc.stdout
