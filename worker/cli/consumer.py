"""The consumer's commands: ``ls``, ``show``, ``verify`` and ``extra`` (no Celery, no broker).

What they print from manifests, archives and S3 keys goes through :mod:`.output`'s safe
text; ``extra`` alone writes raw bytes, which is what it is for.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table
from rich.text import Text

from serializer.consumer.extras import read_extra_file
from serializer.errors import SerializerError
from serializer.manifest.store import read_manifest
from serializer.s3.client import S3Client, make_s3_client
from serializer.signing.keys import TrustedKeys
from serializer.signing.store import read_trusted_manifest

from ..bulk import list_manifests as _listing
from .output import (
    CommandError,
    aligned_lines,
    console,
    json_safe,
    out,
    pretty_json,
    stdout_is_terminal,
    text,
    write_lines,
)

__all__ = ["LS_WORKERS", "extra", "list_manifests", "ls", "read_rows", "show", "verify"]

#: Manifests ``ls`` reads at once: each is one small GET, so the listing's time is mostly
#: round trips, and 16 overlap them well on a remote store without a burst a store throttles.
#: The client's connection pool is sized to the same number.
LS_WORKERS = 16
#: Reads queued per worker ahead of the one printed next: enough to keep every worker busy
#: while results are taken in order, few enough that memory does not grow with the listing.
LS_QUEUE_PER_WORKER = 2
#: The columns of ``ls``'s plain lines (stdout not a terminal), like ``kubectl get``'s.
LS_HEADER = ("NAME", "FORMAT", "VERSION", "SIZE", "TORCH", "CREATED", "VERIFIED", "ARTIFACT")


def list_manifests(client: S3Client, prefix_uri: str) -> Iterator[str]:
    """URIs of every manifest under ``s3://bucket/prefix``, paging through the listing."""
    return _listing(client, prefix_uri)


def trusted_keys(args: argparse.Namespace) -> TrustedKeys | None:
    """The keys ``--key`` and ``EXPORT_TRUSTED_KEYS`` name, or None where there are none.

    Raises:
        CommandError: a key file that cannot be read or is not an elliptic-curve public key.
    """
    try:
        given = TrustedKeys.from_files(args.key) if args.key else None
        configured = TrustedKeys.from_environment()
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    if given is None or configured is None:
        return given or configured
    return TrustedKeys({**configured.keys, **given.keys})


def show(args: argparse.Namespace) -> int:
    """``exportctl show URI [--json] [--key PEM]``: print an artifact's manifest (with keys:
    only one that a trusted key signed).

    ``--json`` is the canonical JSON, with any control or format character in a value
    written as a ``\\uNNNN`` escape (the same JSON value; nothing a terminal acts on).
    """
    manifest = read_trusted_manifest(make_s3_client(), args.uri, trusted_keys(args))
    if args.json:
        sys.stdout.write(json_safe(manifest.to_json().decode()) + "\n")
    else:
        out.print(pretty_json(manifest.to_json().decode()), soft_wrap=True)
    return 0


#: One manifest of a listing: its URI, and its row or why it cannot be read.
LsResult = tuple[str, dict[str, Any] | None, str | None]


def _read_row(client: S3Client, uri: str) -> LsResult:
    """One manifest read (one bounded GET) into its ``ls`` row; the body and the parsed
    manifest are dropped here, only the row is kept."""
    try:
        m = read_manifest(client, uri)
    except (SerializerError, RecursionError) as exc:
        return uri, None, str(exc) or type(exc).__name__
    row = {
        "name": m.spec.get("name", ""),
        "artifact_uri": m.artifact.uri,
        "size": m.artifact.size,
        "torch": m.producer.torch,
        "format": m.artifact.format,
        "format_version": m.artifact.format_version,
        "created_at": m.created_at.isoformat(),
        "verified": None if m.verification is None else m.verification.passed,
    }
    return uri, row, None


def read_rows(client: S3Client, uris: Iterable[str], workers: int = LS_WORKERS) -> Iterator[LsResult]:
    """Each manifest of ``uris`` read into its ``ls`` row, or the reason it cannot be read
    (too large, nested too deep, not JSON, invalid, under a key that is no valid URI), in
    the order of ``uris``.

    ``workers`` reads run at once on a thread pool (the client's pool should hold as many
    connections); ``workers=1`` reads one by one in this thread.  At most
    ``workers * LS_QUEUE_PER_WORKER`` reads are queued ahead of the result taken next, so
    memory stays bounded whatever the listing's length.

    Raises:
        ClientError: a transient store error on a manifest (after botocore's retries), as
            the one-by-one read raised it; the reads still queued are cancelled.
    """
    if workers <= 1:
        for uri in uris:
            yield _read_row(client, uri)
        return
    pending: deque[Future[LsResult]] = deque()
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="exportctl-ls")
    try:
        for uri in uris:
            pending.append(pool.submit(_read_row, client, uri))
            if len(pending) >= workers * LS_QUEUE_PER_WORKER:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _verified(value: bool | None) -> str:
    return {None: "-", True: "yes", False: "no"}[value]


