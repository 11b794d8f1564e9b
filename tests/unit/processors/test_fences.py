"""Fencing tokens in the fold: per lock name and partition, the highest token folded is kept in
the store (same WriteBatch, counted in the digest); a lower one is ``fenced``; the decision
depends only on the log, whatever the rounds' cuts; the change topic carries the fences so a
restore from it decides alike. Hostile fences are rejected, never crash the fold."""

from __future__ import annotations

import os
from collections import namedtuple
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import Limits, Status, apply, fence_verdict
from lukhas_context.schemas.change import (
    FENCE_KEY_PREFIX,
    FenceRecord,
    fence_key,
    is_fence_key,
    read_fence_record,
)
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import (
    MAX_LOCK_NAME_BYTES,
    ContextEvent,
    Delete,
    Expire,
    Fence,
    Put,
    fence_problem,
)
from lukhas_context.schemas.exceptions import BadFenceRecordError
from lukhas_context.state.journal import EntryStatus
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams.exceptions import LockLostError, ValidationError
from lukhas_context.streams.locks import as_fence, check_fence

from .conftest import FoldAll

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
CODEC = EventCodec()
LIMITS = Limits(max_document_bytes=256)
NATIVE = os.environ.get("LUKHAS_TEST_PURE_PYTHON") != "1"
EID = bytes(16)


def event(key: str, fence: Fence | None, op: object = None, eid: bytes | None = None) -> bytes:
    op = op if op is not None else Put(b'{"by":%d}' % (fence.token if fence else -1))
    return CODEC.encode(ContextEvent(eid or os.urandom(16), key, op, None, fence))  # type: ignore[arg-type]


def messages(values: list[tuple[bytes, bytes]]) -> list[Message]:
    return [Message("wal", 0, i, k, v, 1_000 + i, []) for i, (k, v) in enumerate(values)]


# ---- the pure decision ----


def test_a_token_below_the_highest_is_fenced_an_equal_or_higher_one_goes_on() -> None:
    fenced = ContextEvent(EID, "c", Put(b"{}"), None, Fence("L", 5))
    record, outcome = apply(None, fenced, 3, 10, LIMITS, fence_floor=7)
    assert outcome.status is Status.FENCED and record is None
    assert outcome.reason is not None and "token 5 of lock 'L' is below 7" in outcome.reason
    for floor in (None, 0, 5):
        record, outcome = apply(None, fenced, 3, 10, LIMITS, fence_floor=floor)
        assert outcome.status is Status.APPLIED and record is not None


def test_a_fenced_write_leaves_an_existing_record_as_it_was_and_reports_its_version() -> None:
    existing, _ = apply(None, ContextEvent(EID, "c", Put(b'{"a":1}')), 0, 1, LIMITS)
    assert existing is not None
    stale = ContextEvent(EID, "c", Delete(), None, Fence("L", 1))
    new, outcome = apply(existing, stale, 1, 2, LIMITS, fence_floor=2)
    assert new is existing and outcome.status is Status.FENCED and outcome.version == 1


@pytest.mark.parametrize(
    "fence, words",
    [
        (Fence("", 1), "non-empty"),
        (Fence("x" * (MAX_LOCK_NAME_BYTES + 1), 1), "at most 200"),
        (Fence("é" * 101, 1), "202 bytes"),
        (Fence("a\nb", 1), "control character"),
        (Fence("a\x7f", 1), "control character"),
        (Fence("L", -1), "non-negative"),
        (Fence("L", 2**63), "non-negative"),
        (Fence("L", True), "non-negative"),  # type: ignore[arg-type]
        (Fence("L", 1.5), "non-negative"),  # type: ignore[arg-type]
        (Fence("L", "7"), "non-negative"),  # type: ignore[arg-type]
    ],
)
def test_a_fence_no_lock_can_issue_is_rejected_by_the_fold_and_refused_by_the_client(
    fence: Fence, words: str
) -> None:
    problem = fence_problem(fence)
    assert problem is not None
    assert words.replace("non-negative", "[0, 2^63)") in problem
    verdict = fence_verdict(fence, None)
    assert verdict is not None and verdict[0] is Status.REJECTED
    record, outcome = apply(None, ContextEvent(EID, "c", Put(b"{}"), None, fence), 0, 0, LIMITS)
    assert outcome.status is Status.REJECTED and record is None
    with pytest.raises(ValidationError):
        check_fence(fence.lock, fence.token)


