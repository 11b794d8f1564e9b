"""Range digests and the bisection that finds where two stores differ (``state.ranges``), on
real RocksDB stores."""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from lukhas_context.state.ranges import (
    Bisection,
    LocalRanges,
    RangeDigest,
    Row,
    differences,
    split_range,
    summarize,
)
from lukhas_context.state.record import NO_CHECKSUM, ContextRecord
from lukhas_context.state.store import PartitionStore


def record(version: int, doc: bytes | None = b"{}") -> ContextRecord:
    return ContextRecord(version, doc, NO_CHECKSUM, None, version, 1_000)


def fill(store: PartitionStore, keys: list[bytes], version: int = 1) -> None:
    store.commit({k: record(version) for k in keys}, store.next_offset + len(keys))


@pytest.fixture
def pair(tmp_path: Path) -> Iterator[tuple[PartitionStore, PartitionStore]]:
    keys = [f"ctx:{i:05d}".encode() for i in range(3000)]
    with PartitionStore(tmp_path / "a") as a, PartitionStore(tmp_path / "b") as b:
        fill(a, keys)
        fill(b, keys)
        yield a, b


def find(a: PartitionStore, b: PartitionStore, **kw: int) -> Bisection:
    records_a, records_b = a.summary().records, b.summary().records
    return asyncio.run(differences(LocalRanges(a), LocalRanges(b), records_a, records_b, **kw))


def test_range_digests_add_up_to_the_store_digest(pair: tuple[PartitionStore, ...]) -> None:
    a, _ = pair
    local = LocalRanges(a)
    bounds = [b"ctx:00100", b"ctx:01500", b"ctx:01501", b"zzz"]
    parts = local.summarize_now(b"", None, bounds)
    assert [p.records for p in parts] == [100, 1400, 1, 1499, 0]
    total = sum(p.digest for p in parts) % 2**64
    assert total == a.summary().digest
    assert sum(p.records for p in parts) == a.summary().records
    # a sub-range, and bounds that cut nothing
    assert local.summarize_now(b"ctx:00100", b"ctx:01500", []) == [parts[1]]
    assert local.summarize_now(b"x", None, [b"y"]) == [RangeDigest(0, 0), RangeDigest(0, 0)]


def test_split_cuts_at_own_keys_into_equal_runs(pair: tuple[PartitionStore, ...]) -> None:
    a, _ = pair
    bounds, parts = LocalRanges(a).split_now(b"", None, 3000, 16)
    assert len(bounds) == 15 and bounds == sorted(bounds)
    assert [p.records for p in parts] == [188] * 15 + [3000 - 15 * 188]
    assert LocalRanges(a).summarize_now(b"", None, bounds) == parts
    assert split_range([], 0, 16) == ([], [RangeDigest(0, 0)])


def test_equal_stores_need_one_split(pair: tuple[PartitionStore, ...]) -> None:
    a, b = pair
    found = find(a, b)
    assert found.differences == [] and found.requests == 2 and not found.truncated


def test_one_changed_record_is_found_without_reading_everything(
    pair: tuple[PartitionStore, ...],
) -> None:
    a, b = pair
    b.commit({b"ctx:01234": record(2)}, b.next_offset + 1)
    found = find(a, b)
    assert [d.context_id for d in found.differences] == ["ctx:01234"]
    (d,) = found.differences
    assert d.a is not None and d.b is not None
    assert (d.a.version, d.b.version) == (1, 2) and d.a.hash != d.b.hash
    # 3000 records, 16 parts, leaves of 64: two levels of splits, then one leaf
    assert found.requests == 6


def test_records_on_one_side_only_and_tombstones(pair: tuple[PartitionStore, ...]) -> None:
    a, b = pair
    a.commit({b"ctx:00007x": record(1), b"ctx:02999": record(2, None)}, a.next_offset + 2)
    b.commit({b"zz:last": record(1)}, b.next_offset + 1)
    found = find(a, b)
    by_id = {d.context_id: d for d in found.differences}
    assert list(by_id) == ["ctx:00007x", "ctx:02999", "zz:last"]
    assert by_id["ctx:00007x"].b is None
    assert by_id["ctx:02999"].a == Row(
        b"ctx:02999",
        by_id["ctx:02999"].a.hash,
        2,
        True,
        2,  # type: ignore[union-attr]
    )
    assert by_id["zz:last"].a is None and by_id["zz:last"].b is not None


def test_the_first_differences_in_key_order_up_to_the_limit(
    pair: tuple[PartitionStore, ...],
) -> None:
    a, b = pair
    changed = sorted(random.Random(7).sample(range(3000), 40))
    b.commit({f"ctx:{i:05d}".encode(): record(3) for i in changed}, b.next_offset + 40)
    found = find(a, b, limit=5)
    assert [d.context_id for d in found.differences] == [f"ctx:{i:05d}" for i in changed[:5]]
    assert found.truncated
    every = find(a, b, limit=100)
    assert [d.context_id for d in every.differences] == [f"ctx:{i:05d}" for i in changed]
    assert not every.truncated


def test_an_empty_side_and_wrong_counts(tmp_path: Path, pair: tuple[PartitionStore, ...]) -> None:
    a, _ = pair
    with PartitionStore(tmp_path / "empty") as empty:
        found = asyncio.run(differences(LocalRanges(a), LocalRanges(empty), 3000, 0, limit=3))
        assert [d.context_id for d in found.differences] == ["ctx:00000", "ctx:00001", "ctx:00002"]
        # counts that lie (a corrupt summary) only cost requests: the answer is the same
        lied = asyncio.run(differences(LocalRanges(a), LocalRanges(empty), 10, 0, limit=3))
        assert lied.differences == found.differences


def test_bad_parameters_are_refused(pair: tuple[PartitionStore, ...]) -> None:
    a, b = pair
    for kw in ({"parts": 1}, {"leaf": 0}, {"limit": 0}):
        with pytest.raises(ValueError):
            find(a, b, **kw)


def test_summarize_on_rows_without_a_store() -> None:
    from lukhas_context.state.store import record_hash

    rows = [(b"a", b"1"), (b"c", b"2"), (b"e", b"3")]
    out = summarize(rows, [b"b", b"c", b"d", b"f"])
    assert [o.records for o in out] == [1, 0, 1, 1, 0]
    assert out[2].digest == record_hash(b"c", b"2")


def test_truncated_only_when_something_was_left_out(tmp_path: Path) -> None:
    keys = [f"k:{i:03d}".encode() for i in range(50)]  # one leaf
    with PartitionStore(tmp_path / "a") as a, PartitionStore(tmp_path / "b") as b:
        fill(a, keys)
        fill(b, keys)
        b.commit({k: record(2) for k in keys[:6]}, b.next_offset + 6)
        room = find(a, b, limit=10)
        assert len(room.differences) == 6 and not room.truncated
        exact = find(a, b, limit=6)
        assert len(exact.differences) == 6 and not exact.truncated
        short = find(a, b, limit=3)
        assert len(short.differences) == 3 and short.truncated
