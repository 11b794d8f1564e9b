"""The commit protocol across partitions (``processors.twophase``), folded by real partition
folders over an in-memory WAL of several partitions: votes and decisions are appended as the
worker's publisher would, so the whole protocol runs as records of the log. All or nothing
across partitions, held contexts, the coordinator's timeout, a restart in the middle, and a
replay of the final log that reaches the same stores."""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import pytest

from lukhas_context.processors.change_record import TxStateRecord, read_change_topic_record
from lukhas_context.processors.fold import Limits
from lukhas_context.processors.round import PartitionFolder
from lukhas_context.processors.twophase import PreparedTx, read_state_record, state_record
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import ContextEvent, Put
from lukhas_context.schemas.txrecord import (
    SCOPE_VOTED,
    TX_KEY,
    Decision,
    Vote,
    decode_control,
    encode_decision,
    encode_tick,
    encode_tx,
    encode_vote,
)
from lukhas_context.state.journal import EntryStatus
from lukhas_context.state.store import PartitionStore, Summary

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
CODEC = EventCodec()
LIMITS = Limits(max_document_bytes=256, tx_timeout_ms=30_000)
NATIVE = os.environ.get("LUKHAS_TEST_PURE_PYTHON") != "1"


def put(key: str, doc: bytes = b"{}", expected: int | None = None) -> bytes:
    return CODEC.encode(ContextEvent(os.urandom(16), key, Put(doc), expected))


class Wal:
    """Partitions of records, each with a folder over a store of its own."""

    def __init__(self, root: Path, partitions: int) -> None:
        self.root = root
        self.logs: list[list[Message]] = [[] for _ in range(partitions)]
        self.stores = [PartitionStore(root / f"p{p}") for p in range(partitions)]
        self.folders = [PartitionFolder(p, s, LIMITS, native=NATIVE) for p, s in
                        enumerate(self.stores)]  # fmt: skip
        self.time = 1_000
        #: Every round's change records, per partition, in publishing order.
        self.changes: list[list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]] = [
            [] for _ in range(partitions)
        ]

    def append(self, p: int, key: bytes, value: bytes, at: int | None = None) -> int:
        self.time = max(self.time + 1, at or 0)
        offset = len(self.logs[p])
        self.logs[p].append(Message("wal", p, offset, key, value, self.time, []))
        return offset

    def transaction(self, parts: dict[int, list[bytes]]) -> dict[int, int]:
        """Appends one voted record per partition (the client's one Kafka transaction)."""
        tx_id = os.urandom(16)
        partitions = tuple(sorted(parts))
        return {
            p: self.append(p, TX_KEY, encode_tx(tx_id, events, SCOPE_VOTED, partitions))
            for p, events in parts.items()
        }

    def fold(self, p: int) -> int:
        """Folds partition ``p``'s new records; appends what the round sends; returns how
        many records it folded."""
        folder = self.folders[p]
        new = self.logs[p][folder.store.next_offset :]
        if not new:
            return 0
        r = folder.fold(new)
        assert r is not None
        for target, key, value in r.wal_sends:  # the publisher, before the commit
            self.append(target, key, value)
        self.changes[p] += r.changes
        folder.commit(r, 100_000)
        return len(new)

    def settle(self, only: list[int] | None = None) -> None:
        """Folds the partitions (``only`` these) until none has anything new (bounded)."""
        for _ in range(50):
            if not sum(self.fold(p) for p in (only or range(len(self.logs)))):
                return
        raise AssertionError("the protocol did not settle in 50 passes")

    def status(self, p: int, offset: int) -> EntryStatus:
        return next(e.status for e in self.stores[p].journal_since(offset) if e.offset == offset)

    def close(self) -> None:
        for store in self.stores:
            store.close()


@pytest.fixture
def wal(tmp_path: Path) -> Wal:
    w = Wal(tmp_path, 3)
    yield w
    w.close()


