"""The circuit breaker of one endpoint (``streams.breaker``), driven by a fake clock: every
transition, the thresholds that adapt only once enough outcomes were seen, and hostile
sequences (floods of outcomes, alternating ones) that must leave it bounded and sane."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.streams.breaker import (
    Breaker,
    BreakerPolicy,
    Breakers,
    BreakerState,
    CircuitOpenError,
)
from lukhas_context.streams.exceptions import ReadError


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _breaker(**policy: float) -> tuple[Breaker, Clock]:
    clock = Clock()
    return Breaker("http://w1", BreakerPolicy(**policy), clock), clock  # type: ignore[arg-type]


def test_failures_in_a_row_open_it_and_calls_are_refused_until_the_open_period_ends() -> None:
    b, clock = _breaker(consecutive_failures=3, open_s=0.5)
    for _ in range(2):
        assert b.acquire() is not None
        b.record(False)
    assert b.state is BreakerState.CLOSED
    b.record(False)
    assert b.state is BreakerState.OPEN
    assert b.acquire() is None
    assert b.retry_after_s() == pytest.approx(0.5)
    clock.now += 0.49
    assert b.acquire() is None
    clock.now += 0.02
    assert b.acquire() is not None  # the probe
    assert b.state is BreakerState.HALF_OPEN
    assert b.acquire() is None  # one probe at a time


def test_a_successful_probe_closes_it_a_failed_one_doubles_the_open_period() -> None:
    b, clock = _breaker(consecutive_failures=1, open_s=0.25, max_open_s=0.75)
    b.record(False)
    periods = []
    for _ in range(4):
        clock.now += b.retry_after_s()
        assert b.acquire() is not None
        b.record(False)
        periods.append(b.open_for_s)
    assert periods == [0.5, 0.75, 0.75, 0.75]  # doubled, capped
    clock.now += b.retry_after_s()
    assert b.acquire() is not None
    b.record(True, 0.001)
    assert b.state is BreakerState.CLOSED
    assert b.acquire() is not None and b.acquire() is not None
    assert b.transitions == {"open": 5, "half_open": 5, "closed": 1}


def test_the_rate_opens_it_only_once_enough_outcomes_were_seen() -> None:
    b, _ = _breaker(min_samples=20, consecutive_failures=100, failure_rate=0.5)
    for i in range(19):  # every other call fails: a rate that would open it, too early
        b.record(i % 2 == 0, 0.001)
    assert b.state is BreakerState.CLOSED
    for _ in range(6):
        b.record(False)
    assert b.state is BreakerState.OPEN


def test_the_threshold_adapts_to_the_endpoints_own_baseline() -> None:
    """An endpoint that has always failed 40% of its calls is not opened by 40%; a healthy
    one going to 60% is (failure_rate 0.5: the floor both are held to)."""
    noisy, _ = _breaker(min_samples=20, consecutive_failures=100, failure_rate=0.5,
                        rate_margin=0.3, alpha=0.05, baseline_alpha=0.02)  # fmt: skip
    pattern = [True, True, False, True, False]  # 40% failures
    for i in range(2000):
        noisy.record(pattern[i % 5], 0.001)
    assert noisy.state is BreakerState.CLOSED
    assert 0.3 < noisy.baseline_ema < 0.5
    healthy, _ = _breaker(min_samples=20, consecutive_failures=100, failure_rate=0.5,
                          rate_margin=0.3, alpha=0.05, baseline_alpha=0.02)  # fmt: skip
    for _ in range(200):
        healthy.record(True, 0.001)
    worse = [False, True, False, True, False]  # 60% failures
    for i in range(200):
        healthy.record(worse[i % 5], 0.001)
        if healthy.state is BreakerState.OPEN:
            break
    assert healthy.state is BreakerState.OPEN


def test_a_slow_success_counts_as_a_failure_once_the_latency_is_known() -> None:
    b, _ = _breaker(min_samples=10, consecutive_failures=3, slow_factor=10, slow_floor_s=0.05)
    for _ in range(3):  # slow before anything is known: not judged
        b.record(True, 5.0)
    assert b.state is BreakerState.CLOSED and b.slow_after_s() is None
    for _ in range(40):
        b.record(True, 0.002)
    slow = b.slow_after_s()
    assert slow is not None and slow == pytest.approx(0.05)  # the floor: 10 x ~2 ms is less
    for _ in range(3):
        b.record(True, 1.0)
    assert b.state is BreakerState.OPEN


def test_an_endpoint_slower_for_good_is_learnt_within_a_few_probes() -> None:
    b, clock = _breaker(min_samples=10, consecutive_failures=3, slow_factor=10,
                        slow_floor_s=0.05, max_open_s=1.0)  # fmt: skip
    for _ in range(40):
        b.record(True, 0.002)
    for _ in range(3):
        b.record(True, 1.0)
    assert b.state is BreakerState.OPEN
    probes = 0
    while b.state is not BreakerState.CLOSED and probes < 10:
        clock.now += b.retry_after_s()
        assert b.acquire() is not None
        b.record(True, 1.0)  # every call takes a second now
        probes += 1
    assert b.state is BreakerState.CLOSED
    assert probes <= 6


def test_a_probe_that_ends_without_an_outcome_frees_its_slot() -> None:
    """A probe cancelled by its caller: without ``release`` the breaker would stay half-open
    and let nothing through, for good."""
    b, clock = _breaker(consecutive_failures=1, open_s=0.25)
    b.record(False)
    clock.now += 0.3
    probe = b.acquire()  # the probe, then cancelled
    assert probe
    assert b.acquire() is None
    b.release(probe)
    assert b.acquire() is not None


def test_a_call_that_was_not_the_probe_frees_no_slot_when_cancelled() -> None:
    """A call let through while closed (or one that goes around the breaker, permit 0)
    cancelled while another call probes: the probe keeps its slot, so no second call is
    let through beside it; an older probe's permit frees no newer one's."""
    b, clock = _breaker(consecutive_failures=1, open_s=0.25, probe_s=10.0)
    early = b.acquire()
    assert early == 0
    b.record(False)
    clock.now += 0.3
    probe = b.acquire()
    assert probe
    b.release(early)
    b.release(0)
    assert b.acquire() is None
    clock.now += 10.0  # past probe_s: the slot goes to another call
    second = b.acquire()
    assert second and second != probe
    b.release(probe)  # the first probe ends late: the second keeps the slot
    assert b.acquire() is None
    b.release(second)
    assert b.acquire() is not None


def test_an_answer_while_open_closes_it_a_failure_does_not_reopen_it_longer() -> None:
    """A call sent before it opened, or the routing table's reload (which goes around the
    breaker), answering in time: the endpoint is back. A failure while open changes
    nothing."""
    b, _ = _breaker(consecutive_failures=1)
    b.record(False)
    b.record(False)
    assert b.state is BreakerState.OPEN and b.open_for_s == 0.25
    b.record(True, 0.001)
    assert b.state is BreakerState.CLOSED and b.acquire() is not None


def test_a_long_probe_does_not_hold_the_slot() -> None:
    b, clock = _breaker(consecutive_failures=1, open_s=0.25, probe_s=1.0)
    b.record(False)
    clock.now += 0.25
    assert b.acquire() is not None  # a long poll becomes the probe
    assert b.acquire() is None
    assert b.retry_after_s() == pytest.approx(1.0)
    clock.now += 1.0
    assert b.acquire() is not None  # another probe once the first has been out for probe_s


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 60), st.floats(0, 5)), max_size=400))
@settings(max_examples=200, deadline=None)
def test_any_sequence_keeps_it_bounded_and_consistent(
    outcomes: list[tuple[bool, float, float]],
) -> None:
    """Hostile sequences (floods, alternation, absurd latencies, time jumps): the rates stay
    in [0, 1], the open period within its bounds, and an open breaker always lets a probe
    through once its period has passed."""
    b, clock = _breaker(min_samples=5, consecutive_failures=2, open_s=0.1, max_open_s=2.0)
    for ok, latency, wait in outcomes:
        clock.now += wait
        if b.acquire() is not None:
            b.record(ok, latency)
        assert 0.0 <= b.failure_ema <= 1.0 and 0.0 <= b.baseline_ema <= 1.0
        assert b.state is BreakerState.CLOSED or 0.1 <= b.open_for_s <= 2.0
        assert 0.0 <= b.retry_after_s() <= 2.0
    if b.state is BreakerState.OPEN:
        clock.now += b.retry_after_s()
        assert b.acquire() is not None


def test_policy_fields_out_of_range_are_refused_by_name() -> None:
    for name, value in (("alpha", 0.0), ("min_samples", 0), ("failure_rate", 1.5),
                        ("open_s", 0.0), ("slow_factor", 0.5)):  # fmt: skip
        with pytest.raises(ValueError, match=name):
            BreakerPolicy(**{name: value})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_open_s"):
        BreakerPolicy(open_s=5, max_open_s=1)


def test_breakers_make_one_per_endpoint_and_show_them() -> None:
    clock = Clock()
    breakers = Breakers(BreakerPolicy(consecutive_failures=1), clock)
    breakers["http://a"].record(False)
    breakers["http://b"].record(True, 0.003)
    assert breakers["http://a"] is breakers["http://a"]
    shown = {s["endpoint"]: s for s in breakers.snapshot()}
    assert shown["http://a"]["state"] == "open"
    assert shown["http://b"]["state"] == "closed"
    assert shown["http://b"]["latency_ms"] == 3.0


def test_circuit_open_is_a_read_error_with_its_retry_time() -> None:
    error = CircuitOpenError("every worker's breaker is open", 0.4)
    assert isinstance(error, ReadError)
    assert error.retry_after_s == 0.4
