"""Reading an object back by ranged GETs: one bounded range (:func:`read_range`,
:func:`read_tail`), the whole object by parallel ranges, in order, with bounded memory,
checked against its size and sha256 as it arrives (:func:`iter_object`,
:func:`read_checked`), or into a file, each range written at its offset by a tuned number
of GETs in flight, checked in one pass (:func:`download_checked`, on
:mod:`serializer.s3.inplace`).

Every range is checked before it is requested (its length against a cap, its end against
the object's size where known) and its reply before the body is read (the ``Content-Range``
against what was asked); bodies are read with a bounded ``read(n)``.  The GETs after the
first one of an object carry ``IfMatch`` with the ETag first seen, so an object replaced in
between is refused (412) instead of mixing two objects' bytes.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import uuid
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
from typing import Any

from botocore.exceptions import ClientError

from ..errors import ArchiveError
from .client import S3Client
from .inplace import CHUNK_SIZE, THROTTLE_CODES, THROTTLE_STATUSES, download_into, range_size_for
from .retry import error_code
from .tuner import DEFAULT_CAP, FREE_SLOT_START, ConcurrencyTuner
from .uri import parse_s3_uri

#: Bytes per ranged GET when downloading an archive.
RANGE_SIZE = 8 * 1024**2
#: Ranged GETs in flight; memory is at most ``RANGE_SIZE * (RANGE_IN_FLIGHT + 1)``.
RANGE_IN_FLIGHT = 4

_CONTENT_RANGE_RE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


@dataclass(frozen=True)
class RangeReply:
    """The bytes of one range, where they start, the object's size and its ETag."""

    data: bytes
    start: int
    total: int
    etag: str


def parse_content_range(value: str) -> tuple[int, int, int] | None:
    """``(first, last, total)`` of a ``Content-Range: bytes first-last/total``, else None."""
    match = _CONTENT_RANGE_RE.match(value.strip())
    if match is None:
        return None
    first, last, total = (int(g) for g in match.groups())
    return first, last, total


def same_etag(a: str, b: str) -> bool:
    """Whether two ETags name the same object (quotes and a weak ``W/`` aside)."""

    def bare(tag: str) -> str:
        return tag.removeprefix("W/").strip('"')

    return bare(a) == bare(b)


def read_range(
    client: S3Client,
    uri: str,
    start: int,
    length: int,
    *,
    max_bytes: int,
    what: str = "range",
    etag: str | None = None,
    total: int | None = None,
    cap_name: str = "read limit",
) -> RangeReply:
    """Bytes ``[start, start + length)`` of the object at ``uri``, by one GET.

    ``etag`` (the one seen first) is sent as ``IfMatch``; ``total`` (the object's size,
    where known) is checked before the request and against the reply; ``cap_name`` names
    the setting of ``max_bytes`` in the error.

    Raises:
        ArchiveError: the range is over ``max_bytes`` or outside the object (nothing read),
            the object is shorter, or it was replaced since ``etag`` was seen; ``what``
            names what was being read.
    """
    if start < 0 or length < 0:
        raise ArchiveError(f"{uri}: {what} at offset {start} of {length} bytes is not a valid range")
    if length > max_bytes:
        raise ArchiveError(f"{uri}: {what} of {length} bytes is more than the {max_bytes}-byte {cap_name}")
    if total is not None and start + length > total:
        raise ArchiveError(f"{uri}: {what} at bytes {start}..{start + length} lies outside the object ({total} bytes)")
    if length == 0:
        return RangeReply(b"", start, -1 if total is None else total, etag or "")
    reply = _get(client, uri, f"bytes={start}-{start + length - 1}", etag, what)
    first, last, size = _reply_range(reply)
    _check_same(uri, reply, etag, total, size)
    if first != start or last != start + length - 1:
        raise ArchiveError(
            f"{uri}: {what} at bytes {start}..{start + length} lies outside the object ({size} bytes); "
            "the object is shorter than expected"
        )
    return RangeReply(_read_body(uri, reply, length), start, size, str(reply.get("ETag", "")))


