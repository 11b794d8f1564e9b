"""The scaling advice (``processors.advice``): workers from the fold's load, the lag, reads
and memory, capped by partitions; the hysteresis that keeps it from flapping; and both total
on hostile input."""

from __future__ import annotations

import itertools
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.processors.advice import (
    MAX_WORKERS,
    Policy,
    Stabilizer,
    WorkerLoad,
    WorkerSample,
    advise,
    load_between,
)


def sample(at: float, ends: dict[int, int], nexts: dict[int, int], busy: float = 0.0,
           reads: float = 0.0, **kw: int | None) -> WorkerSample:  # fmt: skip
    return WorkerSample(at, ends, nexts, busy, reads, **kw)  # type: ignore[arg-type]


# ---- load between two samples ----


def test_load_between_two_samples_is_rates_over_the_span() -> None:
    before = sample(10.0, {0: 1000, 1: 500}, {0: 900, 1: 500}, busy=2.0, reads=100)
    after = sample(20.0, {0: 3000, 1: 600}, {0: 1900, 1: 600}, busy=7.0, reads=600,
                   resident_bytes=450, budget_bytes=1000)  # fmt: skip
    load = load_between(before, after)
    assert load is not None
    assert load.incoming == (2000 + 100) / 10
    assert load.folded == (1000 + 100) / 10
    assert load.lag_growth == 100.0
    assert load.busy == 0.5
    assert load.lag == 1100
    assert load.reads == 50.0
    assert load.memory == 0.45


def test_partitions_that_moved_between_samples_have_no_rate() -> None:
    before = sample(0.0, {0: 100}, {0: 100})
    after = sample(1.0, {0: 150, 2: 10_000}, {0: 150, 2: 0})
    load = load_between(before, after)
    assert load is not None
    assert (load.incoming, load.folded) == (50.0, 50.0)
    assert load.lag == 10_000  # the new partition's backlog still counts


@pytest.mark.parametrize("span", [0.0, -5.0, math.nan])
def test_no_time_between_samples_is_no_load(span: float) -> None:
    assert load_between(sample(10.0, {}, {}), sample(10.0 + span, {}, {})) is None


def test_counters_that_went_backwards_give_no_negative_rate() -> None:
    before = sample(0.0, {0: 1000}, {0: 1000}, busy=50.0, reads=900)
    after = sample(1.0, {0: 10}, {0: 5}, busy=1.0, reads=3)  # a restart
    load = load_between(before, after)
    assert load is not None
    assert (load.incoming, load.folded, load.busy, load.reads) == (0.0, 0.0, 0.0, 0.0)
    assert load.lag == 5


def test_busy_is_a_share_at_most_one() -> None:
    load = load_between(sample(0.0, {}, {}, busy=0.0), sample(1.0, {}, {}, busy=5.0))
    assert load is not None and load.busy == 1.0


def test_sample_round_trips_and_hostile_dicts_are_refused_or_cleaned() -> None:
    s = sample(1.5, {0: 10, 3: 7}, {0: 9, 3: 7}, busy=0.25, reads=4, resident_bytes=5,
               budget_bytes=None)  # fmt: skip
    assert WorkerSample.from_dict(s.to_dict()) == s
    for bad in (None, [], "x", {}, {"at_s": "1"}, {"at_s": math.nan}, {"at_s": True}):
        assert WorkerSample.from_dict(bad) is None
    odd = WorkerSample.from_dict({
        "at_s": 1, "ends": {"0": 5, "-1": 3, "x": 1, "2": -4, "3": 1.5, "4": True},
        "next_offsets": [1, 2], "busy_s": -3, "reads": math.inf, "resident_bytes": "big",
        "budget_bytes": 0,
    })  # fmt: skip
    assert odd == sample(1.0, {0: 5}, {}, busy=0.0, reads=math.inf)
    # Python's json reads integers of any size: past an offset, or past a float, they go.
    huge = WorkerSample.from_dict({
        "at_s": 0, "ends": {"0": 2**64, "1": 10**400, "2": 7},
        "next_offsets": {"0": 1, "99999999999": 1}, "reads": 10**400,
    })  # fmt: skip
    assert huge == sample(0.0, {2: 7}, {0: 1}, reads=math.inf)
    later = WorkerSample.from_dict(
        {"at_s": 1, "ends": {"2": 2**63 - 1}, "next_offsets": {"2": 0}, "reads": 10**400}
    )
    assert later is not None and huge is not None
    load = load_between(huge, later)
    assert load is not None and load.lag == 10**12 and load.incoming == 0.0  # no rate for 2
    assert 1 <= advise([load], 3).desired <= 3


# ---- the advice ----

KEEPING_UP = WorkerLoad(incoming=1000, folded=1000, busy=0.2, lag=50)
BEHIND = WorkerLoad(incoming=3000, folded=1000, busy=0.95, lag=20_000)


