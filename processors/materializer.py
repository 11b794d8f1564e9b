"""The materialiser: the worker's loop and lifecycle, over the parts that do the work.

Like aiokafka's consumer over its fetcher and coordinator, this module builds the Kafka
clients, runs the loop and starts and stops the parts; each part is tested through its own
public methods:

* ``round.PartitionFolder``: folds one partition's records into a round, no Kafka
  (decode → dedupe → apply → journal → change records), and commits it;
* ``publisher.Publisher``: change batches, dead letters, checkpoint manifests;
* ``checkpointer.Checkpointer``: checkpoint barriers to checkpoints;
* ``expiry.ExpirySweeper``: the Expire events of contexts whose TTL ran out;
* ``toucher.TtlToucher``: the Touch events of the access-driven TTL policies (when given);
* ``assignment.Assignment``: the rebalance listener; opening, seeking, resuming, revoking;
* ``members.Membership`` (who serves which partition) and ``clock.LogClock`` (the log's time).

One pass of the loop: ``getmany`` (up to ``round_limit`` records, adapted to a time budget),
``fold_round`` (cut into segments at barriers and at the change topic's coverage, each folded
and committed in the commit order written once, in ``fold_segment``), then the time-based
work between rounds: the expiry sweep, the periodic checkpoint barriers, the group's
committed offsets (for lag tools only, never read).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, OffsetOutOfRangeError

from lukhas_context.processors.advice import WorkerSample
from lukhas_context.processors.advisor import Advisor
from lukhas_context.processors.assignment import Assignment
from lukhas_context.processors.checkpointer import Checkpointer
from lukhas_context.processors.clock import LogClock, Skew, SkewReporter, probe_forever
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import WorkerStartError
from lukhas_context.processors.expiry import ExpirySweeper
from lukhas_context.processors.members import Member, Membership
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.mirror import Mirror, change_versions, redacted, register
from lukhas_context.processors.opener import RestoreReport, StoreOpener
from lukhas_context.processors.publisher import (
    PartitionFencedError,
    Publisher,
    transactional_id,
)
from lukhas_context.processors.retention import WalRetention
from lukhas_context.processors.round import PartitionFolder, PartitionRound, segment_end
from lukhas_context.processors.shed import FetchPause, fold_pause_s
from lukhas_context.processors.standby import StandbyManager, standby_positions
from lukhas_context.processors.toucher import TtlToucher
from lukhas_context.processors.ttl_policy import ReadCounter
from lukhas_context.schemas.event import ContextEvent
from lukhas_context.schemas.txrecord import TX_KEY, encode_tick
from lukhas_context.state.checkpoints import CheckpointDir
from lukhas_context.state.memory import MemoryBudget, resident_bytes
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams import kafka
from lukhas_context.streams.admin import ensure_topics, partition_count
from lukhas_context.streams.config import bearer_headers
from lukhas_context.streams.exceptions import AdminError
from lukhas_context.streams.health import explained

log = logging.getLogger(__name__)

#: How often the worker looks for transactions to time out (``tick_transactions``).
TICK_INTERVAL_S = 1.0
#: How long without a partition before the worker says so, and again at each multiple.
UNASSIGNED_WARN_S = 15.0

MIN_ROUND_RECORDS = 200
#: How long a fetch of the fold's consumer waits for records that are not there yet (ms).
FETCH_WAIT_MS = 100
#: The share of the memory budget past which rounds get smaller (``mind_memory``).
MEMORY_NEAR = 0.9
#: How long fetching pauses while resident memory is over the budget.
MEMORY_PAUSE_S = 0.1
#: How long the scaling advice waits for the brokers' WAL ends (``advice_sample``).
END_OFFSETS_TIMEOUT_S = 5.0
#: The over-budget warning is logged at most this often.
MEMORY_WARN_S = 30.0


class Materializer:
    """Folds the partitions assigned to this worker. ``run()`` until ``stop()``."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics | None = None) -> None:
        self.metrics = metrics or WorkerMetrics()
        #: The memory budget every store of this worker draws on (None: none).
        self.memory: MemoryBudget | None = None
        self._memory_warned_at = -math.inf
        self._last_resident = 0
        if config.memory_budget_bytes is not None:
            self.memory = MemoryBudget(config.memory_budget_bytes)
            config = replace(config, store=replace(config.store, memory=self.memory))
            for part, read in self.memory.parts().items():
                self.metrics.memory.labels(part).set_function(read)
        self.config = config
        self._events = config.event_codec()
        #: Held by a round from its fold to its commit; a revocation waits for it.
        self._lock = asyncio.Lock()
        #: Notified after every round and (re)assignment: reads wait on it.
        self._progress = asyncio.Condition()
        self._stopping = asyncio.Event()
        #: Records asked per round, adapted to ``round_budget_s`` (see adapt_round_limit).
        self.round_limit = config.max_batch_records
        self._producer: AIOKafkaProducer | None = None
        self.publisher: Publisher | None = None
        self.running = False
        #: Set once ``run()`` has returned or raised; ``stop_error`` is what it raised (None
        #: after a clean stop): ``/healthz`` names it.
        self.stopped = False
        self.stop_error: BaseException | None = None
        #: The log's clock (the brokers'), which decides expiry for reads, dry runs and the
        #: sweeper as the fold decides it: by log time, not by this worker's wall clock.
        self.clock = LogClock()
        self._skew = SkewReporter(self.clock, config.clock_skew_warn_s)
        self._probing: asyncio.Task[None] | None = None
        #: The scaling advice (``processors.advisor``; None: ``advice_interval_s`` is None).
        self.advisor = None if config.advice_interval_s is None else Advisor(
            self.metrics, self.advice_sample, self._peer_urls, lambda: self.partition_count,
            interval_s=config.advice_interval_s, cooldown_s=config.advice_cooldown_s,
            headers=bearer_headers(config.api_token),
        )  # fmt: skip
        self._advising: asyncio.Task[None] | None = None
        #: The periodic prune in progress (``WorkerConfig.prune_interval_s``), if any.
        self._pruning: asyncio.Task[dict[int, int]] | None = None
        self.metrics.clock_skew.set_function(lambda: _seconds(self.clock.skew().skew_ms))
        self.metrics.clock_error.set_function(lambda: _error_s(self.clock.skew()))
        self.membership = Membership(
            config.bootstrap, config.group_id, config.topics.events, config.member_id,
            config.api_url, config.peer_url, config.standby_replicas,
            lambda: standby_positions(
                self.assignment.stores, self.standby, self.assignment.closed_at
            ),
            config.kafka_security, config.evict_dead_peers, self._peer_evicted,
        )  # fmt: skip
        self.opener = StoreOpener(config, self.metrics)
        #: Warm copies of partitions others fold (``--standby-replicas``; None: none).
        self.standby = (
            StandbyManager(config, self.opener, self.metrics) if config.standby_replicas else None
        )
        self.checkpointer = Checkpointer(config, self.metrics)
        self.retention = WalRetention(config, self.opener, self.metrics)
        self.sweeper = ExpirySweeper(config, self.metrics, self._events)
        #: The access-driven TTL's Touch events (None: no policy, reads are not counted).
        self.toucher = (
            TtlToucher(
                config.ttl_policies, self.metrics, config.topics.events, config.ttl_touch_batch,
                config.ttl_read_contexts, self._events,
            )
            if config.ttl_policies
            else None
        )  # fmt: skip
        #: When the worker next says it has no partition (``_watch_assignment``).
        self._unassigned_warn_at = 0.0
        self.assignment = Assignment(
            config, self.metrics, self.opener, self.membership, self._lock, self._progress,
            on_open=self._opened, on_revoke=self.sweeper.forget,
            before_open=self._open_partition_producer, after_close=self._close_partition_producer,
            standby=self.standby,
        )  # fmt: skip
        #: Pauses fetching between rounds over their budget, or over the memory budget.
        self.fetch_pause = FetchPause(
            self.metrics, self.assignment.generation, lambda p: p in self.assignment.folders
        )

    # ---- what the read API and the tools see ----

    @property
    def stores(self) -> Mapping[int, PartitionStore]:
        """The store of each partition this worker folds (a live, read-only view)."""
        return self.assignment.stores

    @property
    def reads(self) -> ReadCounter | None:
        """Where the read API counts the point reads it serves from this worker's stores for
        the TTL policies; None when there is none (nothing is counted)."""
        return None if self.toucher is None else self.toucher.reads

    @property
    def partition_count(self) -> int:
        """Partitions of the WAL, as of the last assignment (0 before the first)."""
        return self.assignment.partition_count

    @property
    def restoring(self) -> list[int]:
        """Partitions assigned here whose stores are still being opened or restored."""
        return sorted(self.assignment.opening)

    @property
    def restore_reports(self) -> Mapping[int, RestoreReport]:
        """What the last open of each partition did (``/v1/partitions``, ``lukhas status``)."""
        return self.assignment.reports

    @property
    def checkpoints(self) -> CheckpointDir:
        """Where this worker's checkpoints are (``Checkpointer.checkpoints``)."""
        return self.checkpointer.checkpoints

    async def advice_sample(self) -> WorkerSample:
        """This worker's counters now, for the scaling advice (``processors.advice``): the WAL
        end and next offset of each partition it folds, the seconds spent in rounds, the read
        requests answered, resident memory and budget.

        The ends are asked of the brokers (one ListOffsets per leader, at most
        ``END_OFFSETS_TIMEOUT_S``): the fetcher's high watermark is not fresh while the worker
        falls behind (it fetches again only once it has folded what it holds), which is when
        the advice matters. When the brokers do not answer, the fetcher's is used."""
        nexts = {p: store.next_offset for p, store in list(self.stores.items())}
        ends = await self._end_offsets(list(nexts))
        m = self.metrics
        return WorkerSample(
            time.monotonic(), ends, nexts, m.busy_seconds(), m.requests_answered(),
            resident_bytes=resident_bytes() or None,
            budget_bytes=None if self.memory is None else self.memory.total,
        )  # fmt: skip

    async def _end_offsets(self, partitions: list[int]) -> dict[int, int]:
        consumer = self.assignment.consumer
        topic = self.config.topics.events
        if consumer is not None and partitions:
            tps = [TopicPartition(topic, p) for p in partitions]
            try:
                ends = await asyncio.wait_for(consumer.end_offsets(tps), END_OFFSETS_TIMEOUT_S)
                return {tp.partition: int(end) for tp, end in ends.items()}
            except (KafkaError, TimeoutError, AssertionError) as exc:
                log.info("WAL ends for the scaling advice not read (%r): the fetcher's", exc)
        found = {p: self.highwater(p) for p in partitions}
        return {p: end for p, end in found.items() if end is not None}

    def _peer_urls(self) -> list[str]:
        """The other members' API URLs (as workers reach them), from the routing table. This
        worker is told apart by its API URL: a member's id there is the group's, not ours."""
        me = self.config.api_url
        urls = [m.forward_url for m in self.membership.members() if m.api != me]
        return list(dict.fromkeys(urls))

    # ---- lifecycle ----

    async def start(self) -> None:
        """Connects to Kafka and joins the group; partitions arrive through the listener."""
        cfg = self.config
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self._producer = kafka.producer(
            cfg.bootstrap, f"{cfg.client_id}-changes", max_batch_size=512 * 1024, linger_ms=0,
            security=cfg.kafka_security,
        )  # fmt: skip
        consumer = kafka.consumer(
            cfg.bootstrap,
            cfg.client_id,
            isolation="read_committed",
            security=cfg.kafka_security,
            group_id=cfg.group_id,
            group_instance_id=cfg.instance_id,
            session_timeout_ms=cfg.session_timeout_ms,
            # A fifth of the session (aiokafka's default is 3 s): a worker learns of a
            # rebalance, e.g. a dead member's partitions coming to it, sooner.
            heartbeat_interval_ms=max(200, min(3000, cfg.session_timeout_ms // 5)),
            # Not the session timeout (aiokafka's default): a revocation that waits for a
            # round or an opening longer than that got the member dropped, over and over.
            rebalance_timeout_ms=cfg.rebalance_timeout_ms,
            # A JoinGroup is answered once the rebalance completes: give it that long.
            request_timeout_s=max(40.0, cfg.rebalance_timeout_ms / 1000 + 5),
            # The store says where to start; a position the log no longer has is an error.
            auto_offset_reset="none",
            fetch_max_bytes=16 * 1024 * 1024,
            # A broker answers one request of a connection at a time: the watermark requests
            # of a partition being opened wait behind a fetch of the others that has no
            # record to return yet (aiokafka waits up to 500 ms).
            fetch_max_wait_ms=FETCH_WAIT_MS,
            # Carries this worker's API URL to the coordinator (processors.members). One
            # assignor only: aiokafka 0.14 sends a JoinGroup per assignor it is given, each
            # with different protocols, and each such rejoin starts another rebalance
            # (docs/architecture.md, "Several workers").
            partition_assignment_strategy=(self.membership.assignor,),
        )
        self.assignment.consumer = consumer
        self.publisher = Publisher(
            self._producer, cfg.topics, exactly_once=cfg.exactly_once,
            make_producer=self._partition_producer, group_id=cfg.group_id,
            compression=cfg.change_compression,
        )  # fmt: skip
        cannot = f"cannot reach Kafka at {cfg.bootstrap}"
        try:
            with kafka.kafka_errors(WorkerStartError, cannot):
                await self._producer.start()
                await consumer.start()
                await self.membership.start()
                if self.standby is not None:
                    await self.standby.start()
        except WorkerStartError as exc:
            better = await explained(exc, cannot, cfg.bootstrap, cfg.kafka_security)
            if better is exc:
                raise
            raise better from exc
        if cfg.schema_registry_url is not None:
            # Before any partition opens: every round of this worker is mirrored.
            self.publisher.mirror = await self._start_mirror(cfg.schema_registry_url)
        consumer.subscribe([cfg.topics.events], listener=self.assignment.listener())
        if cfg.clock_probe_interval_s is not None:
            self._probing = asyncio.create_task(
                probe_forever(
                    self.clock, self._skew, self._send_clock_probe, cfg.topics.clock,
                    cfg.clock_probe_interval_s,
                )
            )  # fmt: skip
        if self.advisor is not None:
            self._advising = asyncio.create_task(self.advisor.run())
        self.running = True

    async def _start_mirror(self, url: str) -> Mirror:
        """Creates the mirror topic if missing (as many partitions as the change topic) and
        registers the change schemas (``processors.mirror``); ``WorkerStartError`` when
        either cannot be done."""
        cfg = self.config
        topic = cfg.topics.changes_registry
        try:
            partitions = await partition_count(
                cfg.bootstrap, cfg.topics.changes, security=cfg.kafka_security
            )
            await ensure_topics(
                cfg.bootstrap, [cfg.topics.registry_spec(partitions)],
                security=cfg.kafka_security,
            )  # fmt: skip
        except AdminError as exc:  # the change topic is missing: `lukhas topics create`
            raise WorkerStartError(
                f"cannot create the mirror topic {topic}: {exc} (`lukhas topics create`, or "
                "`lukhas up`, creates the topics)"
            ) from exc
        subject = f"{topic}-value"
        ids = await register(url, subject, change_versions())
        log.info(
            "mirroring changes to %s in Schema Registry wire format (subject %s, schema id %s)"
            " at %s", topic, subject, ", ".join(map(str, ids.values())), redacted(url),
        )  # fmt: skip
        return Mirror.of(topic, ids)

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
        await self.assignment.wait_opening()  # not cancelled: see Assignment.wait_opening
        await self.sweeper.close()
        if self.toucher is not None:
            await self.toucher.close()
        if self._advising is not None:  # before the consumer it asks the WAL's ends with
            self._advising.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._advising
            self._advising = None
        if self.advisor is not None:
            await self.advisor.close()
        consumer = self.assignment.consumer
        if consumer is not None:
            await self._commit_offsets()
            # aiokafka's stop() leaves the group without calling the revoke listener: the
            # stores are taken out first, so reads waiting on them go elsewhere (421), and
            # closed once the round in progress has committed.
            async with self._lock:
                closing = self.assignment.take_all()
            async with self._progress:
                self._progress.notify_all()
            await consumer.stop()
            self.assignment.consumer = None
            for store in closing:
                store.close()
        if self._probing is not None:
            self._probing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._probing
        if self._pruning is not None:
            self._pruning.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pruning
        await self.membership.close()
        if self.standby is not None:
            await self.standby.close()
        if self.publisher is not None:
            await self.publisher.close()
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        for store in self.assignment.take_all():
            store.close()

    def _partition_producer(self, partition: int) -> AIOKafkaProducer:
        """A partition's transactional change producer (exactly once: ``processors.publisher``)."""
        cfg = self.config
        return kafka.producer(
            cfg.bootstrap, f"{cfg.client_id}-changes-{partition}", max_batch_size=512 * 1024,
            linger_ms=0, transactional_id=transactional_id(cfg.group_id, partition),
            security=cfg.kafka_security,
            transaction_timeout_ms=cfg.transaction_timeout_ms,
            # A commit's markers take the broker some milliseconds: the next round's first
            # send is refused meanwhile (CONCURRENT_TRANSACTIONS) and retried after this.
            retry_backoff_ms=5,
        )  # fmt: skip

    async def _open_partition_producer(self, partition: int) -> None:
        if self.publisher is not None:
            await self.publisher.open_partition(partition)

    async def _close_partition_producer(self, partition: int) -> None:
        if self.publisher is not None:
            await self.publisher.close_partition(partition)

    async def run(self) -> None:
        """Folds rounds until ``stop()``; raises what makes the worker unable to go on."""
        consumer = self.assignment.consumer
        assert consumer is not None
        cfg = self.config
        next_commit = time.monotonic() + cfg.commit_interval_s
        next_sweep = time.monotonic() + (cfg.expiry_interval_s or 0.0)
        next_touch = time.monotonic() + cfg.ttl_touch_interval_s
        next_prune = time.monotonic() + (cfg.prune_interval_s or 0.0)
        next_tick = time.monotonic() + TICK_INTERVAL_S
        unassigned_since: float | None = None
        slot = self.checkpointer.slot()
        try:
            while not self._stopping.is_set():
                if self.assignment.fatal is not None:
                    raise self.assignment.fatal
                await self.mind_memory()
                try:
                    batch = await consumer.getmany(
                        timeout_ms=cfg.fetch_timeout_ms, max_records=self.round_limit
                    )
                except OffsetOutOfRangeError as exc:
                    raise await self.assignment.out_of_range(exc) from exc
                if batch:
                    self.clock.observe_records(batch, time.monotonic())
                    folding = await self.fold_round(batch)
                    self.adapt_round_limit(folding)
                    await self.mind_round(folding)
                else:
                    self.fetch_pause.calm("round")
                now = time.monotonic()
                unassigned_since = self._watch_assignment(consumer, now, unassigned_since)
                if cfg.expiry_interval_s is not None and now >= next_sweep:
                    await self.sweep_expired()
                    next_sweep = time.monotonic() + cfg.expiry_interval_s
                if self.toucher is not None and now >= next_touch:
                    await self.touch_read()
                    next_touch = time.monotonic() + cfg.ttl_touch_interval_s
                if now >= next_tick:
                    await self.tick_transactions()
                    next_tick = time.monotonic() + TICK_INTERVAL_S
                if slot is not None and self.checkpointer.slot() != slot:
                    slot = self.checkpointer.slot()
                    await self._periodic_checkpoint()
                if cfg.prune_interval_s is not None and now >= next_prune:
                    self._start_prune()
                    next_prune = time.monotonic() + cfg.prune_interval_s
                if now >= next_commit:
                    await self._commit_offsets()
                    next_commit = time.monotonic() + cfg.commit_interval_s
        except BaseException as exc:
            self.stop_error = exc
            raise
        finally:
            self.running = False  # /healthz turns 503 at once, whatever stopped the loop
            self.stopped = True

    # ---- between rounds ----

    def _watch_assignment(self, consumer: Any, now: float, since: float | None) -> float | None:
        """Says, every ``UNASSIGNED_WARN_S``, that this worker has had no partition for that
        long (a rebalance that does not end shows in the log, with the group coordinator the
        consumer knows); returns since when it has had none (None: it has some)."""
        if consumer.assignment():
            return None
        if since is None:
            self._unassigned_warn_at = now + UNASSIGNED_WARN_S
            return now
        if now >= self._unassigned_warn_at:
            self._unassigned_warn_at = now + UNASSIGNED_WARN_S
            coordinator = getattr(consumer, "_coordinator", None)
            log.warning(
                "no partition assigned for %.0f s (group %s, coordinator node %s, generation "
                "%s): the group's rebalance has not ended", now - since, self.config.group_id,
                getattr(coordinator, "coordinator_id", None),
                getattr(coordinator, "generation", None),
            )  # fmt: skip
        return since

    async def tick_transactions(self) -> int:
        """Appends a tick (``schemas.txrecord``) to each partition of this worker that
        coordinates a transaction whose timeout has passed by the log's clock, so the fold
        there sees that log time and aborts it (``processors.twophase``) even when nothing
        else is written. Returns how many; a failed append is retried next time."""
        if self._producer is None:
            return 0
        now = self.clock.earliest_ms()
        due = [p for p, f in self.assignment.folders.items()
               if f.deadline is not None and f.deadline <= now]  # fmt: skip
        topic = self.config.topics.events
        for p in due:
            try:
                send = self._producer.send_and_wait(topic, encode_tick(), key=TX_KEY, partition=p)
                await asyncio.wait_for(send, 10)
            except (KafkaError, TimeoutError) as exc:
                log.warning("cannot append a transaction tick to partition %d: %r", p, exc)
        return len(due)

    async def sweep_expired(self) -> int:
        """One expiry sweep over this worker's stores (``ExpirySweeper.sweep``)."""
        if self._producer is None:
            return 0
        return await self.sweeper.sweep(self.stores, self._producer, self.clock)

    async def touch_read(self) -> int:
        """One sweep of the TTL policies over the reads counted since the last
        (``TtlToucher.sweep``); 0 when there is no policy."""
        if self._producer is None or self.toucher is None:
            return 0
        return await self.toucher.sweep(
            self.stores, self.partition_count, self._producer, self.clock,
            self.assignment.opening,
        )  # fmt: skip

    def _start_prune(self) -> None:
        """Starts this interval's WAL prune in the background (its reads of the change topic
        take a while; the fold goes on), unless the last one still runs."""
        if self._pruning is not None and not self._pruning.done():
            return
        positions = {p: s.next_offset for p, s in self.stores.items()}
        if positions:
            self._pruning = asyncio.create_task(self.retention.prune(positions))
            self._pruning.add_done_callback(_log_prune_failure)

    async def _periodic_checkpoint(self) -> None:
        """Appends this interval's barriers if this worker owns partition 0 (one worker of the
        group does, so the cluster checkpoints once per interval)."""
        if 0 not in self.stores:
            return
        assert self._producer is not None
        await self.checkpointer.append_periodic(
            self._producer, self._events, self.assignment.partition_count
        )

    async def _commit_offsets(self) -> None:
        """Mirrors the stores' ``next_offset`` to the group (for lag tools; never read back).
        Exactly once, every round's transaction commits them already."""
        consumer = self.assignment.consumer
        if consumer is None or not self.stores or self.config.exactly_once:
            return
        topic = self.config.topics.events
        offsets = {
            TopicPartition(topic, p): s.next_offset for p, s in self.stores.items() if s.next_offset
        }
        try:
            if offsets:
                await consumer.commit(offsets)
        except KafkaError as exc:
            log.info("offset commit skipped (%s); the stores keep the real positions", exc)

    async def mind_memory(self) -> None:
        """Backpressure before a round, from this process's resident memory against the
        budget: past ``MEMORY_NEAR`` of it the next round is halved (a round's records,
        pending state and changes are the memory that moves fastest); past the budget and
        still rising, the read caches are halved too and fetching pauses for
        ``MEMORY_PAUSE_S`` (RocksDB flushes meanwhile). Each round still folds at least
        ``MIN_ROUND_RECORDS``: memory slows the fold, never stops it; a budget under what the
        worker needs at rest is said in the log."""
        memory = self.memory
        if memory is None:
            return
        resident = resident_bytes()
        if resident > memory.total * MEMORY_NEAR and self.round_limit > MIN_ROUND_RECORDS:
            self.round_limit = max(MIN_ROUND_RECORDS, self.round_limit // 2)
            self.metrics.memory_backpressure.labels("smaller_round").inc()
        rising = resident > self._last_resident
        self._last_resident = resident
        if resident <= memory.total or not rising:
            # Only while it still grows: over the budget but flat (the worker's fixed part,
            # the dedupe windows, is more than the budget leaves it) pausing frees nothing.
            self.fetch_pause.calm("memory")
            return
        freed = memory.shrink_read_caches()
        self.metrics.memory_backpressure.labels("paused").inc()
        now = time.monotonic()
        if now - self._memory_warned_at >= MEMORY_WARN_S:
            self._memory_warned_at = now
            log.warning(
                "resident memory %d MiB is over the budget of %d MiB: read caches shrunk "
                "by %d KiB, rounds of %d records, fetching paused %.1f s a round (a budget "
                "under what the worker needs at rest slows it for good: give "
                "--memory-budget more)", resident >> 20, memory.total >> 20, freed >> 10,
                self.round_limit, MEMORY_PAUSE_S,
            )  # fmt: skip
        await self._breathe(MEMORY_PAUSE_S, "memory", None)  # logged above, at most every 30 s

    async def mind_round(self, seconds: float) -> None:
        """Sheds fold load after a round whose synchronous fold took ``seconds``: over
        ``round_budget_s`` (every read waited that long), fetching pauses for about the
        overrun (``processors.shed.fold_pause_s``) so the reads held meanwhile are answered
        and their connections' next requests come in before more is fetched."""
        budget = self.config.round_budget_s
        pause = fold_pause_s(seconds, budget)
        if not pause:
            self.fetch_pause.calm("round")
            return
        why = (f"a round folded for {seconds * 1000:.1f} ms, over its budget of "
               f"{budget * 1000:g} ms (--round-budget-ms): reads waited that long")  # fmt: skip
        await self._breathe(pause, "round", why)

    async def _breathe(self, seconds: float, reason: str, why: str | None) -> None:
        consumer = self.assignment.consumer
        if consumer is None:
            return
        await self.fetch_pause.breathe(consumer, seconds, reason, why, self._stopping)

    def adapt_round_limit(self, seconds: float) -> None:
        """Keeps a round near its time budget: the fold is synchronous, and while it runs the
        read API of this worker cannot answer. Halves the records asked per round when a
        round overran, doubles them (up to the configured maximum) when it took under a
        quarter of the budget."""
        budget = self.config.round_budget_s
        if seconds > budget:
            self.round_limit = max(MIN_ROUND_RECORDS, self.round_limit // 2)
        elif seconds < budget / 4:
            self.round_limit = min(self.config.max_batch_records, self.round_limit * 2)

    def _peer_evicted(self, member: Member, by_us: bool) -> None:
        """A dead peer was evicted from the group (``--evict-dead-peers``; ``by_us``: by
        this worker, else by another first): rejoin now, so its partitions come here without
        waiting for the next heartbeat to say the group is rebalancing (aiokafka's
        coordinator; the rebalance would come all the same)."""
        if by_us:
            self.metrics.peer_evictions.inc()
        coordinator = getattr(self.assignment.consumer, "_coordinator", None)
        rejoin = getattr(coordinator, "request_rejoin", None)
        if callable(rejoin):
            rejoin()

    async def _opened(self, partition: int, store: PartitionStore) -> None:
        """A partition's store is open: take the checkpoint a killed process left pending."""
        publisher = self.publisher
        assert publisher is not None
        await self.checkpointer.resume(store, partition, self._lock, publisher.publish_manifest)

    # ---- the round ----

    async def fold_round(self, batch: dict[TopicPartition, list[Any]]) -> float:
        """Folds one ``getmany``'s records, a segment at a time (``fold_segment``). Returns
        the seconds spent folding (synchronous work, without the acknowledgement wait): what
        the read API had to wait for.

        A checkpoint barrier ends its partition's segment (``round.segment_end``), and the
        rest is folded as another. Records below the partition's change-topic coverage
        (``Assignment.quiet_below``: their changes are published already) are folded in
        segments of their own that publish no changes, so an old change is never published
        again after a newer one.
        """
        folding = 0.0
        quiet_below = self.assignment.quiet_below
        pending = {tp: records for tp, records in batch.items() if records}
        while pending:
            segment: dict[TopicPartition, list[Any]] = {}
            rest: dict[TopicPartition, list[Any]] = {}
            quiet: set[int] = set()
            for tp, records in pending.items():
                end = len(records)
                below = quiet_below.get(tp.partition)
                if below is not None and records[0].offset >= below:
                    del quiet_below[tp.partition]  # past the coverage for good
                elif below is not None:
                    quiet.add(tp.partition)
                    end = bisect.bisect_left(records, below, key=lambda m: m.offset)
                end = min(end, segment_end(records))
                segment[tp] = records[:end]
                if end < len(records):
                    rest[tp] = records[end:]
            folding += await self.fold_segment(segment, quiet)
            pending = rest
        return folding

    async def fold_segment(self, batch: dict[TopicPartition, list[Any]], quiet: set[int]) -> float:
        """Folds one segment of each partition's records and commits it. **The commit order**,
        by which every event is applied exactly once and its change published at least once
        (never lost; subscribers drop repeats):

        1. fold each partition's records in memory (``PartitionFolder.fold``): records,
           journal entries, changes, dead letters; nothing is written or sent;
        2. send every change (one partition to the same partition of the change topic) and
           every dead letter, and **wait until the brokers acknowledged all of them**
           (``Publisher.publish``; ``acks=all``). The changes of a ``quiet`` partition are on
           the change topic already and are not sent again; its dead letters are;
        3. only then commit, per partition, one WriteBatch: the new records, the round's
           journal block, ``next_offset`` and a barrier's pending-checkpoint mark
           (``PartitionFolder.commit``);
        4. take the checkpoint of a barrier that ended a partition's segment, publish its
           manifest, clear the mark (``Checkpointer.take``).

        Why: had the WriteBatch committed first and the process died before the changes were
        acknowledged, ``next_offset`` would already be past their events and the changes
        would be lost for ever. In this order a crash between 2 and 3 re-folds the same events
        after the restart: never zero. When the partition reopens, the change topic's
        coverage (one past the WAL offset of its newest change) says which of them are
        published already, and those are folded without publishing again; the changes that
        were not acknowledged are past the coverage and are published. A change's identity is
        its context id and WAL offset, and subscribers drop any repeat (e.g. a zombie's). A
        crash between 3 and 4 leaves the mark, and the checkpoint is taken when the partition
        next opens (``Checkpointer.resume``). The offline replay (``offline.replay_wal``)
        follows the same order without step 2.

        Returns the seconds spent in step 1.
        """
        started = time.perf_counter()
        folding = 0.0
        async with self._lock:
            folders = self.assignment.folders
            rounds: list[tuple[PartitionFolder, PartitionRound]] = []
            for tp, records in batch.items():
                folder = folders.get(tp.partition)
                if folder is not None and records:
                    t0 = time.perf_counter()
                    r = folder.fold(records)
                    folding += time.perf_counter() - t0
                    if r is not None:
                        rounds.append((folder, r))
                    await asyncio.sleep(0)  # let reads in between partitions
            publisher = self.publisher
            assert publisher is not None
            for _, r in rounds:
                if r.partition in quiet:
                    r.changes.clear()  # published before; dead letters go again
            sent = await asyncio.gather(
                *(publisher.publish(r) for _, r in rounds), return_exceptions=True
            )
            failed = [e for e in sent if isinstance(e, BaseException)]
            fenced = {e.partition for e in failed if isinstance(e, PartitionFencedError)}
            for e in failed:
                if not isinstance(e, PartitionFencedError):
                    raise e
            if fenced:  # published nothing: not committed, and the partition is given up
                rounds = [(f, r) for f, r in rounds if r.partition not in fenced]
                for partition in fenced:
                    self.assignment.drop_fenced(partition)
                self.metrics.fenced_rounds.inc(len(fenced))
            for folder, r in rounds:
                folder.commit(r, self.config.journal_offsets)
            self._account(rounds, sum(len(v) for v in batch.values()))
            for folder, r in rounds:
                if r.barrier is not None:
                    await self.checkpointer.take(
                        folder.store, r.partition, r.barrier[1], publisher.publish_manifest
                    )
        async with self._progress:
            self._progress.notify_all()
        self.metrics.batch_seconds.observe(time.perf_counter() - started)
        return folding

    def _account(self, rounds: list[tuple[PartitionFolder, PartitionRound]], consumed: int) -> None:
        m = self.metrics
        m.consumed.inc(consumed)
        consumer = self.assignment.consumer
        for folder, r in rounds:
            m.applied.inc(r.applied)
            m.conflicts.inc(r.conflicts)
            m.rejected.inc(r.rejected)
            m.fenced.inc(r.fenced)
            m.dead_lettered.inc(len(r.dead))
            m.duplicates.inc(r.duplicates)
            m.changes.inc(len(r.changes))
            if r.coalesced:
                m.changes_coalesced.inc(r.coalesced)
            m.next_offset.labels(r.partition).set(r.next_offset)
            m.digest.labels(r.partition).set(folder.store.summary().digest & 0xFFFFFFFF)
            for late in r.lateness_ms:
                m.expiry_lateness.observe(late / 1000)
            if consumer is None:
                continue
            high = consumer.highwater(TopicPartition(self.config.topics.events, r.partition))
            if high is not None:
                m.lag.labels(r.partition).set(max(0, high - r.next_offset))

    # ---- reads ----

    def decode_event(self, data: bytes) -> ContextEvent:
        """Decodes one event with the worker's codec (``CodecError`` when it is not one)."""
        return self._events.decode(data)

    def folder_for(self, partition: int) -> PartitionFolder:
        """``Assignment.folder_for``."""
        return self.assignment.folder_for(partition)

    def store_for(self, partition: int) -> PartitionStore:
        """The partition's store; ``NotOwnerError`` when this worker does not fold it."""
        return self.assignment.folder_for(partition).store

    def highwater(self, partition: int) -> int | None:
        """``Assignment.highwater``."""
        return self.assignment.highwater(partition)

    async def wait_applied(self, partition: int, offset: int, timeout_s: float) -> bool:
        """``Assignment.wait_applied``."""
        return await self.assignment.wait_applied(partition, offset, timeout_s)

    def open_transaction(self, partition: int) -> tuple[int, int] | None:
        """``Assignment.open_transaction``."""
        return self.assignment.open_transaction(partition)


def _seconds(ms: float | None) -> float:
    return math.nan if ms is None else ms / 1000


def _error_s(skew: Skew) -> float:
    if skew.skew_ms is None:
        return math.nan
    return math.inf if skew.error_ms is None else skew.error_ms / 1000


def _log_prune_failure(task: asyncio.Task[dict[int, int]]) -> None:
    """A prune that failed is logged (the next interval tries again), never left unread."""
    if not task.cancelled() and task.exception() is not None:
        log.warning("the WAL prune failed: %r; it runs again next interval", task.exception())
