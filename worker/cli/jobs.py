"""The producer's commands: ``submit``, ``status`` and ``reexport``, and the progress bars that
wait for a job or a bulk run."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn
from rich.text import Text

from serializer.s3.client import make_s3_client

from ..bulk import BulkRun, check_source, plan
from ..errors import ExportError
from ..scopes import check_read, check_write
from ..settings import Settings
from .output import CommandError, console, out, safe_text, text

__all__ = ["POLL_INTERVAL", "reexport", "status", "submit", "wait_for_bulk_run", "wait_with_progress"]

#: Seconds between polls of a job's state while waiting.
POLL_INTERVAL = 0.2


def _load_spec_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CommandError(f"spec {path} is not a JSON object")
    return data


def submit(args: argparse.Namespace) -> int:
    """``exportctl submit SPEC [--wait]``: enqueue an export; print its id, or wait for its result."""
    # Deferred: the tasks import Celery and torch, which ls and show do without.
    from ..tasks import submit_export

    result = submit_export(_load_spec_file(args.spec))
    console.print(Text.assemble("submitted ", text(result.id)))
    if not args.wait:
        out.print(text(result.id))
        return 0
    value = wait_with_progress(result, args.timeout)
    sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")
    return 0


def wait_with_progress(result: Any, timeout: float) -> dict[str, Any]:
    """Poll a job, drawing its stage and upload progress, until it ends.

    Raises:
        CommandError: the job failed (its message) or did not end within ``timeout``.
    """
    deadline = time.monotonic() + timeout
    # markup=False: the stage comes from the job's result backend, text from outside.
    columns = (TextColumn("{task.description:<11}", markup=False), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("queued", total=None)
        while True:
            state, info = result.state, result.info
            if state == "PROGRESS" and isinstance(info, dict):
                total = info.get("total")
                bar.update(task, description=safe_text(info.get("stage", "running")), completed=info.get("bytes", 0))
                if total:
                    bar.update(task, total=total)
            elif state == "STARTED":
                bar.update(task, description="started")
            elif state == "SUCCESS":
                value: dict[str, Any] = result.get()
                bar.update(task, description="done", total=value.get("size") or 1, completed=value.get("size") or 1)
                return value
            elif state in ("FAILURE", "REVOKED"):
                raise CommandError(f"export failed: {type(info).__name__}: {info}")
            elif state == "RETRY":
                bar.update(task, description="retrying")
            if time.monotonic() > deadline:
                raise CommandError(f"job {result.id} did not finish within {timeout:.0f} s (still {state})")
            time.sleep(POLL_INTERVAL)


def status(args: argparse.Namespace) -> int:
    """``exportctl status TASK_ID``: a job's state as JSON; exit 1 if it failed."""
    # Deferred: Celery, which ls and show do without.
    from celery.result import AsyncResult

    # Deferred: the app, which imports Celery.
    from ..celery import app

    result = AsyncResult(args.task_id, app=app)
    info = result.info
    body = {
        "id": args.task_id,
        "state": result.state,
        "info": info
        if isinstance(info, dict | list | str | int | float | type(None))
        else f"{type(info).__name__}: {info}",
    }
    sys.stdout.write(json.dumps(body, indent=2, sort_keys=True, default=str) + "\n")
    return 0 if result.state != "FAILURE" else 1


