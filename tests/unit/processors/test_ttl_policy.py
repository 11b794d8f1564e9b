"""Access-driven TTL (issue 17), the pure parts: parsing policies (valid and hostile), the
rule and its decision, the bounded read counter, and the toucher's plan over stores."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaError
from hypothesis import given
from hypothesis import strategies as st

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import InvalidWorkerConfigError
from lukhas_context.processors.fold import MAX_TTL_MS
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.toucher import TOUCHED_BY, TtlToucher, policy_touch
from lukhas_context.processors.ttl_policy import (
    InvalidTtlPolicyError,
    ReadCounter,
    TtlPolicies,
    TtlPolicy,
    parse_duration_ms,
    parse_policy,
    touch_decision,
    touch_ttl_ms,
)
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import Touch
from lukhas_context.state.record import ContextRecord
from lukhas_context.streams.topics import partition_for

S, M, H = 1_000, 60_000, 3_600_000


# ---- parsing


def test_a_policy_parses_with_units_and_defaults() -> None:
    p = parse_policy("session:=base=30m,min=5m,max=24h,per_read=1m")
    assert p == TtlPolicy("session:", 30 * M, 5 * M, 24 * H, M, hot=1)
    q = parse_policy("x=base=1.5s,min=500ms,max=7d,per_read=0ms,hot=3")
    assert (q.base_ms, q.min_ms, q.max_ms, q.per_read_ms, q.hot) == (1500, 500, 7 * 24 * H, 0, 3)
    assert parse_policy(q.spec()) == q  # the spec round-trips
    assert parse_policy("=base=1s,min=1s,max=1s,per_read=1s").prefix == ""  # every context
    assert parse_duration_ms("0.0015s") == 1  # rounded down to a millisecond


@pytest.mark.parametrize(
    ("spec", "names"),
    [
        ("session:", "expected PREFIX="),
        ("s=base=30m,min=5m,max=24h", "missing per_read"),
        ("s=base=30m,min=5m,max=24h,per_read=1m,base=1m", "base given twice"),
        ("s=base=30m,min=5m,max=24h,per_read=1m,colour=red", "'colour=red' is not one of"),
        ("s=base=30m,min=5m,max=24h,per_read", "'per_read' is not one of"),
        ("s=base=30,min=5m,max=24h,per_read=1m", "base: '30' is not a duration"),
        ("s=base=-30m,min=5m,max=24h,per_read=1m", "base: '-30m' is not a duration"),
        ("s=base=30m,min=5m,max=24h,per_read=-1s", "per_read: '-1s' is not a duration"),
        ("s=base=0s,min=0s,max=24h,per_read=1m", "base is 0 ms, outside"),
        ("s=base=30m,min=1h,max=24h,per_read=1m", "needs min <= base <= max"),
        ("s=base=30m,min=5m,max=10m,per_read=1m", "needs min <= base <= max"),
        ("s=base=30m,min=5m,max=999999999999999d,per_read=1m", f"outside (0, {MAX_TTL_MS}]"),
        ("s=base=30m,min=5m,max=24h,per_read=9999999999999999d", "not a duration"),
        ("s=base=30m,min=5m,max=24h,per_read=99999999999999d", "per_read is"),
        ("s=base=1e9s,min=5m,max=24h,per_read=1m", "not a duration"),
        ("s=base=NaNs,min=5m,max=24h,per_read=1m", "not a duration"),
        ("s=base=30m,min=5m,max=24h,per_read=1m,hot=0", "hot is 0, outside"),
        ("s=base=30m,min=5m,max=24h,per_read=1m,hot=-2", "hot '-2' is not a count"),
        ("s=base=30m,min=5m,max=24h,per_read=1m,hot=99999999999", "not a count"),
        ("s=base=30m,min=5m,max=24h,per_read=1m,hot=٣", "not a count"),  # a non-ASCII digit
        ("s" * 300 + "=base=1s,min=1s,max=1s,per_read=1s", "longer than a context id"),
    ],
)
def test_a_bad_policy_is_refused_naming_the_part(spec: str, names: str) -> None:
    with pytest.raises(InvalidTtlPolicyError) as raised:
        parse_policy(spec)
    assert names in str(raised.value)
    assert isinstance(raised.value, InvalidWorkerConfigError)  # and a ValueError: usage error


def test_duplicate_prefixes_are_refused_and_the_longest_prefix_wins() -> None:
    one = "a:=base=1s,min=1s,max=1s,per_read=0ms"
    with pytest.raises(InvalidTtlPolicyError, match="'a:' given twice"):
        TtlPolicies.parse([one, one.replace("1s", "2s")])
    policies = TtlPolicies.parse(
        ["a:=base=1s,min=1s,max=9s,per_read=0ms", "a:b:=base=2s,min=1s,max=9s,per_read=0ms",
         "=base=3s,min=1s,max=9s,per_read=0ms", ""]
    )  # fmt: skip
    assert len(policies) == 3
    assert policies.match(b"a:b:c").prefix == "a:b:"  # type: ignore[union-attr]
    assert policies.match(b"a:c").prefix == "a:"  # type: ignore[union-attr]
    assert policies.match(b"zzz").prefix == ""  # type: ignore[union-attr]
    assert TtlPolicies.parse(["a:=base=1s,min=1s,max=9s,per_read=0ms"]).match(b"b") is None
    assert not TtlPolicies([])


def test_the_worker_config_checks_the_toucher_bounds(tmp_path: Path) -> None:
    with pytest.raises(InvalidWorkerConfigError, match="ttl_touch_interval_s"):
        WorkerConfig("x:1", tmp_path, ttl_touch_interval_s=0)
    with pytest.raises(InvalidWorkerConfigError, match="ttl_touch_batch"):
        WorkerConfig("x:1", tmp_path, ttl_touch_batch=0)
    with pytest.raises(InvalidWorkerConfigError, match="ttl_read_contexts"):
        WorkerConfig("x:1", tmp_path, ttl_read_contexts=10**9)


# ---- the rule


POLICY = TtlPolicy("s:", base_ms=30 * S, min_ms=10 * S, max_ms=120 * S, per_read_ms=5 * S)
COLD = TtlPolicy("c:", base_ms=30 * S, min_ms=10 * S, max_ms=120 * S, per_read_ms=5 * S, hot=4)


def test_the_ttl_is_base_plus_reads_over_hot_times_per_read_within_min_and_max() -> None:
    assert touch_ttl_ms(POLICY, 1) == 30 * S  # hot=1: one read is the base
    assert touch_ttl_ms(POLICY, 5) == 50 * S
    assert touch_ttl_ms(POLICY, 10**12) == 120 * S  # huge counts: max
    assert touch_ttl_ms(COLD, 4) == 30 * S
    assert touch_ttl_ms(COLD, 2) == 20 * S  # read rarely: sooner than base
    assert touch_ttl_ms(COLD, 1) == 15 * S
    assert touch_ttl_ms(COLD, 0) == 10 * S  # never below min


def test_a_hot_context_is_extended_only_beyond_the_slack() -> None:
    now = 1_000_000
    # Expires in 30 s; 5 reads ask 50 s: extends by 20 s > slack (5 s).
    assert touch_decision(POLICY, 5, now, now + 30 * S) == 50 * S
    # Extends by 4 s: within the slack of a tenth of 50 s.
    assert touch_decision(POLICY, 5, now, now + 46 * S) is None
    # Would shorten (a writer gave 10 min): a hot context is never shortened.
    assert touch_decision(POLICY, 5, now, now + 600 * S) is None
    # No TTL (the writer asked for none), or no reads: left alone.
    assert touch_decision(POLICY, 5, now, None) is None
    assert touch_decision(POLICY, 0, now, now + S) is None


def test_a_rarely_read_context_goes_to_its_ttl_either_way_beyond_the_slack() -> None:
    now = 5_000_000
    assert touch_decision(COLD, 1, now, now + 30 * S) == 15 * S  # 15 s sooner
    assert touch_decision(COLD, 3, now, now + 26 * S) is None  # 25 s asked: within 2.5 s
    # Still read now and then, though under ``hot``: kept at its (shorter) TTL, not left to
    # expire at the next interval.
    assert touch_decision(COLD, 1, now, now + 5 * S) == 15 * S
    assert touch_decision(COLD, 1, now, now + 14 * S) is None  # within the slack of 1.5 s


_ms = st.integers(1, MAX_TTL_MS)


@given(
    st.lists(_ms, min_size=3, max_size=3), st.integers(0, MAX_TTL_MS), st.integers(1, 10**6),
    st.integers(0, 10**15), st.integers(0, 2**62), st.one_of(st.none(), st.integers(0, 2**62)),
)  # fmt: skip
def test_a_decided_ttl_is_within_min_and_max_and_moves_the_expiry_the_rules_way(
    bounds: list[int], per_read: int, hot: int, reads: int, now: int, expires: int | None
) -> None:
    low, base, high = sorted(bounds)
    policy = TtlPolicy("p", base, low, high, per_read, hot)
    ttl = touch_decision(policy, reads, now, expires)
    if ttl is None:
        return
    assert expires is not None and reads >= 1
    assert low <= ttl <= high  # and so within the fold's limit: never refused for its TTL
    if reads >= hot:
        assert now + ttl > expires + ttl // 10  # extends only
    else:
        assert abs(now + ttl - expires) > ttl // 10  # either way, beyond the slack


# ---- the counter


def test_the_read_counter_is_bounded_and_counts_what_it_drops() -> None:
    counter = ReadCounter(max_contexts=3)
    for key in (b"a", b"a", b"b", b"c", b"d", b"e", b"a", b"d"):
        counter.count(key)
    assert len(counter) == 3
    assert (counter.counted, counter.dropped) == (5, 3)  # d, e and d again found no room
    assert dict(counter.take()) == {b"a": 3, b"b": 1, b"c": 1}
    assert len(counter) == 0
    counter.count(b"d")  # a new interval has room again
    assert dict(counter.take()) == {b"d": 1}
    for i in range(100_000):  # a flood of distinct ids
        counter.count(b"%d" % i)
    assert len(counter) == 3 and counter.dropped == 3 + 100_000 - 3
    with pytest.raises(InvalidWorkerConfigError):
        ReadCounter(0)


# ---- the plan over stores


class _Store:
    def __init__(self, records: dict[bytes, ContextRecord]) -> None:
        self.records = records

    def get(self, key: bytes) -> ContextRecord | None:
        return self.records.get(key)


def _record(version: int, expires_at: int | None, doc: bytes | None = b"{}") -> ContextRecord:
    return ContextRecord(version, doc, b"\0" * 8, expires_at, 0, 0)


def _key_in(partition: int, prefix: str, partitions: int = 2) -> bytes:
    return next(
        k for i in range(10_000)
        if partition_for(k := f"{prefix}{i}".encode(), partitions) == partition
    )  # fmt: skip


def test_the_plan_touches_read_contexts_of_policies_on_stores_held_here() -> None:
    now = 10_000_000
    metrics = WorkerMetrics()
    toucher = TtlToucher(TtlPolicies([POLICY]), metrics, "wal", batch=2, max_contexts=100)
    hot, cold, gone, other = (_key_in(0, p) for p in ("s:hot", "s:one", "s:gone", "o:"))
    elsewhere = _key_in(1, "s:away")
    many = [_key_in(0, f"s:m{i}-") for i in range(3)]
    store = _Store({
        hot: _record(3, now + 30 * S), cold: _record(1, now + 30 * S),
        gone: _record(2, now - 1), other: _record(1, now + S),
        **{k: _record(1, now + S) for k in many},
    })  # fmt: skip
    for key, n in [(hot, 9), (cold, 1), (gone, 9), (other, 50), (elsewhere, 9)]:
        for _ in range(n):
            toucher.reads.count(key)
    plan = toucher.plan({0: store}, 2, now)  # type: ignore[dict-item]
    assert [(p, e.context_id) for p, e in plan] == [(0, hot.decode())]
    (_, event), = plan  # fmt: skip
    assert event.op == Touch(70 * S)  # 30 + (9 - 1) * 5 s
    assert event.expected_version == 3  # never overrides a concurrent write
    assert dict(event.metadata) == {"by": TOUCHED_BY, "reads": "9"}
    assert EventCodec().decode(EventCodec().encode(event)) == event
    # Reads of an id no policy names (``other``) are not counted.
    assert metrics.ttl_reads_counted._value.get() == 9 + 1 + 9 + 9
    assert toucher.plan({0: store}, 2, now) == []  # the counts were taken: once per interval
    # At most ``batch`` per partition, the most read first.
    for n, key in enumerate(many):
        for _ in range(n + 2):
            toucher.reads.count(key)
    planned = [e.context_id for _, e in toucher.plan({0: store}, 2, now)]  # type: ignore[dict-item]
    assert planned == [many[2].decode(), many[1].decode()]
    # A partition still opening is not touched.
    toucher.reads.count(hot)
    assert toucher.plan({0: store}, 2, now, opening={0}) == []  # type: ignore[dict-item]


def test_every_touch_has_an_id_of_its_own() -> None:
    """Two Touches of one version (two sweeps while the fold lags, an owner and a zombie)
    are two events: the fold applies the first and refuses the second by its
    ``expected_version``; a shared id would make the second a reused id, dead-lettered."""
    a, b = policy_touch(b"k", 4, 1000, 3), policy_touch(b"k", 4, 2000, 9)
    assert a.event_id != b.event_id
    assert a.expected_version == b.expected_version == 4


def test_reads_of_ids_without_a_policy_take_no_room_from_those_with_one() -> None:
    counter = ReadCounter(max_contexts=2, admit=TtlPolicies([POLICY]).match)
    for i in range(1000):
        counter.count(b"o:%d" % i)  # no policy: neither counted nor dropped
    counter.count(b"s:a")
    counter.count(b"s:a")
    assert dict(counter.take()) == {b"s:a": 2}
    assert (counter.counted, counter.dropped) == (2, 0)


def test_the_longest_prefix_wins_whatever_the_order() -> None:
    policies = TtlPolicies.parse([
        "a=base=1s,min=1s,max=1s,per_read=1s", "abc=base=2s,min=1s,max=2s,per_read=1s",
        "ab=base=3s,min=1s,max=3s,per_read=1s",
    ])  # fmt: skip
    assert [policies.match(k).base_ms for k in (b"abcd", b"abd", b"az")] == [2000, 3000, 1000]  # type: ignore[union-attr]
    assert policies.match(b"b") is None and policies.match(b"") is None


def test_off_by_default_nothing_is_counted(tmp_path: Path) -> None:
    from lukhas_context.processors.materializer import Materializer

    off = Materializer(WorkerConfig("127.0.0.1:1", tmp_path))
    assert off.toucher is None and off.reads is None
    on = Materializer(WorkerConfig("127.0.0.1:1", tmp_path, ttl_policies=TtlPolicies([POLICY])))
    assert on.reads is not None and on.toucher is not None
    assert (
        Materializer(WorkerConfig("127.0.0.1:1", tmp_path, ttl_policies=TtlPolicies([]))).reads
        is None
    )


class _Producer:
    """Takes sends; ``on_send`` runs after each (a revocation, a failure)."""

    def __init__(self, on_send: Any = None) -> None:
        self.sent: list[tuple[int, bytes]] = []
        self.on_send = on_send

    async def send(self, topic: str, value: bytes, key: bytes, partition: int) -> Any:
        self.sent.append((partition, key))
        if self.on_send is not None:
            self.on_send(len(self.sent))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


class _Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def earliest_ms(self) -> int:
        return self.now

    def watch(self, ack: Any, sent: float) -> None:
        pass


async def test_a_sweep_sends_what_the_rule_asks_and_stops_at_a_revocation_or_failure() -> None:
    now = 10_000_000
    keys = [_key_in(0, f"s:k{i}-") for i in range(2500)]  # more than a chunk
    store = _Store({k: _record(1, now + 30 * S) for k in keys})
    toucher = TtlToucher(TtlPolicies([POLICY]), WorkerMetrics(), "wal", batch=10_000,
                         max_contexts=10_000)  # fmt: skip
    for key in keys:
        for _ in range(5):
            toucher.reads.count(key)
    producer = _Producer()
    sent = await toucher.sweep({0: store}, 2, producer, _Clock(now))  # type: ignore[arg-type,dict-item]
    await toucher.close()
    assert sent == len(producer.sent) == 2500
    assert {k for _, k in producer.sent} == set(keys)
    # Revoked after the 10th send: the rest are the new owner's.
    stores: dict[int, Any] = {0: store}
    for key in keys:
        for _ in range(5):
            toucher.reads.count(key)
    revoking = _Producer(lambda n: n == 10 and stores.pop(0))
    assert await toucher.sweep(stores, 2, revoking, _Clock(now + S)) == 10  # type: ignore[arg-type]

    def fail(n: int) -> None:
        if n == 3:
            raise KafkaError("the broker is gone")

    for key in keys:
        for _ in range(5):
            toucher.reads.count(key)
    failing = _Producer(fail)
    assert await toucher.sweep({0: store}, 2, failing, _Clock(now + 2 * S)) == 2  # type: ignore[arg-type,dict-item]
    await toucher.close()
