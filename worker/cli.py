"""``exportctl``: the command-line tool (rich tables and progress bars; one-line errors)."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.json import JSON
from rich.markup import escape
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeElapsedColumn, TransferSpeedColumn

from serializer.errors import SerializerError
from serializer.formats import FORMATS
from serializer.s3.client import S3Client

from .errors import ExportError
from .settings import POLICIES

console = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False, soft_wrap=True)

#: Seconds between polls of a job's state while waiting.
POLL_INTERVAL = 0.2
#: Seconds the demo waits for its worker to answer a ping.
WORKER_START_TIMEOUT = 90.0

#: The bundled example the demo exports.
DEMO_SPEC: dict[str, Any] = {
    "name": "tiny-classifier",
    "builder": "worker.examples:tiny_classifier",
    "kwargs": {"in_features": 16, "hidden": 32, "classes": 4},
    "method": "script",
    "example_inputs": [{"shape": [2, 16], "dtype": "float32"}],
    "device": "cpu",
    "extra_files": {"labels.txt": "cat\ndog\nbird\nfish\n", "README.md": {"text": "A tiny demo classifier.\n"}},
    "metadata": {"team": "demo"},
}


class CommandError(Exception):
    """Raised for an expected failure the CLI reports as one line with a non-zero exit."""


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``exportctl``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="exportctl", description="Export PyTorch models to TorchScript (or .pt2, torch.export) archives in S3."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole service on an embedded default and export an example")
    demo.add_argument("--bucket", default="export-demo", help="bucket to write to (created if missing)")
    demo.add_argument("--format", choices=FORMATS, default="torchscript", help="archive format of the example export")

    submit = sub.add_parser("submit", help="validate a spec and enqueue its export")
    submit.add_argument("spec", help="spec JSON file, or - for standard input")
    submit.add_argument("--wait", action="store_true", help="show progress and wait for the result")
    submit.add_argument("--timeout", type=float, default=3600, help="seconds to wait with --wait")

    status = sub.add_parser("status", help="state of a job")
    status.add_argument("task_id")

    show = sub.add_parser("show", help="print an artifact's manifest")
    show.add_argument("uri", help="s3:// URI of the artifact (.pt or .pt2) or its manifest")
    show.add_argument("--json", action="store_true", help="raw canonical JSON")

    ls = sub.add_parser("ls", help="list the exports under a prefix")
    ls.add_argument("prefix", help="s3://bucket/prefix")
    ls.add_argument("--json", action="store_true", help="one JSON object per export, for scripts")

    verify = sub.add_parser("verify", help="check an artifact: manifest, compatibility, checksum, load, self-check")
    verify.add_argument("uri", help="s3:// URI of the artifact (.pt or .pt2) or its manifest")

    extra = sub.add_parser("extra", help="write one extra file's bytes to stdout (range reads)")
    extra.add_argument("uri", help="s3:// URI of the artifact (.pt or .pt2)")
    extra.add_argument("name", help="the extra file's name in the archive")
    extra.add_argument("--no-manifest", action="store_true", help="find it from the zip's directory, not the manifest")

    reexport = sub.add_parser("reexport", help="re-export what a policy picks under a prefix or from a catalog")
    reexport.add_argument("source", help="s3://bucket/prefix of exports, or a catalog of specs (.jsonl, .yaml)")
    reexport.add_argument("--policy", choices=POLICIES, default=POLICIES[0])
    reexport.add_argument(
        "--to-format",
        choices=FORMATS,
        default=None,
        help="convert every spec to this format (pt2: a .pt2 export next to each TorchScript one)",
    )
    reexport.add_argument("--dry-run", action="store_true", help="list what would run and why; enqueue nothing")
    reexport.add_argument("--wait", action="store_true", help="show done / failed / remaining until the run ends")
    reexport.add_argument("--window", type=int, default=None, help="exports queued or running at once")
    reexport.add_argument("--report-to", default=None, help="s3://bucket/prefix for the run's report")
    reexport.add_argument("--timeout", type=float, default=24 * 3600, help="seconds to wait with --wait")
    reexport.add_argument("--json", action="store_true", help="with --dry-run: one JSON object per candidate")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    handlers = {
        "demo": _demo,
        "submit": _submit,
        "status": _status,
        "show": _show,
        "ls": _ls,
        "verify": _verify,
        "extra": _extra,
        "reexport": _reexport,
    }
    try:
        return handlers[args.command](args)
    except (CommandError, ExportError, SerializerError, ValueError, BotoCoreError, ClientError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        return 1
    except KeyboardInterrupt:
        return 130


def _load_spec_file(path: str) -> dict[str, Any]:
    try:
        text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read spec {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise CommandError(f"spec {path} is not a JSON object")
    return data


def _submit(args: argparse.Namespace) -> int:
    from .tasks import submit_export

    result = submit_export(_load_spec_file(args.spec))
    console.print(f"submitted {result.id}")
    if not args.wait:
        out.print(result.id)
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
    columns = (TextColumn("{task.description:<11}"), BarColumn(), DownloadColumn(), TransferSpeedColumn())
    with Progress(*columns, TimeElapsedColumn(), console=console, transient=False) as bar:
        task = bar.add_task("queued", total=None)
        while True:
            state, info = result.state, result.info
            if state == "PROGRESS" and isinstance(info, dict):
                total = info.get("total")
                bar.update(task, description=str(info.get("stage", "running")), completed=info.get("bytes", 0))
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


def _status(args: argparse.Namespace) -> int:
    from celery.result import AsyncResult

    from .celery import app

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


def _show(args: argparse.Namespace) -> int:
    from serializer.manifest.store import read_manifest
    from serializer.s3.client import make_s3_client

    manifest = read_manifest(make_s3_client(), args.uri)
    if args.json:
        sys.stdout.write(manifest.to_json().decode() + "\n")
    else:
        out.print(JSON(manifest.to_json().decode(), sort_keys=True), soft_wrap=True)
    return 0


def list_manifests(client: S3Client, prefix_uri: str) -> Iterator[str]:
    """URIs of every manifest under ``s3://bucket/prefix``, paging through the listing."""
    from .selection import list_manifests as listing

    return listing(client, prefix_uri)


