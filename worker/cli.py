"""``exportctl``: the command-line tool."""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

from botocore.exceptions import BotoCoreError, ClientError
from rich.console import Console
from rich.json import JSON
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TransferSpeedColumn

from serializer.errors import SerializerError

console = Console(stderr=True)
out = Console()


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``exportctl``; returns the exit status."""
    parser = argparse.ArgumentParser(prog="exportctl", description="Export PyTorch models to TorchScript in S3.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run an export end to end on an embedded S3 endpoint")
    demo.add_argument("--endpoint", help="use this S3 endpoint instead of starting one")
    demo.add_argument("--bucket", default="export-demo", help="bucket to write to (created if missing)")

    show = sub.add_parser("show", help="print an artifact's manifest")
    show.add_argument("uri", help="s3:// URI of the artifact (.pt) or its manifest")
    show.add_argument("--json", action="store_true", help="raw canonical JSON")

    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        if args.command == "demo":
            return _demo(args)
        if args.command == "show":
            return _show(args)
    except (SerializerError, ValueError, BotoCoreError, ClientError) as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False)
        return 1
    except KeyboardInterrupt:
        return 130
    parser.error(f"unknown command {args.command}")
    return 2  # pragma: no cover


def _show(args: argparse.Namespace) -> int:
    from serializer.client import make_s3_client
    from serializer.manifest import read_manifest

    manifest = read_manifest(make_s3_client(), args.uri)
    if args.json:
        sys.stdout.write(manifest.to_json().decode() + "\n")
    else:
        out.print(JSON(manifest.to_json().decode(), sort_keys=True), soft_wrap=True)
    return 0


@contextlib.contextmanager
def _endpoint(url: str | None) -> Iterator[str]:
    if url:
        yield url
        return
    from worker.local_services import moto_server

    os.environ.setdefault("AWS_ACCESS_KEY_ID", "demo")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    with contextlib.ExitStack() as stack:
        with console.status("starting an embedded S3 endpoint (moto)"):
            started = stack.enter_context(moto_server())
        console.print(f"embedded S3 endpoint: {started}")
        yield started


def _demo(args: argparse.Namespace) -> int:
    import torch

    from serializer.client import make_s3_client
    from serializer.loading import compare_outputs, load_artifact
    from serializer.manifest import (
        Verification,
        build_manifest,
        current_producer,
        manifest_uri_for,
        read_manifest,
        spec_digest,
        write_manifest,
    )
    from serializer.torchscript import UploadOptions, export_torchscript, quiet_torchscript_deprecation
    from worker.examples import tiny_classifier
    from worker.settings import Settings

    settings = Settings()
    with _endpoint(args.endpoint) as endpoint:
        client = make_s3_client(
            endpoint_url=endpoint,
            max_pool_connections=settings.max_in_flight,
            checksum_mode=settings.s3_checksum_mode,
        )
        with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
            client.create_bucket(Bucket=args.bucket)
        spec: dict[str, Any] = {
            "name": "tiny-classifier",
            "builder": "worker.examples:tiny_classifier",
            "kwargs": {"in_features": 16, "hidden": 32, "classes": 4},
            "method": "script",
            "example_inputs": [{"shape": [2, 16], "dtype": "float32"}],
            "device": "cpu",
            "extra_files": {"labels.txt": "cat\ndog\nbird\nfish\n", "README.md": "A tiny demo classifier.\n"},
            "destination": f"s3://{args.bucket}/demo",
            "metadata": {"team": "demo"},
        }
        digest = spec_digest(spec)
        uri = f"{spec['destination']}/{spec['name']}/{digest[:16]}/model.pt"

        module = tiny_classifier(**spec["kwargs"]).eval()
        torch.manual_seed(0)
        example = torch.randn(2, 16)
        with torch.no_grad():
            expected = module(example)
        with quiet_torchscript_deprecation():
            scripted = torch.jit.script(module)

        with Progress(
            TextColumn("uploading"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=console
        ) as bar:
            task = bar.add_task("upload", total=None)
            info = export_torchscript(
                scripted,
                uri,
                client=client,
                extra_files=spec["extra_files"],
                options=UploadOptions(
                    part_size=settings.part_size,
                    max_in_flight=settings.max_in_flight,
                    checksum_algorithm=settings.checksum_algorithm,
                    if_none_match=False,
                ),
                strategy=settings.upload_strategy,
                spool_dir=settings.spool_dir,
                progress=lambda n: bar.advance(task, n),
            )
        console.print(f"stored {info.uri} ({info.size} bytes, sha256 {info.sha256[:16]}...)")

        reloaded, _ = load_artifact(client, info.uri, sha256=info.sha256, size=info.size)
        with torch.no_grad():
            passed, max_abs, max_rel = compare_outputs(expected, reloaded(example), atol=1e-6, rtol=1e-5)
        manifest = build_manifest(
            info,
            spec=spec,
            spec_hash=digest,
            producer=current_producer("cpu"),
            verification=Verification(passed=passed, max_abs_diff=max_abs, max_rel_diff=max_rel, atol=1e-6, rtol=1e-5),
            metadata=spec["metadata"],
        )
        manifest_uri = manifest_uri_for(info.uri)
        write_manifest(client, manifest_uri, manifest)
        console.print(f"manifest {manifest_uri}:")
        out.print(JSON(manifest.to_json().decode(), sort_keys=True), soft_wrap=True)

        # A consumer's view: the manifest first, then the checked archive, loaded on the CPU.
        seen = read_manifest(client, manifest_uri)
        model, extras = load_artifact(
            client,
            seen.artifact.uri,
            extra_names=[e.name for e in seen.extra_files],
            sha256=seen.artifact.sha256,
            size=seen.artifact.size,
        )
        with torch.no_grad():
            logits = model(example)
        labels = extras["labels.txt"].decode().split()
        predicted = [labels[i] for i in logits.argmax(dim=1).tolist()]
        sys.stdout.write(
            json.dumps(
                {
                    "loaded_from": seen.artifact.uri,
                    "verification_passed": seen.verification.passed if seen.verification else None,
                    "logits_shape": list(logits.shape),
                    "predicted": predicted,
                    "extra_files": {k: len(v) for k, v in extras.items()},
                },
                indent=2,
            )
            + "\n"
        )
        return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
