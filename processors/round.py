"""One partition's round: its WAL records folded against its store, in memory, then committed.

``PartitionFolder.fold`` takes a partition's records in offset order and makes a
``PartitionRound``: for each record, decode → check the key → deduplicate by event id
(``state.dedupe``) → ``apply`` (``processors.fold``) → a journal entry → a change record, or a
dead letter. Nothing is written or sent there; ``PartitionFolder.commit`` then writes the round
in one WriteBatch. There is no Kafka in this module: a record is anything with the attributes
of aiokafka's ``ConsumerRecord`` (``topic partition offset key value timestamp``), so the
worker's loop (``processors.materializer``), the offline replay (``processors.offline``) and
the tests fold alike. When each step happens — fold, publish, commit, checkpoint — is the
commit order in ``Materializer.fold_segment``.

Why a module of its own rather than ``fold.py``: ``fold.apply`` is the pure decision for one
event and one record; a round adds what needs a partition's state — its store, its dedupe
window, its journal — and the name is the one the docs use for what one WriteBatch commits.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import xxhash

from lukhas_context.processors.exceptions import EventIdConflictError, KeyMismatchError
from lukhas_context.processors.fold import (
    MAX_ID_BYTES,
    Limits,
    Status,
    apply,
    dead_letter_reason,
    fence_verdict,
    is_barrier,
)
from lukhas_context.schemas.change import FenceRecord, tombstone_headers
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import (
    BARRIER_KEY,
    ChangeKind,
    CheckpointBarrier,
    ContextEvent,
    Fence,
    fence_problem,
)
from lukhas_context.schemas.exceptions import CodecError
from lukhas_context.schemas.txrecord import SCOPE_PARTITION, TX_KEY, decode_tx
from lukhas_context.state import history
from lukhas_context.state.dedupe import DedupeWindow
from lukhas_context.state.exceptions import InvalidCheckpointError
from lukhas_context.state.journal import ENTRY, NO_EVENT_ID, EntryStatus, encode_block
from lukhas_context.state.manifest import check_checkpoint_id
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import PartitionStore

native_fold_puts: Callable[..., int] | None
try:
    from lukhas_context.processors._fastfold import fold_puts as native_fold_puts
except ImportError:  # built without a C compiler: the general path folds everything
    native_fold_puts = None

#: A change record: ``(key, value, headers)``; value None and the tombstone's headers for a
#: deletion, else the encoded ``ContextChange`` and no headers.
Change = tuple[bytes, bytes | None, list[tuple[str, bytes]]]
_NO_HEADERS: list[tuple[str, bytes]] = []


@dataclass(slots=True)
class PartitionRound:
    """What folding one partition's records produced, before it is committed."""

    partition: int
    records: dict[bytes, ContextRecord] = field(default_factory=dict)
    next_offset: int = 0
    applied: int = 0
    conflicts: int = 0
    rejected: int = 0
    changes: list[Change] = field(default_factory=list)
    #: ``(WAL record, why)`` of each record to dead-letter.
    dead: list[tuple[Any, BaseException]] = field(default_factory=list)
    duplicates: int = 0
    #: Journal entries of the round (``state.journal.ENTRY`` structs) and their reasons.
    entries: bytearray = field(default_factory=bytearray)
    reasons: dict[int, str] = field(default_factory=dict)
    first_offset: int = -1
    #: ``(offset, checkpoint id)`` of the barrier that ends this round, if one does.
    barrier: tuple[int, str] | None = None
    #: Milliseconds from ``expires_at`` to the log time of each Expire applied.
    lateness_ms: list[int] = field(default_factory=list)
    #: The WAL records the round folded (for the history index's keys).
    messages: list[Any] = field(default_factory=list)
    #: Lock name -> ``(token, WAL offset, log time)`` of each fence the round raised.
    fences: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)
    fenced: int = 0
    #: The contexts of each transaction record folded (by offset), for the history index.
    tx_keys: dict[int, list[bytes]] = field(default_factory=dict)


def segment_end(records: Sequence[Any]) -> int:
    """How many of a partition's ``records`` fold in one round: a checkpoint barrier (the
    empty key) ends its round, so the store holds exactly the fold of the WAL before it when
    the checkpoint is taken."""
    for i, m in enumerate(records):
        if m.key == BARRIER_KEY:
            return i + 1
    return len(records)


def reused_event_id(event_id: bytes, seen_offset: int) -> EventIdConflictError:
    """The dead letter's error for an event id used again for other bytes."""
    return EventIdConflictError(
        f"event id {event_id.hex()} was used at offset {seen_offset} for other bytes"
    )


