"""The history index: one entry per folded record of a context, in the round's WriteBatch, the
same whatever the rounds' cuts, trimmed with the WAL; hostile keys never break it."""

from __future__ import annotations

import os
import tempfile
from collections import namedtuple
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from lukhas_context.processors.fold import MAX_ID_BYTES as FOLD_MAX_ID_BYTES
from lukhas_context.processors.fold import Limits
from lukhas_context.processors.round import PartitionFolder
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import CheckpointBarrier, ContextEvent, Delete, Put
from lukhas_context.state import history
from lukhas_context.state.journal import EntryStatus
from lukhas_context.state.store import CF_HISTORY, FAMILIES, PartitionStore

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
CODEC = EventCodec()
LIMITS = Limits(max_document_bytes=256)
NATIVE = os.environ.get("LUKHAS_TEST_PURE_PYTHON") != "1"


def event(key: str, op: object, expected: int | None = None, eid: bytes | None = None) -> bytes:
    return CODEC.encode(ContextEvent(eid or os.urandom(16), key, op, expected))  # type: ignore[arg-type]


def messages(values: list[tuple[bytes | None, bytes | None]]) -> list[Message]:
    return [Message("wal", 0, i, k, v, 1_000 + i, []) for i, (k, v) in enumerate(values)]


def fold_all(store: PartitionStore, log: list[Message], cuts: list[int]) -> None:
    """Folds ``log`` in rounds ending at each of ``cuts`` (and at the end)."""
    folder = PartitionFolder(0, store, LIMITS, native=NATIVE)
    start = 0
    for end in [*sorted(set(cuts)), len(log)]:
        if end <= start:
            continue
        r = folder.fold(log[start:end])
        if r is not None:
            folder.commit(r, 100_000)
        start = end


def test_the_fold_and_the_index_agree_on_the_longest_context_id() -> None:
    assert history.MAX_ID_BYTES == FOLD_MAX_ID_BYTES


def test_every_outcome_of_a_context_is_listed_in_offset_order_and_prefixes_stay_apart(
    tmp_path: Path,
) -> None:
    retry = os.urandom(16)
    log = messages([
        (b"a", event("a", Put(b'{"n":1}'))),  # 0 applied v1
        (b"ab", event("ab", Put(b"{}"))),  # 1: another context, whose id "a" prefixes
        (b"a", event("a", Put(b'{"n":2}'), expected=7)),  # 2 conflict at v1
        (b"a", event("a", Put(b"[1]"))),  # 3 rejected: not an object
        (b"a", event("a", Delete(), eid=retry)),  # 4 applied v2
        (b"a", event("a", Delete(), eid=retry)),  # 5 duplicate of 4
        (b"a", b"not avro"),  # 6 dead-lettered, under the context's key
        (b"", event("", CheckpointBarrier("ck-1"))),  # 7 a barrier: no context
        (b"x" * 300, event("x" * 300, Put(b"{}"))),  # 8 no context id: no entry
        (None, b"junk"),  # 9 no key at all
    ])  # fmt: skip
    with PartitionStore(tmp_path / "p0") as store:
        fold_all(store, log, [3, 8])
        rows, more = store.history(b"a")
        assert not more
        assert [(o, s, v) for o, s, v in rows] == [
            (0, EntryStatus.APPLIED, 1),
            (2, EntryStatus.CONFLICT, 1),
            (3, EntryStatus.REJECTED, 1),
            (4, EntryStatus.APPLIED, 2),
            (5, EntryStatus.DUPLICATE, 4),
            (6, EntryStatus.DEAD_LETTERED, 0),
        ]
        assert store.history(b"ab")[0] == [(1, EntryStatus.APPLIED, 1)]
        assert store.history(b"x" * 300)[0] == [] and store.history(b"")[0] == []
        assert store.history_from() == 0 and store.history_floor() == 0
        # Paging: after an offset, a limit, and whether more follow.
        assert [o for o, *_ in store.history(b"a", after=2, limit=2)[0]] == [3, 4]
        assert store.history(b"a", after=2, limit=2)[1] is True
        assert store.history(b"a", after=5, limit=2) == ([(6, EntryStatus.DEAD_LETTERED, 0)], False)
        assert store.history(b"a", after=(1 << 63) - 1) == ([], False)  # nothing after the last
        # The reasons come from the journal, one block read per block.
        reasons = store.reasons([2, 3, 5, 6])
        assert "version" in reasons[2] and reasons[5] == "duplicate of offset 4"
        assert set(reasons) == {2, 3, 5, 6}
        assert store.reasons([2, 3, 5, 6], budget=1) == {}  # over its budget: left out
        assert store.verify() == store.summary()  # the index's blocks read


def index_of(path: Path) -> list[tuple[bytes, bytes]]:
    db = Rdict(str(path), Options(raw_mode=True),
               column_families={n: Options(raw_mode=True) for n in FAMILIES})  # fmt: skip
    try:
        return list(db.get_column_family(CF_HISTORY).items())  # type: ignore[arg-type]
    finally:
        db.close()