def test_a_transaction_across_partitions_commits_in_every_one(wal: Wal) -> None:
    prepares = wal.transaction({0: [put("a0")], 1: [put("b1")], 2: [put("c2"), put("d2")]})
    wal.settle()
    for p, offset in prepares.items():
        assert wal.status(p, offset) is EntryStatus.PREPARED
        at, status, version, reason = wal.stores[p].resolution(offset)
        assert EntryStatus(status) is EntryStatus.APPLIED and "committed" in reason
        assert at > offset  # applied where the decision was folded
        assert not wal.stores[p].prepared() and not wal.folders[p].held
        wal.stores[p].check()
    assert version == 2  # partition 2's two events
    for p, key in ((0, b"a0"), (1, b"b1"), (2, b"c2"), (2, b"d2")):
        record = wal.stores[p].get(key)
        assert record is not None and record.version == 1
    # The log holds the protocol: votes on the coordinator (0), decisions on the others.
    kinds = {p: [type(decode_control(m.value)).__name__ for m in wal.logs[p]] for p in (0, 1, 2)}
    assert kinds == {0: ["TxRecord", "Vote", "Vote"], 1: ["TxRecord", "Decision"],
                     2: ["TxRecord", "Decision"]}  # fmt: skip


def test_one_failed_condition_anywhere_and_nothing_applies_anywhere(wal: Wal) -> None:
    wal.append(2, b"c2", put("c2"))
    prepares = wal.transaction({0: [put("a0")], 1: [put("b1")], 2: [put("c2", expected=5)]})
    wal.settle()
    assert wal.stores[0].get(b"a0") is None and wal.stores[1].get(b"b1") is None
    record = wal.stores[2].get(b"c2")
    assert record is not None and record.version == 1
    assert wal.status(2, prepares[2]) is EntryStatus.CONFLICT  # the one that voted no
    for p in (0, 1):
        _, status, _, reason = wal.stores[p].resolution(prepares[p])
        assert EntryStatus(status) is EntryStatus.ABORTED
        assert "partition 2" in reason and "expected version 5" in reason
        assert not wal.folders[p].held
        wal.stores[p].check()


def test_a_prepared_transaction_holds_its_contexts_until_the_decision(wal: Wal) -> None:
    prepares = wal.transaction({0: [put("a0")], 1: [put("b1")]})
    wal.fold(1)  # partition 1 prepares (yes) and votes; the coordinator has not folded
    held = wal.append(1, b"b1", put("b1", b'{"other":1}'))
    free = wal.append(1, b"x1", put("x1"))
    wal.fold(1)
    assert wal.status(1, held) is EntryStatus.CONFLICT
    assert "held by transaction" in wal.stores[1].reasons([held])[held]
    assert wal.status(1, free) is EntryStatus.APPLIED
    # A restart in the middle: the held context is held by the store, not only in memory.
    wal.folders[1] = PartitionFolder(1, wal.stores[1], LIMITS, native=NATIVE)
    again = wal.append(1, b"b1", put("b1", b'{"other":2}'))
    wal.fold(1)
    assert wal.status(1, again) is EntryStatus.CONFLICT
    wal.settle()
    record = wal.stores[1].get(b"b1")
    assert record is not None and record.doc == b"{}" and record.version == 1
    assert EntryStatus(wal.stores[1].resolution(prepares[1])[1]) is EntryStatus.APPLIED
    after = wal.append(1, b"b1", put("b1", b'{"after":1}'))
    wal.fold(1)
    assert wal.status(1, after) is EntryStatus.APPLIED  # released


def test_a_vote_that_never_comes_times_the_transaction_out_as_an_abort(wal: Wal) -> None:
    prepares = wal.transaction({0: [put("a0")], 1: [put("b1")]})
    wal.fold(0)  # the coordinator prepares; partition 1's worker is down
    assert wal.folders[0].held
    wal.append(0, TX_KEY, encode_tick(), at=wal.time + 10_000)  # not yet
    wal.fold(0)
    assert wal.folders[0].held
    wal.append(0, TX_KEY, encode_tick(), at=wal.time + 30_000)  # past the timeout
    wal.fold(0)
    assert not wal.folders[0].held
    _, status, _, reason = wal.stores[0].resolution(prepares[0])
    assert EntryStatus(status) is EntryStatus.ABORTED and "no vote from partition(s) [1]" in reason
    wal.settle()  # partition 1 comes back: prepares, votes too late, gets the abort
    assert wal.stores[1].get(b"b1") is None and wal.stores[0].get(b"a0") is None
    assert not wal.folders[1].held and not wal.stores[1].prepared()
    late_vote = len(wal.logs[0]) - 1
    assert wal.status(0, late_vote) is EntryStatus.REJECTED  # decided already


