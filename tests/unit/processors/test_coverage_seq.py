"""Where a partition's change numbering goes on when it opens (``Coverage.next_seq_for``):
the records the fold publishes again keep the numbers they had, whether the store is below
the change topic's coverage, at it, or past it (transaction states and fence records of
events past the newest change are not covered by it)."""

from __future__ import annotations

import tempfile
from collections import namedtuple
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import Limits
from lukhas_context.processors.opener import Coverage, numbered_records
from lukhas_context.processors.round import PartitionFolder
from lukhas_context.processors.twophase import state_record
from lukhas_context.schemas.change import SEQ_HEADER, FenceRecord
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import ContextEvent, Put
from lukhas_context.state.store import PartitionStore

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
Record = namedtuple("Record", "offset key value headers")
EVENTS = EventCodec()


def _change(tmp: Path, wal_offset: int) -> tuple[bytes, bytes | None, list[tuple[str, bytes]]]:
    """The change-topic record the fold makes of a put at ``wal_offset``."""
    store = PartitionStore(tmp / f"s{wal_offset}")
    try:
        store.commit({}, wal_offset)
        event = ContextEvent(wal_offset.to_bytes(16, "big"), "ctx", Put(b'{"n":%d}' % wal_offset))
        m = Message("t", 0, wal_offset, b"ctx", EVENTS.encode(event), 1000, [])
        r = PartitionFolder(0, store, Limits()).fold([m])
        assert r is not None and len(r.changes) == 1
        key, value, headers = r.changes[0]
        return key, value, list(headers)
    finally:
        store.close()


#: What an event can leave on the change topic: a context's change, a transaction's state
#: (prepared or decided), a lock's fence record, or nothing readable (a forged record).
KINDS = st.sampled_from(["change", "tx", "fence", "forged"])


def _topic(
    tmp: Path, items: list[tuple[str, int]], forged_seq: int
) -> tuple[list[Record], list[int]]:
    """The change partition of ``items`` (what each event left, and the WAL step to it): the
    fold's records numbered 0, 1, 2, ... in WAL order, forged records among them with
    ``forged_seq``; and the WAL offset of each record."""
    records: list[Record] = []
    wals: list[int] = []
    wal = n = 0
    for kind, step in items:
        wal += step
        wals.append(wal)
        seq = [(SEQ_HEADER, b"%d" % (forged_seq if kind == "forged" else n))]
        if kind == "change":
            key, value, headers = _change(tmp, wal)
            records.append(Record(len(records), key, value, [*headers, *seq]))
        elif kind == "tx":
            key, value = state_record(b"t" * 16, wal, None)
            records.append(Record(len(records), key, value, seq))
        elif kind == "fence":
            fence = FenceRecord("lock", 3, wal, 1000)
            records.append(Record(len(records), fence.key, fence.encode(), seq))
        else:
            records.append(Record(len(records), b"ctx", b"\x00forged", seq))
        n += kind != "forged"
    return records, wals


@given(st.lists(st.tuples(KINDS, st.integers(0, 2)), min_size=1, max_size=30),
       st.integers(0, 70), st.sampled_from([0, 5, 10**15]))  # fmt: skip
@settings(max_examples=150, deadline=None)
def test_records_published_again_keep_their_numbers_and_no_number_is_used_twice(
    items: list[tuple[str, int]], store_at: int, forged_seq: int
) -> None:
    """A store at ``store_at`` (below the coverage, at it, or past it: the coverage counts
    context changes only, so a store that folded later states and fences is past it) folds
    again from ``max(coverage, store_at)`` (below the coverage quietly) and publishes the
    records of every event from there on. The number it starts from must be the number each
    of those records had: a lower one would reuse a number for another record (subscribers
    and standbys drop it as a repeat), a higher one overstates the store's count (a standby
    passes over real changes). A forged number, however high, changes nothing."""
    with tempfile.TemporaryDirectory() as d:
        records, wals = _topic(Path(d), items, forged_seq)
    changes = [w for (kind, _), w in zip(items, wals, strict=True) if kind == "change"]
    coverage = Coverage(offset=changes[-1] + 1 if changes else 0)
    coverage.numbered = numbered_records(records, ChangeCodec())
    real = [(n, w) for n, w in enumerate(w for (k, _), w in zip(items, wals, strict=True)
                                         if k != "forged")]  # fmt: skip
    if coverage.offset:  # the fold goes on from the coverage or the store, the further
        again = [n for n, w in real if w >= max(coverage.offset, store_at)]
        expected = again[0] if again else len(real)
    else:  # coverage unknown: all is published again, numbered on past every number
        expected = len(real) or None
    assert coverage.next_seq_for(store_at) == expected


def test_a_store_past_the_coverage_numbers_on_after_what_it_folded() -> None:
    """A change at WAL 95 (seq 10), then a fence record at 97 (seq 11) and a transaction's
    state at 98 (seq 12): the coverage is 96; a store at 100 folded all three, and its next
    record is 13; a store at 96 or below publishes the fence and the state again, as 11 and
    12."""
    with tempfile.TemporaryDirectory() as d:
        key, value, headers = _change(Path(d), 95)
    fence = FenceRecord("lock", 3, 97, 1000)
    tx_key, tx_value = state_record(b"t" * 16, 98, None)
    records = [
        Record(0, key, value, [*headers, (SEQ_HEADER, b"10")]),
        Record(1, fence.key, fence.encode(), [(SEQ_HEADER, b"11")]),
        Record(2, tx_key, tx_value, [(SEQ_HEADER, b"12")]),
    ]
    coverage = Coverage(offset=96, numbered=numbered_records(records, ChangeCodec()))
    assert coverage.numbered == [(10, 95), (11, 97), (12, 98)]
    assert coverage.next_seq_for(100) == 13
    assert coverage.next_seq_for(99) == 13
    assert coverage.next_seq_for(98) == 12
    assert coverage.next_seq_for(96) == coverage.next_seq_for(50) == 11
    unknown = Coverage(offset=0, known=False, numbered=coverage.numbered)
    assert unknown.next_seq_for(50) == 13


def test_unnumbered_records_give_no_number() -> None:
    key, value = state_record(b"t" * 16, 9, None)
    assert numbered_records([Record(0, key, value, [])], ChangeCodec()) == []
    assert Coverage(offset=10).next_seq_for(0) is None