def test_a_worker_keeping_up_at_low_busy_needs_one() -> None:
    advice = advise([KEEPING_UP], partitions=8)
    assert (advice.desired, advice.needed, advice.reason) == (1, 1, "minimum")
    assert advice.load_workers == pytest.approx((1000 + 50 / 300) * 0.2 / 1000 / 0.7)
    assert not advice.partition_limited
    assert advice.headroom == pytest.approx(8 * 0.7 / advice.demand["fold"])


def test_a_worker_falling_behind_needs_what_the_incoming_rate_takes() -> None:
    advice = advise([BEHIND], partitions=8)
    # 3000/s appended (+ 20000 records over 300 s) at 1000/s a worker, aiming at 70 % busy.
    assert advice.needed == math.ceil((3000 + 20_000 / 300) / 1000 / 0.7)
    assert advice.desired == advice.needed == 5
    assert advice.reason == "lag" and advice.lag_growth == 2000.0


def test_a_saturated_worker_counts_whatever_busy_says() -> None:
    # Lag growing: the loop is the limit even when rounds are a small share of it.
    advice = advise([WorkerLoad(incoming=3000, folded=1000, busy=0.1, lag=6000)], partitions=8)
    assert advice.needed == math.ceil((3000 + 6000 / 300) / 1000 / 0.7) == 5
    assert advice.reason == "lag"


def test_the_fetcher_running_a_fetch_ahead_is_not_falling_behind() -> None:
    # Two workers keeping up: each interval ends with a fetch or two not yet folded.
    noisy = WorkerLoad(incoming=250, folded=237, busy=0.1, lag=25)
    advice = advise([noisy, noisy], partitions=3)
    assert (advice.needed, advice.reason) == (1, "minimum")


def test_partitions_cap_the_advice_and_say_so() -> None:
    advice = advise([BEHIND], partitions=3)
    assert (advice.desired, advice.needed, advice.partition_limited) == (3, 5, True)
    assert "add partitions" in advice.sentence()


def test_unknown_partition_count_is_no_cap() -> None:
    for partitions in (0, -1):
        advice = advise([BEHIND], partitions=partitions)
        assert advice.desired == 5 and not advice.partition_limited and advice.headroom is None


def test_two_workers_keeping_up_need_what_their_busy_shares_add_to() -> None:
    busy = WorkerLoad(incoming=1000, folded=1000, busy=0.6, lag=0)
    advice = advise([busy, busy], partitions=6)
    assert (advice.desired, advice.reason) == (math.ceil(1.2 / 0.7), "fold") == (2, "fold")
    assert advise([KEEPING_UP, KEEPING_UP], partitions=6).desired == 1


def test_reads_count_beside_the_fold() -> None:
    advice = advise([WorkerLoad(0, 0, 0.0, 0, reads=14_000)], partitions=8)
    assert (advice.desired, advice.reason) == (math.ceil(14_000 / 5000 / 0.7), "reads")


def test_a_worker_at_its_memory_budget_counts_as_full() -> None:
    at_budget = WorkerLoad(10, 10, 0.01, 0, memory=1.0)
    advice = advise([at_budget], partitions=8)
    assert (advice.desired, advice.reason) == (2, "memory")  # 1.0 / 0.9 of a worker
    assert advise([WorkerLoad(10, 10, 0.01, 0, memory=0.5)], partitions=8).reason == "minimum"


def test_a_stalled_worker_counts_as_one_and_an_unknown_one_as_its_share() -> None:
    stalled = WorkerLoad(incoming=500, folded=0, busy=0.0, lag=9000)
    assert advise([stalled], partitions=4).desired == math.ceil(1 / 0.7)
    idle = WorkerLoad(0, 0, 0.0, 0)
    advice = advise([idle, None, None], partitions=4)
    assert (advice.desired, advice.unknown, advice.workers) == (2, 2, 3)


def test_no_load_at_all_is_the_minimum() -> None:
    advice = advise([], partitions=4)
    assert (advice.desired, advice.reason) == (1, "minimum")
    assert advise([], 4, Policy(min_workers=2)).desired == 2


def test_policy_is_checked() -> None:
    for bad in ({"target_busy": 0}, {"target_busy": 1.5}, {"drain_s": 0},
                {"reads_per_worker": -1}, {"min_workers": 0}, {"min_workers": 5, "max_workers": 2},
                {"memory_near": math.nan}):  # fmt: skip
        with pytest.raises(ValueError):
            Policy(**bad)  # type: ignore[arg-type]


def test_the_sentence_names_the_deciding_signal() -> None:
    text = advise([BEHIND], partitions=8).sentence()
    assert text.startswith(
        "Run 5 workers (1 worker running), decided by the lag, growing by 2000 records/s;"
    )
    assert "the load needs 4.38 workers' worth" in text
    assert "The 8 partitions become the limit when the load grows 1.8x." in text
    idle = advise([WorkerLoad(0, 0, 0.0, 0, reads=0.5)], partitions=4).sentence()
    assert idle.startswith("Run 1 worker (1 worker running), decided by the minimum of 1 worker")
    assert idle.endswith("The 4 partitions are far from the limit.")


