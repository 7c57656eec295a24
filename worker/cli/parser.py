"""``exportctl``'s command line: every command and option, parsed and nothing run."""

from __future__ import annotations

import argparse

from serializer.formats import FORMATS

from ..settings import DEMO_BUCKET, POLICIES
from .consumer import LS_WORKERS

__all__ = ["build_parser"]


def build_parser() -> argparse.ArgumentParser:
    """The ``exportctl`` parser: one sub-command per ``args.command``."""
    parser = argparse.ArgumentParser(
        prog="exportctl", description="Export PyTorch models to TorchScript (or .pt2, torch.export) archives in S3."
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="run the whole service on an embedded default and export an example")
    demo.add_argument("--bucket", default=DEMO_BUCKET, help="bucket to write to (created if missing)")
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
    _add_key(show)

    ls = sub.add_parser("ls", help="list the exports under a prefix")
    ls.add_argument("prefix", help="s3://bucket/prefix")
    ls.add_argument("--json", action="store_true", help="one JSON object per export, for scripts")
    ls.add_argument(
        "--workers",
        type=int,
        default=LS_WORKERS,
        metavar="N",
        help=f"manifests read at once (default {LS_WORKERS}; 1: one by one)",
    )

    verify = sub.add_parser("verify", help="check an artifact: manifest, compatibility, checksum, load, self-check")
    verify.add_argument("uri", help="s3:// URI of the artifact (.pt or .pt2) or its manifest")
    _add_key(verify)

    extra = sub.add_parser("extra", help="write one extra file's bytes to stdout (range reads)")
    extra.add_argument("uri", help="s3:// URI of the artifact (.pt or .pt2)")
    extra.add_argument("name", help="the extra file's name in the archive")
    extra.add_argument("--no-manifest", action="store_true", help="find it from the zip's directory, not the manifest")
    _add_key(extra)

    _add_reexport(sub)
    _add_triton(sub)
    return parser


def _add_key(command: argparse.ArgumentParser) -> None:
    command.add_argument(
        "--key",
        action="append",
        default=[],
        metavar="PEM",
        help="a trusted public key (repeat for several; with EXPORT_TRUSTED_KEYS): only an export one of "
        "them signed is used",
    )


def _add_reexport(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
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


def _add_triton(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    triton = sub.add_parser("triton", help="publish a TorchScript export into a Triton model repository in S3")
    triton.add_argument("uri", help="s3:// URI of the artifact (.pt) or its manifest")
    triton.add_argument("--repository", required=True, help="s3://bucket/prefix of the Triton model repository")
    triton.add_argument("--model", required=True, help="the model's name (its folder in the repository)")
    triton.add_argument("--version", type=int, required=True, help="the version folder (written once)")
    triton.add_argument(
        "--max-batch-size", type=int, default=0, metavar="B", help="Triton batching: dimension 0 is the batch (0: off)"
    )
    _add_key(triton)
