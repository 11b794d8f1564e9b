"""The history index: one entry per folded record of a context, in the round's WriteBatch, the
same whatever the rounds' cuts, trimmed with the WAL; hostile keys never break it."""

from __future__ import annotations

import os
import struct
import tempfile
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

from lukhas_context.processors.fold import MAX_ID_BYTES as FOLD_MAX_ID_BYTES
from lukhas_context.processors.fold import Limits
from lukhas_context.processors.round import PartitionFolder, native_history
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


def index_of(path: Path) -> list[tuple[bytes, int, EntryStatus, int]]:
    """Every entry of the index: ``(context key, offset, status, version)``, in key order."""
    db = Rdict(str(path), Options(raw_mode=True),
               column_families={n: Options(raw_mode=True) for n in FAMILIES})  # fmt: skip
    try:
        blocks = list(db.get_column_family(CF_HISTORY).items())
    finally:
        db.close()
    return [
        (history.split_key(raw)[0], *entry)
        for raw, value in blocks  # type: ignore[misc]
        for entry in history.block_entries(raw, value)  # type: ignore[arg-type]
    ]


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
        assert index == index_of(two)  # the same entries, however the rounds cut the blocks
        expected = [m for m in log if m.key and len(m.key) <= history.MAX_ID_BYTES]
        assert sorted(offset for _, offset, *_ in index) == [m.offset for m in expected]
        for key, offset, *_ in index:
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
    if native_history is not None:
        assert native_history(log, 0, entries) is None  # the native loop leaves it to rows()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(st.tuples(st.sampled_from([*KEYS, None]), st.sampled_from(list(EntryStatus)),
                       st.integers(-(1 << 63), (1 << 63) - 1)), max_size=60),
    st.integers(0, 5),
)  # fmt: skip
def test_the_native_blocks_are_the_bytes_of_rows(
    records: list[tuple[bytes | None, EntryStatus, int]], first: int
) -> None:
    """``_fastfold.history_blocks`` against ``history.rows``, byte for byte, with hostile keys
    (empty, too long, no key, non-ASCII) and extreme versions; records below ``first`` were
    folded before and have no journal entry."""
    if native_history is None:
        return  # the pure-Python run: rows() is all there is
    from lukhas_context.state.journal import ENTRY, NO_EVENT_ID

    log = messages([(key, b"") for key, _, _ in records])
    entries = bytearray()
    for (_, status, version), m in zip(records, log, strict=True):
        if m.offset >= first:
            entries += ENTRY.pack(m.offset, status, version, NO_EVENT_ID, 0)
    assert native_history(log, first, entries) == history.rows(log, first, entries)
    for raw, value in history.rows(log, first, entries):  # and they read back in order
        got = history.block_entries(raw, value)
        want = [(m.offset, s, v) for m, (k, s, v) in zip(log, records, strict=True)
                if m.offset >= first and k == history.split_key(raw)[0]]  # fmt: skip
        assert got == want


def test_a_store_written_with_one_row_per_entry_reads_the_same(tmp_path: Path) -> None:
    """Before blocks, each entry was a 9-byte row: a block of one entry. Rows of that shape
    next to blocks read as one history, paged and trimmed alike."""
    log = messages([(b"c", event("c", Put(b"{}"))) for _ in range(6)])
    with PartitionStore(tmp_path / "p0") as store:
        fold_all(store, log, [3])  # two blocks: offsets 0-2 and 3-5
    db = Rdict(str(tmp_path / "p0"), Options(raw_mode=True),
               column_families={n: Options(raw_mode=True) for n in FAMILIES})  # fmt: skip
    try:
        cf = db.get_column_family(CF_HISTORY)
        assert len(list(cf.keys())) == 2
        for offset in (6, 7):  # as an older version wrote them
            cf[history.entry_key(b"c", offset)] = struct.pack("<Bq", EntryStatus.APPLIED, 9)
        del cf  # a column family left alive keeps the database (and its lock) open
    finally:
        db.close()
    with PartitionStore(tmp_path / "p0") as store:
        assert [o for o, *_ in store.history(b"c")[0]] == list(range(8))
        assert [o for o, *_ in store.history(b"c", after=1, limit=3)[0]] == [2, 3, 4]
        assert store.history(b"c", after=6) == ([(7, EntryStatus.APPLIED, 9)], False)
        assert store.trim_history(4) == (4, True)  # a block across the floor is cut, not lost
        assert [o for o, *_ in store.history(b"c")[0]] == [4, 5, 6, 7]
        assert [o for o, *_ in store.history(b"c", after=4)[0]] == [5, 6, 7]


def test_a_value_that_is_no_block_is_refused() -> None:
    with pytest.raises(ValueError, match="history block of 10 bytes"):
        history.block_entries(history.entry_key(b"c", 0), b"x" * 10)


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
