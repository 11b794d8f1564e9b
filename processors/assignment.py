"""The partitions a worker folds: opened when the group assigns them, closed when it revokes them.

On assignment each new partition is positioned and paused **before any await**: with
``auto_offset_reset="none"`` aiokafka would otherwise look for a position of its own and
fail. Its store is then opened by a task, by the restore order (``processors.opener``: a
restore may take a while, and the group's protocol must not wait for it); when the store is
ready the partition is sought to the store's ``next_offset`` and resumed. Partitions open
independently, so one may still be restoring while others serve.

On revocation a partition's opening task is waited for (not cancelled: a restore runs partly
in a thread that would go on holding the store's lock) and the partition is taken out of
service under the round's lock, so only between rounds. Its store is *parked*, not closed:
the group's protocol is eager (every rebalance revokes every partition), and most come back
to the same worker. A partition given back in the very next generation is folded on from its
store as it was, no reopening, no verify, no InitProducerId: no other member can have folded
it in between, since it was this worker's in the generation before and a generation is
revoked everywhere before the next is assigned. Any other parked store (not given back, or
given back after a generation this worker missed: dropped from the group, its generation
reset) is closed, with its partition producer, before anything else opens at its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import OffsetOutOfRangeError

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import NotOwnerError, ProcessorError, WalTruncatedError
from lukhas_context.processors.members import Membership
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.opener import RestoreReport, StoreOpener
from lukhas_context.processors.round import PartitionFolder
from lukhas_context.processors.standby import StandbyManager
from lukhas_context.state.store import PartitionStore

log = logging.getLogger(__name__)

#: Seconds a partition's opening spends at most trimming its history index (the rest waits
#: for the next opening: a large index never holds a rebalance up for long).
TRIM_BUDGET_S = 5.0

#: How often a read waiting for a partition rechecks who serves it.
WAIT_POLL_S = 0.25


@dataclass(slots=True)
class _Parked:
    """A revoked partition's folder, kept open until the next assignment says whether the
    partition came back: revoked from ``generation``."""

    folder: PartitionFolder
    generation: int
    quiet_below: int | None


class Assignment:
    """This worker's partitions: the folder (store and dedupe window) of each one it folds,
    the ones still opening, and how each was opened. ``consumer`` is set once the worker has
    started, and None again once it is closed."""

    def __init__(
        self,
        config: WorkerConfig,
        metrics: WorkerMetrics,
        opener: StoreOpener,
        membership: Membership,
        lock: asyncio.Lock,
        progress: asyncio.Condition,
        on_open: Callable[[int, PartitionStore], Awaitable[None]],
        on_revoke: Callable[[int], None],
        before_open: Callable[[int], Awaitable[None]] | None = None,
        after_close: Callable[[int], Awaitable[None]] | None = None,
        standby: StandbyManager | None = None,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.opener = opener
        self.membership = membership
        #: The round's lock: a partition is closed only between rounds.
        self._lock = lock
        #: Notified whenever a partition opens or closes (reads wait on it).
        self._progress = progress
        #: Called once a partition's store is open, before it is resumed (a pending
        #: checkpoint is taken then); and when a partition is revoked.
        self._on_open = on_open
        self._on_revoke = on_revoke
        #: Awaited first when a partition is assigned, before its change topic is read (the
        #: partition's transactional producer starts: ``Publisher.open_partition``), and
        #: after a partition is closed (``Publisher.close_partition``).
        self._before_open = before_open
        self._after_close = after_close
        #: This worker's standby copies: told the standby partitions of each assignment, and
        #: asked to close a copy before its partition opens here to fold.
        self.standby = standby
        self.consumer: AIOKafkaConsumer | None = None
        self.folders: dict[int, PartitionFolder] = {}
        #: The stores of ``folders`` (a live, read-only view).
        self.stores: Mapping[int, PartitionStore] = _Stores(self.folders)
        #: Partitions whose stores are being opened (paused in the consumer until ready).
        self.opening: dict[int, asyncio.Task[None]] = {}
        #: What the last open of each partition did (``/v1/partitions``, ``lukhas status``).
        self.reports: dict[int, RestoreReport] = {}
        #: Per partition, the WAL offset up to which changes are on the change topic already
        #: (read when the partition opens): records below it are folded without publishing.
        self.quiet_below: dict[int, int] = {}
        #: ``next_offset`` of each store closed by a revocation (it stays on disk): reported
        #: to the group's leader with the open stores' (``--standby-replicas``), so a
        #: rebalance gives the partition back to where it is furthest along.
        self.closed_at: dict[int, int] = {}
        #: Revoked partitions whose stores are kept open until the next assignment (see the
        #: module doc).
        self.parked: dict[int, _Parked] = {}
        #: Partitions of the WAL, as of the last assignment.
        self.partition_count = 0
        #: What made opening a partition fail: the loop raises it.
        self.fatal: BaseException | None = None

    def listener(self) -> ConsumerRebalanceListener:
        return _Listener(self)

    async def assigned(self, assigned: Iterable[TopicPartition]) -> None:
        """Positions and pauses each new partition, then starts opening its store (see the
        module doc); a partition whose store is open already, or parked by the revocation of
        the generation just before, is sought to its offset and folds on."""
        consumer = self.consumer
        assert consumer is not None
        tps = list(assigned)
        generation = self.generation()
        self.partition_count = len(consumer.partitions_for_topic(self.config.topics.events) or ())
        if tps:
            log.info("partitions %s assigned (generation %d)",
                     sorted(tp.partition for tp in tps), generation)  # fmt: skip
        to_open: list[TopicPartition] = []
        kept: list[int] = []
        for tp in tps:
            store = self.stores.get(tp.partition)
            parked = self.parked.get(tp.partition)
            if store is not None:
                consumer.seek(tp, store.next_offset)
            elif parked is not None and generation > 0 and parked.generation + 1 == generation:
                del self.parked[tp.partition]
                self.folders[tp.partition] = parked.folder
                if parked.quiet_below is not None:
                    self.quiet_below[tp.partition] = parked.quiet_below
                self.closed_at.pop(tp.partition, None)
                consumer.seek(tp, parked.folder.store.next_offset)
                kept.append(tp.partition)
            elif tp.partition not in self.opening:
                consumer.seek(tp, 0)  # provisional: paused, nothing is fetched from it
                consumer.pause(tp)
                to_open.append(tp)
        # What was parked and did not come back (or came back after a generation missed) is
        # closed before anything opens at its path: an opening here, or a standby copy.
        dropped = sorted(self.parked)
        for partition in dropped:
            self.parked.pop(partition).folder.store.close()
        if kept:
            self.metrics.kept.inc(len(kept))
            log.info("partitions %s kept from generation %d: folding on, not reopened",
                     kept, generation - 1)  # fmt: skip
        if dropped:
            log.info("partitions %s revoked and closed", dropped)
        if self._after_close is not None:
            for partition in dropped:  # their partition producers, before any is started
                await self._after_close(partition)
        for tp in to_open:
            if tp.partition not in self.opening and tp in consumer.assignment():
                self.opening[tp.partition] = asyncio.create_task(self._open(tp))
        if self.standby is not None:
            active = {tp.partition for tp in consumer.assignment()}
            self.standby.want(set(self.membership.assignor.standbys) - active)
        self.announce()
        if kept:
            async with self._progress:
                self._progress.notify_all()

    def generation(self) -> int:
        """The group generation the consumer is in (-1: none, or reset after it was
        dropped)."""
        coordinator = getattr(self.consumer, "_coordinator", None)
        return int(getattr(coordinator, "generation", -1))

    def announce(self) -> None:
        """Tells the routing table this worker's assignment and has it asked for again
        (processors.members: the group coordinator's description is the table)."""
        consumer = self.consumer
        if consumer is None:
            return
        assigned = [tp.partition for tp in consumer.assignment()]
        self.membership.assigned(assigned, max(self.generation(), 0))

    async def _open(self, tp: TopicPartition) -> None:
        try:
            consumer = self.consumer
            assert consumer is not None
            steps: list[tuple[str, float]] = []
            mark = time.monotonic()

            def step(name: str) -> None:
                nonlocal mark
                now = time.monotonic()
                steps.append((name, now - mark))
                mark = now

            if self._before_open is not None:
                await self._before_open(tp.partition)
                step("producer")
            if self.standby is not None:  # its copy, if any, is the store to open
                await self.standby.release(tp.partition)
                step("standby")
            low = (await consumer.beginning_offsets([tp]))[tp]
            high = (await consumer.end_offsets([tp]))[tp]
            step("watermarks")
            coverage = await self.opener.changes_coverage(tp.partition)
            step("coverage")
            store, report = await self.opener.open(tp.partition, (low, high))
            step("open")
            report.skipped += coverage.skipped
            await self._trim_history(tp.partition, store, low)
            step("trim")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.error("partition %d could not be opened: %s", tp.partition, exc)
            self.fatal = exc
            return
        finally:
            self.opening.pop(tp.partition, None)
        consumer = self.consumer
        if consumer is None or tp not in consumer.assignment():
            store.close()  # revoked while it was restoring
            return
        if coverage.offset > store.next_offset:
            self.quiet_below[tp.partition] = coverage.offset
        self.reports[tp.partition] = report
        self.metrics.restores.labels(report.source.value).inc()
        self.metrics.quarantined.inc(len(report.quarantined))
        self.folders[tp.partition] = PartitionFolder(
            tp.partition, store, self.config.limits, events=self.config.event_codec(),
            index_history=self.config.history_index,
            coalesce_changes=self.config.coalesce_changes,
        )  # fmt: skip
        folder = self.folders[tp.partition]
        folder.resume_seq = coverage.next_seq_for(store.next_offset)
        folder.resume_below = coverage.offset
        await self._on_open(tp.partition, store)
        if self.stores.get(tp.partition) is not store:
            return  # revoked meanwhile (and closed by the revocation)
        consumer.seek(tp, store.next_offset)
        consumer.resume(tp)
        step("resume")
        log.info(
            "partition %d opened from %s in %.2f s, folding from offset %d (digest %s; %s)",
            tp.partition, report.source.value, report.seconds, store.next_offset, report.digest,
            ", ".join(f"{name} {seconds:.2f} s" for name, seconds in steps),
        )  # fmt: skip
        async with self._progress:
            self._progress.notify_all()

    @staticmethod
    async def _trim_history(partition: int, store: PartitionStore, low: int) -> None:
        """Drops the history entries of records the WAL no longer holds (it starts at
        ``low``: ``lukhas wal prune`` moved it), in a thread: the index is keyed by context,
        so this reads all of it. A failure leaves the entries (they are only history)."""
        if low <= store.history_floor():
            return
        try:
            dropped, done = await asyncio.to_thread(store.trim_history, low, budget_s=TRIM_BUDGET_S)
        except Exception as exc:  # the store still folds; `lukhas verify` reports damage
            log.warning("partition %d: history below offset %d not trimmed: %s",
                        partition, low, exc)  # fmt: skip
            return
        rest = "" if done else f"; the rest when it next opens (over {TRIM_BUDGET_S:g} s)"
        log.info("partition %d: %d history entries below offset %d (pruned from the WAL) "
                 "trimmed%s", partition, dropped, low, rest)  # fmt: skip

    async def revoked(self, revoked: Iterable[TopicPartition]) -> None:
        """Takes revoked partitions out of service, between rounds, and parks their stores
        until the next assignment (see the module doc); closes them, and their partition
        producers, when this worker is no longer in a generation (dropped from the group)."""
        revoked = list(revoked)
        started = time.monotonic()
        await self.wait_opening([tp.partition for tp in revoked])
        generation = self.generation()
        closed: list[int] = []
        async with self._lock:  # waits for the round in progress to commit
            for tp in revoked:
                self._on_revoke(tp.partition)
                quiet = self.quiet_below.pop(tp.partition, None)
                folder = self.folders.pop(tp.partition, None)
                if folder is None:
                    closed.append(tp.partition)
                    continue
                self.closed_at[tp.partition] = folder.store.next_offset
                if generation > 0:
                    self.parked[tp.partition] = _Parked(folder, generation, quiet)
                else:
                    folder.store.close()
                    closed.append(tp.partition)
                    log.info("partition %d revoked", tp.partition)
        if self._after_close is not None:
            for partition in closed:
                await self._after_close(partition)
        if revoked:
            self.announce()
        took = time.monotonic() - started
        limit = self.config.rebalance_timeout_ms / 1000
        if took > limit / 2:
            log.warning(
                "revoking partitions %s took %.1f s (the group waits %g s for a member to "
                "rejoin, --rebalance-timeout; a slower one is dropped and the group rebalances "
                "again)", sorted(tp.partition for tp in revoked), took, limit,
            )  # fmt: skip

    def drop_fenced(self, partition: int) -> None:
        """Takes a partition whose change producer was fenced out of service, as a revocation
        would, under the round's lock (the caller holds it): its round is not committed, its
        store closes, the consumer pauses it, and the group is asked to rebalance — another
        worker fenced it (this one missed the rebalance that moved it), or the broker aborted
        its transaction; either way the group decides who opens it next."""
        self._on_revoke(partition)
        self.quiet_below.pop(partition, None)
        folder = self.folders.pop(partition, None)
        if folder is not None:
            folder.store.close()
        consumer = self.consumer
        tp = TopicPartition(self.config.topics.events, partition)
        if consumer is not None and tp in consumer.assignment():
            consumer.pause(tp)
            coordinator = getattr(consumer, "_coordinator", None)
            if coordinator is not None:
                coordinator.request_rejoin()
        log.warning(
            "partition %d: its change producer was fenced (another worker opened it, or the "
            "broker aborted the round's transaction); closed, the group decides who opens it",
            partition,
        )
        if self._after_close is not None:
            task = asyncio.ensure_future(self._after_close(partition))
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    async def wait_opening(self, partitions: Iterable[int] | None = None) -> None:
        """Waits for the opening tasks of ``partitions`` (None: all). Not cancelled: a restore
        runs partly in a thread that would go on holding the store's lock. Once done, a task
        sees its partition is gone and closes the store."""
        chosen = None if partitions is None else set(partitions)
        tasks = [task for p, task in self.opening.items() if chosen is None or p in chosen]
        if tasks:
            await asyncio.wait(tasks)

    def take_all(self) -> list[PartitionStore]:
        """Empties the table (reads then go elsewhere: 421) and returns the stores to close,
        the parked ones too."""
        stores = [folder.store for folder in self.folders.values()]
        stores += [parked.folder.store for parked in self.parked.values()]
        self.folders.clear()
        self.parked.clear()
        return stores

    # ---- where each partition is ----

    def folder_for(self, partition: int) -> PartitionFolder:
        """The partition's folder (its store and dedupe window); ``NotOwnerError`` when this
        worker does not fold it (now)."""
        folder = self.folders.get(partition)
        if folder is None:
            raise NotOwnerError(f"partition {partition} is not served by this worker")
        return folder

    def highwater(self, partition: int) -> int | None:
        """The WAL end offset the fetcher last saw for ``partition`` (None: not fetched
        here). It lags a write made since: a lower bound of the end, never more."""
        tp = TopicPartition(self.config.topics.events, partition)
        consumer = self.consumer
        if consumer is None or tp not in consumer.assignment():
            return None  # aiokafka asserts the partition is assigned
        high: int | None = consumer.highwater(tp)
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
                if store is None and partition not in self.opening:
                    owner = self.membership.owner(partition)
                    if owner is not None and owner.api != self.config.api_url:
                        raise NotOwnerError(
                            f"partition {partition} is served by {owner.api}, not this worker"
                        )
                left = deadline - time.monotonic()
                if left <= 0:
                    if store is None:
                        self.folder_for(partition)  # raises NotOwnerError
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
        consumer = self.consumer
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

    async def out_of_range(self, exc: OffsetOutOfRangeError) -> BaseException:
        """Names why a store's ``next_offset`` is not in the WAL: truncated by retention, or
        beyond the log end (the store belongs to another log, e.g. a re-created topic)."""
        if self.fatal is not None:
            return self.fatal
        assert self.consumer is not None
        topic = self.config.topics.events
        tps = [TopicPartition(topic, p) for p in self.folders]
        low = await self.consumer.beginning_offsets(tps)
        high = await self.consumer.end_offsets(tps)
        for tp in tps:
            needed = self.folders[tp.partition].store.next_offset
            if needed < low[tp]:
                return WalTruncatedError(tp.partition, needed, low[tp])
            if needed > high[tp]:
                return ProcessorError(
                    f"the store of partition {tp.partition} needs offset {needed} but the WAL "
                    f"ends at {high[tp]}: the state dir belongs to another log"
                )
        return ProcessorError(f"WAL offset out of range: {exc}")


class _Stores(Mapping[int, PartitionStore]):
    """The stores of a partition -> folder table, live and read-only."""

    __slots__ = ("_folders",)

    def __init__(self, folders: dict[int, PartitionFolder]) -> None:
        self._folders = folders

    def __getitem__(self, partition: int) -> PartitionStore:
        return self._folders[partition].store

    def __iter__(self) -> Iterator[int]:
        return iter(self._folders)

    def __len__(self) -> int:
        return len(self._folders)


class _Listener(ConsumerRebalanceListener):  # type: ignore[misc]
    def __init__(self, owner: Assignment) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: Any) -> None:
        await self.owner.revoked(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        try:
            await self.owner.assigned(assigned)
        except Exception as exc:  # aiokafka would only log it: hand it to run() to raise
            log.error("partition assignment failed: %s", exc)
            self.owner.fatal = exc