HOSTILE = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-(2**70), 2**70))


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.none(),
            st.builds(
                WorkerLoad,
                HOSTILE,
                HOSTILE,
                HOSTILE,
                st.integers(-(2**70), 2**70),
                HOSTILE,
                st.one_of(st.none(), HOSTILE),
            ),
        ),
        max_size=20,
    ),
    st.integers(-(2**40), 2**40),
)
def test_advice_is_total_and_bounded_on_hostile_loads(
    loads: list[WorkerLoad | None], partitions: int
) -> None:
    advice = advise(loads, partitions)
    assert 1 <= advice.desired <= MAX_WORKERS
    assert advice.desired <= max(1, partitions) or partitions <= 0
    assert advice.partition_limited == (partitions > 0 and advice.needed > partitions)
    assert all(math.isfinite(v) and v >= 0 for v in advice.demand.values())
    assert advice.sentence()
    advice.to_dict()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.floats(allow_nan=True), HOSTILE, HOSTILE), max_size=6))
def test_load_between_is_total_on_hostile_samples(raw: list[tuple[float, float, float]]) -> None:
    for (t0, a, b), (t1, d, e) in itertools.pairwise(raw):
        before = WorkerSample.from_dict({"at_s": t0, "busy_s": a, "reads": b, "ends": {"0": 5}})
        after = WorkerSample.from_dict({"at_s": t1, "busy_s": d, "reads": e, "ends": {"0": 9}})
        if before is None or after is None:
            continue
        load = load_between(before, after)
        if load is not None:
            assert 0 <= load.busy <= 1 and load.reads >= 0
            assert 1 <= advise([load], 4).desired <= 4


# ---- hysteresis ----


def test_up_at_once_down_only_after_the_cooldown() -> None:
    s = Stabilizer(cooldown_s=60)
    assert s.value is None
    assert s.update(0, 1) == 1
    assert s.update(10, 3) == 3  # up at once
    assert s.update(20, 1) == 3
    assert s.update(69, 1) == 3  # the 3 is 59 s old
    assert s.update(70, 2) == 2  # the 3 has aged out; the highest since is 2
    assert s.update(129, 1) == 2
    assert s.update(131, 1) == 1
    assert s.value == 1


def test_an_oscillating_figure_does_not_flap() -> None:
    s = Stabilizer(cooldown_s=30)
    out = [s.update(t * 5.0, 4 if t % 2 else 1) for t in range(40)]
    assert out[0] == 1 and set(out[1:]) == {4}


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(1, 12), min_size=1, max_size=120), st.integers(1, 20))
def test_never_goes_down_within_the_cooldown_of_a_higher_figure(
    figures: list[int], cooldown_steps: int
) -> None:
    s = Stabilizer(cooldown_s=float(cooldown_steps))
    out = [s.update(float(t), f) for t, f in enumerate(figures)]
    for t, value in enumerate(out):
        window = figures[max(0, t - cooldown_steps + 1) : t + 1]
        assert value == max(window)
        assert value >= figures[t]  # up at once
    # No flap: between two falls at least the cooldown passes without a new high.
    changes = [t for t in range(1, len(out)) if out[t] != out[t - 1]]
    for a, b in itertools.pairwise(changes):
        if out[a] < out[a - 1] and out[b] > out[b - 1]:
            assert figures[b] > out[a]  # a rise after a fall is a new, higher figure


@pytest.mark.parametrize("now", [math.nan, math.inf, -math.inf, -1e300])
def test_hostile_times_and_figures_are_bounded(now: float) -> None:
    s = Stabilizer(cooldown_s=10)
    s.update(100.0, 2)
    assert s.update(now, 1) == 2  # a time that is not a later one counts as the last
    assert s.update(50.0, 5) == 5  # backwards: the last time, still up at once
    assert s.update(111.0, -7) == 0  # the 5 (at 100) aged out; negative counts as 0
    assert s.update(112.0, 10**9) == MAX_WORKERS
    with pytest.raises(ValueError):
        Stabilizer(cooldown_s=math.nan)


def test_an_idle_worker_with_a_few_records_of_lag_is_idle_not_stalled() -> None:
    """The WAL's end counts transaction markers (and aborted records) that no store's next
    offset passes: an idle worker whose last writes were transactions keeps a lag of a few
    records with nothing coming. That is idle: one worker, not one stalled worker's share
    per member, which grew the figure with every worker added (a review found 3 idle
    workers advised 5)."""
    markers = WorkerLoad(incoming=0, folded=0, busy=0.0, lag=3)
    assert advise([markers], partitions=4).desired == 1
    assert advise([markers] * 3, partitions=8).desired == 1
    assert advise([WorkerLoad(incoming=0, folded=0, busy=0.0, lag=5000)], 4).desired == 2