def read_tail(
    client: S3Client,
    uri: str,
    length: int,
    *,
    max_bytes: int,
    what: str = "tail",
    etag: str | None = None,
    cap_name: str = "read limit",
) -> RangeReply:
    """The last ``length`` bytes of the object at ``uri`` (all of it if shorter), by one GET.

    Raises:
        ArchiveError: ``length`` is over ``max_bytes`` (nothing read), the reply is not the
            object's end, or the object was replaced since ``etag`` was seen.
    """
    if length < 1:
        raise ArchiveError(f"{uri}: {what} of {length} bytes is not a valid range")
    if length > max_bytes:
        raise ArchiveError(f"{uri}: {what} of {length} bytes is more than the {max_bytes}-byte {cap_name}")
    reply = _get(client, uri, f"bytes=-{length}", etag, what)
    first, last, size = _reply_range(reply)
    _check_same(uri, reply, etag, None, size)
    n = min(length, size)
    if size and (last != size - 1 or first != size - n):
        raise ArchiveError(f"{uri}: asked for the last {n} bytes, got bytes {first}..{last + 1} of {size}")
    return RangeReply(_read_body(uri, reply, n), size - n, size, str(reply.get("ETag", "")))


def _get(client: S3Client, uri: str, spec: str, etag: str | None, what: str) -> Any:
    target = parse_s3_uri(uri)
    kwargs: dict[str, Any] = {"Bucket": target.bucket, "Key": target.key, "Range": spec}
    if etag:
        kwargs["IfMatch"] = etag
    try:
        return client.get_object(**kwargs)
    except ClientError as exc:
        code = error_code(exc)
        if code in ("PreconditionFailed", "412"):
            raise ArchiveError(
                f"{uri} was replaced while being read (its ETag is no longer {etag}); read it again"
            ) from exc
        if code == "InvalidRange":
            actual = exc.response.get("Error", {}).get("ActualObjectSize", "?")
            raise ArchiveError(
                f"{uri}: {what} ({spec}) lies outside the object ({actual} bytes); the object is shorter than expected"
            ) from exc
        raise


def _reply_range(reply: Any) -> tuple[int, int, int]:
    """``(first, last, total)`` of a reply; a reply without ``Content-Range`` is the whole
    object (an empty object has no range to give)."""
    parsed = parse_content_range(str(reply.get("ContentRange") or ""))
    if parsed is not None:
        return parsed
    size = int(reply.get("ContentLength", 0))
    return 0, size - 1, size


def _check_same(uri: str, reply: Any, etag: str | None, total: int | None, size: int) -> None:
    got = str(reply.get("ETag", ""))
    # A store that ignores IfMatch still names the object it answered with.
    if etag and got and not same_etag(got, etag):
        _close(reply)
        raise ArchiveError(f"{uri} was replaced while being read (ETag {got}, first {etag}); read it again")
    if total is not None and size != total:
        _close(reply)
        longer = "shorter" if size < total else "longer"
        raise ArchiveError(f"{uri}: {size} bytes stored, {longer} than the {total} bytes expected")


def _read_body(uri: str, reply: Any, n: int) -> bytes:
    """Exactly ``n`` bytes of a reply's body, read with a bound, or ArchiveError."""
    declared = reply.get("ContentLength")
    if declared is not None and int(declared) != n:
        _close(reply)
        raise ArchiveError(f"{uri}: the store answered {declared} bytes where {n} were asked")
    body = reply["Body"]
    try:
        data = bytes(body.read(n)) if n else b""
        extra = body.read(1) if n else b""
    finally:
        body.close()
    if len(data) != n or extra:
        raise ArchiveError(f"{uri}: the store sent {len(data) + len(extra)}+ bytes where {n} were asked")
    return data


def _close(reply: Any) -> None:
    body = reply.get("Body")
    if body is not None:
        body.close()


