"""Transaction records in the fold: a partition's events of a transaction apply in order and
all or none, at the record's offset; one change per context; retried records are duplicates;
any record under the transaction key that is not a transaction record is dead-lettered; the
outcome is the same whatever the rounds' cuts."""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import Limits
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import (
    CheckpointBarrier,
    ContextEvent,
    Delete,
    Fence,
    Patch,
    PatchFormat,
    Put,
)
from lukhas_context.schemas.exceptions import MalformedTransactionError
from lukhas_context.schemas.txrecord import (
    MAX_TX_EVENTS,
    TX_KEY,
    TxRecord,
    decode_tx,
    encode_tx,
)
from lukhas_context.state.journal import EntryStatus
from lukhas_context.state.store import PartitionStore

from .conftest import FoldAll

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
CODEC = EventCodec()
CHANGES = ChangeCodec()
LIMITS = Limits(max_document_bytes=256)
NATIVE = os.environ.get("LUKHAS_TEST_PURE_PYTHON") != "1"


def ev(key: str, op: object, expected: int | None = None, fence: Fence | None = None) -> bytes:
    return CODEC.encode(ContextEvent(os.urandom(16), key, op, expected, fence))  # type: ignore[arg-type]


def put(key: str, doc: bytes = b"{}", expected: int | None = None, **kw: object) -> bytes:
    return ev(key, Put(doc), expected, **kw)  # type: ignore[arg-type]


def tx(*events: bytes, tx_id: bytes | None = None, scope: int = 0) -> tuple[bytes, bytes]:
    return TX_KEY, encode_tx(tx_id or os.urandom(16), list(events), scope)


def plain(key: str, value: bytes) -> tuple[bytes, bytes]:
    return key.encode(), value


def messages(values: list[tuple[bytes, bytes]]) -> list[Message]:
    return [Message("wal", 0, i, k, v, 1_000 + i, []) for i, (k, v) in enumerate(values)]


def statuses(store: PartitionStore) -> list[EntryStatus]:
    return [e.status for e in store.journal_since(0)]


# ---- the record ----


def test_a_record_round_trips() -> None:
    events = [put("a"), put("b", b'{"x":1}')]
    tx_id = os.urandom(16)
    assert decode_tx(encode_tx(tx_id, events)) == TxRecord(tx_id, 0, tuple(events))


@pytest.mark.parametrize(
    "value",
    [
        None,
        b"",
        b"LKT1",
        b"LKT2" + bytes(19),
        b"LKT1" + bytes(16) + b"\x00" + b"\x00\x00",  # no events
        b"LKT1" + bytes(16) + b"\x00" + (MAX_TX_EVENTS + 1).to_bytes(2, "big"),  # none there
        b"LKT1" + bytes(16) + b"\x00\x00\x01" + (2**32 - 1).to_bytes(4, "big") + b"xx",
        b"LKT1" + bytes(16) + b"\x00\x00\x01" + (0).to_bytes(4, "big"),
        b"LKT1" + bytes(16) + b"\x00\x00\x02" + (2).to_bytes(4, "big") + b"xx",  # 1 of 2
        encode_tx(bytes(16), [b"ab"]) + b"!",  # trailing bytes
    ],
)
def test_anything_else_under_the_key_is_malformed(value: bytes | None) -> None:
    with pytest.raises(MalformedTransactionError):
        decode_tx(value)


# ---- the fold ----


def test_all_events_apply_in_order_at_the_record_offset_one_change_per_context(
    fold_all: FoldAll,
    tmp_path: Path,
) -> None:
    log = messages([
        plain("c", put("c", b'{"old":1}')),  # 0: c exists
        tx(
            put("a", b'{"n":1}'),
            ev("a", Patch(PatchFormat.MERGE_PATCH, b'{"m":2}'), expected=1),  # sees the put
            put("b"),
            ev("c", Delete(), expected=1),
        ),  # 1
    ])  # fmt: skip
    with PartitionStore(tmp_path / "p0") as store:
        changes = fold_all(store, log)
        entries = list(store.journal_since(0))
        assert [(e.status, e.version) for e in entries] == [
            (EntryStatus.APPLIED, 1),
            (EntryStatus.APPLIED, 4),  # a transaction's version: how many events it applied
        ]
        a, b, c = (store.get(k) for k in (b"a", b"b", b"c"))
        assert a is not None and (a.version, a.doc, a.offset) == (2, b'{"m":2,"n":1}', 1)
        assert b is not None and (b.version, b.offset) == (1, 1)
        assert c is not None and c.doc is None and c.version == 2
        rows, _ = store.history(b"a")
        assert [(o, s) for o, s, _ in rows] == [(1, EntryStatus.APPLIED)]
        assert [o for o, *_ in store.history(b"c")[0]] == [0, 1]
        store.check()
    tx_changes = changes[1:]
    assert [k for k, *_ in tx_changes] == [b"a", b"b", b"c"]  # a once: its state after
    first = CHANGES.decode(tx_changes[0][1])
    assert (first.version, first.wal_offset, first.doc) == (2, 1, b'{"m":2,"n":1}')
    assert tx_changes[2][1] is None  # c's deletion: a tombstone


