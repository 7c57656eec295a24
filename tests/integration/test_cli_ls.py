"""``exportctl ls`` as a script sees it (stdout a pipe) and as a person does (a terminal):
every field in full, columns aligned, text from manifests and keys shown as text, and the
same listing whatever the number of concurrent reads.  Run in a fresh process against the
moto server over HTTP."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import pytest

from serializer.archive.info import ArchiveInfo
from serializer.manifest.model import MANIFEST_SUFFIX, Producer, Verification, build_manifest, spec_digest
from serializer.s3.client import make_s3_client
from worker.cli.consumer import LS_HEADER
from worker.cli.output import safe_text
from worker.keys import HASH_DIGITS, TORCH_FOLDER

#: Markup, a colour escape, a carriage return and a newline that would forge a line, and a
#: right-to-left override: what a hostile manifest's values may hold.
HOSTILE = "[bold red]x[/] \x1b[31mred\rover\nforged \u202eevil"
#: A key segment far wider than any terminal.
LONG = "a-very-long-folder-name-" * 12


@pytest.fixture(scope="module")
def client(moto_endpoint: str) -> Any:
    return make_s3_client(endpoint_url=moto_endpoint, max_pool_connections=16)


@pytest.fixture(scope="module")
def cli_env(moto_endpoint: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("CELERY_", "EXPORT_", "AWS_ENDPOINT", "FORCE_COLOR", "TTY_", "NO_COLOR"))
    }
    # A narrow terminal width: a piped listing must not depend on it.
    env.update(AWS_ENDPOINT_URL_S3=moto_endpoint, COLUMNS="80")
    return env


def exportctl(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", *args], capture_output=True, text=True, env=env, timeout=120, check=False
    )


def manifest(
    bucket: str,
    prefix: str,
    name: str,
    *,
    torch: str = "2.5.1+cpu",
    folder: str = "",
    verified: bool | None = True,
    size: int = 1234,
    key_name: str | None = None,
) -> tuple[str, bytes]:
    """A valid manifest's key and body, under the export key layout (worker.keys); the key
    has ``key_name`` (default ``name``) and the plain torch version where a value is hostile."""
    spec = {"name": name, "builder": "worker.examples:tiny_classifier", "destination": f"s3://{bucket}/{prefix}"}
    digest = spec_digest(spec)
    torch_folder = TORCH_FOLDER + (torch.replace("+", "_") if torch.isprintable() else "2.5.1_cpu")
    base = f"{prefix}/{folder}{key_name or name}/{digest[:HASH_DIGITS]}/{torch_folder}/model"
    archive = ArchiveInfo(
        uri=f"s3://{bucket}/{base}.pt",
        size=size,
        sha256="ab" * 32,
        etag='"etag"',
        format_version=3,
        archive_root="model",
        extra_files=(),
    )
    check = None if verified is None else Verification(passed=verified, max_abs_diff=0.0, atol=1e-5, rtol=1e-4)
    built = build_manifest(
        archive,
        spec=spec,
        spec_hash=digest,
        producer=Producer(torch=torch, python="3.11.9", export_worker="0.1.0", device="cpu", host="test"),
        verification=check,
        created_at=datetime(2025, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
    )
    return base + MANIFEST_SUFFIX, built.to_json()


@pytest.fixture(scope="module")
def bucket(client: Any) -> str:
    name = f"ls-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return name


@pytest.fixture(scope="module")
def mixed(client: Any, bucket: str) -> dict[str, Any]:
    """Three valid exports (a hostile name, a long key, plain), and two invalid manifests:
    one not JSON under a hostile key, one whose bad value is hostile text."""
    prefix = "mixed"
    exports = [
        manifest(bucket, prefix, HOSTILE, torch="2.5.1+cpu" + "\u202e", verified=False, key_name="hostile"),
        manifest(bucket, prefix, "long", folder=LONG + "/", verified=None, size=9_876_543_210_123),
        manifest(bucket, prefix, "plain"),
    ]
    for key, body in exports:
        client.put_object(Bucket=bucket, Key=key, Body=body)
    bad_key = f"{prefix}/[bold]\u202ehidden\x85line{MANIFEST_SUFFIX}"
    client.put_object(Bucket=bucket, Key=bad_key, Body=b"not json at all")
    good_key, good_body = manifest(bucket, prefix, "bad-format")
    bad_value = json.loads(good_body)
    bad_value["artifact"]["format"] = HOSTILE
    client.put_object(Bucket=bucket, Key=good_key, Body=json.dumps(bad_value).encode())
    return {"prefix": f"s3://{bucket}/{prefix}", "exports": exports, "invalid": 2}


def test_ls_piped_prints_every_field_in_full_on_aligned_lines(cli_env: dict[str, str], mixed: dict[str, Any]) -> None:
    proc = exportctl(cli_env, "ls", mixed["prefix"])
    assert proc.returncode == 1, "invalid manifests make the exit status 1"
    header, *lines = proc.stdout.splitlines()
    assert header.split() == list(LS_HEADER)
    assert len(lines) == 3, proc.stdout
    by_name = {}
    for line in lines:
        assert len(line) > 80, "nothing cut at the terminal width"
        for column in ("FORMAT", "SIZE", "CREATED", "ARTIFACT"):
            at = header.index(column)
            assert line[at - 2 : at] == "  " and line[at] != " ", (column, line)
        by_name[line.split("  ")[0].strip()] = line
    hostile = by_name[safe_text(HOSTILE)]
    assert "2.5.1+cpu\\u202e" in hostile
    assert " no " in hostile
    long = by_name["long"]
    assert " 9876543210123 " in long
    assert LONG in long and long.rstrip().endswith("/model.pt")
    assert "2025-01-02T03:04:05.678901+00:00" in long
    for _key, body in mixed["exports"]:
        uri = json.loads(body)["artifact"]["uri"]
        assert any(line.endswith(safe_text(uri)) for line in lines), uri


def test_ls_piped_shows_manifest_text_as_text(cli_env: dict[str, str], mixed: dict[str, Any]) -> None:
    proc = exportctl(cli_env, "ls", mixed["prefix"])
    for stream in (proc.stdout, proc.stderr):
        for raw in ("\x1b", "\r", "\u202e"):
            assert raw not in stream, (raw, stream)
    assert "[bold red]x[/] \\x1b[31mred\\rover\\nforged \\u202eevil" in proc.stdout


def test_ls_reports_invalid_manifests_safely_on_stderr(cli_env: dict[str, str], mixed: dict[str, Any]) -> None:
    proc = exportctl(cli_env, "ls", mixed["prefix"])
    assert proc.returncode == 1
    lines = proc.stderr.splitlines()
    invalid = [line for line in lines if line.startswith("invalid ")]
    assert len(invalid) == mixed["invalid"], proc.stderr
    assert len(lines) == mixed["invalid"] + 1, "one line per invalid manifest, one summary"
    assert any("/[bold]\\u202ehidden\\x85line.manifest.json: " in line for line in invalid), invalid
    assert any("[bold red]x[/]" in line and "evil" in line for line in invalid), "the bad value is quoted"
    assert lines[-1] == f"3 exports under {mixed['prefix']}, 2 invalid"
    assert "Traceback" not in proc.stderr


def test_ls_json_stays_valid_json(cli_env: dict[str, str], mixed: dict[str, Any]) -> None:
    proc = exportctl(cli_env, "ls", "--json", mixed["prefix"])
    assert proc.returncode == 1
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    assert sorted(row["name"] for row in rows) == sorted([HOSTILE, "long", "plain"])
    assert proc.stdout.isascii(), "every non-ASCII or control character is a \\u escape"


def test_show_json_is_the_same_value_with_nothing_raw(
    client: Any, cli_env: dict[str, str], mixed: dict[str, Any]
) -> None:
    key, body = mixed["exports"][0]
    uri = f"{mixed['prefix'].rsplit('/', 1)[0]}/{key}"
    proc = exportctl(cli_env, "show", "--json", uri)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == json.loads(body)
    assert "\u202e" not in proc.stdout and "\x1b" not in proc.stdout
    pretty = exportctl(cli_env, "show", uri)
    assert pretty.returncode == 0, pretty.stderr
    assert "\u202e" not in pretty.stdout and "\x1b" not in pretty.stdout and "\r" not in pretty.stdout
    assert "[bold red]x[/]" in pretty.stdout


def run_on_a_terminal(env: dict[str, str], *args: str) -> tuple[int, str]:
    """Run exportctl with stdout a pseudo-terminal; its exit status and what it drew."""
    master, slave = pty.openpty()
    with subprocess.Popen(
        [sys.executable, "-m", "worker.cli", *args], stdout=slave, stderr=subprocess.DEVNULL, env=env
    ) as proc:
        os.close(slave)
        chunks = []
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed its end
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(master)
        status = proc.wait(timeout=120)
    return status, b"".join(chunks).decode(errors="replace")


def test_ls_on_a_terminal_keeps_the_table(cli_env: dict[str, str], mixed: dict[str, Any]) -> None:
    status, drawn = run_on_a_terminal({**cli_env, "COLUMNS": "400"}, "ls", mixed["prefix"])
    assert status == 1
    assert "┃" in drawn or "│" in drawn, "a rich table"
    assert "NAME" not in drawn.split("\n")[0], "not the plain header"
    assert "[bold red]x[/]" in drawn and "\\u202eevil" in drawn
    assert "\u202e" not in drawn and "\x1b[31mred" not in drawn and "\rover" not in drawn


@pytest.fixture(scope="module")
def many(client: Any, bucket: str) -> str:
    """60 exports and 3 invalid manifests, interleaved in key order."""
    prefix = "many"
    puts = [manifest(bucket, prefix, f"model-{i:03d}", verified=i % 3 == 0 or None) for i in range(60)]
    puts += [(f"{prefix}/model-{i:03d}x{MANIFEST_SUFFIX}", b"{}") for i in (5, 30, 59)]

    def put(item: tuple[str, bytes]) -> None:
        client.put_object(Bucket=bucket, Key=item[0], Body=item[1])

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, puts))
    return f"s3://{bucket}/{prefix}"


@pytest.fixture(scope="module")
def listings(cli_env: dict[str, str], many: str) -> Iterator[dict[tuple[str, str], subprocess.CompletedProcess[str]]]:
    yield {
        (workers, mode): exportctl(cli_env, "ls", many, "--workers", workers, *([mode] if mode else []))
        for workers in ("1", "8", "32")
        for mode in ("", "--json")
    }


@pytest.mark.parametrize("mode", ["", "--json"])
def test_the_same_listing_with_one_and_many_workers(
    listings: dict[tuple[str, str], subprocess.CompletedProcess[str]], mode: str
) -> None:
    one = listings[("1", mode)]
    assert one.returncode == 1
    assert len(one.stdout.splitlines()) == 60 + (0 if mode else 1)
    assert len([line for line in one.stderr.splitlines() if line.startswith("invalid ")]) == 3
    for workers in ("8", "32"):
        other = listings[(workers, mode)]
        assert (other.returncode, other.stdout, other.stderr) == (one.returncode, one.stdout, one.stderr), workers


def test_listing_order_is_the_keys_order(listings: dict[tuple[str, str], subprocess.CompletedProcess[str]]) -> None:
    names = [json.loads(line)["name"] for line in listings[("32", "--json")].stdout.splitlines()]
    assert names == [f"model-{i:03d}" for i in range(60)]


def test_workers_must_be_at_least_one(cli_env: dict[str, str], many: str) -> None:
    proc = exportctl(cli_env, "ls", many, "--workers", "0")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["error: --workers must be at least 1, got 0"]