def test_the_client_reads_a_fence_from_text_a_fence_or_a_lock() -> None:
    assert as_fence("orders:42") == Fence("orders", 42)
    assert as_fence("a:b:7") == Fence("a:b", 7)  # the token is after the last colon
    assert as_fence(Fence("L", 0)) == Fence("L", 0)
    for bad in ("orders", "orders:", ":5", "L:-1", "L:1e3", "L:٣", "L:" + "9" * 20, 42, None):
        with pytest.raises(ValidationError):
            as_fence(bad)

    from lukhas_context.streams.locks import Lock

    lock = Lock(None, "L", 1.0, 1.0)  # type: ignore[arg-type]
    with pytest.raises(LockLostError):
        as_fence(lock)  # not acquired: nothing to send
    lock.token = 9
    assert as_fence(lock) == Fence("L", 9)
    lock._lost = "expired and is no longer held by this acquisition"
    with pytest.raises(LockLostError, match="token 9"):
        as_fence(lock)


# ---- in the round and the store ----


def kleppmann_log() -> list[Message]:
    return messages([
        (b"file", event("file", Fence("L", 33))),  # 0 A writes with 33: applied
        (b"file", event("file", Fence("L", 34))),  # 1 B, a later holder: applied
        (b"file", event("file", Fence("L", 33))),  # 2 A again, after its pause: fenced
        (b"file", event("file", Fence("M", 1))),  # 3 another lock: its own counter
        (b"other", event("other", Fence("L", 34))),  # 4 the same holder, another context
        (b"file", event("file", None)),  # 5 no fence: not checked
        (b"file", event("file", Fence("L", 2**63 - 1), op=Put(b"[1]"))),  # 6 rejected doc,
        (b"file", event("file", Fence("L", 35))),  # 7   but the token counts: 35 is fenced
        (b"file", event("file", Fence("", 99))),  # 8 malformed: rejected, counts nothing
    ])  # fmt: skip


def test_the_fold_fences_a_stale_token_and_keeps_the_highest_per_lock(
    fold_all: FoldAll, tmp_path: Path
) -> None:
    with PartitionStore(tmp_path / "p0") as store:
        changes = fold_all(store, kleppmann_log(), [])
        entries = list(store.journal_since(0))
        assert [e.status for e in entries] == [
            EntryStatus.APPLIED, EntryStatus.APPLIED, EntryStatus.FENCED, EntryStatus.APPLIED,
            EntryStatus.APPLIED, EntryStatus.APPLIED, EntryStatus.REJECTED, EntryStatus.FENCED,
            EntryStatus.REJECTED,
        ]  # fmt: skip
        reasons = store.reasons([2, 7, 8])
        assert "token 33 of lock 'L' is below 34" in reasons[2]
        assert "non-empty" in reasons[8]
        assert store.fence(b"L") == 2**63 - 1 and store.fence(b"M") == 1
        assert store.fence(b"nobody") is None
        assert dict(store.fences()) == {
            b"L": (2**63 - 1, 6, 1_006),
            b"M": (1, 3, 1_003),
        }
        record = store.get(b"file")
        assert record is not None and record.doc == b'{"by":-1}'  # offset 5's put, the last
        store.check()  # the digest, fences included, agrees with what the store holds
    fences = [(k, v) for k, v, _ in changes if is_fence_key(k)]
    # A fence record each time a lock's highest rises: 33, 34, M 1, 2^63-1.
    assert [read_fence_record(k, v).token for k, v in fences] == [33, 34, 1, 2**63 - 1]
    assert [read_fence_record(k, v).lock for k, v in fences] == ["L", "L", "M", "L"]


def store_a_record(tmp_path: Path) -> object:
    with PartitionStore(tmp_path / "a") as a:
        return a.get(b"file")