def ls_line_cells(row: dict[str, Any]) -> tuple[object, ...]:
    """A row's cells for the plain lines, in :data:`LS_HEADER`'s order, every value in full."""
    return (
        row["name"],
        row["format"],
        row["format_version"],
        row["size"],
        row["torch"],
        row["created_at"],
        _verified(row["verified"]),
        row["artifact_uri"],
    )


def _ls_table(rows: list[dict[str, Any]]) -> Table:
    table = Table("name", "format", "size", "torch", "created", "verified", "artifact")
    styles = {None: "", True: "green", False: "red"}
    for row in rows:
        table.add_row(
            text(row["name"]),
            text(row["format"]),
            f"{row['size']:,}",
            text(row["torch"]),
            text(row["created_at"][:19]),
            Text(_verified(row["verified"]), style=styles[row["verified"]]),
            text(row["artifact_uri"]),
        )
    return table


def ls(args: argparse.Namespace) -> int:
    """``exportctl ls PREFIX [--json] [--workers N]``: the exports under a prefix.

    On a terminal, a table; otherwise (a pipe, a file) one line per export with every field
    in full and the columns aligned, under a header line; with ``--json``, one JSON object
    per export.  A manifest that cannot be read is shown as invalid, with the reason, on
    stderr; the others are listed, and the exit status is 1 where any was invalid.
    """
    workers: int = args.workers
    if workers < 1:
        raise CommandError(f"--workers must be at least 1, got {workers}")
    client = make_s3_client(max_pool_connections=workers)
    rows: list[dict[str, Any]] = []  # small dicts: the table and the aligned lines need them all
    listed = invalid = 0
    for uri, row, reason in read_rows(client, list_manifests(client, args.prefix), workers):
        if row is None:
            invalid += 1
            console.print(Text.assemble(("invalid", "red"), " ", text(uri), ": ", text(reason)))
            continue
        listed += 1
        if args.json:
            # ensure_ascii (json's default): every non-ASCII or control character is a \uNNNN escape.
            sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
        else:
            rows.append(row)
    if not args.json:
        if stdout_is_terminal():
            out.print(_ls_table(rows))
        else:
            write_lines(aligned_lines(LS_HEADER, (ls_line_cells(row) for row in rows)))
    summary = Text(f"{listed} exports under ")
    summary.append(text(args.prefix))
    if invalid:
        summary.append(f", {invalid} invalid")
    console.print(summary)
    return 1 if invalid else 0


def verify(args: argparse.Namespace) -> int:
    """``exportctl verify URI [--key PEM]``: check an artifact step by step (with keys, its
    signature first); exit 1 unless every step passed."""
    # Deferred: it imports torch, which ls and show do without.
    from serializer.consumer.verify import verify_artifact

    trusted = trusted_keys(args)
    columns = (TextColumn("downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("download", total=None)
        report = verify_artifact(
            make_s3_client(),
            args.uri,
            progress=lambda n: bar.advance(task, n),
            on_manifest=lambda m: bar.update(task, total=m.artifact.size),
            trusted_keys=trusted,
        )
    for step in report.steps:
        mark = ("ok  ", "green") if step.ok else ("FAIL", "red")
        out.print(Text.assemble(mark, " ", text(f"{step.name:<13}"), " ", text(step.detail)))
    out.print(Text.assemble("verified: " if report.ok else "NOT verified: ", text(args.uri)))
    return 0 if report.ok else 1


def extra(args: argparse.Namespace) -> int:
    """``exportctl extra URI NAME [--no-manifest] [--key PEM]``: one extra file's bytes to
    stdout, checked against the manifest's sha256 (with keys: a manifest a trusted key
    signed)."""
    client = make_s3_client()
    trusted = trusted_keys(args)
    if args.no_manifest and trusted is not None:
        raise CommandError("--no-manifest reads no signature: it cannot be used with trusted keys (--key)")
    manifest = None if args.no_manifest else read_trusted_manifest(client, args.uri, trusted)
    sys.stdout.buffer.write(read_extra_file(client, args.uri, args.name, manifest=manifest))
    sys.stdout.buffer.flush()
    return 0
