"""The concurrency tuner: grows while throughput grows, holds at a plateau, backs off on throttling."""

from __future__ import annotations

import threading
import time

import pytest

from serializer.s3.tuner import ConcurrencyTuner, TunerPhase


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def saturate(tuner: ConcurrencyTuner) -> None:
    """Take every slot and give them back, as a producer faster than the link does."""
    for _ in range(tuner.limit):
        tuner.acquire()
    for _ in range(tuner.limit):
        tuner.release()


def window(tuner: ConcurrencyTuner, clock: FakeClock, rate: float, *, busy: bool = True) -> None:
    """One second in which the transfer moved ``rate`` bytes."""
    if busy:
        saturate(tuner)
    clock.now += 1.0
    tuner.record(int(rate))


def link(limit: int, per_connection: float = 90e6, ceiling: float = 1e9) -> float:
    """Throughput of a path where each connection carries 90 MB/s up to a 1 GB/s link."""
    return min(limit * per_connection, ceiling)


def test_grows_while_throughput_grows_then_holds_at_the_best_level() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=4, cap=64, warmup=0, clock=clock)
    seen = [tuner.limit]
    for _ in range(12):
        window(tuner, clock, link(tuner.limit))
        seen.append(tuner.limit)
    assert seen[:4] == [4, 6, 9, 14]
    # 14 connections fill the 1 GB/s link (12 do): one step more brings nothing, so back.
    assert tuner.phase is TunerPhase.HOLDING
    assert tuner.limit == 14
    assert max(seen) == 21


def test_the_first_window_is_not_measured() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=16, cap=64, clock=clock)
    # New connections and a producer starting up: the first second reads low...
    window(tuner, clock, 40e6)
    assert tuner.limit == 16
    assert tuner.phase is TunerPhase.GROWING
    # ...so it is not the mark: the second second at the same level is, and a step follows.
    window(tuner, clock, 100e6)
    assert tuner.limit == 24
    window(tuner, clock, 104e6)  # the step brought nothing: back to the level measured
    assert tuner.limit == 16
    assert tuner.phase is TunerPhase.HOLDING


def test_flat_returns_stop_growth() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=4, cap=64, warmup=0, clock=clock)
    window(tuner, clock, 100e6)
    assert tuner.limit == 6
    window(tuner, clock, 105e6)  # +5 %: noise, not growth
    assert tuner.limit == 4
    assert tuner.phase is TunerPhase.HOLDING


def test_falling_returns_step_back_to_the_best_level() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=4, cap=64, warmup=0, clock=clock)
    window(tuner, clock, 300e6)
    window(tuner, clock, 400e6)
    assert tuner.limit == 9
    window(tuner, clock, 250e6)
    assert tuner.limit == 6


def test_never_above_its_cap() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=4, cap=10, warmup=0, clock=clock)
    rate = 1e6
    for _ in range(20):
        rate *= 2  # always better: only the cap stops it
        window(tuner, clock, rate)
        assert tuner.limit <= 10
    assert tuner.limit == 10
    assert tuner.peak <= 10


def test_a_window_that_was_not_saturated_does_not_grow() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=4, cap=64, warmup=0, clock=clock)
    tuner.acquire()  # one request in flight of four allowed: the producer is the bottleneck
    clock.now += 1.0
    tuner.record(10**9)
    tuner.release()
    assert tuner.limit == 4
    assert tuner.phase is TunerPhase.GROWING


def test_throttling_halves_the_limit_and_holds() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=16, cap=64, warmup=0, clock=clock)
    tuner.throttled()
    assert tuner.limit == 8
    assert tuner.phase is TunerPhase.HOLDING
    # The other requests in flight meet the same throttling: it counts once per window.
    tuner.throttled()
    assert tuner.limit == 8
    clock.now += 1.0
    tuner.throttled()
    assert tuner.limit == 4
    assert tuner.throttles == 2
    # Better throughput while holding does not grow the limit before the probe.
    for _ in range(5):
        window(tuner, clock, 1e9)
    assert tuner.limit == 4


def test_throttling_never_goes_below_the_floor() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=4, cap=64, floor=2, warmup=0, clock=clock)
    for _ in range(5):
        clock.now += 2.0
        tuner.throttled()
    assert tuner.limit == 2


def test_probes_again_after_holding() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=4, cap=64, probe_after=10.0, warmup=0, clock=clock)
    window(tuner, clock, 100e6)
    window(tuner, clock, 100e6)  # plateau: hold at 4
    assert (tuner.phase, tuner.limit) == (TunerPhase.HOLDING, 4)
    clock.now += 10.0
    window(tuner, clock, 100e6)
    assert (tuner.phase, tuner.limit) == (TunerPhase.GROWING, 6)
    window(tuner, clock, 150e6)  # the path has room now
    assert tuner.limit == 9


def test_fixed_mode_never_moves() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(fixed=3, clock=clock)
    assert tuner.phase is TunerPhase.FIXED
    for rate in (1e6, 1e9, 1e10):
        window(tuner, clock, rate)
    tuner.throttled()
    assert tuner.limit == 3
    assert tuner.cap == 3


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="floor"):
        ConcurrencyTuner(cap=2, floor=3)
    with pytest.raises(ValueError, match="fixed"):
        ConcurrencyTuner(fixed=0)
    with pytest.raises(RuntimeError):
        ConcurrencyTuner().release()


def test_the_slot_limit_holds_across_real_threads() -> None:
    tuner = ConcurrencyTuner(fixed=3)
    lock = threading.Lock()
    now = [0]
    most = [0]
    gate = threading.Event()

    def work() -> None:
        with tuner.slot():
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            gate.wait(5)
            with lock:
                now[0] -= 1

    threads = [threading.Thread(target=work) for _ in range(12)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 5
    while tuner.in_flight < 3 and time.monotonic() < deadline:
        time.sleep(0.001)
    # Three are in; the other nine are blocked in acquire().
    assert tuner.in_flight == 3
    assert most[0] == 3
    gate.set()
    for t in threads:
        t.join(5)
    assert most[0] == 3
    assert tuner.peak == 3
    assert tuner.in_flight == 0


def test_a_lowered_limit_holds_back_new_requests() -> None:
    clock = FakeClock()
    tuner = ConcurrencyTuner(start=4, cap=8, warmup=0, clock=clock)
    for _ in range(4):
        tuner.acquire()
    tuner.throttled()  # limit 2, four still in flight
    assert not tuner.acquire(timeout=0.01)
    tuner.release()
    tuner.release()
    assert not tuner.acquire(timeout=0.01)  # two in flight: at the limit
    tuner.release()
    assert tuner.acquire(timeout=0.01)