@pytest.mark.parametrize(
    "failing, status, words",
    [
        (put("b", expected=7), EntryStatus.CONFLICT, "expected version 7"),
        (put("b", b"[1]"), EntryStatus.REJECTED, "not an object"),
        (put("b", fence=Fence("L", 1)), EntryStatus.FENCED, "below 9"),  # 9: the tx raised it
        (ev("b", Delete()), EntryStatus.REJECTED, "not found"),
        (ev("", CheckpointBarrier("x")), EntryStatus.REJECTED, "not an event of a context"),
    ],
)
def test_one_failing_event_and_none_applies(
    fold_all: FoldAll, tmp_path: Path, failing: bytes, status: EntryStatus, words: str
) -> None:
    log = messages([
        plain("f", put("f", fence=Fence("L", 5))),  # raises L to 5
        tx(put("a", b'{"n":1}', fence=Fence("L", 9)), put("x"), failing),
    ])  # fmt: skip
    with PartitionStore(tmp_path / "p0") as store:
        changes = fold_all(store, log)
        assert statuses(store) == [EntryStatus.APPLIED, status]
        reason = store.reasons([1])[1]
        assert words in reason and "event 2" in reason
        assert "none of the transaction's 3 events applied" in reason
        assert store.get(b"a") is None and store.get(b"x") is None
        assert store.fence(b"L") == 5  # the aborted transaction's token 9 raised nothing
        store.check()
    assert len(changes) == 2  # the first put's change and its fence record


def test_a_retried_record_is_a_duplicate_and_its_id_reused_is_dead_lettered(
    fold_all: FoldAll,
    tmp_path: Path,
) -> None:
    tx_id = os.urandom(16)
    same = tx(put("a"), put("b"), tx_id=tx_id)
    log = messages([same, same, tx(put("c"), tx_id=tx_id)])
    with PartitionStore(tmp_path / "p0") as store:
        fold_all(store, log, [1])
        assert statuses(store) == [
            EntryStatus.APPLIED, EntryStatus.DUPLICATE, EntryStatus.DEAD_LETTERED,
        ]  # fmt: skip
        record = store.get(b"a")
        assert record is not None and record.version == 1


def test_hostile_records_under_the_key_never_stop_the_fold(
    fold_all: FoldAll, tmp_path: Path
) -> None:
    good = put("ok")
    n = MAX_TX_EVENTS + 1
    framed = (len(good).to_bytes(4, "big") + good) * n
    over_the_limit = b"LKT1" + os.urandom(16) + b"\x00" + n.to_bytes(2, "big") + framed
    log = messages([
        (TX_KEY, b"LKT1 garbage"),
        (TX_KEY, encode_tx(os.urandom(16), [b"not avro"])),  # an event that does not decode
        tx(good, scope=2),  # a scope this version does not decide
        tx(put("x" * 300)),  # a context id too long
        (TX_KEY, encode_tx(os.urandom(16), [good] * MAX_TX_EVENTS)),  # the same event 1000x
        (TX_KEY, encode_tx(os.urandom(16), [good], 1)),  # voted, but names no partitions
        (TX_KEY, over_the_limit),  # a raw producer's 1,001 events: rejected
        (TX_KEY, b"LKV1" + bytes(10)),  # a vote cut short
        (TX_KEY, b"LKD1" + bytes(16) + b"\x07"),  # a decision neither commit nor abort
        plain("after", put("after")),
    ])  # fmt: skip
    with PartitionStore(tmp_path / "p0") as store:
        fold_all(store, log)
        assert statuses(store) == [
            EntryStatus.DEAD_LETTERED, EntryStatus.DEAD_LETTERED, EntryStatus.REJECTED,
            EntryStatus.REJECTED, EntryStatus.APPLIED, EntryStatus.DEAD_LETTERED,
            EntryStatus.REJECTED, EntryStatus.DEAD_LETTERED, EntryStatus.DEAD_LETTERED,
            EntryStatus.APPLIED,
        ]  # fmt: skip
        ok = store.get(b"ok")
        assert ok is not None and ok.version == MAX_TX_EVENTS
        store.check()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(
        st.tuples(
            st.booleans(),  # in a transaction with the next step
            st.sampled_from(["a", "b", "c"]),
            st.one_of(st.none(), st.integers(0, 3)),  # expected version
        ),
        min_size=1,
        max_size=20,
    ),
    cuts=st.lists(st.integers(0, 20), max_size=4),
)
def test_any_round_cuts_give_the_same_store(
    fold_all: FoldAll,
    tmp_path_factory: pytest.TempPathFactory,
    steps: list[tuple[bool, str, int | None]],
    cuts: list[int],
) -> None:
    values: list[tuple[bytes, bytes]] = []
    group: list[bytes] = []
    for grouped, key, expected in steps:
        event = put(key, b'{"k":"%s"}' % key.encode(), expected)
        if grouped:
            group.append(event)
            continue
        if group:
            values.append(tx(*group, event))
            group = []
        else:
            values.append(plain(key, event))
    if group:
        values.append(tx(*group))
    log = messages(values)
    seen = []
    for round_cuts in ([], cuts):
        path = tmp_path_factory.mktemp("cut")
        with PartitionStore(path / "p0") as store:
            fold_all(store, log, round_cuts)
            seen.append((statuses(store), store.summary()))
    assert seen[0] == seen[1]


