"""Where a partition's change numbering goes on after a re-fold below the change topic's
coverage (``opener.numbered_records``, ``opener.next_seq_below``): from the records that
events below the coverage made, not from the transaction states and fence records of events
past it at the topic's tail, which the re-fold publishes again under the same numbers."""

from __future__ import annotations

import tempfile
from collections import namedtuple
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import Limits
from lukhas_context.processors.opener import next_seq_below, numbered_records
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
KINDS = st.sampled_from(["change", "tx", "fence", "garbage"])


@given(st.lists(st.tuples(KINDS, st.integers(0, 2)), min_size=1, max_size=30),
       st.integers(0, 6))  # fmt: skip
@settings(max_examples=60, deadline=None)
def test_the_numbering_goes_on_from_what_events_below_the_coverage_published(
    tail: list[tuple[str, int]], trailing_states: int
) -> None:
    """A partition's records as published (one per event's output, numbered on, WAL offsets
    growing), then transaction states of events past the last change: the number after the
    coverage is one past the last readable record of an event below it."""
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        records: list[Record] = []
        wals: list[int] = []
        wal = 0
        last_change_wal: int | None = None
        # One record per item, numbered as the publisher numbers them; WAL offsets only grow.
        items = [*tail, *(("tx", 1) for _ in range(trailing_states))]
        for n, (kind, step) in enumerate(items):
            wal += step
            wals.append(wal)
            seq = [(SEQ_HEADER, b"%d" % n)]
            if kind == "change":
                key, value, headers = _change(tmp, wal)
                records.append(Record(n, key, value, [*headers, *seq]))
                if n < len(tail):
                    last_change_wal = wal
            elif kind == "tx":
                key, value = state_record(b"t" * 16, wal, None)
                records.append(Record(n, key, value, seq))
            elif kind == "fence":
                fence = FenceRecord("lock", 3, wal, 1000)
                records.append(Record(n, fence.key, fence.encode(), seq))
            else:
                records.append(Record(n, b"ctx", b"\x00forged", seq))
        numbered = numbered_records(records, ChangeCodec())
        readable = [(n, wals[n]) for n, (kind, _) in enumerate(items) if kind != "garbage"]
        assert numbered == readable
        if last_change_wal is None:
            return
        coverage = last_change_wal + 1
        # Every readable record made by an event below the coverage, and nothing after it.
        expected = max(
            n for n, (kind, _) in enumerate(items)
            if kind != "garbage" and wals[n] < coverage
        ) + 1  # fmt: skip
        assert next_seq_below(numbered, coverage) == expected
        # The trailing states (events past the coverage) never raise it.
        assert expected <= len(tail)


def test_nothing_below_the_coverage_means_no_number() -> None:
    key, value = state_record(b"t" * 16, 9, None)
    records = [Record(0, key, value, [(SEQ_HEADER, b"41")])]
    assert numbered_records(records, ChangeCodec()) == [(41, 9)]
    assert next_seq_below(numbered_records(records, ChangeCodec()), 9) is None
    assert next_seq_below(numbered_records(records, ChangeCodec()), 10) == 42
    unnumbered = [Record(0, key, value, [])]
    assert numbered_records(unnumbered, ChangeCodec()) == []
