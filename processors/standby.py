"""Standby replicas: warm copies of partitions this worker does not fold (``--standby-replicas``).

The group's leader names each worker's standby partitions in its assignment
(``processors.members.plan_assignment``: up to N per partition, on workers other than its
owner). A worker keeps each one as a store at the path the partition's own store would have
(``STATE_DIR/partition-P``), following the change topic into it: each change is the stored
record it stands for (``check_change_record``), fence records raise their lock's token, and
transaction-state records set or clear a prepared transaction, as the change-topic restore
takes them (``processors.opener``), but record by record, as they arrive.

**Consistency.** A standby store must always hold the fold of a WAL prefix, so it is written
only at a round's boundary: a round's changes are held until its last change arrives (header
``txend`` of its Kafka transaction; ``rend`` at least once). Every numbered round ends with one
of those; records from before the numbers are closed also when a change of a later WAL offset
arrives (the changes of one WAL offset are a transaction's, one per context). Closing on a
later offset is not safe for numbered rounds: a coalesced round (``WorkerConfig.
coalesce_changes``) leaves out a context's earlier changes of the round, so between two of its
changes the copy would hold no WAL prefix's state. Each commit writes the records,
``next_offset`` (one past the last WAL offset applied), the change sequence number and the
change-topic offset to read on from (``STANDBY_AT_KEY``) in one WriteBatch.

**Gaps and repeats.** Changes are numbered in their partition (``seq``): a change numbered
below the next one expected is a repeat (published again after a crash) and is passed over; a
change numbered above it means changes were removed before this copy read them (compacted,
deleted by retention), so the copy is rebuilt: from the change topic, as a restore would
(``StoreOpener.from_changes``, built aside and renamed into place). A store that fails to open
or to verify when a standby starts is quarantined and rebuilt the same way.

**Promotion.** When the partition is assigned to this worker, the copy is closed and the
partition opens by the usual order (``StoreOpener.open``): the local store opens and verifies
like any other, its dedupe window is read from the WAL (a standby keeps no journal:
``PartitionStore.promote``), and only the WAL after its ``next_offset`` is folded. The leader
prefers, for each partition, the member whose store is furthest along (positions in the
subscription), so the caught-up standby is the one that takes over.

Lag (change-topic records not applied yet) and ``next_offset`` of each copy are in
``/metrics`` (``lukhas_standby_lag_records``, ``lukhas_standby_next_offset``),
``/v1/partitions`` and ``lukhas status``; a read with ``?allow_stale=1`` or ``?max_lag=N``
may be answered from a copy (``processors.api``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from lukhas_context.processors.change_record import TxStateRecord, read_change_topic_record
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import ProcessorError, UnusableChangeError
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.opener import StoreOpener
from lukhas_context.schemas.change import ROUND_END_HEADER, TX_END_HEADER, FenceRecord, seq_of
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.state.exceptions import StateError
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams import kafka

log = logging.getLogger(__name__)

#: How long one fetch of the change topic waits for records.
FETCH_MS = 200
#: How soon a copy that could not be built is tried again.
RETRY_S = 10.0
#: Headers of a round's last change: exactly once (a commit marker follows) or at least once.
_ROUND_ENDS = (TX_END_HEADER, ROUND_END_HEADER)
#: How often the change topic's end offsets are asked for (the lag).
MEASURE_S = 1.0


@dataclass(slots=True)
class _Pending:
    """What arrived for one WAL offset (or more) and is not written yet."""

    records: dict[bytes, ContextRecord] = field(default_factory=dict)
    fences: dict[bytes, tuple[int, int, int]] = field(default_factory=dict)
    txns: dict[bytes, bytes | None] = field(default_factory=dict)

    def take(self, other: _Pending) -> None:
        self.records.update(other.records)
        for lock, fence in other.fences.items():
            kept = self.fences.get(lock)
            if kept is None or fence[0] >= kept[0]:
                self.fences[lock] = fence
        self.txns.update(other.txns)

    def __bool__(self) -> bool:
        return bool(self.records or self.fences or self.txns)


@dataclass(slots=True)
class StandbyCopy:
    """One partition's standby: its store and where it is in the change topic."""

    partition: int
    store: PartitionStore
    #: The change-topic offset of the next record to read.
    position: int
    #: The sequence number of the next change (``store.change_seq`` plus what is pending).
    expected: int
    #: The change-topic end offset when last looked at (for the lag).
    end: int = 0
    #: Changes read and not written yet, by WAL offset: ``(wal offset, seq after, what)``.
    held: _Pending = field(default_factory=_Pending)
    held_offset: int = -1
    held_seq: int = 0
    #: The change-topic offset of the first held record (where a restart reads from).
    held_position: int = -1
    #: Written and not committed: closed rounds.
    ready: _Pending = field(default_factory=_Pending)
    ready_offset: int = -1
    ready_seq: int = 0
    ready_position: int = -1
    rebuilds: int = 0

    @property
    def next_offset(self) -> int:
        return self.store.next_offset

    @property
    def lag(self) -> int:
        """Change-topic records not applied yet (as of the last look at the end)."""
        return max(0, self.end - self.position)

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "next_offset": self.store.next_offset,
            "digest": self.store.summary().digest_hex,
            "change_offset": self.position,
            "lag_records": self.lag,
            "rebuilds": self.rebuilds,
        }


