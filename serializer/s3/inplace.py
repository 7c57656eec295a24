"""Downloading an object into place: ranged GETs on a thread pool, each written at its
offset of the target file in bounded chunks, the sha256 taken in one pass over the
finished prefix, read back from the file.

This module knows no S3 call: it is given ``fetch(start, length, write)``, which GETs one
range and hands its body to ``write`` chunk by chunk (see
:func:`serializer.s3.ranged.download_checked`), and a
:class:`~serializer.s3.tuner.ConcurrencyTuner` whose slots decide how many ranges are in
flight (told of every chunk that arrives).

Why read the bytes back to hash them: a streaming sha256 must see the bytes in order, so
hashing them as they arrive would hold every range that finishes ahead of a slow one in
memory (up to the whole object).  Here a range goes straight to the file; the digest
follows the contiguous finished prefix, reading it back with ``pread`` in chunks (the page
cache still holds bytes just written, so this costs a memory copy, not a disk read).
Memory is at most ``chunk_size * (cap + 1)`` whatever the object's size: one chunk per
range in flight (``cap`` at most) and one being hashed.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import threading
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait

from .retry import RetryPolicy, error_code, http_status, is_transient
from .tuner import ConcurrencyTuner

log = logging.getLogger(__name__)

MiB = 1024**2
#: Bytes read from a reply's body (and read back to hash) at a time: the memory of one
#: range in flight.
CHUNK_SIZE = 1 * MiB
#: Smallest range: a GET's fixed cost (a round trip, a first byte) stays small against it.
MIN_RANGE_SIZE = 8 * MiB
#: Largest range: a retried range costs at most this much again.
MAX_RANGE_SIZE = 64 * MiB
#: Ranges an object is cut into where the bounds allow: about 4 per connection of the
#: tuner's cap (as parts are, ``serializer.s3.parts``), so the tuner has ranges to measure
#: with and the last ones are short: a range's time is what the tail of a download can
#: waste when connections idle while the last ranges finish.
RANGES_PER_OBJECT = 256
#: Seconds between two progress reports while no range finishes.
PROGRESS_INTERVAL = 0.1
#: Tries of one range (each resumes where the last stopped) on transient errors, on top of
#: botocore's own retries.
RANGE_RETRY = RetryPolicy(attempts=5, base_delay=0.2, max_delay=5.0)

#: Error codes and HTTP statuses of a store asking for fewer requests.
THROTTLE_CODES = frozenset(
    {
        "SlowDown",
        "ServiceUnavailable",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "RequestLimitExceeded",
    }
)
THROTTLE_STATUSES = frozenset({429, 503})

#: ``fetch(start, length, write)``: GET ``[start, start + length)`` and pass its body to
#: ``write`` in chunks of at most ``CHUNK_SIZE`` bytes, in order.
Fetch = Callable[[int, int, Callable[[bytes], None]], None]


def is_throttle(exc: BaseException) -> bool:
    """Whether ``exc`` is the store asking for fewer requests (SlowDown, 503, 429)."""
    return error_code(exc) in THROTTLE_CODES or http_status(exc) in THROTTLE_STATUSES


def range_size_for(size: int) -> int:
    """Bytes per ranged GET for an object of ``size`` bytes: about a
    :data:`RANGES_PER_OBJECT`-th of it in whole MiB, within
    :data:`MIN_RANGE_SIZE`..:data:`MAX_RANGE_SIZE`."""
    share = math.ceil(size / RANGES_PER_OBJECT / MiB) * MiB
    return max(MIN_RANGE_SIZE, min(MAX_RANGE_SIZE, share))


def plan_ranges(size: int, range_size: int) -> list[tuple[int, int]]:
    """``(start, end)`` of each range of an object of ``size`` bytes, in order."""
    if range_size < 1:
        raise ValueError(f"range size must be positive, got {range_size}")
    return [(start, min(size, start + range_size)) for start in range(0, size, range_size)]


class _Stopped(Exception):
    """Raised in a worker when the download was abandoned (another range failed)."""


class _Arrived:
    """Bytes that arrived since the last report, counted by the workers."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._n = 0

    def add(self, n: int) -> None:
        with self._lock:
            self._n += n

    def take(self) -> int:
        with self._lock:
            n, self._n = self._n, 0
        return n