def iter_object(
    client: S3Client,
    uri: str,
    size: int,
    *,
    range_size: int = RANGE_SIZE,
    max_in_flight: int = RANGE_IN_FLIGHT,
    etag: str | None = None,
) -> Iterator[bytes]:
    """The bytes of an object of ``size`` bytes, in order, fetched by parallel ranged GETs.

    At most ``max_in_flight`` ranges are fetched ahead of the consumer.  Every GET carries
    ``IfMatch=etag``; without ``etag``, the first range is fetched alone and its ETag is
    sent with the rest.

    Raises:
        ArchiveError: the object is not ``size`` bytes, or was replaced while being read.
    """

    def fetch(start: int, tag: str | None) -> RangeReply:
        length = min(size, start + range_size) - start
        return read_range(client, uri, start, length, max_bytes=range_size, etag=tag, total=size)

    if size == 0:
        return
    begin = 0
    if etag is None:
        first = fetch(0, None)
        etag = first.etag or None
        begin = range_size
        yield first.data
    with ThreadPoolExecutor(max_in_flight, thread_name_prefix="s3-range") as pool:
        starts = iter(range(begin, size, range_size))
        # islice, not zip(starts, range(n)): zip would draw one start too many and drop it.
        window: deque[Future[RangeReply]] = deque(pool.submit(fetch, s, etag) for s in islice(starts, max_in_flight))
        try:
            while window:
                chunk = window.popleft().result()
                nxt = next(starts, None)
                if nxt is not None:
                    window.append(pool.submit(fetch, nxt, etag))
                yield chunk.data
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
    etag: str | None = None,
) -> None:
    """Stream the object at ``uri`` into ``sink``, checking size and sha256 (when given) as
    it arrives; every range is read from one version of the object (``etag``, or the
    first range's).

    Raises:
        ArchiveError: the stored bytes differ from the manifest's (size or sha256), or the
            object was replaced while being read.
    """
    digest = hashlib.sha256()
    got = 0
    for chunk in iter_object(client, uri, size, etag=etag):
        digest.update(chunk)
        got += len(chunk)
        sink(chunk)
        if progress is not None:
            progress(len(chunk))
    if got != size:
        raise ArchiveError(f"{uri}: read {got} bytes, the manifest says {size}")
    if sha256 is not None and digest.hexdigest() != sha256:
        raise ArchiveError(
            f"{uri}: sha256 {digest.hexdigest()} differs from the manifest's {sha256}; the object is corrupt"
        )


def download_checked(
    client: S3Client,
    uri: str,
    path: str,
    *,
    sha256: str | None = None,
    size: int | None = None,
    progress: Callable[[int], None] | None = None,
    tuner: ConcurrencyTuner | None = None,
    range_size: int | None = None,
) -> None:
    """Download the object at ``uri`` into the file ``path``, checked against ``size`` and
    ``sha256`` (when given).

    One HEAD gives the size and ETag; the file is created (replacing what was there) at
    that size, then ranged GETs, each with ``IfMatch`` set to the HEAD's ETag, write their
    bytes straight into their offsets, read from each reply in chunks of
    :data:`~serializer.s3.inplace.CHUNK_SIZE`.  The sha256 follows the finished prefix,
    read back from the file (see :mod:`serializer.s3.inplace`), so memory is at most
    ``CHUNK_SIZE * (tuner.cap + 1)`` whatever the object's size or the width.

    ``tuner``'s slots decide how many ranges are in flight (default: :func:`default_tuner`,
    which starts at 16 and grows while throughput grows, up to the client's connection pool;
    ``ConcurrencyTuner(fixed=n)`` for exactly ``n``); it is told of every chunk that
    arrives and of every SlowDown, 503 or 429 a GET meets, botocore's retried ones
    included.  ``range_size`` defaults to :func:`~serializer.s3.inplace.range_size_for`
    the object's size.  ``progress`` is called in this thread with the bytes that arrived
    since its last call.

    On any failure the file is removed and no thread of the download is left running.

    Raises:
        ArchiveError: the bytes differ from what was expected (size or sha256), or the
            object was replaced while being read.
        ClientError, BotoCoreError: a GET failed for good (after the retries of transient
            errors, which resume the range where it stopped).
    """
    target = parse_s3_uri(uri)
    head = client.head_object(Bucket=target.bucket, Key=target.key)
    stored = int(head["ContentLength"])
    if size is not None and stored != size:
        longer = "shorter" if stored < size else "longer"
        raise ArchiveError(f"{uri}: {stored} bytes stored, {longer} than the {size} bytes expected")
    etag = str(head.get("ETag") or "") or None
    tuner = tuner or default_tuner(client)

    def fetch(start: int, length: int, write: Callable[[bytes], None]) -> None:
        _fetch_into(client, uri, start, length, write, etag=etag, total=stored)

    with contextlib.ExitStack() as stack:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o666)
        stack.callback(os.close, fd)
        stack.push(_remove_on_failure(path))
        _preallocate(fd, stored)
        stack.enter_context(_throttle_signals(client, tuner))
        got = download_into(
            fd,
            stored,
            fetch,
            tuner=tuner,
            range_size=range_size or range_size_for(stored),
            digest=sha256 is not None,
            progress=progress,
        )
        if sha256 is not None and got != sha256:
            raise ArchiveError(f"{uri}: sha256 {got} differs from the manifest's {sha256}; the object is corrupt")