def test_a_replay_of_the_final_log_reaches_the_same_stores(wal: Wal, tmp_path: Path) -> None:
    wal.append(1, b"k1", put("k1"))
    wal.transaction({0: [put("a0")], 1: [put("k1", expected=1)], 2: [put("c2")]})
    wal.transaction({0: [put("a0", expected=7)], 2: [put("c2", b'{"no":1}')]})  # aborts
    # Appended while the first is still undecided: k1 is held, so this one waits for it,
    # then is evaluated against what the first wrote.
    third = wal.transaction({1: [put("k1", b'{"n":3}', expected=2)], 2: [put("z2")]})
    wal.settle()
    live: list[Summary] = [s.summary() for s in wal.stores]
    for p, log in enumerate(wal.logs):  # everything, votes and decisions included, in one go
        with PartitionStore(tmp_path / f"replay{p}") as store:
            folder = PartitionFolder(p, store, LIMITS, native=NATIVE)
            r = folder.fold(log)
            assert r is not None
            folder.commit(r, 100_000)
            assert store.summary() == live[p], p
    record = wal.stores[1].get(b"k1")
    assert record is not None and record.doc == b'{"n":3}' and record.version == 3
    assert wal.status(1, third[1]) is EntryStatus.PREPARED
    assert "waits for transaction" in wal.stores[1].reasons([third[1]])[third[1]]
    assert EntryStatus(wal.stores[1].resolution(third[1])[1]) is EntryStatus.APPLIED
    assert wal.stores[2].get(b"z2") is not None


def test_forged_and_repeated_control_records_change_nothing(wal: Wal) -> None:
    prepares = wal.transaction({0: [put("a0")], 1: [put("b1")]})
    wal.fold(0)
    tx_id = decode_control(wal.logs[0][prepares[0]].value).tx_id  # type: ignore[union-attr]
    stranger = wal.append(0, TX_KEY, encode_vote(Vote(tx_id, 2, True)))  # not a participant
    unknown = wal.append(1, TX_KEY, encode_decision(Decision(os.urandom(16), True)))
    wal.settle()
    assert wal.status(0, stranger) is EntryStatus.REJECTED
    assert wal.status(1, unknown) is EntryStatus.REJECTED
    assert wal.stores[0].get(b"a0") is not None and wal.stores[1].get(b"b1") is not None
    # The coordinator's vote of partition 1, sent again after a crash: a duplicate.
    vote = next(m for m in wal.logs[0] if isinstance(decode_control(m.value), Vote))
    repeat = wal.append(0, TX_KEY, vote.value)
    wal.fold(0)
    assert wal.status(0, repeat) is EntryStatus.DUPLICATE


def test_a_state_record_round_trips() -> None:
    prepared = PreparedTx(os.urandom(16), 5, 1_000, (0, 2), True, "", b"LKT1...",
                          [b"a"], [b"L"], {0: (True, "")})  # fmt: skip
    key, value = state_record(prepared.tx_id, 9, prepared)
    tx_id, offset, state = read_state_record(key, value)
    assert (tx_id, offset) == (prepared.tx_id, 9) and state is not None
    assert PreparedTx.decode(tx_id, state) == prepared
    key, value = state_record(prepared.tx_id, 12, None)
    assert read_state_record(key, value)[1:] == (12, None)
    for bad in (b"", b"\x00" * 8 + b"junk"):
        with pytest.raises(ValueError):
            read_state_record(key, bad)


