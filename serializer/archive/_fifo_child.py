"""Child uploader of the ``fifo`` export path (see :mod:`serializer.archive.fifo`); imports no torch."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
from dataclasses import asdict
from typing import Any

from ..errors import ObjectExists
from ..s3.client import make_s3_client
from ..s3.multipart import MultipartWriter
from ..s3.parts import DEFAULT_MAX_IN_FLIGHT
from .zipindex import ZipStreamIndexer, index_to_json

#: Bytes read from the pipe at a time.
READ_CHUNK = 1024**2
#: Pipe buffer asked of the kernel (Linux F_SETPIPE_SZ), so the saver blocks less often.
PIPE_SIZE = 1024**2


def _say(message: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def main() -> int:
    config = json.loads(sys.stdin.readline())
    # Opened without blocking so the parent can open its end; reading waits for "go",
    # sent once the parent holds a write end (before that, a read would see EOF).
    fd = os.open(config["fifo"], os.O_RDONLY | os.O_NONBLOCK)
    with contextlib.suppress(OSError):  # a larger pipe is an optimisation only
        fcntl.fcntl(fd, getattr(fcntl, "F_SETPIPE_SZ", 1031), PIPE_SIZE)
    client = make_s3_client(
        endpoint_url=config["endpoint_url"],
        region_name=config["region_name"],
        checksum_mode=config["checksum_mode"],
        max_pool_connections=config["max_in_flight"] or DEFAULT_MAX_IN_FLIGHT,
    )
    writer = MultipartWriter(
        client,
        config["bucket"],
        config["key"],
        part_size=config["part_size"],
        max_in_flight=config["max_in_flight"],
        checksum_algorithm=config["checksum_algorithm"],
        if_none_match=config["if_none_match"],
        extra_args=config["extra_args"],
    )
    _say({"ready": True})
    if not json.loads(sys.stdin.readline() or "{}").get("go"):
        writer.abort()
        return 1
    os.set_blocking(fd, True)
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        try:
            indexer = ZipStreamIndexer()
            while chunk := pipe.read(READ_CHUNK):
                indexer.feed(chunk)
                writer.write(chunk)
            _say({"index": index_to_json(indexer.finish())})
            if not json.loads(sys.stdin.readline() or "{}").get("commit"):
                writer.abort()
                return 1
            writer.close()
        except Exception as exc:  # noqa: BLE001 - every failure is reported to the parent
            writer.abort(exc)
            # Read the rest of the save before reporting: torch aborts the whole saving
            # process (std::terminate) when its pipe closes under it mid-save.
            while pipe.read(READ_CHUNK):
                pass
            _say({"error": str(exc), "kind": type(exc).__name__ if isinstance(exc, ObjectExists) else "UploadFailed"})
            return 1
    assert writer.result is not None
    _say({"result": asdict(writer.result)})
    return 0


if __name__ == "__main__":
    sys.exit(main())
