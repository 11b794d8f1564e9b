"""The materialiser: consume the WAL, fold it into RocksDB, publish the change stream.

One round, over every partition the consumer returned records for:

1. decode each record (a record that does not decode, or whose key is not its payload's
   context id, is queued for the DLQ);
2. ``apply`` each event to the record of its context (the pending records of this round first,
   then the store), collecting one change per applied mutation;
3. send the changes and the dead letters, and **wait until the brokers acknowledged all of
   them** (``acks=all``);
4. only then commit, per partition, one WriteBatch holding the new records and the new
   ``next_offset``.

Why this order: if the batch committed first and the process died before the changes were
acknowledged, ``next_offset`` would already be past their events and the changes would be lost
for ever. In this order a crash between 3 and 4 re-folds the same events after the restart and
publishes their changes a second time: at least once, never zero. A change's identity is its
context id and the WAL offset of its event, so subscribers drop the repeats.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import xxhash
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import (
    EventIdConflictError,
    KeyMismatchError,
    NotOwnerError,
    ProcessorError,
    WalTruncatedError,
)
from lukhas_context.processors.fold import Status, apply
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import ChangeKind, ContextEvent
from lukhas_context.schemas.exceptions import CodecError
from lukhas_context.state.journal import ENTRY, NO_EVENT_ID, EntryStatus, encode_block
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import HASH_MASK, PartitionStore
from lukhas_context.streams.batching import fill_batch

native_fold_puts: Callable[..., int] | None
try:
    from lukhas_context.processors._fastfold import fold_puts as native_fold_puts
except ImportError:  # built without a C compiler: the general path folds everything
    native_fold_puts = None

log = logging.getLogger(__name__)

#: Largest single record the worker's producer sends (a 1 MiB document and its envelope fit).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MIN_ROUND_RECORDS = 200
#: Longest context id, in UTF-8 bytes (the producers' limit too).
MAX_ID_BYTES = 256
_NO_HEADERS: list[tuple[str, bytes]] = []
_TOMBSTONE_KIND = {ChangeKind.DELETE: b"delete", ChangeKind.EXPIRE: b"expire"}


@dataclass(slots=True)
class _Round:
    """What folding one partition's records produced, before it is committed."""

    partition: int
    records: dict[bytes, ContextRecord] = field(default_factory=dict)
    next_offset: int = 0
    applied: int = 0
    conflicts: int = 0
    rejected: int = 0
    changes: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]] = field(default_factory=list)
    dead: list[tuple[Any, BaseException]] = field(default_factory=list)
    duplicates: int = 0
    #: Journal entries of the round (``state.journal.ENTRY`` structs) and their reasons.
    entries: bytearray = field(default_factory=bytearray)
    reasons: dict[int, str] = field(default_factory=dict)
    first_offset: int = -1


