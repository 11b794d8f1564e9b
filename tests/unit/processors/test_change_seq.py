"""The sequence numbers of a partition's changes (header ``seq``) are counted by the fold: the
same log numbers its changes 0, 1, 2, ... whatever rounds it is folded in, across a store
closed and opened again, and a round whose changes are not sent again still counts them."""

from __future__ import annotations

import tempfile
from collections import namedtuple
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import Limits
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