def test_inspect_shows_a_transaction_record_and_a_fence_record() -> None:
    from types import SimpleNamespace

    from lukhas_context.ops.inspect import _Decoder, wal_line
    from lukhas_context.schemas.change import FenceRecord

    tx_id = os.urandom(16)
    value = encode_tx(tx_id, [put("a"), ev("b", Delete(), expected=3)])
    m = SimpleNamespace(partition=0, offset=7, timestamp=0, key=TX_KEY, value=value, headers=[])
    line = wal_line(m)
    assert line["kind"] == "transaction" and line["event_id"] == tx_id.hex()
    assert line["context_id"] == "a,b"
    assert [e["kind"] for e in line["events"]] == ["put", "delete"]
    assert line["events"][1]["if_version"] == 3
    from lukhas_context.schemas.txrecord import Vote, encode_tick, encode_vote

    vote = SimpleNamespace(**{**vars(m), "value": encode_vote(Vote(tx_id, 2, False, "no"))})
    assert (wal_line(vote)["kind"], wal_line(vote)["voter"], wal_line(vote)["yes"]) == (
        "vote", 2, False,
    )  # fmt: skip
    assert wal_line(SimpleNamespace(**{**vars(m), "value": encode_tick()}))["kind"] == "tick"
    broken = SimpleNamespace(**{**vars(m), "value": b"LKT1"})
    assert "MalformedTransactionError" in wal_line(broken)["undecodable"]
    fence = FenceRecord("L", 5, 7, 0)
    f = SimpleNamespace(partition=0, offset=1, timestamp=0, key=fence.key, value=fence.encode(),
                        headers=[])  # fmt: skip
    shown = _Decoder("changes").line(f)
    assert (shown["kind"], shown["lock"], shown["token"]) == ("fence", "L", 5)


def test_inspect_prints_every_kind_of_transaction_record_as_text() -> None:
    """The text lines of ``lukhas inspect`` (not only ``--json``): votes, decisions, ticks,
    transaction states and fence records have no context id, and print without one."""
    from types import SimpleNamespace

    from lukhas_context.ops.cli.inspect import _text
    from lukhas_context.ops.inspect import _Decoder, wal_line
    from lukhas_context.processors.twophase import state_record
    from lukhas_context.schemas.change import FenceRecord
    from lukhas_context.schemas.txrecord import (
        SCOPE_VOTED,
        Decision,
        Vote,
        encode_decision,
        encode_tick,
        encode_vote,
    )

    tx_id = os.urandom(16)
    m = SimpleNamespace(partition=0, offset=7, timestamp=0, key=TX_KEY, headers=[], value=b"")
    lines = [
        _text("wal", wal_line(SimpleNamespace(**{**vars(m), "value": value})))
        for value in (
            encode_tx(tx_id, [put("a")], SCOPE_VOTED, (0, 1)),
            encode_vote(Vote(tx_id, 1, False, "conflict")),
            encode_decision(Decision(tx_id, True, "every partition voted yes")),
            encode_tick(),
        )
    ]
    assert "transaction a partitions=[0, 1]" in lines[0]
    assert "vote     partition 1 votes no (conflict)" in lines[1]
    assert "decision commit (every partition voted yes)" in lines[2]
    assert lines[3].endswith("tick")
    fence = FenceRecord("L", 5, 7, 0)
    key, value = state_record(tx_id, 9, None)
    changes = _Decoder("changes")
    shown = [
        _text("changes", changes.line(SimpleNamespace(**{**vars(m), "key": k, "value": v})))
        for k, v in ((fence.key, fence.encode()), (key, value))
    ]
    assert "fence 'L' token 5  (WAL offset 7)" in shown[0]
    assert f"transaction {tx_id.hex()} decided (WAL offset 9)" in shown[1]