class GapError(ProcessorError):
    """Changes a standby had not read are gone: it must be rebuilt."""


class StandbyManager:
    """The standby copies of one worker (see the module doc)."""

    def __init__(
        self, config: WorkerConfig, opener: StoreOpener, metrics: WorkerMetrics | None = None
    ) -> None:
        self.config = config
        self.opener = opener
        self.metrics = metrics
        self.topic = config.topics.changes
        self.copies: dict[int, StandbyCopy] = {}
        #: Partitions named standby here whose copy could not be built: why, and when to try
        #: again.
        self.failed: dict[int, tuple[str, float]] = {}
        self._wanted: set[int] = set()
        self._lock = asyncio.Lock()
        self._consumer: AIOKafkaConsumer | None = None
        self._task: asyncio.Task[None] | None = None
        self._codec = ChangeCodec()
        self._changed = asyncio.Event()
        self._next_measure = 0.0

    # ---- lifecycle ----

    async def start(self) -> None:
        self._consumer = kafka.consumer(
            self.config.bootstrap, f"{self.config.client_id}-standby",
            isolation="read_committed", fetch_max_bytes=16 * 1024 * 1024,
            security=self.config.kafka_security,
        )  # fmt: skip
        await self._consumer.start()
        self._task = asyncio.create_task(self._follow())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            self._task = None
        async with self._lock:
            for partition in list(self.copies):
                self._close(partition)
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    def positions(self) -> dict[int, int]:
        """``next_offset`` of every copy (for the subscription: ``processors.members``)."""
        return {p: c.store.next_offset for p, c in self.copies.items()}

    # ---- which partitions ----

    def want(self, partitions: set[int]) -> None:
        """The standby partitions of the latest assignment: the follow loop closes the copies
        of others (their stores stay on disk) and starts new ones. Returns at once (called
        from the group's rebalance)."""
        self._wanted = set(partitions)
        self._changed.set()

    async def release(self, partition: int) -> None:
        """Closes the copy of ``partition`` (it is assigned here to fold: the opener opens its
        store next), writing what it holds of closed rounds first."""
        async with self._lock:
            self._wanted.discard(partition)
            self.failed.pop(partition, None)
            copy = self.copies.get(partition)
            if copy is not None:
                await asyncio.to_thread(self._commit, copy)
                self._close(partition)

    def _close(self, partition: int) -> None:
        copy = self.copies.pop(partition, None)
        if copy is not None:
            copy.store.close()
            log.info("standby of partition %d closed at offset %d", partition, copy.next_offset)
        if self.metrics is not None:
            for gauge in (self.metrics.standby_lag, self.metrics.standby_next_offset):
                with contextlib.suppress(KeyError):
                    gauge.remove(str(partition))

    # ---- opening ----

    async def _open(self, partition: int) -> StandbyCopy:
        """The copy of ``partition``: the local store if it opens and verifies (a standby
        reads on from its place; a store folded here before reads the change topic from
        the start, passing over what it holds by number), else rebuilt."""
        quarantined: list[str] = []
        store = await asyncio.to_thread(self.opener.open_local, partition, quarantined)
        for path in quarantined:
            log.error("standby of partition %d: store quarantined (%s); rebuilding", partition,
                      path)  # fmt: skip
        low, _ = await self._watermarks(partition)
        if store is not None and store.next_offset < (await self.opener.watermarks(partition))[0]:
            store.close()  # behind what the WAL holds: it could never be promoted
            store = None
        if store is None:
            return await self._rebuild(partition, 0)
        at = store.standby_at
        position = at if at is not None and at >= low else low
        return StandbyCopy(partition, store, position, store.change_seq)

    async def _rebuild(self, partition: int, rebuilds: int) -> StandbyCopy:
        """A copy built from the change topic (or empty when it holds nothing)."""
        started = time.monotonic()
        path = self.opener.store_path(partition)
        if path.exists():
            await asyncio.to_thread(shutil.rmtree, path)
        _, end = await self._watermarks(partition)  # read on from here: repeats are numbered
        wal_low, _ = await self.opener.watermarks(partition)
        store = await self.opener.from_changes(partition, wal_low)
        if store is None:
            store = await asyncio.to_thread(self.opener.empty, partition)
        store.commit({}, store.next_offset, standby_at=end)
        log.info(
            "standby of partition %d built from the change topic in %.2f s: offset %d",
            partition, time.monotonic() - started, store.next_offset,
        )  # fmt: skip
        if self.metrics is not None:
            self.metrics.standby_rebuilds.inc()
        return StandbyCopy(partition, store, end, store.change_seq, rebuilds=rebuilds + 1)

    async def _watermarks(self, partition: int) -> tuple[int, int]:
        consumer = self._consumer
        assert consumer is not None
        tp = TopicPartition(self.topic, partition)
        low = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        return low, end

    # ---- following ----

    async def _follow(self) -> None:
        consumer = self._consumer
        assert consumer is not None
        assigned: set[int] = set()
        while True:
            try:
                async with self._lock:
                    await self._open_wanted()
                    if set(self.copies) != assigned:
                        assigned = set(self.copies)
                        consumer.assign([TopicPartition(self.topic, p) for p in sorted(assigned)])
                        for p, c in self.copies.items():
                            consumer.seek(TopicPartition(self.topic, p), c.position)
                if not assigned:
                    self._changed.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), 1.0)
                    continue
                batch = await consumer.getmany(timeout_ms=FETCH_MS, max_records=20_000)
                async with self._lock:
                    for tp, messages in batch.items():
                        copy = self.copies.get(tp.partition)
                        if copy is None or not messages:
                            continue
                        try:
                            self._apply(copy, messages)
                        except GapError as exc:
                            log.warning("standby of partition %d: %s; rebuilding", tp.partition,
                                        exc)  # fmt: skip
                            copy.store.close()
                            del self.copies[tp.partition]
                            fresh = await self._rebuild(tp.partition, copy.rebuilds)
                            self.copies[tp.partition] = fresh
                            consumer.seek(tp, fresh.position)
                            continue
                        await asyncio.to_thread(self._commit, copy)
                    await self._measure(consumer)
            except asyncio.CancelledError:
                raise
            except (KafkaError, OSError) as exc:
                log.warning("standby: reading %s failed (%s); trying again", self.topic, exc)
                await asyncio.sleep(1.0)
            except Exception:  # never the worker's end: log, wait, go on
                log.exception("standby: following %s failed; trying again", self.topic)
                await asyncio.sleep(1.0)

    async def _open_wanted(self) -> None:
        for partition in list(self.copies):
            if partition not in self._wanted:
                self._close(partition)
        for partition in list(self.failed):
            if partition not in self._wanted:
                del self.failed[partition]
        now = time.monotonic()
        for partition in sorted(self._wanted - set(self.copies)):
            failed = self.failed.get(partition)
            if failed is not None and failed[1] > now:
                continue
            try:
                self.copies[partition] = await self._open(partition)
                self.failed.pop(partition, None)
                log.info("standby of partition %d following from change offset %d (store at "
                         "WAL offset %d)", partition, self.copies[partition].position,
                         self.copies[partition].next_offset)  # fmt: skip
            except (StateError, ProcessorError, KafkaError, OSError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                log.error("standby of partition %d cannot be built: %s", partition, reason)
                self.failed[partition] = (reason, now + RETRY_S)

    def _apply(self, copy: StandbyCopy, messages: list[Any]) -> None:
        """Takes one fetch of a partition's change records into ``copy``: rounds that are
        closed go to ``ready``, the changes of the last WAL offset stay held."""
        for m in messages:
            if m.offset < copy.position:
                continue
            copy.position = m.offset + 1
            seq = seq_of(m.headers)
            if seq is not None:
                if seq < copy.expected:
                    continue  # published again: applied already
                if seq > copy.expected:
                    raise GapError(
                        f"change {copy.expected} of partition {copy.partition} is gone "
                        f"(change {seq} is at offset {m.offset})"
                    )
                copy.expected = seq + 1
            found = self._read(copy, m)
            if found is None:
                continue
            wal_offset, what = found
            if seq is None and wal_offset > copy.held_offset and copy.held:
                # A record from before the numbers, and so before coalesced rounds: a newer
                # WAL offset closes what is held. A numbered round is closed by its marker
                # only: in a coalesced one (``WorkerConfig.coalesce_changes``) a context's
                # earlier changes are left out, so the state between two of its changes is
                # no WAL prefix's and must not be saved.
                self._close_held(copy)
            if not copy.held:
                copy.held_position = m.offset
            copy.held_offset = max(copy.held_offset, wal_offset)
            copy.held.take(what)
            copy.held_seq = copy.expected
            if any(name in _ROUND_ENDS for name, _ in m.headers or ()):
                self._close_held(copy)  # the round's last change: nothing more of it comes

    @staticmethod
    def _close_held(copy: StandbyCopy) -> None:
        copy.ready.take(copy.held)
        copy.ready_offset = max(copy.ready_offset, copy.held_offset)
        copy.ready_seq = copy.held_seq
        copy.held = _Pending()
        copy.held_position = -1

    def _read(self, copy: StandbyCopy, m: Any) -> tuple[int, _Pending] | None:
        """``(WAL offset, what it changes)`` of one record; None for one that is not usable
        (counted, passed over: a forged record changes nothing here)."""
        what = _Pending()
        try:
            item = read_change_topic_record(m.key, m.value, m.headers, self._codec, m.offset)
        except UnusableChangeError as exc:
            log.warning("standby of partition %d: %s[%d]@%d passed over: %s", copy.partition,
                        self.topic, copy.partition, m.offset, exc)  # fmt: skip
            if self.metrics is not None:
                self.metrics.unusable_records.labels("changes").inc()
            return None
        if isinstance(item, TxStateRecord):
            if item.wal_offset < copy.store.next_offset:
                return None  # a state without a number, older than the copy
            what.txns[item.tx_id] = item.state
            return item.wal_offset, what
        if isinstance(item, FenceRecord):
            lock = item.lock.encode()
            kept = copy.store.fence(lock)
            if kept is None or item.token > kept:
                what.fences[lock] = (item.token, item.wal_offset, item.log_time_ms)
            return item.wal_offset, what
        change = item
        if change.record.offset < copy.store.next_offset:
            return None  # a change without a number, older than the copy
        what.records[change.key] = change.record
        return change.record.offset, what

    @staticmethod
    def _commit(copy: StandbyCopy) -> None:
        """Writes the closed rounds (one WriteBatch) with where to read on from."""
        if not copy.ready and copy.ready_offset < 0:
            return
        ready = copy.ready
        next_offset = max(copy.store.next_offset, copy.ready_offset + 1)
        at = copy.held_position if copy.held else copy.position
        copy.store.commit(
            ready.records, next_offset, history_rows=None, fences=ready.fences or None,
            txns=ready.txns or None, change_seq=copy.ready_seq, standby_at=at,
        )  # fmt: skip
        copy.ready = _Pending()
        copy.ready_offset = -1

    async def _measure(self, consumer: AIOKafkaConsumer) -> None:
        tps = [TopicPartition(self.topic, p) for p in self.copies]
        now = time.monotonic()
        if not tps or now < self._next_measure:
            return
        self._next_measure = now + MEASURE_S
        ends = await consumer.end_offsets(tps)
        for tp in tps:
            copy = self.copies.get(tp.partition)
            if copy is None:
                continue
            copy.end = ends[tp]
            with contextlib.suppress(AssertionError, KeyError):
                # Past commit markers too (the end counts them): a caught-up copy lags 0.
                copy.position = max(copy.position, await consumer.position(tp))
            if self.metrics is not None:
                self.metrics.standby_lag.labels(str(tp.partition)).set(copy.lag)
                self.metrics.standby_next_offset.labels(str(tp.partition)).set(copy.next_offset)

    def report(self) -> list[dict[str, Any]]:
        """Each copy, and each standby partition that could not be built, for
        ``/v1/partitions`` and ``lukhas status``."""
        out = [self.copies[p].to_dict() for p in sorted(self.copies)]
        for p, (reason, _) in sorted(self.failed.items()):
            out.append({"partition": p, "error": reason})
        return out

    def copy_of(self, partition: int) -> StandbyCopy | None:
        return self.copies.get(partition)


def standby_positions(
    active: Mapping[int, PartitionStore], standby: StandbyManager | None,
    closed: Mapping[int, int] | None = None,
) -> dict[int, int]:  # fmt: skip
    """``next_offset`` of every store this worker has: open (active or standby) or closed by
    a revocation (``closed``: still on disk, and opened first if the partition comes back)."""
    positions = dict(closed or {})
    if standby is not None:
        positions.update(standby.positions())
    positions.update({p: s.next_offset for p, s in active.items()})
    return positions