def test_transactions_one_after_another_on_the_same_contexts_apply_in_order(wal: Wal) -> None:
    """Each is prepared while the one before still holds the contexts: it waits, then is
    evaluated against what that one wrote — none is refused for arriving early."""
    for i in range(1, 6):
        wal.transaction({p: [put(f"k{p}", b'{"i":%d}' % i, expected=i - 1)] for p in (0, 1, 2)})
    wal.settle()
    for p in (0, 1, 2):
        record = wal.stores[p].get(b"k%d" % p)
        assert record is not None and (record.version, record.doc) == (5, b'{"i":5}')
        assert not wal.stores[p].prepared() and not wal.folders[p].held
        wal.stores[p].check()


def test_a_woken_part_publishes_its_state_at_the_record_that_woke_it(wal: Wal) -> None:
    """A part that waited behind another transaction votes when that one's decision is
    folded; its new state (yes, holding the contexts) names the WAL offset of that record, not
    its own older prepare's. A standby passes over a state record below its ``next_offset``
    (an unnumbered one is older than the copy), so one named by the prepare would be lost
    there and the copy would keep the part waiting: after a promotion its commit would be
    folded as an abort. Every record a round publishes names an offset at or past the ones
    before it."""
    first = wal.transaction({0: [put("a0")], 1: [put("b1")]})
    second = wal.transaction({0: [put("a0", b'{"second":1}')], 1: [put("b1")]})
    wal.settle()
    codec = ChangeCodec()
    for p in (0, 1):
        items = [read_change_topic_record(k, v, h, codec) for k, v, h in wal.changes[p]]
        offsets = [i.wal_offset if isinstance(i, TxStateRecord) else i.record.offset
                   for i in items]  # fmt: skip
        assert offsets == sorted(offsets), offsets
        states = [i for i in items if isinstance(i, TxStateRecord) and i.state is not None]
        woken = [i for i in states if i.wal_offset > second[p]]
        assert woken, states  # its yes came after its prepare, named by a later record
        assert EntryStatus(wal.stores[p].resolution(first[p])[1]) is EntryStatus.APPLIED
        assert EntryStatus(wal.stores[p].resolution(second[p])[1]) is EntryStatus.APPLIED


def test_a_waiting_part_is_dropped_by_an_abort(wal: Wal) -> None:
    first = wal.transaction({0: [put("a0")], 1: [put("b1")]})
    second = wal.transaction({0: [put("a0", expected=7)], 1: [put("b1", b'{"second":1}')]})
    wal.settle()
    assert EntryStatus(wal.stores[1].resolution(first[1])[1]) is EntryStatus.APPLIED
    # The second waited in both partitions, then voted no in partition 0 (version 1, not 7).
    _, status, _, reason = wal.stores[1].resolution(second[1])
    assert EntryStatus(status) is EntryStatus.ABORTED and "expected version 7" in reason
    record = wal.stores[1].get(b"b1")
    assert record is not None and record.doc == b"{}"
    assert not any(wal.stores[p].prepared() for p in (0, 1, 2))


def test_a_window_rebuilt_from_the_wal_is_the_folds_own(wal: Wal) -> None:
    """What a change-topic restore rebuilds its dedupe window from (``window_id`` over the
    WAL) is what the fold put in it: transaction records, votes, decisions and ticks too."""
    import xxhash

    from lukhas_context.processors.round import window_id
    from lukhas_context.state.dedupe import DedupeWindow

    wal.transaction({0: [put("a0")], 1: [put("b1")]})
    wal.append(0, TX_KEY, encode_tick())
    wal.append(0, TX_KEY, encode_tick())  # a repeat: a duplicate
    wal.append(1, TX_KEY, b"LKV1 garbage")  # dead-lettered: in no window
    wal.append(1, b"plain", put("plain"))
    wal.settle()
    for p, log in enumerate(wal.logs):
        rebuilt = DedupeWindow(LIMITS.dedupe_window)
        for m in log:
            event_id = window_id(m.key, m.value, p, CODEC)
            if event_id is not None:
                rebuilt.admit(event_id, m.offset, xxhash.xxh3_64_intdigest(m.value))
        assert rebuilt.ids == wal.folders[p].window.ids, p