class PartitionFolder:
    """Folds one partition's records against its store and its dedupe window (rebuilt from
    the store's journal here, so the store must be at the offset it will fold from)."""

    def __init__(
        self,
        partition: int,
        store: PartitionStore,
        limits: Limits,
        native: bool = True,
        events: EventCodec | None = None,
        changes: ChangeCodec | None = None,
        index_history: bool = True,
    ) -> None:
        self.partition = partition
        self.store = store
        self.limits = limits
        self.window = DedupeWindow.from_journal(store, limits.dedupe_window)
        #: Use the native hot loop when it is built (``native`` False: the general path
        #: folds everything, as without a C compiler; the tests compare both).
        self.native = native and native_fold_puts is not None
        #: Write the history index (``state.history``) with each round
        #: (``WorkerConfig.history_index``).
        self.index_history = index_history
        self._events = events or EventCodec()
        self._changes = changes or ChangeCodec()

    def fold(self, messages: list[Any]) -> PartitionRound | None:
        """Folds ``messages`` (offsets below the store's ``next_offset`` skipped) in memory;
        None when all of them are below it (fetched before a re-seek: folded already).

        With the native extension, unconditional Puts (the commonest event) are folded in C
        and every other record is handed back to ``_fold_one``, in log order; without it,
        ``_fold_one`` folds every record. Both give identical results (property-tested).
        Every record gets exactly one journal entry, whatever became of it.
        """
        store = self.store
        first = store.next_offset
        if messages[-1].offset < first:
            return None
        r = PartitionRound(self.partition, messages=messages)
        slow = functools.partial(self._fold_one, r)
        if self.native and native_fold_puts is not None:
            limits = self.limits
            # Not `r.applied += ...`: that would read r.applied before the call, losing what
            # `_fold_one` counts during it.
            native_applied = native_fold_puts(
                messages, first, self._events.header, self._changes.header, r.records,
                store.get, ContextRecord, limits.max_document_bytes, limits.max_depth,
                self.window.ids, r.entries, r.changes, _NO_HEADERS, slow,
            )  # fmt: skip
            r.applied += native_applied
        else:
            for m in messages:
                if m.offset >= first:
                    slow(m)
        r.first_offset = max(first, messages[0].offset)
        r.next_offset = messages[-1].offset + 1
        return r

    def commit(self, r: PartitionRound, journal_offsets: int) -> None:
        """Writes the round in one WriteBatch — its records, its journal block (the journal
        trimmed to the last ``journal_offsets`` offsets), its history index entries,
        ``next_offset`` and the pending mark of the barrier that ends it — then drops the
        window's ids that fell out of it. Step 3 of the commit order
        (``Materializer.fold_segment``)."""
        block = (r.first_offset, encode_block(r.entries, r.reasons))
        index = (
            history.rows(r.messages, r.first_offset, r.entries, r.tx_keys)
            if self.index_history
            else None
        )
        self.store.commit(
            r.records,
            r.next_offset,
            block,
            r.next_offset - journal_offsets,
            pending_checkpoint=r.barrier,
            history_rows=index,
            fences=r.fences,
        )
        self.window.forget_below(r.next_offset - self.window.size)

    def _fold_one(self, r: PartitionRound, m: Any) -> None:
        """The general path: decode, check the key, deduplicate, ``apply``, encode the change.
        Records one journal entry for the record, whatever became of it."""
        key, value, offset = m.key, m.value or b"", m.offset
        if key == TX_KEY:
            self._transaction(r, m)
            return
        try:
            event = self._events.decode(value)
            if is_barrier(key, event):
                self._barrier(r, m, event)
                return
            mismatch = dead_letter_reason(key, event)
            if mismatch is not None:
                raise KeyMismatchError(mismatch)
        except (CodecError, KeyMismatchError) as exc:
            self._dead(r, m, exc, NO_EVENT_ID, 0)
            return
        event_id = event.event_id
        payload_hash = xxhash.xxh3_64_intdigest(value)
        if self._is_retry(r, m, event_id, payload_hash):
            return
        pending = r.records
        record = pending.get(key) or self.store.get(key)
        fence = event.fence
        floor = None if fence is None else self._fence_floor(r, fence)
        new, outcome = apply(record, event, offset, m.timestamp, self.limits, floor)
        if fence is not None and fence_verdict(fence, floor) is None:
            self._raise_fence(r, fence, floor, offset, m.timestamp)
        if outcome.kind is ChangeKind.EXPIRE:
            assert record is not None and record.expires_at_ms is not None
            r.lateness_ms.append(m.timestamp - record.expires_at_ms)
        r.entries += ENTRY.pack(offset, outcome.status, outcome.version, event_id, payload_hash)
        status = outcome.status
        if status is not Status.APPLIED:
            r.reasons[offset] = outcome.reason or ""
            if status is Status.CONFLICT:
                r.conflicts += 1
            elif status is Status.FENCED:
                r.fenced += 1
            else:
                r.rejected += 1
            return
        r.applied += 1
        assert new is not None and outcome.kind is not None
        pending[key] = new
        self._change(r, key, record, new, outcome.kind, event_id, offset, m.timestamp)

    def _change(
        self, r: PartitionRound, key: bytes, record: ContextRecord | None, new: ContextRecord,
        kind: ChangeKind, event_id: bytes, offset: int, log_time_ms: int,
    ) -> None:  # fmt: skip
        """Publishes the change of an applied event: ``record`` before, ``new`` after."""
        if new.doc is None:
            # Everything a stored tombstone holds, so the change topic can restore it.
            expired = None if record is None else record.expires_at_ms
            headers = tombstone_headers(
                kind, new.version, offset, event_id, new.checksum, log_time_ms, expired
            )
            r.changes.append((key, None, headers))
            return
        change = self._changes.encode_fields(
            key, new.version, kind, new.doc, new.checksum,
            new.expires_at_ms, offset, event_id, log_time_ms,
        )  # fmt: skip
        r.changes.append((key, change, _NO_HEADERS))

    def _transaction(self, r: PartitionRound, m: Any) -> None:
        """Folds a transaction record (``schemas.txrecord``): its events in order, each
        against the state the ones before it left, and then all of them, or — at the first
        that is not applied — none. One journal entry for the record: ``applied`` with the
        number of events as its version, or the failing event's status (``conflict``,
        ``rejected``, ``fenced``) and a reason naming it. A record that does not decode, or
        holds an event that does not, is dead-lettered whole."""
        value, offset, log_time = m.value or b"", m.offset, m.timestamp
        try:
            tx = decode_tx(value)
            events = [self._events.decode(e) for e in tx.events]
        except CodecError as exc:
            self._dead(r, m, exc, NO_EVENT_ID, 0)
            return
        payload_hash = xxhash.xxh3_64_intdigest(value)
        if self._is_retry(r, m, tx.tx_id, payload_hash):
            return
        keys = [e.context_id.encode() for e in events]
        r.tx_keys[offset] = [k for k in dict.fromkeys(keys) if 0 < len(k) <= MAX_ID_BYTES]
        overlay: dict[bytes, ContextRecord | None] = {}
        raised: dict[bytes, int] = {}  # lock -> the token this transaction raised it to
        done: list[tuple[bytes, ContextEvent, ContextRecord, ChangeKind]] = []
        failed: tuple[int, Status, int, str] | None = None
        if tx.scope != SCOPE_PARTITION:
            failed = (-1, Status.REJECTED, 0, f"scope {tx.scope}: this version decides only "
                      f"scope {SCOPE_PARTITION} (by its own partition)")  # fmt: skip
        for i, (key, event) in enumerate(zip(keys, events, strict=True)):
            if failed is not None:
                break
            why = dead_letter_reason(key, event) or (
                "a checkpoint barrier" if type(event.op) is CheckpointBarrier else None
            )
            if why is not None:
                failed = (i, Status.REJECTED, 0, f"not an event of a context: {why}")
                break
            record = overlay[key] if key in overlay else r.records.get(key) or self.store.get(key)
            fence, floor = event.fence, None
            if fence is not None and fence_problem(fence) is None:
                lock = fence.lock.encode()
                floor = raised[lock] if lock in raised else self._fence_floor(r, fence)
            new, outcome = apply(record, event, offset, log_time, self.limits, floor)
            if outcome.status is not Status.APPLIED:
                failed = (i, outcome.status, outcome.version, outcome.reason or "")
                break
            assert new is not None and outcome.kind is not None
            overlay[key] = new
            if fence is not None and fence_verdict(fence, floor) is None:
                raised[fence.lock.encode()] = max(fence.token, -1 if floor is None else floor)
            done.append((key, event, new, outcome.kind))
        if failed is not None:
            i, status, version, reason = failed
            what = "the transaction" if i < 0 else f"event {i} ({events[i].context_id!r:.80})"
            r.entries += ENTRY.pack(offset, status, version, tx.tx_id, payload_hash)
            r.reasons[offset] = (
                f"{what}: {reason}; none of the transaction's {len(events)} events applied"
            )
            if status is Status.CONFLICT:
                r.conflicts += 1
            elif status is Status.FENCED:
                r.fenced += 1
            else:
                r.rejected += 1
            return
        r.entries += ENTRY.pack(offset, Status.APPLIED, len(events), tx.tx_id, payload_hash)
        r.applied += len(events)
        before = {key: r.records.get(key) or self.store.get(key) for key in overlay}
        for _key, event, _new, _kind in done:
            if event.fence is not None and event.fence.lock.encode() in raised:
                floor = self._fence_floor(r, event.fence)
                self._raise_fence(r, event.fence, floor, offset, log_time)
        # One change per context, its state after the transaction: the transaction is one
        # step for subscribers, and a change's identity is (context, WAL offset).
        last = {key: (event, kind) for key, event, _new, kind in done}
        for key, (event, kind) in last.items():
            new = overlay[key]
            assert new is not None
            r.records[key] = new
            self._change(r, key, before[key], new, kind, event.event_id, offset, log_time)

    def _fence_floor(self, r: PartitionRound, fence: Fence) -> int | None:
        """The highest token folded for the fence's lock, this round's included (None: none,
        or a fence no lock can issue, which ``apply`` rejects without looking)."""
        if fence_problem(fence) is not None:
            return None
        lock = fence.lock.encode()
        raised = r.fences.get(lock)
        return raised[0] if raised is not None else self.store.fence(lock)

    @staticmethod
    def _raise_fence(
        r: PartitionRound, fence: Fence, floor: int | None, offset: int, log_time_ms: int
    ) -> None:
        """Keeps the token of an event its fence let through as its lock's highest, whatever
        became of the event itself: the holder of that token has written, so every lower
        token is stale from here on. A new highest is published too (a fence record,
        ``schemas.change``), so a store restored from the change topic has it."""
        if floor is not None and fence.token <= floor:
            return
        raised = FenceRecord(fence.lock, fence.token, offset, log_time_ms)
        r.fences[fence.lock.encode()] = (fence.token, offset, log_time_ms)
        r.changes.append((raised.key, raised.encode(), _NO_HEADERS))

    def _barrier(self, r: PartitionRound, m: Any, event: ContextEvent) -> None:
        """Journals a checkpoint barrier and marks the round as ending with it (the caller cut
        the round there: ``segment_end``); the checkpoint is taken once it is committed."""
        payload_hash = xxhash.xxh3_64_intdigest(m.value or b"")
        if self._is_retry(r, m, event.event_id, payload_hash):
            return
        op = event.op
        assert type(op) is CheckpointBarrier
        status, reason = EntryStatus.APPLIED, None
        try:
            check_checkpoint_id(op.checkpoint_id)
            r.barrier = (m.offset, op.checkpoint_id)
        except InvalidCheckpointError as exc:
            status, reason = EntryStatus.REJECTED, str(exc)
        r.entries += ENTRY.pack(m.offset, status, 0, event.event_id, payload_hash)
        if reason is not None:
            r.rejected += 1
            r.reasons[m.offset] = reason

    def _is_retry(self, r: PartitionRound, m: Any, event_id: bytes, payload_hash: int) -> bool:
        """True when the dedupe window (``state.dedupe``) refuses the record: a retry is
        journaled ``DUPLICATE`` (its version field names the original's offset), a reuse of
        the id for other bytes is dead-lettered. False when the id entered the window."""
        prior = self.window.admit(event_id, m.offset, payload_hash)
        if prior is None:
            return False
        seen_offset, seen_hash = prior
        if seen_hash == payload_hash:
            r.entries += ENTRY.pack(m.offset, EntryStatus.DUPLICATE, seen_offset, event_id, 0)
            r.reasons[m.offset] = f"duplicate of offset {seen_offset}"
            r.duplicates += 1
        else:
            self._dead(r, m, reused_event_id(event_id, seen_offset), event_id, payload_hash)
        return True

    def _dead(
        self, r: PartitionRound, m: Any, error: BaseException, event_id: bytes, h: int
    ) -> None:
        r.dead.append((m, error))
        r.entries += ENTRY.pack(m.offset, EntryStatus.DEAD_LETTERED, 0, event_id, h)
        r.reasons[m.offset] = f"{type(error).__name__}: {error}"
