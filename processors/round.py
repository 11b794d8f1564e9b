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
    remembered_by_fold,
)
from lukhas_context.processors.twophase import PreparedTx, control_id, state_record
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
from lukhas_context.schemas.txrecord import (
    MAX_TX_EVENTS,
    SCOPE_PARTITION,
    SCOPE_VOTED,
    TX_KEY,
    Decision,
    TxRecord,
    Vote,
    decode_control,
    decode_tx,
    encode_decision,
    encode_vote,
)
from lukhas_context.state import history
from lukhas_context.state.dedupe import DedupeWindow
from lukhas_context.state.exceptions import InvalidCheckpointError
from lukhas_context.state.journal import ENTRY, NO_EVENT_ID, EntryStatus, encode_block
from lukhas_context.state.manifest import check_checkpoint_id
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams import tracing

native_fold: Callable[..., int] | None
native_history: Callable[..., list[tuple[bytes, bytes]] | None] | None
native_barrier_end: Callable[[Sequence[Any]], int] | None
native_window_trim: Callable[[dict[bytes, int], int], dict[bytes, int]] | None
try:
    from lukhas_context.processors._fastfold import barrier_end as native_barrier_end
    from lukhas_context.processors._fastfold import fold_simple as native_fold
    from lukhas_context.processors._fastfold import history_blocks as native_history
    from lukhas_context.processors._fastfold import window_trim as native_window_trim
except ImportError:  # built without a C compiler: the general path folds everything
    native_fold = native_history = native_barrier_end = native_window_trim = None

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
    #: tx id -> the state of a transaction prepared here (None: decided), for the store.
    txns: dict[bytes, bytes | None] = field(default_factory=dict)
    #: Votes and decisions to append to the WAL: ``(partition, key, value)``.
    wal_sends: list[tuple[int, bytes, bytes]] = field(default_factory=list)
    #: Offset of a prepare record -> ``(offset of the record that decided it here, status,
    #: version, reason)``: the prepare's outcome once decided.
    resolutions: dict[int, tuple[int, int, int, str]] = field(default_factory=dict)
    #: The sequence number of the round's first change, and of the change after its last
    #: (``schemas.change.SEQ_HEADER``): counted when folded, so a round whose changes are not
    #: sent again (published before) still moves the count.
    first_seq: int = 0
    end_seq: int = 0
    #: Changes left out because a later change of the same context in the round superseded
    #: them (``PartitionFolder.coalesce_changes``).
    coalesced: int = 0


def latest_changes(changes: list[Change]) -> list[Change]:
    """``changes`` with each context's last change of the round only, in the order of those
    last changes; the change topic's internal records (keys starting ``FE``/``FF``: fence
    records, transactions' states) all kept. What the change topic's compaction would leave
    of the round, published without the superseded ones."""
    last: dict[bytes, int] = {}
    for i, change in enumerate(changes):
        last[change[0]] = i
    if len(last) == len(changes):
        return changes
    return [
        change
        for i, change in enumerate(changes)
        if last[change[0]] == i or change[0][:1] in (b"\xfe", b"\xff")
    ]


@dataclass(slots=True)
class _Evaluated:
    """What a transaction's events would do (``PartitionFolder._evaluate``)."""

    overlay: dict[bytes, ContextRecord | None] = field(default_factory=dict)
    #: lock -> the token the transaction raises it to.
    raised: dict[bytes, int] = field(default_factory=dict)
    done: list[tuple[bytes, ContextEvent, ChangeKind]] = field(default_factory=list)
    #: ``(event index, status, version, reason)`` of the first that would not apply.
    failed: tuple[int, Status, int, str] | None = None


def _context_keys(events: list[ContextEvent]) -> list[bytes]:
    """The contexts a transaction names, once each, for the history index."""
    keys = (e.context_id.encode() for e in events)
    return [k for k in dict.fromkeys(keys) if 0 < len(k) <= MAX_ID_BYTES]