class _PrefixDigest:
    """The sha256 of the contiguous finished prefix of the file, advanced as ranges finish,
    reading the bytes back in chunks."""

    def __init__(self, fd: int, ranges: list[tuple[int, int]], chunk_size: int) -> None:
        self._fd = fd
        self._ranges = ranges
        self._chunk = chunk_size
        self._finished: set[int] = set()
        self._next = 0
        self._sha = hashlib.sha256()

    def finished(self, index: int) -> None:
        self._finished.add(index)
        while self._next in self._finished:
            self._finished.discard(self._next)
            start, end = self._ranges[self._next]
            self._hash(start, end)
            self._next += 1

    def _hash(self, start: int, end: int) -> None:
        pos = start
        while pos < end:
            data = os.pread(self._fd, min(self._chunk, end - pos), pos)
            if not data:
                raise OSError(f"the file ends at byte {pos}, before its range ends at {end}")
            self._sha.update(data)
            pos += len(data)

    def hexdigest(self) -> str:
        if self._next != len(self._ranges):
            raise RuntimeError("the digest was asked for before every range finished")  # pragma: no cover
        return self._sha.hexdigest()


def _pwrite_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view, offset = view[n:], offset + n


class _RangeWriter:
    """Fetches one range into its offsets of the file, resuming where a transient error
    stopped it; counts what arrives; stops between chunks once ``stop`` is set."""

    def __init__(self, fd: int, fetch: Fetch, tuner: ConcurrencyTuner, retry: RetryPolicy) -> None:
        self.fd = fd
        self.fetch = fetch
        self.tuner = tuner
        self.retry = retry
        self.stop = threading.Event()
        self.arrived = _Arrived()

    def run(self, start: int, end: int) -> None:
        pos = start

        def write(data: bytes) -> None:
            nonlocal pos
            if self.stop.is_set():
                raise _Stopped
            if pos + len(data) > end:
                raise ValueError(f"a range of bytes {start}..{end} was sent bytes up to {pos + len(data)}")
            _pwrite_all(self.fd, data, pos)
            pos += len(data)
            self.tuner.record(len(data))
            self.arrived.add(len(data))

        for attempt in range(self.retry.attempts):
            try:
                self.fetch(pos, end - pos, write)
                return
            except _Stopped:
                raise
            except Exception as exc:
                if self.stop.is_set():
                    raise _Stopped from exc
                if is_throttle(exc):
                    # Usually seen already at botocore's tries; the tuner counts it once.
                    self.tuner.throttled()
                if attempt + 1 >= self.retry.attempts or not is_transient(exc):
                    raise
                log.info("range at byte %d failed (%s); trying again from byte %d", start, exc, pos)
                if self.stop.wait(self.retry.delay(attempt)):
                    raise _Stopped from exc


def download_into(
    fd: int,
    size: int,
    fetch: Fetch,
    *,
    tuner: ConcurrencyTuner,
    range_size: int,
    digest: bool = True,
    progress: Callable[[int], None] | None = None,
    retry: RetryPolicy = RANGE_RETRY,
) -> str | None:
    """Fill the file ``fd`` (already ``size`` bytes long) with the object's bytes, by
    ranges of ``range_size`` fetched on a pool of ``tuner.cap`` threads, each holding one
    of the tuner's slots; returns the sha256 of what was written (None without ``digest``).

    ``progress`` is called in the caller's thread with the bytes that arrived since its
    last call.  A range that fails with a transient error is fetched again from where it
    stopped, up to ``retry.attempts`` tries.  On any failure the other ranges are stopped
    (within a chunk) and every thread has ended before the error is raised.
    """
    ranges = plan_ranges(size, range_size)
    hasher = _PrefixDigest(fd, ranges, CHUNK_SIZE) if digest else None
    worker = _RangeWriter(fd, fetch, tuner, retry)
    pending = deque(enumerate(ranges))
    running: dict[Future[None], int] = {}
    pool = ThreadPoolExecutor(tuner.cap, thread_name_prefix="s3-download")
    try:
        while pending or running:
            # A range starts only with a slot; a refused slot marks the tuner saturated.
            while pending and tuner.acquire(timeout=0 if running else PROGRESS_INTERVAL):
                index, (start, end) = pending.popleft()
                future = pool.submit(worker.run, start, end)
                # Run or cancelled, the slot goes back (a tuner may be shared).
                future.add_done_callback(lambda _: tuner.release())
                running[future] = index
            done: set[Future[None]] = set()
            if running:
                done, _ = wait(running, timeout=PROGRESS_INTERVAL, return_when=FIRST_COMPLETED)
            if progress is not None and (n := worker.arrived.take()):
                progress(n)
            for future in sorted(done, key=running.__getitem__):
                index = running.pop(future)
                future.result()
                if hasher is not None:
                    hasher.finished(index)
    except BaseException:
        worker.stop.set()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return None if hasher is None else hasher.hexdigest()
