"""What signing costs an export, and what checking a signature costs a consumer, against
the unsigned path in the same run.

    python benchmarks/signing.py [--repeat 3] [--sizes 1,128] [--markdown FILE]

Starts its own moto S3 server (own process, HTTP on loopback).  Two tables:

1. Per export, by model size: ``run_export`` with and without ``EXPORT_SIGNING_KEY`` (the
   baseline, alternating), and the time of the signing step itself inside the signed runs
   (the statement, the ECDSA signature and the PutObject of ``model.sig``).  The statement
   uses the sha256 the upload computed: its time does not grow with the archive.
2. Per check, by curve: signing a manifest, and a consumer's ``check_signed`` (one bounded
   GET of the signature, the ECDSA verification, the digests), against the manifest's own
   GET (the baseline every consumer already pays).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import MiB

#: (in_features, hidden) of the example classifier giving about that many MiB of float32 weights.
_SHAPES = {1: (256, 1024), 16: (1024, 4096), 128: (4096, 8192), 512: (8192, 16384)}


def _median_ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def _key_files(folder: Path, curve: Any) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(curve)
    private, public = folder / f"{curve.name}.key", folder / f"{curve.name}.pub"
    private.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    public.write_bytes(
        key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    return private, public


def _exports(client: Any, bucket: str, keys: tuple[Path, Path], sizes: list[int], repeat: int) -> list[list[str]]:
    from worker.export import job, run_export
    from worker.settings import Settings
    from worker.spec import parse_spec

    signing_times: list[float] = []
    real_sign = job.sign_export

    def timed_sign(*args: Any, **kwargs: Any) -> str:
        start = time.perf_counter()
        try:
            return real_sign(*args, **kwargs)
        finally:
            signing_times.append(time.perf_counter() - start)

    job.sign_export = timed_sign  # type: ignore[assignment]
    rows = []
    for size in sizes:
        in_features, hidden = _SHAPES[size]
        plain, signed, steps = [], [], []
        for n in range(repeat):
            for key in (None, keys[0]):  # alternating: the same machine state for both
                spec = parse_spec({
                    "name": f"bench-{size}-{n}-{'signed' if key else 'plain'}-{uuid.uuid4().hex[:6]}",
                    "builder": "worker.examples:tiny_classifier",
                    "kwargs": {"in_features": in_features, "hidden": hidden, "classes": 4},
                    "example_inputs": [{"shape": [2, in_features], "dtype": "float32"}],
                    "destination": f"s3://{bucket}/bench",
                })  # fmt: skip
                settings = Settings(allowed_builders=("worker.examples",), signing_key=str(key) if key else None)
                start = time.perf_counter()
                result = run_export(spec, settings=settings, client=client)
                (signed if key else plain).append(time.perf_counter() - start)
                if key:
                    steps.append(signing_times[-1])
                    assert result["signature_uri"], result
        megabytes = result["size"] / MiB
        overhead = _median_ms(signed) - _median_ms(plain)
        rows.append([
            f"{megabytes:,.1f}", f"{_median_ms(plain):,.0f}", f"{_median_ms(signed):,.0f}", f"{overhead:+,.0f}",
            f"{_median_ms(steps):.1f}", f"{max(steps) * 1000:.1f}",
        ])  # fmt: skip
    job.sign_export = real_sign  # type: ignore[assignment]
    return rows


def _checks(client: Any, bucket: str, folder: Path, repeat: int) -> list[list[str]]:
    from cryptography.hazmat.primitives.asymmetric import ec

    return [_check_curve(client, bucket, folder, c, repeat) for c in (ec.SECP256R1(), ec.SECP384R1(), ec.SECP521R1())]


def _check_curve(client: Any, bucket: str, folder: Path, curve: Any, repeat: int) -> list[str]:
    from serializer.manifest.store import read_manifest_raw
    from serializer.signing.bundle import sign_files
    from serializer.signing.keys import SigningKey, TrustedKeys
    from serializer.signing.store import check_signed, sign_export, signature_entry

    private, public = _key_files(folder, curve)
    key, trusted = SigningKey.from_file(private), TrustedKeys.from_files([public])
    manifest_uri, manifest = _signed_manifest(client, bucket, key, signature_entry)
    raw = manifest.to_json()
    sign_export(
        client, key, model_name="bench", artifact_uri=manifest.artifact.uri,
        artifact_sha256=manifest.artifact.sha256, manifest_uri=manifest_uri, manifest_bytes=raw,
    )  # fmt: skip
    files = {"model.pt": manifest.artifact.sha256, "model.manifest.json": "ab" * 32}
    timings: dict[str, list[float]] = {"get": [], "sign": [], "check": []}
    steps: dict[str, Callable[[], object]] = {
        "get": lambda: read_manifest_raw(client, manifest_uri),
        "sign": lambda: sign_files(key, "bench", files),
        "check": lambda: check_signed(client, manifest_uri, manifest, raw, trusted),
    }
    for _ in range(repeat * 20):
        for name, step in steps.items():
            start = time.perf_counter()
            step()
            timings[name].append(time.perf_counter() - start)
    return [curve.name] + [f"{_median_ms(timings[n]):.2f}" for n in ("get", "sign", "check")]


def _signed_manifest(client: Any, bucket: str, key: Any, signature_entry: Any) -> tuple[str, Any]:
    from datetime import UTC, datetime

    from serializer.archive.info import ArchiveInfo
    from serializer.manifest.model import Producer, build_manifest, manifest_uri_for
    from serializer.manifest.store import write_manifest

    uri = f"s3://{bucket}/checks/{uuid.uuid4().hex[:8]}/model.pt"
    archive = ArchiveInfo(
        uri=uri, size=1, sha256="cd" * 32, etag='"x"', format="torchscript", format_version=1, archive_root="model",
        extra_files=(),
    )  # fmt: skip
    manifest = build_manifest(
        archive, spec={"name": "bench"}, spec_hash="ef" * 32,
        producer=Producer(torch="2", python="3", export_worker="0", device="cpu", host="bench"),
        created_at=datetime(2026, 1, 1, tzinfo=UTC), signature=signature_entry(key, uri),
    )  # fmt: skip
    write_manifest(client, manifest_uri_for(uri), manifest)
    return manifest_uri_for(uri), manifest


def _table(title: str, header: list[str], rows: list[list[str]]) -> str:
    lines = [f"### {title}", "", "| " + " | ".join(header) + " |", "|" + "---:|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=3, help="exports per size and setting (checks: 20x this)")
    parser.add_argument("--sizes", default="1,128", help=f"model sizes in MiB, of {sorted(_SHAPES)}")
    parser.add_argument("--markdown", default=None, help="also write the tables to this file")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]

    from cryptography.hazmat.primitives.asymmetric import ec

    from serializer.s3.client import make_s3_client
    from worker.cli.demo_services import moto_server

    with moto_server() as endpoint, tempfile.TemporaryDirectory(prefix="signing-bench-") as tmp:
        os.environ.update(
            AWS_ENDPOINT_URL_S3=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench",
            AWS_DEFAULT_REGION="us-east-1", EXPORT_READ_SCOPES="*", EXPORT_WRITE_SCOPES="*",
        )  # fmt: skip
        client = make_s3_client(endpoint_url=endpoint)
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        client.create_bucket(Bucket=bucket)
        exports = _exports(client, bucket, _key_files(Path(tmp), ec.SECP256R1()), sizes, args.repeat)
        checks = _checks(client, bucket, Path(tmp), args.repeat)
    report = _table(
        f"Signing an export (P-256), moto server over HTTP, median of {args.repeat}",
        ["archive MiB", "unsigned ms (baseline)", "signed ms", "difference ms", "signing step ms", "max step ms"],
        exports,
    ) + "\n" + _table(
        f"Signing and checking one manifest, by curve, median of {args.repeat * 20}",
        ["curve", "manifest GET ms (baseline)", "sign ms", "check_signed ms (GET + verify)"],
        checks,
    )  # fmt: skip
    print(report)
    if args.markdown:
        Path(args.markdown).write_text(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
