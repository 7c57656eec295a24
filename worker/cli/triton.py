"""``exportctl triton``: publish a TorchScript export into a Triton model repository in S3."""

from __future__ import annotations

import argparse
import json
import sys

from serializer.s3.client import make_s3_client

from ..settings import Settings
from .consumer import trusted_keys

__all__ = ["triton"]


def triton(args: argparse.Namespace) -> int:
    """``exportctl triton URI --repository S3 --model NAME --version N [--max-batch-size B] [--key PEM]``:
    copy the export's archive to ``<repository>/<model>/<version>/model.pt`` (server side)
    and write the model's ``config.pbtxt``; prints the publication as JSON.

    The repository must lie in ``EXPORT_WRITE_SCOPES`` (as the workers' deployment sets
    them); with keys, only an export one of them signed is published.
    """
    # Deferred: it imports torch (to read the build record), which ls and show do without.
    from ..triton import publish_to_triton

    publication = publish_to_triton(
        make_s3_client(),
        args.uri,
        args.repository,
        args.model,
        args.version,
        max_batch_size=args.max_batch_size,
        write_scopes=Settings().write_scopes,
        trusted=trusted_keys(args),
    )
    sys.stdout.write(json.dumps(publication.as_dict(), sort_keys=True) + "\n")
    return 0
