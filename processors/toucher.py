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
from collections.abc import Container, Mapping
from typing import Any

import xxhash
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

#: The metadata a policy's Touch carries (``by``), beside ``reads``: for people and tools
#: reading the log; metadata never decides an outcome.
TOUCHED_BY = "ttl-policy"


def policy_touch(key: bytes, version: int, ttl_ms: int, reads: int) -> ContextEvent:
    """The policy's Touch of one version of a context. Its id is derived from the key and
    version: two owners (a zombie and its successor) touching the same version append the
    same event, which the fold applies once."""
    event_id = xxhash.xxh3_128_digest(b"ttl-touch\0%d\0%s" % (version, key))
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
        #: The read API counts each point read of a context it serves here.
        self.reads = ReadCounter(max_contexts)
        self._events = events or EventCodec()
        self._reported = (0, 0)  # reads counted, dropped as last given to the metrics
        self._acks: set[asyncio.Task[None]] = set()

    def plan(
        self, stores: Mapping[int, PartitionStore], partitions: int, now_ms: int,
        opening: Container[int] = frozenset(),
    ) -> list[tuple[int, ContextEvent]]:  # fmt: skip
        """The Touch events the policies ask for now (``now_ms``: the log's clock), each with
        its partition; takes the counts. Pure but for the counter and the stores' reads."""
        self._report()
        counts = self.reads.take()
        if not partitions or not counts:
            return []
        per_partition: dict[int, list[tuple[int, bytes]]] = {}
        for key, n in counts.items():
            per_partition.setdefault(partition_for(key, partitions), []).append((n, key))
        plan: list[tuple[int, ContextEvent]] = []
        for partition, reads in per_partition.items():
            store = stores.get(partition)
            if store is None or partition in opening:
                continue  # moved away since it was read: its new owner counts its reads
            reads.sort(key=lambda rk: -rk[0])  # the most read first, if over the batch
            issued = 0
            for n, key in reads:
                if issued >= self.batch:
                    break
                policy = self.policies.match(key)
                if policy is None:
                    continue
                record = store.get(key)
                if record is None or not record.is_live(now_ms):
                    continue
                ttl = touch_decision(policy, n, now_ms, record.expires_at_ms)
                if ttl is not None:
                    plan.append((partition, policy_touch(key, record.version, ttl, n)))
                    issued += 1
        return plan

    async def sweep(
        self, stores: Mapping[int, PartitionStore], partitions: int, producer: AIOKafkaProducer,
        clock: LogClock, opening: Container[int] = frozenset(),
    ) -> int:  # fmt: skip
        """Appends this interval's Touch events (``plan`` by ``clock.now_ms()``) and returns
        how many were sent; their acknowledgements are awaited in the background and measure
        ``clock``. A send that fails stops the sweep (logged); the rest are not retried."""
        # The plan is made with no await: a revocation may close a store when this yields.
        plan = self.plan(stores, partitions, clock.now_ms(), opening)
        acks: list[Any] = []
        for partition, event in plan:
            sent = time.monotonic()
            try:
                ack = await producer.send(
                    self.topic, self._events.encode(event), event.context_id.encode(),
                    partition=partition,
                )  # fmt: skip
            except KafkaError as exc:
                log.warning("TTL touch sweep stopped: %s", exc)
                break
            clock.watch(ack, sent)
            acks.append(ack)
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
