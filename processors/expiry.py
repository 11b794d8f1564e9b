"""The expiry sweeper: appends ``Expire`` events for the contexts whose TTL ran out.

Every ``expiry_interval_s``, between rounds, it reads the entries of each store's expiry index
that are due by the log's clock and appends ``Expire{version}`` to their WAL partitions. It
decides nothing: whether an Expire applies is the fold's decision, by the Expire's log time
and the version, so a write that extended the TTL meanwhile wins and every replay decides
alike (docs/architecture.md, "Time as events").
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Mapping
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from lukhas_context.processors.clock import LOG_APPEND_TIME, LogClock
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams.barriers import expire_event

log = logging.getLogger(__name__)


class ExpirySweeper:
    """Appends the Expire events of the partitions a worker folds, and retries them."""

    def __init__(
        self, config: WorkerConfig, metrics: WorkerMetrics, events: EventCodec | None = None
    ) -> None:
        self.config = config
        self.metrics = metrics
        self._events = events or EventCodec()
        #: Expire events appended and not yet seen applied: partition -> key -> (version,
        #: monotonic time before which it is not appended again, attempt). That time is
        #: infinite until the append is acknowledged (or failed), then the acknowledgement's
        #: time plus ``retry_delay(attempt)``.
        self._expiring: dict[int, dict[bytes, tuple[int, float, int]]] = {}
        self._acks: set[asyncio.Task[None]] = set()

    async def sweep(
        self, stores: Mapping[int, PartitionStore], producer: AIOKafkaProducer, clock: LogClock
    ) -> int:
        """Appends ``Expire`` events for the contexts of ``stores`` whose TTL ran out by the
        log's clock (``clock.earliest_ms()``: a time the brokers' clock has certainly
        reached, so the fold never refuses them as early), at most ``expiry_batch`` per
        partition, and returns how many. The acknowledgements measure ``clock``.

        An Expire appended and not applied within ``expiry_retry_s`` of its acknowledgement is
        appended again, with the next attempt number (never before the previous attempt was
        acknowledged or failed: a slow broker does not make retries pile up, and each retry's
        log time is at least its wait after the one before); each further retry of the same
        version waits twice as long,
        up to ``expiry_retry_max_s`` (``retry_delay``), and happens only while the context is
        still due by the log's clock (which the refused Expire's acknowledgement measured).
        Until the log's clock is measured at all, a partition has at most one Expire in
        flight: its acknowledgement measures it.
        """
        cfg = self.config
        log_now = clock.earliest_ms()
        measured = clock.measured
        budget = cfg.expiry_batch if measured else 1
        now = time.monotonic()
        # First, with no await in between, what to send: a revocation may close a store as
        # soon as this coroutine yields.
        plan: list[tuple[int, bytes, int, int, bytes]] = []
        for partition, store in stores.items():
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
                plan.append((partition, key, expires_at, attempt, self._events.encode(event)))
                expiring[key] = (version, math.inf, attempt)  # until it is acknowledged
                issued += 1
            self._expiring[partition] = expiring
        sends: list[tuple[Any, int, int, bytes, int]] = []
        for n, (partition, key, expires_at, attempt, value) in enumerate(plan):
            sent = time.monotonic()
            try:
                ack = await producer.send(cfg.topics.events, value, key, partition=partition)
            except KafkaError as exc:
                log.warning("expiry sweep stopped: %s", exc)
                for p, k, _, a, _ in plan[n:]:  # not sent: each may go again after its wait
                    self._backed_off(p, k, a)
                break
            clock.watch(ack, sent)  # a log-append time: measures the log's clock
            sends.append((ack, expires_at, partition, key, attempt))
        if sends:
            task = asyncio.create_task(self._await_acks(sends))
            self._acks.add(task)
            task.add_done_callback(self._acks.discard)
        self.metrics.expires_appended.inc(len(sends))
        return len(sends)

    def retry_delay(self, attempt: int) -> float:
        """Seconds before an Expire of this attempt may be appended again."""
        cfg = self.config
        return min(cfg.expiry_retry_s * 2.0 ** min(attempt, 32), cfg.expiry_retry_max_s)

    def _backed_off(self, partition: int, key: bytes, attempt: int) -> None:
        """Starts the wait of ``key``'s Expire attempt now (it was acknowledged, or failed),
        if the sweeper still tracks that attempt."""
        pending = self._expiring.get(partition, {}).get(key)
        if pending is not None and pending[2] == attempt:
            self._expiring[partition][key] = (
                pending[0], time.monotonic() + self.retry_delay(attempt), attempt,
            )  # fmt: skip

    def forget(self, partition: int) -> None:
        """Drops what is in flight for a partition this worker no longer folds."""
        self._expiring.pop(partition, None)

    async def close(self) -> None:
        """Waits for the acknowledgements still outstanding (their failures are logged)."""
        if self._acks:
            await asyncio.gather(*self._acks, return_exceptions=True)

    async def _await_acks(self, sends: list[tuple[Any, int, int, bytes, int]]) -> None:
        async def one(ack: Any, partition: int, key: bytes, attempt: int) -> Any:
            try:
                return await ack
            finally:  # acknowledged or failed: its retry waits from now
                self._backed_off(partition, key, attempt)

        results = await asyncio.gather(
            *(one(ack, p, k, a) for ack, _, p, k, a in sends), return_exceptions=True
        )
        failed = [r for r in results if isinstance(r, BaseException)]
        if failed:  # the index still holds them: the sweep after expiry_retry_s tries again
            log.warning("%d Expire events were not acknowledged: %s", len(failed), failed[0])
        early = sum(
            1
            for r, (_, expires_at, _, _, _) in zip(results, sends, strict=True)
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