def _reexport(args: argparse.Namespace) -> int:
    from .selection import check_source

    source = check_source(args.source)
    if args.window is not None and args.window < 1:
        raise CommandError(f"--window must be at least 1, got {args.window}")
    if args.dry_run:
        return _reexport_dry_run(source, args.policy, as_json=args.json, to_format=args.to_format)
    from .tasks import reexport

    options = {"policy": args.policy, "window": args.window, "report_to": args.report_to}
    if args.to_format:
        options["to_format"] = args.to_format
    result = reexport.apply_async(args=[source], kwargs=options)
    to = f", to {args.to_format}" if args.to_format else ""
    console.print(f"bulk run {result.id} of {source} ({args.policy}{to})")
    if not args.wait:
        out.print(result.id)
        return 0
    report = wait_for_bulk_run(result, args.timeout)
    sys.stdout.write(json.dumps(report, indent=2, sort_keys=True) + "\n")
    return 0 if report.get("status") == "finished" and not report["counts"]["failed"] else 1


def _reexport_dry_run(source: str, policy: Any, *, as_json: bool, to_format: Any = None) -> int:
    from serializer.s3.client import make_s3_client

    from .selection import plan
    from .settings import Settings

    counts: dict[str, int] = {}
    for decision in plan(make_s3_client(), source, policy, Settings(), to_format):
        counts[decision.action] = counts.get(decision.action, 0) + 1
        if as_json:
            sys.stdout.write(json.dumps(decision.to_json(), sort_keys=True) + "\n")
        else:
            name, reason, where = (escape(v) for v in (decision.name, decision.reason, decision.source))
            out.print(f"{decision.action:<9} {name}  [dim]{reason}[/dim]  {where}")
    runs = counts.get("export", 0) + counts.get("replace", 0)
    summary = ", ".join(f"{n} {action}" for action, n in sorted(counts.items())) or "nothing selected"
    console.print(f"dry run: {runs} would run ({summary}); nothing was enqueued")
    return 0


