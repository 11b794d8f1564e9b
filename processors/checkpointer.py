"""From checkpoint barriers to checkpoints.

A ``CheckpointBarrier`` ends its partition's round (``round.segment_end``); the round's
WriteBatch marks the checkpoint pending, and once it is committed the store holds exactly the
fold of the WAL before the barrier: the checkpoint is taken then (step 4 of the commit order,
``Materializer.fold_segment``), its manifest published, the newest ``checkpoint_keep`` kept
and the mark cleared. A worker killed before the mark was cleared takes the checkpoint when
the partition next opens at that offset (``resume``). With ``checkpoint_interval_s`` the
worker that owns partition 0 appends the barriers itself, named after the interval.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.state.checkpoints import CheckpointDir
from lukhas_context.state.exceptions import StateError
from lukhas_context.state.manifest import Manifest
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams.barriers import append_barriers, checkpoint_id_for_slot

log = logging.getLogger(__name__)

#: Publishes a manifest; False when it could not (the pending mark then stays).
Announce = Callable[[Manifest], Awaitable[bool]]


class Checkpointer:
    """Takes the checkpoints of one worker's committed barriers (``config.checkpoint_root``)."""

    def __init__(self, config: WorkerConfig, metrics: WorkerMetrics) -> None:
        self.config = config
        self.metrics = metrics
        self.checkpoints = CheckpointDir(config.checkpoint_root, config.topics.events)

    async def take(
        self, store: PartitionStore, partition: int, checkpoint_id: str, announce: Announce | None
    ) -> None:
        """Takes the checkpoint of a barrier just committed, publishes its manifest
        (``announce``; None: offline, nothing is published), keeps the newest
        ``checkpoint_keep`` and clears the store's pending mark. A failure is logged and
        counted, never fatal (the next barrier checkpoints again); a process killed before the
        mark is cleared takes the checkpoint when the partition next opens (``resume``)."""
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
        if announce is not None and not await announce(manifest):
            return  # the mark stays: the next open publishes it
        store.clear_pending_checkpoint()

    async def resume(
        self,
        store: PartitionStore,
        partition: int,
        lock: asyncio.Lock,
        announce: Announce | None,
    ) -> None:
        """Takes the checkpoint of a barrier whose commit was the last thing a killed process
        did (the store's pending mark), now that the store is open at that offset; under
        ``lock``, the one a round holds."""
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
        async with lock:
            await self.take(store, partition, checkpoint_id, announce)

    def slot(self) -> str | None:
        """The checkpoint id of the current ``checkpoint_interval_s`` (None: not periodic)."""
        interval = self.config.checkpoint_interval_s
        return None if interval is None else checkpoint_id_for_slot(interval, time.time())

    async def append_periodic(
        self, producer: AIOKafkaProducer, events: EventCodec, partition_count: int
    ) -> None:
        """Appends this interval's barriers to every WAL partition (the caller owns partition
        0, so the group checkpoints once per interval). The id names the interval: a worker
        restarted within it appends identical barriers, which the fold journals as
        duplicates. A Kafka error is logged; the next interval appends again."""
        checkpoint_id = self.slot()
        assert checkpoint_id is not None
        try:
            offsets = await append_barriers(
                producer, events, self.config.topics.events, checkpoint_id, partition_count
            )
        except KafkaError as exc:
            log.error("could not append the barriers of checkpoint %s: %s", checkpoint_id, exc)
            return
        log.info("appended checkpoint barrier %s at %s", checkpoint_id, offsets)