KEYS = [b"a", b"ab", b"b", b"", b"z" * 257, "é".encode()]


@st.composite
def logs(draw: st.DrawFn) -> tuple[list[Message], list[int]]:
    values: list[tuple[bytes | None, bytes | None]] = []
    ids = [os.urandom(16) for _ in range(3)]
    for _ in range(draw(st.integers(1, 40))):
        key = draw(st.sampled_from(KEYS))
        text = key.decode("utf-8", "replace")
        kind = draw(st.integers(0, 4))
        if kind == 0:
            values.append((key, draw(st.binary(max_size=20))))  # garbage
        elif kind == 1:
            values.append((key, event(text, Delete(), draw(st.none() | st.integers(0, 3)))))
        else:
            eid = draw(st.sampled_from(ids)) if kind == 2 else None  # retries and reuses
            values.append((key, event(text, Put(b'{"k":1}'), eid=eid)))
    cuts = draw(st.lists(st.integers(0, len(values)), max_size=4))
    return messages(values), cuts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs())
def test_the_index_is_the_same_whatever_the_rounds_and_has_one_entry_per_record(
    case: tuple[list[Message], list[int]],
) -> None:
    log, cuts = case
    with tempfile.TemporaryDirectory() as tmp:
        one, two = Path(tmp) / "one", Path(tmp) / "two"
        with PartitionStore(one) as store:
            fold_all(store, log, [])
        with PartitionStore(two) as store:
            fold_all(store, log, cuts)
        index = index_of(one)
        assert index == index_of(two)
        expected = [m for m in log if m.key and len(m.key) <= history.MAX_ID_BYTES]
        assert sorted(history.split_key(k)[1] for k, _ in index) == [m.offset for m in expected]
        for raw, _ in index:
            key, offset = history.split_key(raw)
            assert log[offset].key == key


def test_trim_drops_entries_below_the_wal_start_and_remembers_it(tmp_path: Path) -> None:
    log = messages([(b"c%d" % (i % 3), event(f"c{i % 3}", Put(b"{}"))) for i in range(30)])
    with PartitionStore(tmp_path / "p0") as store:
        fold_all(store, log, [10, 20])
        assert store.trim_history(12, chunk=4) == (12, True)
        assert store.history_floor() == 12
        assert [o for o, *_ in store.history(b"c0")[0]] == [12, 15, 18, 21, 24, 27]
        assert store.trim_history(5) == (0, True)  # below the floor: nothing to do
    with PartitionStore(tmp_path / "p0") as store:  # the floor survives a reopen
        assert store.history_floor() == 12 and store.history_from() == 0


def test_a_gap_in_the_index_moves_where_it_is_complete_from(tmp_path: Path) -> None:
    log = messages([(b"c", event("c", Put(b"{}"))) for _ in range(6)])
    with PartitionStore(tmp_path / "p0") as store:
        folder = PartitionFolder(0, store, LIMITS, native=NATIVE)
        r = folder.fold(log[:2])
        assert r is not None
        folder.commit(r, 1000)
        assert store.history_from() == 0
        folder.index_history = False  # `lukhas worker --no-history-index`: a gap from here
        r = folder.fold(log[:4])
        assert r is not None
        folder.commit(r, 1000)
        assert store.history_from() is None
        folder.index_history = True
        r = folder.fold(log)
        assert r is not None
        folder.commit(r, 1000)
        assert store.history_from() == 4
        assert [o for o, *_ in store.history(b"c")[0]] == [0, 1, 4, 5]


def test_rows_match_by_offset_if_records_and_entries_ever_disagree() -> None:
    log = messages([(b"a", b"x"), (b"b", b"y"), (b"c", b"z")])
    from lukhas_context.state.journal import ENTRY, NO_EVENT_ID

    entries = bytearray()
    for offset in (0, 2):  # one record without an entry
        entries += ENTRY.pack(offset, EntryStatus.APPLIED, 1, NO_EVENT_ID, 0)
    rows = history.rows(log, 0, entries)
    assert [history.split_key(k) for k, _ in rows] == [(b"a", 0), (b"c", 2)]


def test_a_trim_out_of_time_goes_on_from_where_it_stopped(tmp_path: Path) -> None:
    log = messages([(b"k%04d" % i, event(f"k{i:04d}", Put(b"{}"))) for i in range(3000)])
    with PartitionStore(tmp_path / "p0") as store:
        fold_all(store, log, [1000, 2000])
        assert store.trim_history(2500, budget_s=0.0) == (999, False)  # stopped at its check
        assert store.history_floor() == 0  # not complete: the floor stays
        # on from where it stopped: the next ones, never the same again
        assert store.trim_history(2500, budget_s=0.0) == (999, False)
        assert store.trim_history(2500) == (502, True)  # 2,500 below the floor in all
        assert store.history_floor() == 2500
        assert sum(len(store.history(b"k%04d" % i)[0]) for i in range(3000)) == 500
