"""``exportctl extra`` on a hostile archive in the moto server: unsafe names are refused,
nothing is written, a safe name goes to stdout only.
"""

from __future__ import annotations

import pathlib

import pytest

from tests.hostile_archives import SLIP_NAMES, _tree


@pytest.mark.usefixtures("empty_cwd")
@pytest.mark.parametrize("no_manifest", [False, True], ids=["manifest", "zip-directory"])
@pytest.mark.parametrize("name", SLIP_NAMES)
def test_exportctl_extra_refuses_unsafe_names(
    moto_endpoint: str,
    hostile: tuple[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
    name: str,
    no_manifest: bool,
) -> None:
    from worker.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    status = main(["extra", hostile[0], name, *(["--no-manifest"] if no_manifest else [])])
    out, err = capsysbinary.readouterr()
    assert (status, out) == (1, b""), f"exit {status}, wrote {out!r}"
    assert b"error:" in err


def test_exportctl_extra_writes_a_safe_name_to_stdout_only(
    moto_endpoint: str,
    safe: tuple[str, bytes],
    empty_cwd: pathlib.Path,
    monkeypatch: pytest.MonkeyPatch,
    capsysbinary: pytest.CaptureFixture[bytes],
) -> None:
    from worker.cli import main

    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", moto_endpoint)
    assert main(["extra", safe[0], "ok.txt"]) == 0
    assert main(["extra", safe[0], "ok.txt", "--no-manifest"]) == 0
    assert capsysbinary.readouterr().out == b"finefine"
    assert _tree(empty_cwd) == []
