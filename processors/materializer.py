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
for ever. In this order a crash between 3 and 4 re-folds the same events after the restart:
never zero. When the partition reopens, the change topic's coverage (one past the WAL offset of
its newest change) says which of them are published already, and those are folded without
publishing again; if the crash came between acknowledgements, the changes that were not
acknowledged are past the coverage and are published. A change's identity is its context id
and the WAL offset of its event, and subscribers drop any repeat (e.g. from a zombie worker).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import functools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import xxhash
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener, TopicPartition
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from lukhas_context.processors.clock import (
    LOG_APPEND_TIME,
    LogClock,
    Skew,
    SkewReporter,
    probe_forever,
)
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import (
    EventIdConflictError,
    KeyMismatchError,
    NotOwnerError,
    ProcessorError,
    WalTruncatedError,
)
from lukhas_context.processors.fold import Status, apply, dead_letter_reason, is_barrier
from lukhas_context.processors.members import Membership
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.opener import StoreOpener
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import (
    BARRIER_KEY,
    ChangeKind,
    CheckpointBarrier,
    ContextEvent,
)
from lukhas_context.schemas.exceptions import CodecError
from lukhas_context.schemas.tombstone import tombstone_headers
from lukhas_context.state.checkpoints import CheckpointDir, Manifest, check_checkpoint_id
from lukhas_context.state.exceptions import InvalidCheckpointError, StateError
from lukhas_context.state.journal import ENTRY, NO_EVENT_ID, EntryStatus, encode_block
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams.barriers import (
    append_barriers,
    checkpoint_id_for_slot,
    expire_event,
)
from lukhas_context.streams.batching import fill_batch

native_fold_puts: Callable[..., int] | None
try:
    from lukhas_context.processors._fastfold import fold_puts as native_fold_puts
except ImportError:  # built without a C compiler: the general path folds everything
    native_fold_puts = None

log = logging.getLogger(__name__)

#: How often a read waiting for a partition rechecks who serves it.
WAIT_POLL_S = 0.25
#: Largest single record the worker's producer sends (a 1 MiB document and its envelope fit).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
MIN_ROUND_RECORDS = 200
_NO_HEADERS: list[tuple[str, bytes]] = []


def _barrier_index(records: list[Any]) -> int | None:
    """Index of the first record with the barrier's (empty) key, if any."""
    for i, m in enumerate(records):
        if m.key == BARRIER_KEY:
            return i
    return None


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
    #: ``(offset, checkpoint id)`` of the barrier that ends this round, if one does.
    barrier: tuple[int, str] | None = None
    #: Milliseconds from ``expires_at`` to the log time of each Expire applied.
    lateness_ms: list[int] = field(default_factory=list)