def window_id(key: bytes | None, value: bytes, partition: int, codec: EventCodec) -> bytes | None:
    """The id under which the fold puts a WAL record of ``partition`` in its dedupe window,
    or None when it puts it in none (it dead-letters the record): what a restore that
    rebuilds the window from the WAL (``processors.opener``) must agree with."""
    if key == TX_KEY:
        try:
            record = decode_control(value)
            if isinstance(record, TxRecord):
                for raw in record.events:
                    codec.decode(raw)
        except CodecError:
            return None
        if isinstance(record, TxRecord):
            return record.tx_id
        if isinstance(record, Vote):
            return control_id(record.tx_id, b"vote", record.partition)
        if isinstance(record, Decision):
            return control_id(record.tx_id, b"decision", partition)
        return NO_EVENT_ID  # a tick
    try:
        event = codec.decode(value)
    except CodecError:
        return None
    return event.event_id if remembered_by_fold(key, event) else None


def segment_end(records: Sequence[Any]) -> int:
    """How many of a partition's ``records`` fold in one round: a checkpoint barrier (the
    empty key) ends its round, so the store holds exactly the fold of the WAL before it when
    the checkpoint is taken. (In C when the extension is built: ``_fastfold.barrier_end``.)"""
    if native_barrier_end is not None:
        return native_barrier_end(records)
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
        coalesce_changes: bool = False,
    ) -> None:
        self.partition = partition
        self.store = store
        self.limits = limits
        self.window = DedupeWindow.from_journal(store, limits.dedupe_window)
        #: Use the native hot loop when it is built (``native`` False: the general path
        #: folds everything, as without a C compiler; the tests compare both).
        self.native = native and native_fold is not None
        #: Write the history index (``state.history``) with each round
        #: (``WorkerConfig.history_index``).
        self.index_history = index_history
        #: Publish only each context's last change of a round (``WorkerConfig.
        #: coalesce_changes``); the store and the journal are the same either way.
        self.coalesce_changes = coalesce_changes
        #: Where the numbering of the partition's changes goes on from, when the change topic
        #: says so at open (``Coverage.next_seq_for``), and the coverage it goes with
        #: (``Coverage.offset``): the first round past the coverage is numbered from it, not
        #: from ``store.change_seq``. A re-fold of rounds below the coverage (the quiet ones,
        #: ``Materializer.fold_segment``; an offline replay) counts nothing, since a coalesced
        #: round's count depends on where rounds were cut, and the round that ends at the
        #: coverage stores the topic's number: ``store.change_seq`` is then never more than
        #: the changes on the topic for ``[0, next_offset)`` (a standby built on the store
        #: passes over by number what is below it).
        self.resume_seq: int | None = None
        self.resume_below = 0
        self._events = events or EventCodec()
        self._changes = changes or ChangeCodec()
        #: Transactions prepared here and not decided (``processors.twophase``), and what
        #: they hold: context key -> tx id, fence lock -> tx id.
        self.prepared: dict[bytes, PreparedTx] = {}
        self.held: dict[bytes, bytes] = {}
        self.held_locks: dict[bytes, bytes] = {}
        #: Log time at which the first transaction coordinated here times out (None: none).
        self.deadline: int | None = None
        #: One past the last offset folded in memory. ``prepared``/``held`` are the fold's
        #: state up to here, which the store shows only once the round is committed
        #: (``store.next_offset`` reaches it): a reader that sees a transaction released in
        #: them waits for that before it reads the store (``ReadApi._decided``).
        self.folded_to = store.next_offset
        for tx_id, raw in store.prepared():
            prepared = PreparedTx.decode(tx_id, raw)
            self.prepared[tx_id] = prepared
            if prepared.yes and not prepared.waiting:
                self.held.update(dict.fromkeys(prepared.keys, tx_id))
                self.held_locks.update(dict.fromkeys(prepared.locks, tx_id))
        self._reset_deadline()

    def _visible_version(self, r: PartitionRound, key: bytes, log_time: int) -> int:
        record = r.records.get(key) or self.store.get(key)
        return record.version if record is not None and record.is_live(log_time) else 0

    def fold(self, messages: list[Any]) -> PartitionRound | None:
        """Folds ``messages`` (offsets below the store's ``next_offset`` skipped) in memory;
        None when all of them are below it (fetched before a re-seek: folded already).

        With the native extension, unconditional Puts and plain JSON Patches (the commonest
        events) are folded in C and every other record is handed back to ``_fold_one``, in
        log order; without it,
        ``_fold_one`` folds every record. Both give identical results (property-tested).
        Every record gets exactly one journal entry, whatever became of it.
        """
        store = self.store
        first = store.next_offset
        if messages[-1].offset < first:
            return None
        r = PartitionRound(self.partition, messages=messages)
        slow = functools.partial(self._fold_one, r)
        # The native loop knows nothing of transactions: a round that has one, or runs while
        # one is prepared here, folds on the general path.
        native = self.native and not self.prepared
        if native and any(m.key == TX_KEY for m in messages):
            native = False
        if native and native_fold is not None:
            limits = self.limits
            # Not `r.applied += ...`: that would read r.applied before the call, losing what
            # `_fold_one` counts during it.
            native_applied = native_fold(
                messages, first, self._events.header, self._changes.header, r.records,
                store.get, ContextRecord, limits.max_document_bytes, limits.max_depth,
                limits.max_patch_operations, limits.max_patch_work, self.window.ids,
                r.entries, r.changes, _NO_HEADERS, slow,
            )  # fmt: skip
            r.applied += native_applied
        else:
            for m in messages:
                if m.offset >= first:
                    slow(m)
        r.first_offset = max(first, messages[0].offset)
        r.next_offset = self.folded_to = messages[-1].offset + 1
        if self.coalesce_changes and len(r.changes) > 1:
            kept = latest_changes(r.changes)
            r.coalesced = len(r.changes) - len(kept)
            r.changes = kept
        r.first_seq = store.change_seq if self.resume_seq is None else self.resume_seq
        r.end_seq = r.first_seq + len(r.changes)
        if self.resume_seq is not None and r.next_offset <= self.resume_below:
            # Below the change topic's coverage: its changes are there already (a re-fold, not
            # published again). Counted by the topic's number once the coverage is reached,
            # not before: the store stays a lower bound, never an overstatement.
            r.first_seq = store.change_seq
            r.end_seq = self.resume_seq if r.next_offset == self.resume_below else r.first_seq
        return r

    def commit(self, r: PartitionRound, journal_offsets: int) -> None:
        """Writes the round in one WriteBatch — its records, its journal block (the journal
        trimmed to the last ``journal_offsets`` offsets), its history index entries,
        ``next_offset`` and the pending mark of the barrier that ends it — then drops the
        window's ids that fell out of it. Step 3 of the commit order
        (``Materializer.fold_segment``)."""
        block = (r.first_offset, encode_block(r.entries, r.reasons))
        index = None
        if self.index_history:
            if self.native and native_history is not None and not r.tx_keys:
                index = native_history(r.messages, r.first_offset, r.entries)
            if index is None:
                index = history.rows(r.messages, r.first_offset, r.entries, r.tx_keys)
        self.store.commit(
            r.records,
            r.next_offset,
            block,
            r.next_offset - journal_offsets,
            pending_checkpoint=r.barrier,
            history_rows=index,
            fences=r.fences,
            txns=r.txns,
            resolutions=r.resolutions,
            change_seq=r.end_seq,
        )
        if self.resume_seq is not None and r.next_offset >= self.resume_below:
            self.resume_seq = None  # the store's count goes on from the topic's
        trim = native_window_trim if self.native else None
        self.window.forget_below(r.next_offset - self.window.size, trim)

    def _fold_one(self, r: PartitionRound, m: Any) -> None:
        """The general path: decode, check the key, deduplicate, ``apply``, encode the change.
        Records one journal entry for the record, whatever became of it."""
        key, value, offset = m.key, m.value or b"", m.offset
        if self.deadline is not None and m.timestamp >= self.deadline:
            self._time_out(r, m)
        if key == TX_KEY:
            self._control(r, m)
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
        fence = event.fence
        if self.held or self.held_locks:
            held = self._held_by(key, fence)
            if held is not None:
                visible = self._visible_version(r, key, m.timestamp)
                self._journal(r, (offset, event_id, payload_hash), Status.CONFLICT, visible, held)
                return
        record = pending.get(key) or self.store.get(key)
        floor = None if fence is None else self._fence_floor(r, fence)
        new, outcome = apply(record, event, offset, m.timestamp, self.limits, floor)
        if fence is not None and fence_verdict(fence, floor) is None:
            self._raise_fence(r, fence, floor, offset, m.timestamp)
        if outcome.kind is ChangeKind.EXPIRE:
            assert record is not None and record.expires_at_ms is not None
            r.lateness_ms.append(m.timestamp - record.expires_at_ms)
        r.entries += ENTRY.pack(offset, outcome.status, outcome.version, event_id, payload_hash)
        status = outcome.status
        trace = None
        if event.metadata:  # a trace context travels on to the change (streams.tracing)
            trace = tracing.fold_span(event.metadata, self.partition, offset, event.context_id,
                                      status.name.lower())  # fmt: skip
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
        self._change(r, key, record, new, outcome.kind, event_id, offset, m.timestamp, trace)

    def _change(
        self, r: PartitionRound, key: bytes, record: ContextRecord | None, new: ContextRecord,
        kind: ChangeKind, event_id: bytes, offset: int, log_time_ms: int,
        trace: bytes | None = None,
    ) -> None:  # fmt: skip
        """Publishes the change of an applied event: ``record`` before, ``new`` after;
        ``trace``: the fold span's ``traceparent``, as a header of the change."""
        traced = [] if trace is None else [(tracing.TRACEPARENT, trace)]
        if new.doc is None:
            # Everything a stored tombstone holds, so the change topic can restore it.
            expired = None if record is None else record.expires_at_ms
            headers = tombstone_headers(
                kind, new.version, offset, event_id, new.checksum, log_time_ms, expired
            )
            r.changes.append((key, None, [*headers, *traced]))
            return
        change = self._changes.encode_fields(
            key, new.version, kind, new.doc, new.checksum,
            new.expires_at_ms, offset, event_id, log_time_ms,
        )  # fmt: skip
        r.changes.append((key, change, traced or _NO_HEADERS))

    # ---- transactions (``schemas.txrecord``, ``processors.twophase``) ----

    def _control(self, r: PartitionRound, m: Any) -> None:
        """A record under the transaction key: a transaction record, a vote, a decision or a
        tick. One that is none of them, or holds an event that does not decode, is
        dead-lettered whole."""
        value = m.value or b""
        try:
            record = decode_control(value)
            events = (
                [self._events.decode(e) for e in record.events]
                if isinstance(record, TxRecord)
                else []
            )
        except CodecError as exc:
            self._dead(r, m, exc, NO_EVENT_ID, 0)
            return
        payload_hash = xxhash.xxh3_64_intdigest(value)
        if isinstance(record, TxRecord):
            event_id = record.tx_id
        elif isinstance(record, Vote):
            event_id = control_id(record.tx_id, b"vote", record.partition)
        elif isinstance(record, Decision):
            event_id = control_id(record.tx_id, b"decision", self.partition)
        else:
            event_id = NO_EVENT_ID  # a tick: every one alike, a repeat of the one before
        if self._is_retry(r, m, event_id, payload_hash):
            return
        entry = (m.offset, event_id, payload_hash)
        if isinstance(record, TxRecord) and len(events) > MAX_TX_EVENTS:
            self._journal(r, entry, Status.REJECTED, 0, f"a transaction of {len(events)} "
                          f"events: at most {MAX_TX_EVENTS}")  # fmt: skip
            return
        if isinstance(record, TxRecord):
            if record.scope == SCOPE_VOTED:
                self._prepare(r, m, record, events, entry)
            else:
                self._transaction(r, m, record, events, entry)
        elif isinstance(record, Vote):
            self._vote(r, m, record, entry)
        elif isinstance(record, Decision):
            self._decision(r, m, record, entry)
        else:
            self._journal(r, entry, Status.APPLIED, 0, "a tick (moves the log time)")

    def _journal(
        self, r: PartitionRound, entry: tuple[int, bytes, int], status: Status, version: int,
        reason: str | None,
    ) -> None:  # fmt: skip
        offset, event_id, payload_hash = entry
        r.entries += ENTRY.pack(offset, status, version, event_id, payload_hash)
        if reason is not None:
            r.reasons[offset] = reason
        if status is Status.CONFLICT:
            r.conflicts += 1
        elif status is Status.FENCED:
            r.fenced += 1
        elif status is Status.REJECTED:
            r.rejected += 1

    def _evaluate(
        self, r: PartitionRound, events: list[ContextEvent], offset: int, log_time: int
    ) -> _Evaluated:
        """A transaction's events in order, each against the state the ones before it left,
        applied to nothing: what they would do, or the first that would not apply."""
        ev = _Evaluated()
        for i, event in enumerate(events):
            key = event.context_id.encode()
            why = dead_letter_reason(key, event) or (
                "a checkpoint barrier" if type(event.op) is CheckpointBarrier else None
            )
            if why is not None:
                ev.failed = (i, Status.REJECTED, 0, f"not an event of a context: {why}")
                return ev
            held = self._held_by(key, event.fence)
            if held is not None:
                ev.failed = (i, Status.CONFLICT, 0, held)
                return ev
            overlay = ev.overlay
            record = overlay[key] if key in overlay else r.records.get(key) or self.store.get(key)
            fence, floor = event.fence, None
            if fence is not None and fence_problem(fence) is None:
                lock = fence.lock.encode()
                floor = ev.raised[lock] if lock in ev.raised else self._fence_floor(r, fence)
            new, outcome = apply(record, event, offset, log_time, self.limits, floor)
            if outcome.status is not Status.APPLIED:
                ev.failed = (i, outcome.status, outcome.version, outcome.reason or "")
                return ev
            assert new is not None and outcome.kind is not None
            overlay[key] = new
            if fence is not None and fence_verdict(fence, floor) is None:
                lock = fence.lock.encode()
                ev.raised[lock] = max(fence.token, -1 if floor is None else floor)
            ev.done.append((key, event, outcome.kind))
        return ev

    def _apply_evaluated(
        self, r: PartitionRound, ev: _Evaluated, offset: int, log_time: int
    ) -> None:
        """Applies what ``_evaluate`` found, at ``offset``: the records, the fences raised,
        and one change per context (its state after the transaction: the transaction is one
        step for subscribers, and a change's identity is its context and WAL offset)."""
        before = {key: r.records.get(key) or self.store.get(key) for key in ev.overlay}
        for _key, event, _kind in ev.done:
            if event.fence is not None and event.fence.lock.encode() in ev.raised:
                floor = self._fence_floor(r, event.fence)
                self._raise_fence(r, event.fence, floor, offset, log_time)
        last = {key: (event, kind) for key, event, kind in ev.done}
        for key, (event, kind) in last.items():
            new = ev.overlay[key]
            assert new is not None
            r.records[key] = new
            self._change(r, key, before[key], new, kind, event.event_id, offset, log_time)
        r.applied += len(ev.done)

    def _failed_reason(self, ev: _Evaluated, events: list[ContextEvent], where: str) -> str:
        i, _status, _version, reason = ev.failed or (0, Status.APPLIED, 0, "")
        what = "the transaction" if i < 0 else f"event {i} ({events[i].context_id!r:.80})"
        return f"{what}: {reason}; none of the transaction's {len(events)} events {where}"

    def _transaction(
        self, r: PartitionRound, m: Any, tx: TxRecord, events: list[ContextEvent],
        entry: tuple[int, bytes, int],
    ) -> None:  # fmt: skip
        """A transaction of one partition: its events all applied at the record's offset,
        or — at the first that would not apply — none. One journal entry for the record:
        ``applied`` with the number of events as its version, or the failing event's status
        (``conflict``, ``rejected``, ``fenced``) and a reason naming it."""
        offset, log_time = m.offset, m.timestamp
        r.tx_keys[offset] = _context_keys(events)
        if tx.scope != SCOPE_PARTITION:
            self._journal(r, entry, Status.REJECTED, 0, f"scope {tx.scope}: this version "
                          "decides scope 0 (one partition) and 1 (voted)")  # fmt: skip
            return
        ev = self._evaluate(r, events, offset, log_time)
        if ev.failed is not None:
            status, version = ev.failed[1], ev.failed[2]
            self._journal(r, entry, status, version, self._failed_reason(ev, events, "applied"))
            return
        self._journal(r, entry, Status.APPLIED, len(events), None)
        self._apply_evaluated(r, ev, offset, log_time)

    def held_reason(self, key: bytes, fence: Fence | None) -> str | None:
        """Why an event on ``key`` would be a conflict now, for the dry run (``_held_by``)."""
        return self._held_by(key, fence) if self.held or self.held_locks else None

    def _held_by(self, key: bytes, fence: Fence | None) -> str | None:
        """Why an event on ``key`` (with ``fence``) cannot go on now: its context, or its
        fence's lock, is held by a prepared transaction; None when neither is."""
        tx_id = self.held.get(key)
        what = "context"
        if tx_id is None and fence is not None and self.held_locks:
            tx_id = self.held_locks.get(fence.lock.encode("utf-8", "surrogatepass"))
            what = f"lock {fence.lock!r:.80}"
        if tx_id is None:
            return None
        prepared = self.prepared[tx_id]
        return (
            f"the {what} is held by transaction {tx_id.hex()} (prepared at offset "
            f"{prepared.prepare_offset}) until its decision"
        )

    def _prepare(
        self, r: PartitionRound, m: Any, tx: TxRecord, events: list[ContextEvent],
        entry: tuple[int, bytes, int],
    ) -> None:  # fmt: skip
        """This partition's part of a transaction across partitions: evaluated, voted on,
        and (a yes) held until the decision — or, when an earlier transaction holds or waits
        for one of its contexts or locks, kept waiting (``processors.twophase``)."""
        offset, log_time = m.offset, m.timestamp
        r.tx_keys[offset] = _context_keys(events)
        if self.partition not in tx.partitions:
            self._journal(r, entry, Status.REJECTED, 0, f"partition {self.partition} is not "
                          f"one of the transaction's {list(tx.partitions)[:8]}")  # fmt: skip
            return
        prepared = PreparedTx(tx.tx_id, offset, log_time, tx.partitions, False, "",
                              m.value or b"")  # fmt: skip
        prepared.keys = r.tx_keys[offset]
        prepared.locks = list(dict.fromkeys(
            e.fence.lock.encode() for e in events
            if e.fence is not None and fence_problem(e.fence) is None))  # fmt: skip
        blocker = self._blocker(prepared)
        if blocker is not None:
            prepared.waiting = True
            self.prepared[tx.tx_id] = prepared
            self._store_prepared(r, prepared, offset)
            self._journal(
                r,
                entry,
                Status.PREPARED,
                0,
                f"prepared; waits for transaction "
                f"{blocker.hex()}, which holds or waits for one of its contexts",
            )
            return
        self._vote_on(r, m, prepared, events, entry)

    def _blocker(self, prepared: PreparedTx) -> bytes | None:
        """The transaction that holds, or waits for, one of ``prepared``'s contexts or locks
        (one prepared before it), or None."""
        for key in prepared.keys:
            if key in self.held:
                return self.held[key]
        for lock in prepared.locks:
            if lock in self.held_locks:
                return self.held_locks[lock]
        keys, locks = set(prepared.keys), set(prepared.locks)
        for other in self.prepared.values():
            if (
                other.waiting
                and other.prepare_offset < prepared.prepare_offset
                and (keys.intersection(other.keys) or locks.intersection(other.locks))
            ):
                return other.tx_id
        return None

    def _vote_on(
        self, r: PartitionRound, m: Any, prepared: PreparedTx, events: list[ContextEvent],
        entry: tuple[int, bytes, int] | None,
    ) -> None:  # fmt: skip
        """Evaluates a prepared part (at its prepare's log time) and votes: a no is sent (or,
        on the coordinator, decides the abort); a yes holds its contexts and locks and is
        sent (or counted, and decides the commit once every vote is in). ``entry``: the
        prepare's journal entry when it is the record folded now; None for a part that
        waited, whose outcome then comes from ``r.resolutions``."""
        tx_id, coordinator = prepared.tx_id, prepared.coordinator == self.partition
        ev = self._evaluate(r, events, m.offset, prepared.log_time_ms)
        prepared.waiting = False
        if ev.failed is not None:
            _, status, version, _ = ev.failed
            reason = self._failed_reason(ev, events, "applies")
            prepared.yes, prepared.reason = False, reason
            if entry is not None:
                self._journal(r, entry, status, version, reason)
            else:
                r.resolutions[prepared.prepare_offset] = (m.offset, status, version, reason)
            if tx_id in self.prepared and not coordinator:
                self._release(r, prepared, m.offset)  # it waited; a no keeps nothing
            if coordinator:
                prepared.votes[self.partition] = (False, reason)
                self._decide(r, m, prepared, False, f"partition {self.partition}: {reason}")
            else:
                r.wal_sends.append((prepared.coordinator, TX_KEY, encode_vote(
                    Vote(tx_id, self.partition, False, reason))))  # fmt: skip
            return
        prepared.yes = True
        self._hold(r, prepared, m.offset)
        if entry is not None:
            self._journal(r, entry, Status.PREPARED, 0, f"prepared, voted yes; coordinator "
                          f"partition {prepared.coordinator}")  # fmt: skip
        if not coordinator:
            r.wal_sends.append((prepared.coordinator, TX_KEY, encode_vote(
                Vote(tx_id, self.partition, True))))  # fmt: skip
            return
        prepared.votes[self.partition] = (True, "")
        if len(prepared.votes) == len(prepared.partitions):  # it waited: the others are in
            self._decide(r, m, prepared, True, "every partition voted yes")
        else:
            self._store_prepared(r, prepared, m.offset)

    def _wake(self, r: PartitionRound, m: Any) -> None:
        """Evaluates, in prepare order, the waiting parts nothing blocks any more."""
        for prepared in sorted(self.prepared.values(), key=lambda p: p.prepare_offset):
            waiting = prepared.waiting and prepared.tx_id in self.prepared
            if waiting and self._blocker(prepared) is None:
                record = decode_tx(prepared.record)
                events = [self._events.decode(e) for e in record.events]
                self._vote_on(r, m, prepared, events, None)

    def _hold(self, r: PartitionRound, prepared: PreparedTx, offset: int) -> None:
        """Holds a part that voted yes; its state goes out at ``offset``, the record folded
        now (its prepare, or the one that woke it: a state published at the older prepare
        offset would be below a standby's ``next_offset`` and passed over there)."""
        self.prepared[prepared.tx_id] = prepared
        for key in prepared.keys:
            self.held[key] = prepared.tx_id
        for lock in prepared.locks:
            self.held_locks[lock] = prepared.tx_id
        self._store_prepared(r, prepared, offset)

    def _store_prepared(self, r: PartitionRound, prepared: PreparedTx, offset: int) -> None:
        """The prepared state into the round's WriteBatch and onto the change topic."""
        r.txns[prepared.tx_id] = prepared.encode()
        key, value = state_record(prepared.tx_id, offset, prepared)
        r.changes.append((key, value, _NO_HEADERS))
        self._reset_deadline()

    def _release(self, r: PartitionRound, prepared: PreparedTx, offset: int) -> None:
        tx_id = prepared.tx_id
        self.prepared.pop(tx_id, None)
        for key in prepared.keys:
            if self.held.get(key) == tx_id:
                del self.held[key]
        for lock in prepared.locks:
            if self.held_locks.get(lock) == tx_id:
                del self.held_locks[lock]
        r.txns[prepared.tx_id] = None
        key, value = state_record(prepared.tx_id, offset, None)
        r.changes.append((key, value, _NO_HEADERS))
        self._reset_deadline()

    def _reset_deadline(self) -> None:
        """The earliest log time at which a transaction coordinated here times out."""
        timeout = self.limits.tx_timeout_ms
        mine = [p.log_time_ms + timeout for p in self.prepared.values()
                if p.coordinator == self.partition]  # fmt: skip
        self.deadline = min(mine) if mine else None

    def _vote(self, r: PartitionRound, m: Any, vote: Vote, entry: tuple[int, bytes, int]) -> None:
        prepared = self.prepared.get(vote.tx_id)
        if prepared is None or prepared.coordinator != self.partition:
            self._journal(r, entry, Status.REJECTED, 0, f"a vote on transaction "
                          f"{vote.tx_id.hex()}, which is not undecided here (decided, or "
                          "unknown)")  # fmt: skip
            return
        if vote.partition not in prepared.partitions or vote.partition == self.partition:
            self._journal(r, entry, Status.REJECTED, 0, f"a vote from partition "
                          f"{vote.partition}, not another participant")  # fmt: skip
            return
        prepared.votes[vote.partition] = (vote.yes, vote.reason)
        if not vote.yes:
            self._decide(r, m, prepared, False, f"partition {vote.partition}: {vote.reason}",
                         entry)  # fmt: skip
        elif len(prepared.votes) == len(prepared.partitions):
            self._decide(r, m, prepared, True, "every partition voted yes", entry)
        else:
            self._journal(r, entry, Status.APPLIED, 0, f"vote yes of partition {vote.partition} "
                          f"on transaction {vote.tx_id.hex()}")  # fmt: skip
            self._store_prepared(r, prepared, m.offset)

    def _time_out(self, r: PartitionRound, m: Any) -> None:
        """Aborts every transaction coordinated here whose votes are not all in by the log
        time of ``m`` (its prepare's plus ``tx_timeout_ms``)."""
        timeout = self.limits.tx_timeout_ms
        due = [p for p in self.prepared.values() if p.coordinator == self.partition
               and p.log_time_ms + timeout <= m.timestamp]  # fmt: skip
        for prepared in sorted(due, key=lambda p: p.prepare_offset):
            missing = [p for p in prepared.partitions if p not in prepared.votes]
            self._decide(r, m, prepared, False, f"no vote from partition(s) {missing[:8]} "
                         f"within {timeout / 1000:g} s of log time")  # fmt: skip

    def _decide(
        self, r: PartitionRound, m: Any, prepared: PreparedTx, commit: bool, reason: str,
        entry: tuple[int, bytes, int] | None = None,
    ) -> None:  # fmt: skip
        """The coordinator's decision: appended to every other participant, applied to its
        own part here. ``entry``: the journal entry of the record that decided it (None: the
        record is journaled by its own path, e.g. the prepare that voted no)."""
        decision = Decision(prepared.tx_id, commit, reason)
        for p in prepared.partitions:
            if p != self.partition:
                r.wal_sends.append((p, TX_KEY, encode_decision(decision)))
        self._resolve(r, m, prepared, decision, entry)

    def _decision(
        self, r: PartitionRound, m: Any, decision: Decision, entry: tuple[int, bytes, int]
    ) -> None:
        prepared = self.prepared.get(decision.tx_id)
        if prepared is None or prepared.coordinator == self.partition:
            # An abort this partition voted for (it keeps nothing of a no), or a decision on
            # a transaction it does not know: nothing to apply or drop either way.
            status = Status.REJECTED if decision.commit else Status.ABORTED
            self._journal(r, entry, status, 0, f"transaction {decision.tx_id.hex()} "
                          f"{'committed' if decision.commit else 'aborted'}, and not prepared "
                          f"here: {decision.reason}")  # fmt: skip
            return
        self._resolve(r, m, prepared, decision, entry)

    def _resolve(
        self, r: PartitionRound, m: Any, prepared: PreparedTx, decision: Decision,
        entry: tuple[int, bytes, int] | None,
    ) -> None:  # fmt: skip
        """Applies (commit) or drops (abort) this partition's part at ``m``'s offset, and
        releases what it held. Its events are evaluated at the prepare's log time, so the
        result is the one voted on: nothing could touch what they hold meanwhile. The
        outcome is kept for the prepare record (``r.resolutions``), and is the journal entry
        of the record that decided (``entry``; None: that record is journaled by its own
        path, e.g. a put whose log time timed the transaction out)."""
        self._release(r, prepared, m.offset)
        tx_hex = prepared.tx_id.hex()
        status, version = Status.ABORTED, 0
        reason = f"transaction {tx_hex} aborted: {decision.reason}"
        ev = None
        if prepared.yes and decision.commit:
            events = [self._events.decode(e) for e in decode_tx(prepared.record).events]
            ev = self._evaluate(r, events, m.offset, prepared.log_time_ms)
            if ev.failed is None:
                status, version = Status.APPLIED, len(events)
                reason = (f"transaction {tx_hex} committed (prepared at offset "
                          f"{prepared.prepare_offset})")  # fmt: skip
                keys = r.tx_keys.setdefault(m.offset, [])
                keys += [k for k in _context_keys(events) if k not in keys]
            else:  # cannot happen: what it evaluates was held since the vote
                status = Status.REJECTED
                reason = "voted yes but no longer applies: " + self._failed_reason(
                    ev, events, "applied"
                )
        r.resolutions[prepared.prepare_offset] = (m.offset, status, version, reason)
        if entry is not None:
            self._journal(r, entry, status, version, reason)
        if status is Status.APPLIED and ev is not None:
            self._apply_evaluated(r, ev, m.offset, prepared.log_time_ms)
        self._wake(r, m)

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
