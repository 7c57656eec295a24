"""``exportctl``: the command-line tool (rich tables and progress bars; one-line errors).

:mod:`.parser` holds the command line; the commands live by concern: :mod:`.consumer`
(``ls``, ``show``, ``verify``, ``extra``), :mod:`.jobs` (``submit``, ``status``,
``reexport``), :mod:`.triton` and :mod:`.demo`.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Sequence

from botocore.exceptions import BotoCoreError, ClientError

from serializer.errors import SerializerError

from ..errors import ExportError
from . import consumer, demo, jobs, triton
from .consumer import list_manifests
from .output import CommandError, print_error
from .parser import build_parser

__all__ = ["CommandError", "list_manifests", "main"]

#: Each command's handler: it returns the exit status.
HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "demo": demo.demo,
    "submit": jobs.submit,
    "status": jobs.status,
    "show": consumer.show,
    "ls": consumer.ls,
    "verify": consumer.verify,
    "extra": consumer.extra,
    "reexport": jobs.reexport,
    "triton": triton.triton,
}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``exportctl``; returns the exit status."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return HANDLERS[args.command](args)
    except (CommandError, ExportError, SerializerError, ValueError, BotoCoreError, ClientError, OSError) as exc:
        print_error(exc)  # as text: an error may quote a manifest's or an archive's values
        return 1
    except KeyboardInterrupt:
        return 130