def reused_event_id(event_id: bytes, seen_offset: int) -> EventIdConflictError:
    """The dead letter's error for an event id used again for other bytes."""
    return EventIdConflictError(
        f"event id {event_id.hex()} was used at offset {seen_offset} for other bytes"
    )


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
        #: Set once ``run()`` has returned or raised; ``stop_error`` is what it raised (None
        #: after a clean stop): ``/healthz`` names it.
        self.stopped = False
        self.stop_error: BaseException | None = None
        self.checkpoints = CheckpointDir(config.checkpoint_root, config.topics.events)
        self.opener = StoreOpener(config, self.metrics)
        #: Partitions being restored (paused in the consumer until their store is ready).
        self._restoring: dict[int, asyncio.Task[None]] = {}
        #: What the last open of each partition did (``/v1/partitions``, ``lukhas status``).
        self.restore_reports: dict[int, Any] = {}
        #: Expire events appended and not yet seen applied: partition -> key -> (version,
        #: monotonic time before which it is not appended again, attempt).
        self._expiring: dict[int, dict[bytes, tuple[int, float, int]]] = {}
        #: The log's clock (the brokers'), which decides expiry for reads, dry runs and the
        #: sweeper as the fold decides it: by log time, not by this worker's wall clock.
        self.clock = LogClock()
        self._skew = SkewReporter(self.clock, config.clock_skew_warn_s)
        self._probing: asyncio.Task[None] | None = None
        self.metrics.clock_skew.set_function(lambda: _seconds(self.clock.skew().skew_ms))
        self.metrics.clock_error.set_function(lambda: _error_s(self.clock.skew()))
        self._expire_acks: set[asyncio.Task[None]] = set()
        #: Per partition, the WAL offset up to which changes are on the change topic already
        #: (read when the partition opens): records below it are folded without publishing.
        self._quiet_below: dict[int, int] = {}
        self.membership = Membership(
            config.bootstrap, config.group_id, config.topics.events, config.member_id,
            config.api_url,
        )  # fmt: skip

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
            # Carries this worker's API URL to the coordinator (processors.members); round
            # robin alone while a worker of an earlier version is in the group.
            partition_assignment_strategy=(self.membership.assignor, RoundRobinPartitionAssignor),
        )
        await self._producer.start()
        await self._consumer.start()
        await self.membership.start()
        self._consumer.subscribe([cfg.topics.events], listener=_Listener(self))
        if cfg.clock_probe_interval_s is not None:
            self._probing = asyncio.create_task(
                probe_forever(
                    self.clock, self._skew, self._send_clock_probe, cfg.topics.clock,
                    cfg.clock_probe_interval_s,
                )
            )  # fmt: skip
        self.running = True

    async def _send_clock_probe(self) -> Any:
        assert self._producer is not None
        member = self.config.member_id.encode()
        return await self._producer.send(self.config.topics.clock, member, member)

    def stop(self) -> None:
        """Asks ``run()`` to finish the round in progress and return."""
        self._stopping.set()

    async def close(self) -> None:
        """Leaves the group, closes the stores. Safe to call twice."""
        self.running = False
        if self._restoring:  # not cancelled: see _revoked
            await asyncio.wait(list(self._restoring.values()))
        if self._expire_acks:
            await asyncio.gather(*self._expire_acks, return_exceptions=True)
        if self._consumer is not None:
            await self._commit_offsets()
            # aiokafka's stop() leaves the group without calling the revoke listener: the
            # stores are taken out first, so reads waiting on them go elsewhere (421), and
            # closed once the round in progress has committed.
            async with self._lock:
                closing = list(self.stores.values())
                self.stores.clear()
            async with self._progress:
                self._progress.notify_all()
            await self._consumer.stop()
            self._consumer = None
            for store in closing:
                store.close()
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
        await self.membership.close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        for store in self.stores.values():
            store.close()
        self.stores.clear()

    async def run(self) -> None:
        """Folds rounds until ``stop()``; raises what makes the worker unable to go on."""
        assert self._consumer is not None
        cfg = self.config
        next_commit = time.monotonic() + cfg.commit_interval_s
        next_sweep = time.monotonic() + (cfg.expiry_interval_s or 0.0)
        slot = self._checkpoint_slot()
        try:
            while not self._stopping.is_set():
                if self._fatal is not None:
                    raise self._fatal
                try:
                    batch = await self._consumer.getmany(
                        timeout_ms=cfg.fetch_timeout_ms, max_records=self.round_limit
                    )
                except OffsetOutOfRangeError as exc:
                    raise await self._out_of_range(exc) from exc
                if batch:
                    self.clock.observe_records(batch, time.monotonic())
                    self._adapt_round_limit(await self.fold_round(batch))
                now = time.monotonic()
                if cfg.expiry_interval_s is not None and now >= next_sweep:
                    await self.sweep_expired()
                    next_sweep = time.monotonic() + cfg.expiry_interval_s
                if slot is not None and self._checkpoint_slot() != slot:
                    slot = self._checkpoint_slot()
                    await self._periodic_checkpoint()
                if now >= next_commit:
                    await self._commit_offsets()
                    next_commit = time.monotonic() + cfg.commit_interval_s
        except BaseException as exc:
            self.stop_error = exc
            raise
        finally:
            self.running = False  # /healthz turns 503 at once, whatever stopped the loop
            self.stopped = True

    # ---- time-based work ----

    def _checkpoint_slot(self) -> str | None:
        interval = self.config.checkpoint_interval_s
        return None if interval is None else checkpoint_id_for_slot(interval, time.time())

    async def _periodic_checkpoint(self) -> None:
        """Appends this interval's barriers, if this worker owns partition 0 (one worker of
        the group does, so the cluster checkpoints once per interval). The id names the
        interval: a worker restarted within it appends identical barriers, which the fold
        journals as duplicates."""
        if 0 not in self.stores:
            return
        checkpoint_id = self._checkpoint_slot()
        assert checkpoint_id is not None and self._producer is not None
        try:
            offsets = await append_barriers(
                self._producer, self._events, self.config.topics.events, checkpoint_id,
                self.partition_count,
            )  # fmt: skip
        except KafkaError as exc:
            log.error("could not append the barriers of checkpoint %s: %s", checkpoint_id, exc)
            return
        log.info("appended checkpoint barrier %s at %s", checkpoint_id, offsets)

    async def sweep_expired(self) -> int:
        """Appends ``Expire`` events for the contexts of this worker's partitions whose TTL
        ran out by the log's clock (``self.clock.earliest_ms()``: a time the brokers' clock
        has certainly reached, so the fold never refuses them as early), at most
        ``expiry_batch`` per partition, and returns how many. The fold decides by the
        Expire's log time and version whether it applies, so a write that extended the TTL in
        between wins, and every replay decides alike.

        An Expire appended and not applied within ``expiry_retry_s`` is appended again, with
        the next attempt number; each further retry of the same version waits twice as long,
        up to ``expiry_retry_max_s``, and happens only while the context is still due by the
        log's clock (which the refused Expire's acknowledgement measured). Until the log's
        clock is measured at all, a partition has at most one Expire in flight: its
        acknowledgement measures it.
        """
        producer = self._producer
        if producer is None:
            return 0
        cfg = self.config
        log_now = self.clock.earliest_ms()
        measured = self.clock.measured
        budget = cfg.expiry_batch if measured else 1
        now = time.monotonic()
        # First, with no await in between, what to send: a revocation may close a store as
        # soon as this coroutine yields.
        plan: list[tuple[int, bytes, int, bytes]] = []
        for partition, store in self.stores.items():
            before = self._expiring.get(partition, {})
            # The due entries ahead of the batch may all be in flight: look a little further.
            due = store.due(log_now, cfg.expiry_batch + len(before))
            expiring: dict[bytes, tuple[int, float, int]] = {}
            issued = 0
            for key, version, expires_at in due:
                pending = before.get(key)
                if pending is not None and pending[0] != version:
                    pending = None  # a newer version: its Expire starts afresh
                if pending is not None and now < pending[1]:
                    expiring[key] = pending  # backing off
                    continue
                # Unmeasured, one Expire per partition is in flight: it measures the clock.
                if issued >= budget or (not measured and before and pending is None):
                    if pending is not None:
                        expiring[key] = pending  # retried by a later sweep
                    continue
                attempt = 0 if pending is None else pending[2] + 1
                event = expire_event(key, version, attempt)
                plan.append((partition, key, expires_at, self._events.encode(event)))
                expiring[key] = (version, now + self._retry_delay(attempt), attempt)
                issued += 1
            self._expiring[partition] = expiring
        sends = []
        for partition, key, expires_at, value in plan:
            sent = time.monotonic()
            try:
                ack = await producer.send(cfg.topics.events, value, key, partition=partition)
            except KafkaError as exc:
                log.warning("expiry sweep stopped: %s", exc)
                break
            self.clock.watch(ack, sent)  # a log-append time: measures the log's clock
            sends.append((ack, expires_at))
        if sends:
            task = asyncio.create_task(self._await_expire_acks(sends))
            self._expire_acks.add(task)
            task.add_done_callback(self._expire_acks.discard)
        self.metrics.expires_appended.inc(len(sends))
        return len(sends)

    def _retry_delay(self, attempt: int) -> float:
        """Seconds before an Expire of this attempt may be appended again."""
        cfg = self.config
        return min(cfg.expiry_retry_s * 2.0 ** min(attempt, 32), cfg.expiry_retry_max_s)

    async def _await_expire_acks(self, sends: list[tuple[Any, int]]) -> None:
        results = await asyncio.gather(*(ack for ack, _ in sends), return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # the index still holds them: the sweep after expiry_retry_s tries again
            log.warning("%d Expire events were not acknowledged: %s", len(failed), failed[0])
        early = sum(
            1
            for r, (_, expires_at) in zip(results, sends, strict=True)
            if not isinstance(r, BaseException)
            and r.timestamp_type == LOG_APPEND_TIME
            and r.timestamp < expires_at
        )
        if early:  # only when the brokers' clock stepped back since it was measured
            self.metrics.expires_refused_early.inc(early)
            log.warning(
                "%d Expire events were stamped before their expiry and will be refused; "
                "retried when due by the log's clock",
                early,
            )

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

    async def fold_round(
        self, batch: dict[TopicPartition, list[Any]], publish: bool = True
    ) -> float:
        """Folds, publishes, waits for acknowledgement, then commits (see the module doc).
        Returns the seconds spent folding (synchronous work, without the acknowledgement
        wait): what the read API had to wait for.

        A checkpoint barrier ends its partition's round: the records up to and including it
        are committed, the checkpoint is taken (the store then holds exactly the fold of the
        WAL before the barrier), and the rest is folded as another round. Records below the
        partition's change-topic coverage (``_quiet_below``: their changes are published
        already) are folded in rounds of their own that publish no changes, so an old change
        is never published again after a newer one. ``publish`` False (an offline restore)
        sends nothing at all.
        """
        folding = 0.0
        pending = {tp: records for tp, records in batch.items() if records}
        while pending:
            segment: dict[TopicPartition, list[Any]] = {}
            rest: dict[TopicPartition, list[Any]] = {}
            quiet: set[int] = set()
            for tp, records in pending.items():
                end = len(records)
                quiet_below = self._quiet_below.get(tp.partition)
                if quiet_below is not None and records[0].offset >= quiet_below:
                    del self._quiet_below[tp.partition]  # past the coverage for good
                elif quiet_below is not None:
                    quiet.add(tp.partition)
                    end = bisect.bisect_left(records, quiet_below, key=lambda m: m.offset)
                cut = _barrier_index(records)
                if cut is not None:
                    end = min(end, cut + 1)
                segment[tp] = records[:end]
                if end < len(records):
                    rest[tp] = records[end:]
            folding += await self._fold_segment(segment, quiet, publish)
            pending = rest
        return folding

    async def _fold_segment(
        self, batch: dict[TopicPartition, list[Any]], quiet: set[int], publish: bool
    ) -> float:
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
            if publish:
                for r in rounds:
                    if r.partition in quiet:
                        r.changes.clear()  # published before; dead letters go again
                await asyncio.gather(*(self._send_all(r) for r in rounds))
            keep = self.config.journal_offsets
            for r in rounds:
                store = self.stores[r.partition]
                block = (r.first_offset, encode_block(r.entries, r.reasons))
                store.commit(
                    r.records,
                    r.next_offset,
                    block,
                    r.next_offset - keep,
                    pending_checkpoint=r.barrier,
                )
                window = self.config.limits.dedupe_window
                store.forget_recent(r.next_offset - window, window)
            self._account(rounds, sum(len(v) for v in batch.values()))
            for r in rounds:
                if r.barrier is not None:
                    await self._checkpoint(r.partition, r.barrier[1], publish)
        async with self._progress:
            self._progress.notify_all()
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return folding

    async def _checkpoint(self, partition: int, checkpoint_id: str, announce: bool) -> None:
        """Takes the checkpoint of a barrier just committed, publishes its manifest on the
        checkpoints topic (``announce``), keeps the newest ``checkpoint_keep`` and clears the
        store's pending mark. A failure is logged and counted, never fatal (the next barrier
        checkpoints again); a process killed before the mark is cleared takes the checkpoint
        when the partition next opens (``_resume_checkpoint``)."""
        store = self.stores[partition]
        pause = self.config.checkpoint_pause_s
        try:
            manifest = await asyncio.to_thread(
                self.checkpoints.create, store, partition, checkpoint_id,
                (lambda: time.sleep(pause)) if pause else None,
            )  # fmt: skip
            self.checkpoints.prune(partition, self.config.checkpoint_keep)
        except (StateError, OSError) as exc:
            self.metrics.checkpoint_failures.inc()
            log.error("checkpoint %s of partition %d failed: %s", checkpoint_id, partition, exc)
            return
        self.metrics.checkpoints.inc()
        log.info(
            "checkpoint %s of partition %d at offset %d, digest %016x",
            checkpoint_id, partition, manifest.next_offset, manifest.digest,
        )  # fmt: skip
        if announce and not await self._publish_manifest(manifest):
            return  # the mark stays: the next open publishes it
        store.clear_pending_checkpoint()

    async def _resume_checkpoint(self, partition: int, announce: bool = True) -> None:
        """Takes the checkpoint of a barrier whose commit was the last thing a killed process
        did (the store's pending mark), now that the store is open at that offset."""
        store = self.stores[partition]
        pending = store.pending_checkpoint()
        if pending is None:
            return
        offset, checkpoint_id = pending
        if store.next_offset != offset + 1:
            log.warning(
                "partition %d: checkpoint %s at offset %d was never taken, and the store is "
                "at offset %d now; the next barrier checkpoints again",
                partition, checkpoint_id, offset, store.next_offset,
            )  # fmt: skip
            store.clear_pending_checkpoint()
            return
        async with self._lock:
            await self._checkpoint(partition, checkpoint_id, announce)

    async def _publish_manifest(self, manifest: Manifest) -> bool:
        assert self._producer is not None
        key = f"{manifest.checkpoint_id}/{manifest.partition}".encode()
        try:
            ack = await self._producer.send(
                self.config.topics.checkpoints, value=manifest.to_json(), key=key
            )
            await ack
        except KafkaError as exc:
            log.error("could not publish checkpoint %s: %s", key.decode(), exc)
            return False
        return True

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
            if is_barrier(key, event):
                self._barrier(r, store, m, event)
                return
            mismatch = dead_letter_reason(key, event)
            if mismatch is not None:
                raise KeyMismatchError(mismatch)
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
        if outcome.kind is ChangeKind.EXPIRE:
            assert record is not None and record.expires_at_ms is not None
            r.lateness_ms.append(m.timestamp - record.expires_at_ms)
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
            # Everything a stored tombstone holds, so the change topic can restore it.
            expired = None if record is None else record.expires_at_ms
            headers = tombstone_headers(
                outcome.kind, new.version, offset, event_id, new.checksum, m.timestamp, expired
            )
            r.changes.append((key, None, headers))
            return
        change = self._changes.encode_fields(
            key, new.version, outcome.kind, new.doc, new.checksum,
            new.expires_at_ms, offset, event_id, m.timestamp,
        )  # fmt: skip
        r.changes.append((key, change, _NO_HEADERS))

    def _barrier(self, r: _Round, store: PartitionStore, m: Any, event: ContextEvent) -> None:
        """Journals a checkpoint barrier and marks the round as ending with it (the caller cut
        the round there); the checkpoint is taken once the round is committed."""
        payload_hash = xxhash.xxh3_64_intdigest(m.value or b"")
        if self._is_retry(r, store, m, event.event_id, payload_hash):
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

    def _is_retry(
        self, r: _Round, store: PartitionStore, m: Any, event_id: bytes, payload_hash: int
    ) -> bool:
        """Deduplicates by event id within the window (offsets, so replays decide alike).

        A repeat with the same bytes is a retry: journaled as ``DUPLICATE`` (its version field
        names the original's offset) and not applied again. The same id with other bytes is a
        conflict: dead-lettered. Otherwise the id is remembered and False returned.
        """
        offset = m.offset
        prior = store.prior_use(event_id, offset, self.config.limits.dedupe_window)
        if prior is not None:
            seen_offset, seen_hash = prior
            if seen_hash == payload_hash:
                r.entries += ENTRY.pack(offset, EntryStatus.DUPLICATE, seen_offset, event_id, 0)
                r.reasons[offset] = f"duplicate of offset {seen_offset}"
                r.duplicates += 1
            else:
                self._dead(r, m, reused_event_id(event_id, seen_offset), event_id, payload_hash)
            return True
        # Re-inserted at the end, so the dict stays in offset order.
        store.recent.pop(event_id, None)
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
            m.digest.labels(r.partition).set(self.stores[r.partition].summary().digest & 0xFFFFFFFF)
            for late in r.lateness_ms:
                m.expiry_lateness.observe(late / 1000)
            if self._consumer is None:  # an offline restore
                continue
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

    @property
    def restoring(self) -> list[int]:
        """Partitions assigned here whose stores are still being opened or restored."""
        return sorted(self._restoring)

    def store_for(self, partition: int) -> PartitionStore:
        store = self.stores.get(partition)
        if store is None:
            raise NotOwnerError(f"partition {partition} is not served by this worker")
        return store

    def highwater(self, partition: int) -> int | None:
        """The WAL end offset the fetcher last saw for ``partition`` (None: not fetched
        here). It lags a write made since: a lower bound of the end, never more."""
        tp = TopicPartition(self.config.topics.events, partition)
        if self._consumer is None or tp not in self._consumer.assignment():
            return None  # aiokafka asserts the partition is assigned
        high: int | None = self._consumer.highwater(tp)
        return high

    async def wait_applied(self, partition: int, offset: int, timeout_s: float) -> bool:
        """Waits until ``offset`` of ``partition`` is folded (``next_offset > offset``).

        A partition not (yet) assigned here is waited for too, since the worker may be starting
        or rebalancing — unless the members table names another worker as its owner: then
        ``NotOwnerError`` at once (the caller goes there). Returns False on timeout; raises
        ``NotOwnerError`` if by then the partition is still not served by this worker.
        """
        deadline = time.monotonic() + timeout_s
        async with self._progress:
            while True:
                store = self.stores.get(partition)
                if store is not None and store.next_offset > offset:
                    return True
                if store is None and partition not in self._restoring:
                    owner = self.membership.owner(partition)
                    if owner is not None and owner.api != self.config.api_url:
                        raise NotOwnerError(
                            f"partition {partition} is served by {owner.api}, not this worker"
                        )
                left = deadline - time.monotonic()
                if left <= 0:
                    if store is None:
                        self.store_for(partition)
                    return False
                # Woken by every round and (re)assignment; polled as well, since a move of
                # the partition elsewhere shows only in the members table.
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._progress.wait(), min(left, WAIT_POLL_S))

    def open_transaction(self, partition: int) -> tuple[int, int] | None:
        """``(first_offset, high_watermark)`` when an open transaction holds ``partition``:
        the last stable offset (where the oldest open transaction began) is below the high
        watermark, and this worker, reading ``read_committed``, has folded up to it, so
        nothing after it is folded until that transaction commits or aborts. None otherwise,
        or when the partition is not fetched here."""
        store = self.stores.get(partition)
        consumer = self._consumer
        if store is None or consumer is None:
            return None
        tp = TopicPartition(self.config.topics.events, partition)
        try:
            lso, high = consumer.last_stable_offset(tp), consumer.highwater(tp)
        except (AssertionError, KeyError):  # not assigned here (any more)
            return None
        if lso is None or high is None or not 0 <= lso < high or store.next_offset < lso:
            return None
        return lso, high

    # ---- assignment ----

    async def _assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Starts opening (or restoring) the store of each new partition.

        Before any ``await``, each new partition is positioned and paused: with
        ``auto_offset_reset="none"`` the fetcher would otherwise look for a position of its
        own and fail. The store is opened by a task (a restore may take a while, and the
        group's protocol must not wait for it); when it is ready the partition is sought to
        the store's ``next_offset`` and resumed.
        """
        consumer = self._consumer
        assert consumer is not None
        tps = list(assigned)
        self.partition_count = len(consumer.partitions_for_topic(self.config.topics.events) or ())
        for tp in tps:
            store = self.stores.get(tp.partition)
            if store is not None:
                consumer.seek(tp, store.next_offset)
            elif tp.partition not in self._restoring:
                consumer.seek(tp, 0)  # provisional: paused, nothing is fetched from it
                consumer.pause(tp)
                task = asyncio.create_task(self._open(tp))
                self._restoring[tp.partition] = task
        self._announce()

    def _announce(self) -> None:
        """Tells the routing table this worker's assignment and has it asked for again
        (processors.members: the group coordinator's description is the table)."""
        consumer = self._consumer
        if consumer is None:
            return
        assigned = [tp.partition for tp in consumer.assignment()]
        generation = int(getattr(getattr(consumer, "_coordinator", None), "generation", 0))
        self.membership.assigned(assigned, max(generation, 0))

    async def _open(self, tp: TopicPartition) -> None:
        try:
            consumer = self._consumer
            assert consumer is not None
            low = (await consumer.beginning_offsets([tp]))[tp]
            high = (await consumer.end_offsets([tp]))[tp]
            coverage = await self.opener.changes_coverage(tp.partition)
            store, report = await self.opener.open(tp.partition, (low, high))
            report.skipped += coverage.skipped
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("partition %d could not be opened: %s", tp.partition, exc)
            self._fatal = exc
            return
        finally:
            self._restoring.pop(tp.partition, None)
        consumer = self._consumer
        if consumer is None or tp not in consumer.assignment():
            store.close()  # revoked while it was restoring
            return
        if coverage.offset > store.next_offset:
            self._quiet_below[tp.partition] = coverage.offset
        self.restore_reports[tp.partition] = report
        self.metrics.restores.labels(report.source.value).inc()
        self.metrics.quarantined.inc(len(report.quarantined))
        self.stores[tp.partition] = store
        await self._resume_checkpoint(tp.partition)
        if self.stores.get(tp.partition) is not store:
            return  # revoked meanwhile (and closed by the revocation)
        consumer.seek(tp, store.next_offset)
        consumer.resume(tp)
        log.info(
            "partition %d opened from %s in %.2f s, folding from offset %d (digest %s)",
            tp.partition, report.source.value, report.seconds, store.next_offset, report.digest,
        )  # fmt: skip
        async with self._progress:
            self._progress.notify_all()

    async def _revoked(self, revoked: Iterable[TopicPartition]) -> None:
        for tp in revoked:
            task = self._restoring.get(tp.partition)
            if task is not None:
                # Not cancelled: a restore runs partly in a thread that would go on holding
                # the store's lock. Once done, it sees the partition is gone and closes it.
                await asyncio.wait([task])
        async with self._lock:  # waits for the round in progress to commit
            for tp in revoked:
                self._expiring.pop(tp.partition, None)
                self._quiet_below.pop(tp.partition, None)
                store = self.stores.pop(tp.partition, None)
                if store is not None:
                    store.close()
                    log.info("partition %d revoked", tp.partition)
        if revoked:
            self._announce()


def _seconds(ms: float | None) -> float:
    return math.nan if ms is None else ms / 1000


def _error_s(skew: Skew) -> float:
    if skew.skew_ms is None:
        return math.nan
    return math.inf if skew.error_ms is None else skew.error_ms / 1000


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
