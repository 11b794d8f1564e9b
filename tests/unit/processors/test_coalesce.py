"""A coalesced change stream (``WorkerConfig.coalesce_changes``): each round publishes each
context's last change only, which is exactly what the round's full change list leaves once
compacted; the store, its digest and the journal are the same as without it, on the native
loop and the general path, in any rounds."""

from __future__ import annotations

import tempfile
from collections import namedtuple
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import Limits
from lukhas_context.processors.round import PartitionFolder, latest_changes
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import ContextEvent, Delete, Patch, PatchFormat, Put
from lukhas_context.state.store import PartitionStore

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
CODEC = EventCodec()


def test_the_last_change_of_each_context_is_kept_in_order() -> None:
    changes = [(b"a", b"1", []), (b"b", b"1", []), (b"a", b"2", []), (b"\xffl", b"f1", []),
               (b"c", None, []), (b"\xffl", b"f2", []), (b"b", b"2", [])]  # fmt: skip
    assert latest_changes(changes) == [
        (b"a", b"2", []), (b"\xffl", b"f1", []), (b"c", None, []), (b"\xffl", b"f2", []),
        (b"b", b"2", []),
    ]  # fmt: skip
    once = [(b"a", b"1", []), (b"b", b"1", [])]
    assert latest_changes(once) is once
    assert latest_changes([]) == []


@st.composite
def logs(draw: Any) -> list[Message]:
    out = []
    for i in range(draw(st.integers(1, 80))):
        key = draw(st.sampled_from(["a", "b", "c", "d"]))
        kind = draw(st.integers(0, 4))
        eid = i.to_bytes(16, "big")
        if kind == 0:
            event = ContextEvent(eid, key, Delete())
        elif kind == 1:  # garbage: dead-lettered, no change
            out.append(Message("t", 0, i, key.encode(), b"\x00garbage", 1000 + i, []))
            continue
        elif kind == 2:  # an append (refused when the context or its list is missing)
            op = b'[{"op":"add","path":"/m/-","value":%d}]' % i
            event = ContextEvent(eid, key, Patch(PatchFormat.JSON_PATCH, op))
        else:
            event = ContextEvent(eid, key, Put(b'{"m":[%d]}' % i))
        out.append(Message("t", 0, i, key.encode(), CODEC.encode(event), 1000 + i, []))
    return out


def _fold(
    log: list[Message], cuts: list[int], native: bool, coalesce: bool
) -> tuple[list[list[Any]], Any, list[Any]]:
    """Each round's changes, the store's summary and its journal, folded in rounds ending at
    ``cuts``."""
    rounds: list[list[Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        store = PartitionStore(Path(tmp) / "p")
        try:
            start = 0
            for cut in [*cuts, len(log)]:
                end = min(cut, len(log))
                if end <= start:
                    continue
                folder = PartitionFolder(0, store, Limits(), native=native,
                                         coalesce_changes=coalesce)  # fmt: skip
                r = folder.fold(log[start:end])
                assert r is not None
                assert r.end_seq == r.first_seq + len(r.changes)
                rounds.append(list(r.changes))
                folder.commit(r, 1000)
                start = end
            records = sorted((k, v) for k, v in store.items())
            journal = [(e.offset, e.version, e.status) for e in store.journal_since(0)]
            return rounds, (store.summary(), records), journal
        finally:
            store.close()


@given(logs(), st.lists(st.integers(0, 80), max_size=4), st.booleans())
@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_coalesced_round_publishes_what_compaction_would_keep_of_it(
    log: list[Message], cuts: list[int], native: bool
) -> None:
    every, state, journal = _fold(log, sorted(cuts), native, coalesce=False)
    coalesced, coalesced_state, coalesced_journal = _fold(log, sorted(cuts), native, True)
    assert coalesced_state == state and coalesced_journal == journal
    assert coalesced == [latest_changes(changes) for changes in every]
    for changes in coalesced:
        keys = [key for key, _, _ in changes]
        assert len(keys) == len(set(keys))


def test_a_conversation_of_one_round_publishes_one_change() -> None:
    eid = iter(range(1000))
    put = ContextEvent(next(eid).to_bytes(16, "big"), "conv", Put(b'{"m":[]}'))
    log = [Message("t", 0, 0, b"conv", CODEC.encode(put), 1000, [])]
    for i in range(1, 51):
        op = b'[{"op":"add","path":"/m/-","value":%d}]' % i
        event = ContextEvent(
            next(eid).to_bytes(16, "big"), "conv", Patch(PatchFormat.JSON_PATCH, op)
        )
        log.append(Message("t", 0, i, b"conv", CODEC.encode(event), 1000 + i, []))
    for native in (True, False):
        every, state, _ = _fold(log, [], native, coalesce=False)
        coalesced, coalesced_state, _ = _fold(log, [], native, coalesce=True)
        assert [len(c) for c in every] == [51] and [len(c) for c in coalesced] == [1]
        assert coalesced[0][0] == every[0][-1]
        assert coalesced_state == state
        assert b"[1,2,3" in dict(state[1])[b"conv"].doc and dict(state[1])[b"conv"].version == 51