def test_fences_survive_a_reopen_and_count_in_the_digest(fold_all: FoldAll, tmp_path: Path) -> None:
    log = kleppmann_log()
    with PartitionStore(tmp_path / "a") as a:
        fold_all(a, log[:3], [])
        with_fences = a.summary().digest
    with PartitionStore(tmp_path / "b") as b:  # the same puts without their fences
        unfenced = [(b"file", event("file", None, op=Put(b'{"by":%d}' % t))) for t in (33, 34)]
        fold_all(b, messages(unfenced), [])
        # The same records; only the fence tells the digests apart.
        assert b.get(b"file") == store_a_record(tmp_path)
        assert b.summary().digest != with_fences
    with PartitionStore(tmp_path / "a") as a:
        assert a.fence(b"L") == 34
        assert a.summary().digest == with_fences == a.verify().digest
        assert a.summary().records == 1


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    tokens=st.lists(
        st.tuples(st.sampled_from(["L", "M"]), st.integers(0, 6), st.sampled_from(["a", "b"])),
        min_size=1,
        max_size=25,
    ),
    cuts=st.lists(st.integers(0, 25), max_size=4),
)
def test_any_round_cuts_give_the_same_verdicts_fences_and_digest(
    fold_all: FoldAll,
    tmp_path_factory: pytest.TempPathFactory,
    tokens: list[tuple[str, int, str]],
    cuts: list[int],
) -> None:
    log = messages([(k.encode(), event(k, Fence(lock, t))) for lock, t, k in tokens])
    results = []
    for round_cuts in ([], cuts):
        path = tmp_path_factory.mktemp("cut")
        with PartitionStore(path / "p0") as store:
            fold_all(store, log, round_cuts)
            statuses = [e.status for e in store.journal_since(0)]
            results.append((statuses, dict(store.fences()), store.summary()))
    assert results[0] == results[1]
    # The model: a write is fenced exactly when a higher token of its lock came before it.
    highest: dict[str, int] = {}
    expected = []
    for lock, t, _ in tokens:
        stale = t < highest.get(lock, -1)
        expected.append(EntryStatus.FENCED if stale else EntryStatus.APPLIED)
        highest[lock] = max(highest.get(lock, -1), t)
    assert results[0][0] == expected


def test_a_retried_fenced_write_is_a_duplicate_not_a_second_verdict(
    fold_all: FoldAll, tmp_path: Path
) -> None:
    retry = os.urandom(16)
    log = messages([
        (b"c", event("c", Fence("L", 5))),
        (b"c", event("c", Fence("L", 4), eid=retry)),
        (b"c", event("c", Fence("L", 4), eid=retry)),
    ])  # fmt: skip
    with PartitionStore(tmp_path / "p0") as store:
        fold_all(store, log, [2])
        statuses = [e.status for e in store.journal_since(0)]
        assert statuses == [EntryStatus.APPLIED, EntryStatus.FENCED, EntryStatus.DUPLICATE]


def test_a_flood_of_lock_names_and_hostile_fences_never_stop_the_fold(
    fold_all: FoldAll, tmp_path: Path
) -> None:
    values = []
    for i in range(2000):
        values.append((b"c", event("c", Fence(f"lock-{i}", i))))
    values += [
        # A lock name that is not UTF-8 (a raw producer's): does not decode, dead-lettered.
        (b"c", event("c", Fence("qq", 1)).replace(b"\x04qq", b"\x04\xff\xfe")),
        (b"c", event("c", Fence("nul\x00", 1))),
        (b"c", event("c", Fence("x" * 10_000, 1))),
        (b"c", event("c", Fence("L", 1), op=Expire(1))),  # a raw producer's fenced expiry
    ]
    with PartitionStore(tmp_path / "p0") as store:
        fold_all(store, messages(values), [500, 1500])
        assert sum(1 for _ in store.fences()) == 2001  # "L" from the expiry's fence
        statuses = [e.status for e in store.journal_since(2000)]
        assert statuses == [
            EntryStatus.DEAD_LETTERED, EntryStatus.REJECTED, EntryStatus.REJECTED,
            EntryStatus.REJECTED,  # the expiry of a version that never was: stale
        ]  # fmt: skip
        store.check()


# ---- the change topic's fence records ----


def test_a_fence_record_round_trips_and_no_context_id_can_take_its_key() -> None:
    record = FenceRecord("orders", 42, 7, 1_000)
    assert record.key == fence_key("orders") == FENCE_KEY_PREFIX + b"orders"
    assert read_fence_record(record.key, record.encode()) == record
    assert is_fence_key(record.key) and not is_fence_key(b"orders") and not is_fence_key(None)
    with pytest.raises(UnicodeDecodeError):
        record.key.decode()  # a context id is UTF-8: never a fence record's key


@pytest.mark.parametrize(
    "key, value",
    [
        (b"orders", FenceRecord("o", 1, 1, 1).encode()),  # not a fence key
        (FENCE_KEY_PREFIX, FenceRecord("o", 1, 1, 1).encode()),  # no lock name
        (FENCE_KEY_PREFIX + b"\xfe", FenceRecord("o", 1, 1, 1).encode()),  # not UTF-8
        (fence_key("o"), None),
        (fence_key("o"), b""),
        (fence_key("o"), b"XXXX" + bytes(24)),
        (fence_key("o"), FenceRecord("o", 1, 1, 1).encode() + b"\x00"),
        (fence_key("o"), b"LKF1" + (-1).to_bytes(8, "big", signed=True) + bytes(16)),
    ],
)
def test_a_record_under_a_fence_key_that_is_not_a_fence_record_is_refused(
    key: bytes, value: bytes | None
) -> None:
    with pytest.raises(BadFenceRecordError):
        read_fence_record(key, value)