class Materializer:
    """Folds the partitions assigned to this worker. ``run()`` until ``stop()``."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics | None = None) -> None:
        self.config = config
        self.metrics = metrics or WorkerMetrics()
        self.stores: dict[int, PartitionStore] = {}
        self.partition_count = 0
        self._events = EventCodec()
        self._changes = ChangeCodec()
        self._lock = asyncio.Lock()
        self._progress = asyncio.Condition()
        self._stopping = asyncio.Event()
        self._fatal: BaseException | None = None
        #: Records asked per round, adapted to ``round_budget_s`` (see _adapt_round_limit).
        self.round_limit = config.max_batch_records
        #: Use the native hot loop when it is built (tests switch it off to compare).
        self.native = native_fold_puts is not None
        self._consumer: AIOKafkaConsumer | None = None
        self._producer: AIOKafkaProducer | None = None
        self.running = False

    # ---- lifecycle ----

    async def start(self) -> None:
        """Connects to Kafka and joins the group; partitions arrive through the listener."""
        cfg = self.config
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self._producer = AIOKafkaProducer(
            bootstrap_servers=cfg.bootstrap,
            client_id=f"{cfg.client_id}-changes",
            enable_idempotence=True,
            acks="all",
            max_batch_size=512 * 1024,
            max_request_size=MAX_REQUEST_BYTES,
            linger_ms=0,
        )
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=cfg.bootstrap,
            client_id=cfg.client_id,
            group_id=cfg.group_id,
            group_instance_id=cfg.instance_id,
            session_timeout_ms=cfg.session_timeout_ms,
            enable_auto_commit=False,
            # The store says where to start; a position the log no longer has is an error.
            auto_offset_reset="none",
            isolation_level="read_committed",
            max_partition_fetch_bytes=MAX_REQUEST_BYTES,
            fetch_max_bytes=16 * 1024 * 1024,
        )
        await self._producer.start()
        await self._consumer.start()
        self._consumer.subscribe([cfg.topics.events], listener=_Listener(self))
        self.running = True

    def stop(self) -> None:
        """Asks ``run()`` to finish the round in progress and return."""
        self._stopping.set()

    async def close(self) -> None:
        """Leaves the group, closes the stores. Safe to call twice."""
        self.running = False
        if self._consumer is not None:
            await self._commit_offsets()
            await self._consumer.stop()  # revokes: the listener closes the stores
            self._consumer = None
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        for store in self.stores.values():
            store.close()
        self.stores.clear()

    async def run(self) -> None:
        """Folds rounds until ``stop()``; raises what makes the worker unable to go on."""
        assert self._consumer is not None
        next_commit = time.monotonic() + self.config.commit_interval_s
        try:
            while not self._stopping.is_set():
                if self._fatal is not None:
                    raise self._fatal
                try:
                    batch = await self._consumer.getmany(
                        timeout_ms=self.config.fetch_timeout_ms, max_records=self.round_limit
                    )
                except OffsetOutOfRangeError as exc:
                    raise await self._out_of_range(exc) from exc
                if batch:
                    self._adapt_round_limit(await self.fold_round(batch))
                if time.monotonic() >= next_commit:
                    await self._commit_offsets()
                    next_commit = time.monotonic() + self.config.commit_interval_s
        finally:
            self.running = False  # /healthz turns 503 at once, whatever stopped the loop

    async def _out_of_range(self, exc: OffsetOutOfRangeError) -> BaseException:
        """Names why a store's ``next_offset`` is not in the WAL: truncated by retention, or
        beyond the log end (the store belongs to another log, e.g. a re-created topic)."""
        if self._fatal is not None:
            return self._fatal
        assert self._consumer is not None
        topic = self.config.topics.events
        tps = [TopicPartition(topic, p) for p in self.stores]
        low = await self._consumer.beginning_offsets(tps)
        high = await self._consumer.end_offsets(tps)
        for tp in tps:
            needed = self.stores[tp.partition].next_offset
            if needed < low[tp]:
                return WalTruncatedError(tp.partition, needed, low[tp])
            if needed > high[tp]:
                return ProcessorError(
                    f"the store of partition {tp.partition} needs offset {needed} but the WAL "
                    f"ends at {high[tp]}: the state dir belongs to another log"
                )
        return ProcessorError(f"WAL offset out of range: {exc}")

    def _adapt_round_limit(self, seconds: float) -> None:
        """Keeps a round near its time budget: the fold is synchronous, and while it runs the
        read API of this worker cannot answer. Halves the records asked per round when a
        round overran, doubles them (up to the configured maximum) when it took under a
        quarter of the budget."""
        budget = self.config.round_budget_s
        if seconds > budget:
            self.round_limit = max(MIN_ROUND_RECORDS, self.round_limit // 2)
        elif seconds < budget / 4:
            self.round_limit = min(self.config.max_batch_records, self.round_limit * 2)

    # ---- the round ----

    async def fold_round(self, batch: dict[TopicPartition, list[Any]]) -> float:
        """Folds, publishes, waits for acknowledgement, then commits (see the module doc).
        Returns the seconds spent folding (synchronous work, without the acknowledgement
        wait): what the read API had to wait for."""
        started = time.perf_counter()
        folding = 0.0
        async with self._lock:
            folded = []
            for tp, records in batch.items():
                if tp.partition in self.stores and records:
                    store = self.stores[tp.partition]
                    t0 = time.perf_counter()
                    folded.append(self._fold_partition(store, tp.partition, records))
                    folding += time.perf_counter() - t0
                    await asyncio.sleep(0)  # let reads in between partitions
            rounds = [r for r in folded if r is not None]
            await asyncio.gather(*(self._send_all(r) for r in rounds))
            keep = self.config.journal_offsets
            for r in rounds:
                store = self.stores[r.partition]
                block = (r.first_offset, encode_block(r.entries, r.reasons))
                store.commit(r.records, r.next_offset, block, r.next_offset - keep)
                window = self.config.limits.dedupe_window
                store.forget_recent(r.next_offset - window, window)
            self._account(rounds, sum(len(v) for v in batch.values()))
        async with self._progress:
            self._progress.notify_all()
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return folding

    def _fold_partition(
        self, store: PartitionStore, partition: int, messages: list[Any]
    ) -> _Round | None:
        """Folds one partition's records of a round in memory (nothing is written here).

        With the native extension, unconditional Puts (the commonest event) are folded in C
        and every other record is handed back to ``_fold_one``, in log order; without it,
        ``_fold_one`` folds every record. Both give identical results (property-tested).
        """
        first = store.next_offset
        if messages[-1].offset < first:
            return None  # fetched before a re-seek: already folded
        r = _Round(partition)
        get = store.get
        slow = functools.partial(self._fold_one, r, store)
        if self.native and native_fold_puts is not None:
            limits = self.config.limits
            # Not `r.applied += ...`: that would read r.applied before the call, losing what
            # `_fold_one` counts during it.
            native_applied = native_fold_puts(
                messages, first, self._events.header, self._changes.header, r.records, get,
                ContextRecord, limits.max_document_bytes, limits.max_depth, store.recent,
                r.entries, r.changes, _NO_HEADERS, slow,
            )  # fmt: skip
            r.applied += native_applied
        else:
            for m in messages:
                if m.offset >= first:
                    slow(m)
        r.first_offset = max(first, messages[0].offset)
        r.next_offset = messages[-1].offset + 1
        return r

    def _fold_one(self, r: _Round, store: PartitionStore, m: Any) -> None:
        """The general path: decode, check the key, deduplicate, ``apply``, encode the change.
        Records one journal entry for the record, whatever became of it."""
        key, value, offset = m.key, m.value or b"", m.offset
        try:
            event = self._events.decode(value)
            if key is None or event.context_id.encode() != key:
                raise KeyMismatchError(f"key {key!r} is not the payload's context id")
            if not 0 < len(key) <= MAX_ID_BYTES:
                raise KeyMismatchError(f"context id of {len(key)} bytes outside 1..{MAX_ID_BYTES}")
        except (CodecError, KeyMismatchError) as exc:
            self._dead(r, m, exc, NO_EVENT_ID, 0)
            return
        event_id = event.event_id
        payload_hash = xxhash.xxh3_64_intdigest(value)
        if self._is_retry(r, store, m, event_id, payload_hash):
            return
        limits = self.config.limits
        pending = r.records
        record = pending.get(key) or store.get(key)
        new, outcome = apply(record, event, offset, m.timestamp, limits)
        r.entries += ENTRY.pack(offset, outcome.status, outcome.version, event_id, payload_hash)
        status = outcome.status
        if status is not Status.APPLIED:
            r.reasons[offset] = outcome.reason or ""
            if status is Status.CONFLICT:
                r.conflicts += 1
            else:
                r.rejected += 1
            return
        r.applied += 1
        assert new is not None and outcome.kind is not None
        pending[key] = new
        if new.doc is None:
            headers = [
                ("kind", _TOMBSTONE_KIND[outcome.kind]),
                ("version", b"%d" % new.version),
                ("wal_offset", b"%d" % offset),
                ("event_id", event_id),
            ]
            r.changes.append((key, None, headers))
            return
        change = self._changes.encode_fields(
            key, new.version, outcome.kind, new.doc, new.checksum,
            new.expires_at_ms, offset, event_id, m.timestamp,
        )  # fmt: skip
        r.changes.append((key, change, _NO_HEADERS))

    def _is_retry(
        self, r: _Round, store: PartitionStore, m: Any, event_id: bytes, payload_hash: int
    ) -> bool:
        """Deduplicates by event id within the window (offsets, so replays decide alike).

        A repeat with the same bytes is a retry: journaled as ``DUPLICATE`` (its version field
        names the original's offset) and not applied again. The same id with other bytes is a
        conflict: dead-lettered. Otherwise the id is remembered and False returned.
        """
        offset = m.offset
        seen = store.recent.get(event_id)
        if seen is not None:
            seen_offset, seen_hash = seen >> 64, seen & HASH_MASK
            if seen_offset >= offset - self.config.limits.dedupe_window:
                if seen_hash == payload_hash:
                    r.entries += ENTRY.pack(offset, EntryStatus.DUPLICATE, seen_offset, event_id, 0)
                    r.reasons[offset] = f"duplicate of offset {seen_offset}"
                    r.duplicates += 1
                else:
                    error = EventIdConflictError(
                        f"event id {event_id.hex()} was used at offset {seen_offset} "
                        "for other bytes"
                    )
                    self._dead(r, m, error, event_id, payload_hash)
                return True
            del store.recent[event_id]  # re-insert at the end: the dict stays in offset order
        store.recent[event_id] = (offset << 64) | payload_hash
        return False

    def _dead(self, r: _Round, m: Any, error: BaseException, event_id: bytes, h: int) -> None:
        r.dead.append((m, error))
        r.entries += ENTRY.pack(m.offset, EntryStatus.DEAD_LETTERED, 0, event_id, h)
        r.reasons[m.offset] = f"{type(error).__name__}: {error}"

    async def _send_all(self, r: _Round) -> None:
        producer = self._producer
        assert producer is not None
        topic = self.config.topics.changes
        acks = []
        changes = r.changes
        i = 0
        while i < len(changes):
            batch = producer.create_batch()
            j = fill_batch(batch, changes, i)
            if j == i:
                size = len(changes[i][1] or b"")
                raise ProcessorError(f"a change of {size} bytes fits no batch")
            acks.append(await producer.send_batch(batch, topic, partition=r.partition))
            i = j
        for message, error in r.dead:
            acks.append(await self._dead_letter(message, error))
        await asyncio.gather(*acks)

    async def _dead_letter(self, message: Any, error: BaseException) -> Awaitable[Any]:
        assert self._producer is not None
        value = message.value or b""
        headers = [
            ("error.class", type(error).__name__.encode()),
            ("error.message", str(error).encode("utf-8", "replace")[:1000]),
            ("source.topic", message.topic.encode()),
            ("source.partition", b"%d" % message.partition),
            ("source.offset", b"%d" % message.offset),
            ("schema.fingerprint", value[2:10].hex().encode()),
        ]
        log.warning(
            "dead-lettering %s[%d]@%d: %s",
            message.topic, message.partition, message.offset, error,
        )  # fmt: skip
        ack: Awaitable[Any] = await self._producer.send(
            self.config.topics.dlq,
            value=value,
            key=message.key,
            partition=message.partition,
            headers=headers,
        )
        return ack

    def _account(self, rounds: list[_Round], consumed: int) -> None:
        m = self.metrics
        m.consumed.inc(consumed)
        for r in rounds:
            m.applied.inc(r.applied)
            m.conflicts.inc(r.conflicts)
            m.rejected.inc(r.rejected)
            m.dead_lettered.inc(len(r.dead))
            m.duplicates.inc(r.duplicates)
            m.changes.inc(len(r.changes))
            m.next_offset.labels(r.partition).set(r.next_offset)
            assert self._consumer is not None
            high = self._consumer.highwater(TopicPartition(self.config.topics.events, r.partition))
            if high is not None:
                m.lag.labels(r.partition).set(max(0, high - r.next_offset))

    async def _commit_offsets(self) -> None:
        """Mirrors the stores' ``next_offset`` to the group (for lag tools; never read back)."""
        if self._consumer is None or not self.stores:
            return
        topic = self.config.topics.events
        offsets = {
            TopicPartition(topic, p): s.next_offset for p, s in self.stores.items() if s.next_offset
        }
        try:
            if offsets:
                await self._consumer.commit(offsets)
        except KafkaError as exc:
            log.info("offset commit skipped (%s); the stores keep the real positions", exc)

    # ---- reads ----

    def decode_event(self, data: bytes) -> ContextEvent:
        """Decodes one event with the worker's codec (``CodecError`` when it is not one)."""
        return self._events.decode(data)

    def store_for(self, partition: int) -> PartitionStore:
        store = self.stores.get(partition)
        if store is None:
            raise NotOwnerError(f"partition {partition} is not served by this worker")
        return store

    async def wait_applied(self, partition: int, offset: int, timeout_s: float) -> bool:
        """Waits until ``offset`` of ``partition`` is folded (``next_offset > offset``).

        A partition not (yet) assigned here is waited for too, since the worker may be starting
        or rebalancing. Returns False on timeout; raises ``NotOwnerError`` if by then the
        partition is still not served by this worker.
        """
        deadline = time.monotonic() + timeout_s
        async with self._progress:
            while True:
                store = self.stores.get(partition)
                if store is not None and store.next_offset > offset:
                    return True
                left = deadline - time.monotonic()
                if left <= 0:
                    if store is None:
                        self.store_for(partition)
                    return False
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), left)

    # ---- assignment ----

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Opens each new partition's store and seeks to its ``next_offset``, then checks that
        the WAL still holds that offset.

        The seeks come before any ``await``: with ``auto_offset_reset="none"`` the fetcher
        would otherwise try to find a position of its own for the new partitions and fail.
        """
        consumer = self._consumer
        assert consumer is not None
        tps = list(assigned)
        self.partition_count = len(consumer.partitions_for_topic(self.config.topics.events) or ())
        for tp in tps:
            if tp.partition not in self.stores:
                path = self.config.state_dir / f"partition-{tp.partition}"
                store = PartitionStore(path, self.config.store)
                store.load_recent(self.config.limits.dedupe_window)
                self.stores[tp.partition] = store
            consumer.seek(tp, self.stores[tp.partition].next_offset)
        if tps:
            await self._check_retention(tps)
        async with self._progress:
            self._progress.notify_all()

    async def _check_retention(self, tps: list[TopicPartition]) -> None:
        assert self._consumer is not None
        low = await self._consumer.beginning_offsets(tps)
        for tp in tps:
            store = self.stores.get(tp.partition)
            if store is None:
                continue
            needed = store.next_offset
            if needed < low[tp]:
                raise WalTruncatedError(tp.partition, needed, low[tp])
            log.info("partition %d assigned, folding from offset %d", tp.partition, needed)

    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        async with self._lock:  # waits for the round in progress to commit
            for tp in revoked:
                store = self.stores.pop(tp.partition, None)
                if store is not None:
                    store.close()
                    log.info("partition %d revoked", tp.partition)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Materializer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner._revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            await self.owner._assigned(assigned)
        except Exception as exc:  # aiokafka would only log it: hand it to run() to raise
            log.error("partition assignment failed: %s", exc)
            self.owner._fatal = exc
