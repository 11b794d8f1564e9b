"""The sequence numbers of a partition's changes (header ``seq``) are counted by the fold: the
same log numbers its changes 0, 1, 2, ... whatever rounds it is folded in, across a store
closed and opened again, and a round whose changes are not sent again still counts them."""

from __future__ import annotations

import asyncio
import tempfile
from collections import namedtuple
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import Limits
from lukhas_context.processors.offline import _fold_rounds
from lukhas_context.processors.round import PartitionFolder
from lukhas_context.schemas.change import MAX_SEQ, SEQ_HEADER, seq_of
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import ContextEvent, Delete, Put
from lukhas_context.state.store import PartitionStore

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
CODEC = EventCodec()


@st.composite
def logs(draw: Any) -> list[Message]:
    out = []
    for i in range(draw(st.integers(1, 60))):
        key = draw(st.sampled_from(["a", "b", "c"]))
        kind = draw(st.integers(0, 3))
        eid = i.to_bytes(16, "big")
        if kind == 0:  # a conflict half the time: no change
            event = ContextEvent(eid, key, Delete(), draw(st.integers(0, 2)))
        elif kind == 1:  # garbage: dead-lettered, no change
            out.append(Message("t", 0, i, key.encode(), b"\x00garbage", 1000 + i, []))
            continue
        else:
            event = ContextEvent(eid, key, Put(b'{"i":%d}' % i))
        out.append(Message("t", 0, i, key.encode(), CODEC.encode(event), 1000 + i, []))
    return out


def _numbers(log: list[Message], cuts: list[int], reopen: set[int], native: bool) -> list[int]:
    """Folds ``log`` in rounds ending at ``cuts``, reopening the store after the rounds in
    ``reopen``; the sequence number each change got."""
    numbers: list[int] = []
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "p"
        store = PartitionStore(path)
        try:
            start = 0
            for n, cut in enumerate([*cuts, len(log)]):
                end = min(cut, len(log))
                if end <= start:
                    continue
                folder = PartitionFolder(0, store, Limits(), native=native)
                r = folder.fold(log[start:end])
                assert r is not None
                assert r.end_seq == r.first_seq + len(r.changes)
                numbers += range(r.first_seq, r.end_seq)
                if n % 3 == 2:
                    r.changes.clear()  # published before ("quiet"): still counted
                folder.commit(r, 1000)
                assert store.change_seq == r.end_seq
                if n in reopen:
                    store.close()
                    store = PartitionStore(path)
                start = end
        finally:
            store.close()
    return numbers


@given(logs(), st.lists(st.integers(0, 60), max_size=5), st.sets(st.integers(0, 5)),
       st.booleans())  # fmt: skip
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_the_same_log_numbers_its_changes_the_same_in_any_rounds(
    log: list[Message], cuts: list[int], reopen: set[int], native: bool
) -> None:
    whole = _numbers(log, [], set(), native)
    assert whole == list(range(len(whole)))
    assert _numbers(log, sorted(cuts), reopen, native) == whole


def test_a_seq_header_is_a_small_decimal_or_nothing() -> None:
    assert seq_of([("kind", b"x"), (SEQ_HEADER, b"42")]) == 42
    assert seq_of([(SEQ_HEADER, b"0")]) == 0
    for bad in (b"-1", b"4x", b"", b"1" * 20, b"%d" % MAX_SEQ, "42"):
        assert seq_of([(SEQ_HEADER, bad)]) is None
    assert seq_of(None) is None and seq_of([]) is None


def _fold_in(store: PartitionStore, log: list[Message], ends: list[int], coalesce: bool,
             resume: tuple[int, int] | None = None) -> list[tuple[int, int, int]]:  # fmt: skip
    """Folds ``log`` (from ``store.next_offset``) in rounds ending at ``ends`` on one folder,
    resumed at ``(next_seq, coverage)`` if given, the rounds below the coverage not published
    (as the worker's quiet ones); ``(next_offset, first_seq, end_seq)`` of each round."""
    folder = PartitionFolder(0, store, Limits(), coalesce_changes=coalesce)
    if resume is not None:
        folder.resume_seq, folder.resume_below = resume
    out = []
    start = store.next_offset
    for end in sorted({*(min(e, len(log)) for e in ends), len(log)}):
        if end <= start:
            continue
        r = folder.fold(log[start:end])
        assert r is not None
        if resume is not None and r.next_offset <= resume[1]:
            r.changes.clear()  # on the topic already
        folder.commit(r, 1000)
        out.append((r.next_offset, r.first_seq, r.end_seq))
        assert store.change_seq == r.end_seq
        start = end
    return out


@given(logs(), st.lists(st.integers(1, 60), max_size=5), st.lists(st.integers(1, 60), max_size=5),
       st.integers(0, 5), st.booleans())  # fmt: skip
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_re_fold_below_the_coverage_numbers_on_from_the_topic(
    log: list[Message], cuts: list[int], other_cuts: list[int], k: int, coalesce: bool
) -> None:
    """The topic holds the changes of a fold's first rounds (up to its coverage); a store
    folded again from scratch in other rounds, resumed from the topic's number, counts nothing
    below the coverage (its count stays at most the topic's), takes the topic's number at the
    coverage, and numbers every later change on from it, contiguously: as the first fold did
    when every change is published, whatever the cuts."""
    with tempfile.TemporaryDirectory() as tmp:
        first = PartitionStore(Path(tmp) / "first")
        again = PartitionStore(Path(tmp) / "again")
        try:
            published = _fold_in(first, log, cuts, coalesce)
            coverage, _, next_seq = published[min(k, len(published) - 1)]
            rounds = _fold_in(again, log, [*other_cuts, coverage], coalesce, (next_seq, coverage))
        finally:
            first.close()
            again.close()
    expected = next_seq
    for next_offset, first_seq, end_seq in rounds:
        if next_offset < coverage:
            assert end_seq == 0  # counted nothing: a lower bound
        elif next_offset == coverage:
            assert end_seq == next_seq
        else:
            assert first_seq == expected
            expected = end_seq
    if not coalesce:  # every change published: the numbers are the first fold's
        assert expected == published[-1][2]


@given(logs(), st.integers(0, 60), st.booleans())
@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_an_offline_replay_counts_only_what_the_topic_has(
    log: list[Message], coverage: int, known: bool
) -> None:
    """``offline.replay_wal``'s rounds publish nothing: the replayed store's count is the
    topic's number once the replay passes the coverage (its rounds are cut there), the
    source's below it, and never the count of every change the replay folded (which would
    overstate a coalesced topic's numbering for a standby built on the store)."""
    coverage = min(coverage, len(log))
    with tempfile.TemporaryDirectory() as tmp:
        store = PartitionStore(Path(tmp) / "p")
        try:
            folder = PartitionFolder(0, store, Limits())
            if known:
                folder.resume_seq, folder.resume_below = 7, coverage
            asyncio.run(_fold_rounds(folder, None, log, 1000))
            assert store.next_offset == len(log)
            assert store.change_seq == (7 if known else 0)
        finally:
            store.close()
