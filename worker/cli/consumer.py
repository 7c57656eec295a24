"""The consumer's commands: ``ls``, ``show``, ``verify`` and ``extra`` (no Celery, no broker)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator
from typing import Any

from rich.json import JSON
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn
from rich.table import Table

from serializer.consumer.extras import read_extra_file
from serializer.errors import SerializerError
from serializer.manifest.store import read_manifest
from serializer.s3.client import S3Client, make_s3_client

from ..bulk import list_manifests as _listing
from .output import console, out

__all__ = ["extra", "list_manifests", "ls", "show", "verify"]


def list_manifests(client: S3Client, prefix_uri: str) -> Iterator[str]:
    """URIs of every manifest under ``s3://bucket/prefix``, paging through the listing."""
    return _listing(client, prefix_uri)


def show(args: argparse.Namespace) -> int:
    """``exportctl show URI [--json]``: print an artifact's manifest."""
    manifest = read_manifest(make_s3_client(), args.uri)
    if args.json:
        sys.stdout.write(manifest.to_json().decode() + "\n")
    else:
        out.print(JSON(manifest.to_json().decode(), sort_keys=True), soft_wrap=True)
    return 0


def _ls_rows(client: S3Client, prefix: str) -> tuple[list[dict[str, Any]], list[tuple[str, str]]]:
    """The exports under ``prefix``, and each manifest that cannot be read with the reason
    (too large, nested too deep, not JSON, invalid, under a key that is no valid URI)."""
    rows = []
    invalid: list[tuple[str, str]] = []
    for uri in list_manifests(client, prefix):
        try:
            m = read_manifest(client, uri)
        except (SerializerError, RecursionError) as exc:
            invalid.append((uri, str(exc) or type(exc).__name__))
            continue
        rows.append(
            {
                "name": m.spec.get("name", ""),
                "artifact_uri": m.artifact.uri,
                "size": m.artifact.size,
                "torch": m.producer.torch,
                "format": m.artifact.format,
                "format_version": m.artifact.format_version,
                "created_at": m.created_at.isoformat(),
                "verified": None if m.verification is None else m.verification.passed,
            }
        )
    return rows, invalid


def ls(args: argparse.Namespace) -> int:
    """``exportctl ls PREFIX [--json]``: a table (or JSON lines) of the exports under a prefix.

    A manifest that cannot be read is shown as invalid, with the reason, on stderr; the
    others are listed, and the exit status is 1 where any was invalid.
    """
    rows, invalid = _ls_rows(make_s3_client(), args.prefix)
    for uri, reason in invalid:
        console.print(f"[red]invalid[/red] {escape(ascii(uri)[1:-1])}: {escape(reason)}")
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
        return 1 if invalid else 0
    table = Table("name", "format", "size", "torch", "created", "verified", "artifact")
    for row in rows:
        verified = {None: "-", True: "[green]yes[/green]", False: "[red]no[/red]"}[row["verified"]]
        table.add_row(
            row["name"],
            row["format"],
            f"{row['size']:,}",
            row["torch"],
            row["created_at"][:19],
            verified,
            row["artifact_uri"],
        )
    out.print(table)
    console.print(f"{len(rows)} exports under {args.prefix}" + (f", {len(invalid)} invalid" if invalid else ""))
    return 1 if invalid else 0


def verify(args: argparse.Namespace) -> int:
    """``exportctl verify URI``: check an artifact step by step; exit 1 unless every step passed."""
    # Deferred: it imports torch, which ls and show do without.
    from serializer.consumer.verify import verify_artifact

    columns = (TextColumn("downloading"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("download", total=None)
        report = verify_artifact(
            make_s3_client(),
            args.uri,
            progress=lambda n: bar.advance(task, n),
            on_manifest=lambda m: bar.update(task, total=m.artifact.size),
        )
    for step in report.steps:
        mark = "[green]ok[/green]  " if step.ok else "[red]FAIL[/red]"
        out.print(f"{mark} {step.name:<13} {step.detail}")
    out.print(f"{'verified' if report.ok else 'NOT verified'}: {args.uri}")
    return 0 if report.ok else 1


def extra(args: argparse.Namespace) -> int:
    """``exportctl extra URI NAME [--no-manifest]``: one extra file's bytes to stdout."""
    client = make_s3_client()
    manifest = None if args.no_manifest else read_manifest(client, args.uri)
    sys.stdout.buffer.write(read_extra_file(client, args.uri, args.name, manifest=manifest))
    sys.stdout.buffer.flush()
    return 0