def reexport(args: argparse.Namespace) -> int:
    """``exportctl reexport SOURCE``: plan (``--dry-run``) or enqueue a bulk re-export."""
    source = check_source(args.source)
    _check_reexport_scopes(source, args.report_to)
    if args.window is not None and args.window < 1:
        raise CommandError(f"--window must be at least 1, got {args.window}")
    if args.dry_run:
        return _reexport_dry_run(source, args.policy, as_json=args.json, to_format=args.to_format)
    # Deferred: the tasks import Celery and torch, which a dry run does without.
    from ..tasks import reexport as reexport_task

    options = {"policy": args.policy, "window": args.window, "report_to": args.report_to}
    if args.to_format:
        options["to_format"] = args.to_format
    result = reexport_task.apply_async(args=[source], kwargs=options)
    to = f", to {args.to_format}" if args.to_format else ""
    console.print(Text.assemble("bulk run ", text(result.id), " of ", text(source), f" ({args.policy}{to})"))
    if not args.wait:
        out.print(text(result.id))
        return 0
    report = wait_for_bulk_run(result, args.timeout)
    sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0 if report.get("status") == "finished" and not report["counts"]["failed"] else 1


def _check_reexport_scopes(source: str, report_to: str | None) -> None:
    """Refuse here, before anything is sent or read, a selection outside this side's read
    scopes or a ``--report-to`` outside its write scopes (the worker checks again)."""
    settings = Settings()
    if source.startswith("s3://"):
        check_read(settings.read_scopes, source, "source")
    if report_to is not None:
        check_write(settings.write_scopes, report_to, "report_to")


def _reexport_dry_run(source: str, policy: Any, *, as_json: bool, to_format: Any = None) -> int:
    counts: dict[str, int] = {}
    for decision in plan(make_s3_client(), source, policy, Settings(), to_format):
        counts[decision.action] = counts.get(decision.action, 0) + 1
        if as_json:
            sys.stdout.write(json.dumps(decision.to_json(), sort_keys=True) + "\n")
        else:
            line = Text.assemble(
                text(f"{decision.action:<9}"),
                " ",
                text(decision.name),
                "  ",
                text(decision.reason, style="dim"),
                "  ",
                text(decision.source),
            )
            out.print(line)
    runs = counts.get("export", 0) + counts.get("replace", 0)
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "nothing selected"
    console.print(f"dry run: {runs} would run ({summary}); nothing was enqueued")
    return 0


def _bulk_progress(bar: Progress, task: Any, run: BulkRun) -> None:
    p = run.progress()
    remaining = p["remaining"] if p["planned"] else f"{p['remaining']}+"
    bar.update(
        task,
        description="planning" if not p["planned"] else "running",
        total=max(p["selected"], 1),
        completed=p["done"],
        done=p["done"],
        selected=p["selected"] if p["planned"] else f"{p['selected']}+",
        failed=p["failed"],
        remaining=remaining,
    )


def wait_for_bulk_run(result: Any, timeout: float) -> dict[str, Any]:
    """Poll a bulk run, drawing done / failed / remaining, until its report arrives.

    Raises:
        CommandError: the run was refused or failed, or did not end within ``timeout``.
    """
    # Deferred: the tasks import Celery and torch, which ls and show do without.
    from ..tasks import redis_client

    settings = Settings()
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description:<9}", markup=False),
        BarColumn(),
        TextColumn("{task.fields[done]}/{task.fields[selected]} done, {task.fields[failed]} failed", markup=False),
        TextColumn("{task.fields[remaining]} remaining", markup=False),
    )
    run: BulkRun | None = None
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("queued", total=None, done=0, selected="?", failed=0, remaining="?")
        while True:
            state = result.state
            if state == "SUCCESS":
                value: dict[str, Any] = result.get()
                bar.update(
                    task, description="done", total=value.get("selected") or 1, completed=value.get("selected") or 1
                )
                return value
            if state in ("FAILURE", "REVOKED"):
                info = result.info
                raise CommandError(f"bulk run failed: {type(info).__name__}: {info}")
            if run is None:
                with contextlib.suppress(ExportError):
                    run = BulkRun.load(redis_client(settings), result.id, settings)
            if run is not None:
                _bulk_progress(bar, task, run)
            if time.monotonic() > deadline:
                raise CommandError(f"bulk run {result.id} did not finish within {timeout:.0f} s (still {state})")
            time.sleep(POLL_INTERVAL)
