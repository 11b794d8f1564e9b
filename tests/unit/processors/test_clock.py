"""The log's clock as a worker estimates it (``processors.clock``): bounds from acknowledged
appends and received records, on the monotonic clock, whatever the wall clock says."""

from __future__ import annotations

import math

import pytest

from lukhas_context.processors.clock import DRIFT, WINDOW_S, LogClock

HOUR_MS = 3_600_000


class _Clocks:
    """A monotonic clock and a wall clock one hour ahead of the "broker"."""

    def __init__(self) -> None:
        self.mono = 100.0
        self.broker_ms = 1_800_000_000_000.0  # the log's clock at mono = 100

    def monotonic(self) -> float:
        return self.mono

    def wall(self) -> float:
        return (self.broker_now() + HOUR_MS) / 1000

    def broker_now(self) -> float:
        return self.broker_ms + (self.mono - 100.0) * 1000

    def advance(self, seconds: float) -> None:
        self.mono += seconds


@pytest.fixture
def clocks() -> _Clocks:
    return _Clocks()


def _clock(c: _Clocks) -> LogClock:
    return LogClock(monotonic=c.monotonic, wall=c.wall)


def _append(clock: LogClock, c: _Clocks, rtt_s: float, stamped_at: float = 0.5) -> None:
    """An append sent now, stamped ``stamped_at`` of the way through, acknowledged after
    ``rtt_s``."""
    sent = c.mono
    c.advance(rtt_s * stamped_at)
    stamp = int(c.broker_now())
    c.advance(rtt_s * (1 - stamped_at))
    clock.observe_append(sent, c.mono, stamp)


def test_unmeasured_it_is_the_wall_clock(clocks: _Clocks) -> None:
    clock = _clock(clocks)
    assert not clock.measured
    assert clock.now_ms() == int(clocks.wall() * 1000)
    assert clock.skew().skew_ms is None


def test_an_acknowledged_append_bounds_it_by_half_the_round_trip(clocks: _Clocks) -> None:
    clock = _clock(clocks)
    _append(clock, clocks, rtt_s=0.010, stamped_at=0.9)
    lo, hi = clock.bounds_ms() or (0, 0)
    truth = clocks.broker_now()
    assert lo - 1 <= truth <= hi + 1  # ms rounding of the stamp
    assert hi - lo <= 10 + 1
    assert abs(clock.now_ms() - truth) <= 5 + 1
    skew = clock.skew()
    assert skew.skew_ms is not None and skew.error_ms is not None
    assert abs(skew.skew_ms - HOUR_MS) <= skew.error_ms + 1
    assert clock.earliest_ms() <= truth


def test_received_records_give_a_lower_bound_only(clocks: _Clocks) -> None:
    clock = _clock(clocks)
    stamp = int(clocks.broker_now())
    clocks.advance(0.2)  # fetched 200 ms after the broker stamped it
    clock.observe_read(stamp, clocks.mono)
    lo, hi = clock.bounds_ms() or (0, 0)
    assert hi == math.inf
    assert lo <= clocks.broker_now() <= lo + 201
    assert clock.now_ms() == int(lo)  # never ahead of the log
    assert clock.skew().error_ms is None


def test_a_wall_clock_step_changes_nothing(clocks: _Clocks) -> None:
    clock = _clock(clocks)
    _append(clock, clocks, 0.002)
    before = clock.now_ms() - clocks.broker_now()
    wall = clocks.wall
    clocks.wall = lambda: wall() + 7200  # type: ignore[method-assign]
    clocks.advance(30)
    assert abs(clock.now_ms() - clocks.broker_now() - before) <= 30 * 1000 * DRIFT + 1


def test_bounds_widen_with_age_and_old_samples_expire(clocks: _Clocks) -> None:
    clock = _clock(clocks)
    _append(clock, clocks, 0.002)
    lo0, hi0 = clock.bounds_ms() or (0, 0)
    clocks.advance(100)
    lo, hi = clock.bounds_ms() or (0, 0)
    assert (hi - lo) - (hi0 - lo0) == pytest.approx(2 * DRIFT * 100_000, abs=1e-3)
    clocks.advance(WINDOW_S + 1)
    assert not clock.measured
    assert clock.now_ms() == int(clocks.wall() * 1000)


def test_the_tightest_bounds_win_and_a_contradiction_resets(clocks: _Clocks) -> None:
    clock = _clock(clocks)
    _append(clock, clocks, 0.050)
    _append(clock, clocks, 0.002)
    lo, hi = clock.bounds_ms() or (0, 0)
    assert hi - lo <= 3
    # The brokers' clock steps back by 10 s: the next append contradicts the bounds.
    clocks.broker_ms -= 10_000
    _append(clock, clocks, 0.002)
    lo, hi = clock.bounds_ms() or (0, 0)
    assert lo - 1 <= clocks.broker_now() <= hi + 1
    assert hi - lo <= 3


def test_a_sample_within_the_bounds_never_loosens_them(clocks: _Clocks) -> None:
    clock = _clock(clocks)
    _append(clock, clocks, 0.002)
    tight = clock.bounds_ms()
    stamp = int(clocks.broker_now()) - 5000
    clock.observe_read(stamp, clocks.mono)  # an old record fetched late: a weak bound
    lo, hi = clock.bounds_ms() or (0, 0)
    assert tight is not None and (lo, hi) == pytest.approx(tight)