def _fetch_into(
    client: S3Client,
    uri: str,
    start: int,
    length: int,
    write: Callable[[bytes], None],
    *,
    etag: str | None,
    total: int,
) -> None:
    """GET bytes ``[start, start + length)`` and pass the body to ``write`` in chunks of at
    most ``CHUNK_SIZE``, checked like :func:`read_range` (Content-Range, ETag, size)."""
    reply = _get(client, uri, f"bytes={start}-{start + length - 1}", etag, "range")
    first, last, size = _reply_range(reply)
    _check_same(uri, reply, etag, total, size)
    if first != start or last != start + length - 1:
        _close(reply)
        raise ArchiveError(
            f"{uri}: range at bytes {start}..{start + length} was answered with bytes {first}..{last + 1}"
        )
    declared = reply.get("ContentLength")
    if declared is not None and int(declared) != length:
        _close(reply)
        raise ArchiveError(f"{uri}: the store answered {declared} bytes where {length} were asked")
    body = reply["Body"]
    try:
        remaining = length
        while remaining:
            data = body.read(min(CHUNK_SIZE, remaining))
            if not data:
                raise ArchiveError(f"{uri}: the range at byte {start} ended {remaining} bytes early")
            write(data)
            remaining -= len(data)
        if body.read(1):
            raise ArchiveError(f"{uri}: the store sent more than the {length} bytes asked at byte {start}")
    finally:
        body.close()


def default_tuner(client: S3Client) -> ConcurrencyTuner:
    """A tuner for one download into place with ``client``: from
    :data:`~serializer.s3.tuner.FREE_SLOT_START` ranges in flight (a range written into place
    holds one read chunk, not its bytes) up to :data:`~serializer.s3.tuner.DEFAULT_CAP`, and
    never more than the client's connection pool (a GET beyond it opens a connection that is
    thrown away after)."""
    pool = int(getattr(client.meta.config, "max_pool_connections", None) or 10)  # botocore's default
    cap = max(1, min(DEFAULT_CAP, pool))
    return ConcurrencyTuner(start=min(FREE_SLOT_START, cap), cap=cap)


def _preallocate(fd: int, size: int) -> None:
    """Set the file's size, and reserve its blocks where the filesystem can (a full disk
    fails here, before any GET)."""
    os.ftruncate(fd, size)
    if size and hasattr(os, "posix_fallocate"):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as exc:
            if exc.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
                raise


def _remove_on_failure(path: str) -> Callable[..., bool]:
    def remove(exc_type: type[BaseException] | None, *_: object) -> bool:
        if exc_type is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        return False

    return remove


@contextlib.contextmanager
def _throttle_signals(client: S3Client, tuner: ConcurrencyTuner) -> Iterator[None]:
    """Tell ``tuner`` of every throttled GetObject of ``client`` while the block runs: each
    try botocore makes, retried or not, is seen by its ``needs-retry`` event."""

    def seen(response: Any = None, **_: Any) -> None:
        if response is None:
            return None
        http, parsed = response
        code = str((parsed or {}).get("Error", {}).get("Code", ""))
        if getattr(http, "status_code", 0) in THROTTLE_STATUSES or code in THROTTLE_CODES:
            tuner.throttled()
        return None

    events = client.meta.events
    event, unique_id = "needs-retry.s3.GetObject", f"ranged-throttle-{uuid.uuid4().hex}"
    events.register(event, seen, unique_id=unique_id)
    try:
        yield
    finally:
        events.unregister(event, unique_id=unique_id)
