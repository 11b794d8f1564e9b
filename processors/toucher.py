"""The TTL toucher: appends the ``Touch`` events the access-driven TTL policies ask for.

Every ``ttl_touch_interval_s``, between rounds, it takes the reads the read API counted
(``ttl_policy.ReadCounter``), and for each read context of a partition this worker folds whose
id has a policy, decides by the log's clock (``processors.clock``, as the expiry sweeper does)
whether the policy wants its TTL moved (``ttl_policy.touch_decision``), and appends
``Touch{ttl_ms}`` with ``expected_version`` = the version it read. The Touch is the decision:
the fold applies it or refuses it (a concurrent write raised the version: the write wins), and
every replay of the log decides alike. Nothing here changes state outside the log.

Each context is touched at most once per interval (the counts are taken once per interval);
at most ``ttl_touch_batch`` Touch events per partition per sweep, the most read first, so a
read flood costs bounded work. A Touch that is refused or not acknowledged is not retried:
the next interval's reads decide again.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Container, Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from lukhas_context.processors.clock import LogClock
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.ttl_policy import ReadCounter, TtlPolicies, touch_decision
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import ContextEvent, Touch
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams.topics import partition_for

log = logging.getLogger(__name__)

#: Reads decided, and Touch events sent, between two yields to the event loop (``sweep``).
CHUNK = 1_000

#: The metadata a policy's Touch carries (``by``), beside ``reads``: for people and tools
#: reading the log; metadata never decides an outcome.
TOUCHED_BY = "ttl-policy"


def policy_touch(key: bytes, version: int, ttl_ms: int, reads: int) -> ContextEvent:
    """The policy's Touch of one version of a context, with an id of its own (random): its
    ``expected_version`` already lets at most one Touch of a version apply, whoever appends
    it (an owner and a zombie, two sweeps while the fold lags). An id derived from the
    version would make a second Touch of it, with another TTL, a reused id the fold
    dead-letters."""
    event_id = uuid.uuid4().bytes
    return ContextEvent(
        event_id, key.decode(), Touch(ttl_ms), expected_version=version,
        metadata={"by": TOUCHED_BY, "reads": str(reads)},
    )  # fmt: skip


class TtlToucher:
    """Counts reads (``reads``) and appends the Touch events of the policies."""

    def __init__(
        self,
        policies: TtlPolicies,
        metrics: WorkerMetrics,
        topic: str,
        batch: int,
        max_contexts: int,
        events: EventCodec | None = None,
    ) -> None:
        self.policies = policies
        self.metrics = metrics
        self.topic = topic
        self.batch = batch
        #: The read API counts each point read of a context it serves here, of ids with a
        #: policy only.
        self.reads = ReadCounter(max_contexts, admit=policies.match)
        self._events = events or EventCodec()
        self._reported = (0, 0)  # reads counted, dropped as last given to the metrics
        self._acks: set[asyncio.Task[None]] = set()

    def take(self, partitions: int) -> dict[int, list[tuple[int, bytes]]]:
        """Takes the counts: partition -> ``(reads, key)``, the most read first."""
        self._report()
        counts = self.reads.take()
        per_partition: dict[int, list[tuple[int, bytes]]] = {}
        if not partitions:
            return per_partition
        for key, n in counts.items():
            per_partition.setdefault(partition_for(key, partitions), []).append((n, key))
        for reads in per_partition.values():
            reads.sort(key=lambda rk: -rk[0])  # the most read first, if over the batch
        return per_partition

    def decide(
        self, store: PartitionStore, reads: list[tuple[int, bytes]], now_ms: int, room: int
    ) -> list[ContextEvent]:
        """The Touch events the policies ask for of ``reads`` (one chunk of a partition's)
        by ``now_ms`` (the log's clock), at most ``room``. No await: ``store`` stays open."""
        touches: list[ContextEvent] = []
        for n, key in reads:
            if len(touches) >= room:
                break
            policy = self.policies.match(key)
            if policy is None:
                continue
            record = store.get(key)
            if record is None or not record.is_live(now_ms):
                continue
            ttl = touch_decision(policy, n, now_ms, record.expires_at_ms)
            if ttl is not None:
                touches.append(policy_touch(key, record.version, ttl, n))
        return touches

    def plan(
        self, stores: Mapping[int, PartitionStore], partitions: int, now_ms: int,
        opening: Container[int] = frozenset(),
    ) -> list[tuple[int, ContextEvent]]:  # fmt: skip
        """The Touch events the policies ask for now, each with its partition, in one go
        (tests; ``sweep`` does the same a chunk at a time); takes the counts."""
        plan: list[tuple[int, ContextEvent]] = []
        for partition, reads in self.take(partitions).items():
            store = stores.get(partition)
            if store is not None and partition not in opening:
                plan += ((partition, e) for e in self.decide(store, reads, now_ms, self.batch))
        return plan

    async def sweep(
        self, stores: Mapping[int, PartitionStore], partitions: int, producer: AIOKafkaProducer,
        clock: LogClock, opening: Container[int] = frozenset(),
    ) -> int:  # fmt: skip
        """Appends this interval's Touch events and returns how many were sent; their
        acknowledgements are awaited in the background and measure ``clock``. A send that
        fails stops the sweep (logged); the rest are not retried.

        Decided by ``clock.earliest_ms()``, a time the log has certainly reached: an
        extension then never comes out shorter in the fold, which adds the TTL to the
        Touch's own (later) log time. A partition's reads are decided ``CHUNK`` at a time
        with no await in between (a revocation may close a store when this yields), and the
        sweep yields to the event loop between chunks and every ``CHUNK`` sends: reads,
        rounds and heartbeats go on during a sweep of many contexts. A partition revoked or
        reopened meanwhile is left: its new owner counts its reads."""
        acks: list[Any] = []
        failed = False
        for partition, reads in self.take(partitions).items():
            room = self.batch
            for start in range(0, len(reads), CHUNK):
                store = stores.get(partition)
                if store is None or partition in opening or room <= 0 or failed:
                    break
                chunk = reads[start : start + CHUNK]
                touches = self.decide(store, chunk, clock.earliest_ms(), room)
                room -= len(touches)
                for event in touches:
                    if stores.get(partition) is not store:
                        break  # revoked while sending: the rest are its new owner's
                    sent = time.monotonic()
                    try:
                        ack = await producer.send(
                            self.topic, self._events.encode(event), event.context_id.encode(),
                            partition=partition,
                        )  # fmt: skip
                    except KafkaError as exc:
                        log.warning("TTL touch sweep stopped: %s", exc)
                        failed = True
                        break
                    clock.watch(ack, sent)
                    acks.append(ack)
                    if len(acks) % CHUNK == 0:
                        await asyncio.sleep(0)
                await asyncio.sleep(0)
        if acks:
            task = asyncio.create_task(self._await_acks(acks))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)
        self.metrics.ttl_touches.inc(len(acks))
        return len(acks)

    def _report(self) -> None:
        """Gives the metrics the reads counted and dropped since the last report (the fast
        path only adds to two ints)."""
        counted, dropped = self.reads.counted, self.reads.dropped
        self.metrics.ttl_reads_counted.inc(counted - self._reported[0])
        self.metrics.ttl_reads_dropped.inc(dropped - self._reported[1])
        self._reported = (counted, dropped)

    async def close(self) -> None:
        """Waits for the acknowledgements still outstanding (their failures are logged)."""
        if self._acks:
            await asyncio.gather(*self._acks, return_exceptions=True)

    @staticmethod
    async def _await_acks(acks: list[Any]) -> None:
        results = await asyncio.gather(*acks, return_exceptions=True)
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # the next interval's reads decide again
            log.warning("%d TTL Touch events were not acknowledged: %s", len(failed), failed[0])
