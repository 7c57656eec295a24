"""Reading an object back by parallel ranged GETs, in order, with bounded memory, checked
against its size and sha256 as it arrives."""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from itertools import islice

from botocore.exceptions import ClientError

from ..errors import ArchiveError
from .client import S3Client
from .retry import error_code
from .uri import parse_s3_uri

#: Bytes per ranged GET when downloading an archive.
RANGE_SIZE = 8 * 1024**2
#: Ranged GETs in flight; memory is at most ``RANGE_SIZE * (RANGE_IN_FLIGHT + 1)``.
RANGE_IN_FLIGHT = 4


def iter_object(
    client: S3Client,
    uri: str,
    size: int,
    *,
    range_size: int = RANGE_SIZE,
    max_in_flight: int = RANGE_IN_FLIGHT,
) -> Iterator[bytes]:
    """The bytes of an object of ``size`` bytes, in order, fetched by parallel ranged GETs.

    At most ``max_in_flight`` ranges are fetched ahead of the consumer.
    """
    target = parse_s3_uri(uri)

    def fetch(start: int) -> bytes:
        end = min(size, start + range_size) - 1
        resp = client.get_object(Bucket=target.bucket, Key=target.key, Range=f"bytes={start}-{end}")
        return bytes(resp["Body"].read())

    if size == 0:
        return
    with ThreadPoolExecutor(max_in_flight, thread_name_prefix="s3-range") as pool:
        starts = iter(range(0, size, range_size))
        # islice, not zip(starts, range(n)): zip would draw one start too many and drop it.
        window: deque[Future[bytes]] = deque(pool.submit(fetch, s) for s in islice(starts, max_in_flight))
        try:
            while window:
                chunk = window.popleft().result()
                nxt = next(starts, None)
                if nxt is not None:
                    window.append(pool.submit(fetch, nxt))
                yield chunk
        finally:
            for future in window:
                future.cancel()


def read_checked(
    client: S3Client,
    uri: str,
    *,
    size: int,
    sha256: str | None,
    sink: Callable[[bytes], object],
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stream the object at ``uri`` into ``sink``, checking size and sha256 (when given) as
    it arrives.

    Raises:
        ArchiveError: the stored bytes differ from the manifest's (size or sha256).
    """
    digest = hashlib.sha256()
    got = 0
    try:
        for chunk in iter_object(client, uri, size):
            digest.update(chunk)
            got += len(chunk)
            sink(chunk)
            if progress is not None:
                progress(len(chunk))
    except ClientError as exc:
        if error_code(exc) != "InvalidRange":
            raise
        # A range past the stored end: the object is shorter than the manifest says.
        raise ArchiveError(f"{uri}: shorter than the {size} bytes the manifest says ({error_code(exc)})") from exc
    if got != size:
        raise ArchiveError(f"{uri}: read {got} bytes, the manifest says {size}")
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ArchiveError(
            f"{uri}: sha256 {digest.hexdigest()} differs from the manifest's {sha256}; the object is corrupt"
        )


def download_checked(
    client: S3Client, uri: str, path: str, *, sha256: str | None = None, size: int | None = None
) -> None:
    """Stream the object at ``uri`` to ``path`` by parallel ranged GETs (bounded memory),
    checking its size and sha256 as it arrives.

    Raises:
        ArchiveError: the bytes differ from what was expected.
    """
    target = parse_s3_uri(uri)
    stored = int(client.head_object(Bucket=target.bucket, Key=target.key)["ContentLength"])
    if size is not None and stored != size:
        raise ArchiveError(f"{uri}: {stored} bytes stored, {size} expected")
    with open(path, "wb") as out:
        read_checked(client, uri, size=stored, sha256=sha256, sink=out.write)
