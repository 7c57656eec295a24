"""How many requests to keep in flight: a thread-safe, clock-injected concurrency tuner.

One S3 connection carries roughly 80-100 MB/s with tens of milliseconds of round trip, so
the number of parts (or ranges) in flight decides an upload's throughput long before the
NIC does.  The right number depends on the path, so it is measured, not configured.

**Algorithm** (hill climbing on measured throughput, AIMD-like on throttling):

1. Start at ``start`` slots (:data:`FREE_SLOT_START`, 16, where a slot costs no memory;
   :data:`DEFAULT_START`, 4, where it holds a part).  The first ``warmup`` window (1) is
   not measured: it pays for new connections and the producer's start.  Every completed
   request reports its bytes with :meth:`ConcurrencyTuner.record`.  Throughput is
   measured per *window* of ``window`` seconds; a window only counts when the slots were
   saturated in it (some request waited for a slot, or every slot was taken), so a
   producer slower than the link never makes the tuner grow.
2. **Growing**: when a saturated window's throughput beats the best seen by more than
   ``gain`` (10 %), that level is the new best and the limit grows by ``growth`` (x1.5,
   at least +1), up to ``cap``.  Flat or falling returns step back to the best level and
   *hold*.
3. **Holding**: after ``probe_after`` seconds at the held level the tuner probes again:
   the held level's current throughput becomes the mark to beat, and it grows one step.
4. **Throttling** (:meth:`ConcurrencyTuner.throttled`, called on SlowDown / 503 / 429):
   the limit halves (never below ``floor``), the best level is lowered to it, and the
   tuner holds.  Throttles within one window of the last one count once, since every
   request in flight meets the same throttling at about the same time.

With ``fixed=N`` the limit is ``N`` for good and the measurements are ignored (an explicit
``EXPORT_MAX_IN_FLIGHT``).  The limit never exceeds ``cap`` nor falls under ``floor``.

**Memory**: the tuner holds no buffers; what a slot costs is its user's.  Parts read from
a file cost a read chunk each, so a spool upload holds about ``cap * chunk`` bytes; parts
held in memory cost ``part_size`` each, so a writer fed a stream holds at most
``part_size * (cap + 1)`` and gives such a tuner its memory cap (4 by default) as ``cap``.

A tuner is shared by the threads of one transfer: :meth:`slot` (or :meth:`acquire` /
:meth:`release`) blocks while ``limit`` requests are in flight.  Lowering the limit never
interrupts a request; new ones wait until the count is under it.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Iterator
from enum import StrEnum

log = logging.getLogger(__name__)

__all__ = ["DEFAULT_CAP", "DEFAULT_START", "FREE_SLOT_START", "ConcurrencyTuner", "TunerPhase"]

#: Most connections a tuned transfer opens: 64 connections of ~90 MB/s fill ~45 Gbit/s,
#: and S3 serves far more per prefix (3,500 PUTs/s) than 64 in-flight parts ask.
DEFAULT_CAP = 64
#: Where a tuned transfer whose slots hold a part in memory starts: the memory bound's 4.
DEFAULT_START = 4
#: Where a tuned transfer whose slots cost no memory starts (parts read from a file, ranges
#: written into place): the 10 of boto3's TransferManager and the AWS CLI, and some, so that
#: the first window already fills a path of ~1 Gbit/s of 80-100 MB/s connections instead
#: of spending seconds growing to it (a 1 GiB transfer at 100 MB/s lasts ten windows).
FREE_SLOT_START = 16
#: Seconds of completed requests per throughput measurement: several round trips and
#: several parts of 8 MiB at 90 MB/s per connection.
DEFAULT_WINDOW = 1.0
#: Relative gain a growth step must bring to count as growth (measurement noise is a few %).
DEFAULT_GAIN = 0.10
#: Windows at the start that are not measured: the first requests pay for new connections
#: and the producer's start, so a first window reads low and the next would look like growth.
DEFAULT_WARMUP = 1
#: Factor of one growth step (at least +1).
DEFAULT_GROWTH = 1.5
#: Seconds at a held level before probing for more: paths change (other transfers end).
DEFAULT_PROBE_AFTER = 30.0


class TunerPhase(StrEnum):
    """What a :class:`ConcurrencyTuner` is doing with its limit."""

    #: Raising the limit while throughput rises.
    GROWING = "growing"
    #: Keeping the best level found (after a plateau, a fall or throttling).
    HOLDING = "holding"
    #: A fixed limit, never changed.
    FIXED = "fixed"


class ConcurrencyTuner:
    """The number of requests a transfer keeps in flight, tuned to its measured throughput.

    Args:
        start: the first limit (clamped to ``floor..cap``).
        cap: the most requests ever in flight.
        floor: the fewest slots throttling may leave.
        fixed: a fixed limit (``start``, ``cap`` and measurements are then ignored).
        window: seconds per throughput measurement.
        gain: relative throughput gain a growth step must bring (0.10 = 10 %).
        growth: factor of one growth step.
        probe_after: seconds at a held level before growing again.
        warmup: windows at the start that are not measured.
        clock: monotonic seconds (``time.monotonic``; tests pass a fake).

    Raises:
        ValueError: ``floor < 1``, ``cap < floor`` or ``fixed < 1``.
    """

    def __init__(
        self,
        start: int = DEFAULT_START,
        cap: int = DEFAULT_CAP,
        floor: int = 1,
        *,
        fixed: int | None = None,
        window: float = DEFAULT_WINDOW,
        gain: float = DEFAULT_GAIN,
        growth: float = DEFAULT_GROWTH,
        probe_after: float = DEFAULT_PROBE_AFTER,
        warmup: int = DEFAULT_WARMUP,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if fixed is not None:
            if fixed < 1:
                raise ValueError(f"a fixed limit must be at least 1, got {fixed}")
            start = cap = floor = fixed
        if floor < 1 or cap < floor:
            raise ValueError(f"need 1 <= floor <= cap, got floor={floor}, cap={cap}")
        self.cap = cap
        self.floor = floor
        self._window = window
        self._gain = gain
        self._growth = growth
        self._probe_after = probe_after
        self._clock = clock
        self._cond = threading.Condition()
        self._limit = min(max(start, floor), cap)
        self._phase = TunerPhase.FIXED if fixed is not None else TunerPhase.GROWING
        self._in_flight = 0
        self._peak = 0
        self._best_rate = 0.0
        self._best_limit = self._limit
        self._hold_until = 0.0
        self._last_throttle: float | None = None
        self._throttles = 0
        self._warmup = warmup
        self._reset_window(clock())

    # -- what callers read ---------------------------------------------------------------
    @property
    def limit(self) -> int:
        """Requests allowed in flight now."""
        with self._cond:
            return self._limit

    @property
    def phase(self) -> TunerPhase:
        with self._cond:
            return self._phase

    @property
    def in_flight(self) -> int:
        with self._cond:
            return self._in_flight

    @property
    def peak(self) -> int:
        """Most requests that were ever in flight at once."""
        with self._cond:
            return self._peak

    @property
    def throttles(self) -> int:
        """Throttling replies that lowered the limit."""
        with self._cond:
            return self._throttles

    # -- slots ---------------------------------------------------------------------------
    def acquire(self, timeout: float | None = None) -> bool:
        """Take a slot, waiting while ``limit`` requests are in flight; False on timeout."""
        with self._cond:
            if self._in_flight >= self._limit:
                self._waited = True
                if not self._cond.wait_for(lambda: self._in_flight < self._limit, timeout):
                    return False
            self._in_flight += 1
            self._peak = max(self._peak, self._in_flight)
            if self._in_flight >= self._limit:
                self._waited = True
            return True

    def release(self) -> None:
        """Give a slot back.

        Raises:
            RuntimeError: no slot is taken.
        """
        with self._cond:
            if self._in_flight <= 0:
                raise RuntimeError("release() without acquire()")
            self._in_flight -= 1
            self._cond.notify()

    @contextlib.contextmanager
    def slot(self) -> Iterator[None]:
        """A slot for the duration of a ``with`` block."""
        self.acquire()
        try:
            yield
        finally:
            self.release()

    # -- measurements --------------------------------------------------------------------
    def record(self, nbytes: int) -> None:
        """A request completed with ``nbytes`` of payload; may end a window and move the limit."""
        with self._cond:
            if self._phase is TunerPhase.FIXED:
                return
            self._bytes += nbytes
            now = self._clock()
            elapsed = now - self._started
            if elapsed < self._window:
                return
            rate, saturated = self._bytes / elapsed, self._waited
            self._reset_window(now)
            if self._warmup > 0:
                self._warmup -= 1
            elif saturated:
                self._measured(rate, now)

    def throttled(self) -> None:
        """The store answered SlowDown / 503 / 429: halve the limit and hold."""
        with self._cond:
            if self._phase is TunerPhase.FIXED:
                return
            now = self._clock()
            if self._last_throttle is not None and now - self._last_throttle < self._window:
                return
            self._last_throttle = now
            self._throttles += 1
            new = max(self.floor, self._limit // 2)
            log.info("throttled by the store: %d -> %d requests in flight", self._limit, new)
            self._best_limit = min(self._best_limit, new)
            self._hold(new, now)

    # -- internals (called with the lock held) -------------------------------------------
    def _reset_window(self, now: float) -> None:
        self._started = now
        self._bytes = 0
        self._waited = self._in_flight >= self._limit

    def _measured(self, rate: float, now: float) -> None:
        if self._phase is TunerPhase.HOLDING:
            if now < self._hold_until:
                return
            # Probe: the held level's rate now is the mark a larger level must beat.
            self._phase = TunerPhase.GROWING
            self._best_rate, self._best_limit = rate, self._limit
            self._grow(now)
            return
        if rate > self._best_rate * (1 + self._gain):
            self._best_rate, self._best_limit = rate, self._limit
            self._grow(now)
        else:
            self._hold(self._best_limit, now)

    def _grow(self, now: float) -> None:
        new = min(self.cap, max(self._limit + 1, math.ceil(self._limit * self._growth)))
        if new == self._limit:
            self._hold(new, now)
            return
        log.debug("throughput grew: %d -> %d requests in flight", self._limit, new)
        self._set(new, now)

    def _hold(self, limit: int, now: float) -> None:
        self._phase = TunerPhase.HOLDING
        self._hold_until = now + self._probe_after
        self._set(limit, now)

    def _set(self, limit: int, now: float) -> None:
        self._limit = min(max(limit, self.floor), self.cap)
        self._reset_window(now)
        self._cond.notify_all()