def wait_for_bulk_run(result: Any, timeout: float) -> dict[str, Any]:
    """Poll a bulk run, drawing done / failed / remaining, until its report arrives.

    Raises:
        CommandError: the run was refused or failed, or did not end within ``timeout``.
    """
    from .bulk import BulkRun
    from .settings import Settings
    from .tasks import redis_client

    settings = Settings()
    deadline = time.monotonic() + timeout
    columns = (
        TextColumn("{task.description:<9}"),
        BarColumn(),
        TextColumn("{task.fields[done]}/{task.fields[selected]} done, {task.fields[failed]} failed"),
        TextColumn("{task.fields[remaining]} remaining"),
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
            if time.monotonic() > deadline:
                raise CommandError(f"bulk run {result.id} did not finish within {timeout:.0f} s (still {state})")
            time.sleep(POLL_INTERVAL)


def _ls(args: argparse.Namespace) -> int:
    from rich.table import Table

    from serializer.manifest.store import read_manifest
    from serializer.s3.client import make_s3_client

    client = make_s3_client()
    rows = []
    for uri in list_manifests(client, args.prefix):
        m = read_manifest(client, uri)
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
    if args.json:
        for row in rows:
            sys.stdout.write(json.dumps(row, sort_keys=True) + "\n")
        return 0
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
    console.print(f"{len(rows)} exports under {args.prefix}")
    return 0


def _verify(args: argparse.Namespace) -> int:
    from serializer.consumer.verify import verify_artifact
    from serializer.s3.client import make_s3_client

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


def _extra(args: argparse.Namespace) -> int:
    from serializer.consumer.extras import read_extra_file
    from serializer.manifest.store import read_manifest
    from serializer.s3.client import make_s3_client

    client = make_s3_client()
    manifest = None if args.no_manifest else read_manifest(client, args.uri)
    sys.stdout.buffer.write(read_extra_file(client, args.uri, args.name, manifest=manifest))
    sys.stdout.buffer.flush()
    return 0


@contextlib.contextmanager
def _demo_services(tmp: str) -> Iterator[dict[str, str]]:
    """Redis and S3 for the demo: the configured ones, or local ones started here."""
    from .local_services import moto_server, redis_server

    env = dict(os.environ)
    env.setdefault("AWS_ACCESS_KEY_ID", "demo")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("EXPORT_SPOOL_DIR", tmp)
    with contextlib.ExitStack() as stack:
        if "CELERY_BROKER_URL" not in env:
            with console.status("starting a local redis-server"):
                env["CELERY_BROKER_URL"] = stack.enter_context(redis_server())
            console.print(f"redis: {env['CELERY_BROKER_URL']}")
        if not (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL")):
            with console.status("starting an embedded S3 endpoint (moto)"):
                env["AWS_ENDPOINT_URL_S3"] = stack.enter_context(moto_server())
            console.print(f"S3 endpoint: {env['AWS_ENDPOINT_URL_S3']}")
        yield env


def _demo(args: argparse.Namespace) -> int:
    from .local_services import ServiceMissing, celery_worker

    with tempfile.TemporaryDirectory(prefix="export-worker-demo-") as tmp, contextlib.ExitStack() as stack:
        try:
            env = stack.enter_context(_demo_services(tmp))
        except ServiceMissing as exc:
            raise CommandError(str(exc)) from exc
        # The app reads its settings when first imported: from the services above.
        os.environ.update(env)
        log_path = os.path.join(tmp, "worker.log")
        proc = stack.enter_context(celery_worker(env, log_path=log_path))
        return _run_demo(args, proc, log_path)


def _run_demo(args: argparse.Namespace, proc: Any, log_path: str) -> int:
    import torch

    from serializer.consumer.open import open_artifact
    from serializer.s3.client import make_s3_client

    from .builders import example_inputs
    from .celery import app
    from .spec import parse_spec
    from .tasks import submit_export

    with console.status("starting a worker (celery -A worker worker -Q cpu)"):
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not app.control.ping(timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CommandError(f"the worker did not start; its log: {log_path}")
    console.print("worker: ready")

    client = make_s3_client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=args.bucket)
    spec = {**DEMO_SPEC, "destination": f"s3://{args.bucket}/demo"}
    if args.format != "torchscript":
        spec["format"] = args.format
    result = submit_export(spec)
    console.print(f"submitted export_model {result.id}")
    value = wait_with_progress(result, 300)
    console.print(f"stored {value['artifact_uri']} ({value['size']} bytes, sha256 {value['sha256'][:16]}...)")

    # A consumer's view: the manifest first (compatibility checked from it), then the
    # archive checked against it as it downloads, loaded on the CPU.
    loaded, manifest, extras = open_artifact(client, value["artifact_uri"], extra_names=["labels.txt", "README.md"])
    console.print(f"manifest {value['manifest_uri']}:")
    out.print(JSON(manifest.to_json().decode(), sort_keys=True), soft_wrap=True)
    model = loaded.module() if manifest.artifact.format == "pt2" else loaded
    parsed = parse_spec(spec)
    (example,) = example_inputs(parsed.example_inputs or [], parsed.seed, torch.device("cpu"))
    with torch.no_grad():
        logits = model(example)
    labels = extras["labels.txt"].decode().split()
    sys.stdout.write(
        json.dumps(
            {
                "loaded_from": manifest.artifact.uri,
                "format": manifest.artifact.format,
                "verification_passed": manifest.verification.passed if manifest.verification else None,
                "logits_shape": list(logits.shape),
                "predicted": [labels[i] for i in logits.argmax(dim=1).tolist()],
                "extra_files": {k: len(v) for k, v in extras.items() if not k.startswith("export_worker/")},
            },
            indent=2,
        )
        + "\n"
    )
    return 0 if manifest.verification and manifest.verification.passed else 1


if __name__ == "__main__":
    sys.exit(main())
