"""A worker with a prune interval deletes, on its own, the WAL records no restore path needs:
below its oldest checkpoint and the change coverage less the dedupe window, never past its
own position, nothing while it has no checkpoint; and it goes on folding."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.processors.fold import Limits

pytestmark = pytest.mark.integration


async def log_starts(bootstrap: str, topic: str, partitions: int) -> dict[int, int]:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        starts = await consumer.beginning_offsets(tps)
        return {tp.partition: starts[tp] for tp in tps}
    finally:
        await consumer.stop()


async def test_a_worker_prunes_what_no_restore_needs(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    worker = await start_worker(
        prune_interval_s=0.5, limits=Limits(dedupe_window=5), journal_offsets=5
    )
    async with make_client(worker.url) as client:
        for i in range(60):
            await client.put(f"r:{i % 7}", {"i": i})
        await asyncio.sleep(2)  # a few intervals: without a checkpoint nothing may go
        assert set((await log_starts(cluster.bootstrap, topics.events, 3)).values()) == {0}
        request = await client.checkpoint("retention")
        manifests = await client.wait_checkpoint(request, timeout=60)
        for i in range(30):
            await client.put(f"r:{i % 7}", {"after": i})
        last = await client.put("r:last", {"done": True})
        await last.outcome(timeout=30)
        checkpointed = {m["partition"]: m["next_offset"] for m in manifests}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            starts = await log_starts(cluster.bootstrap, topics.events, 3)
            if all(starts[p] == checkpointed[p] for p in starts):
                break
            await asyncio.sleep(0.5)
        # The checkpoint is the lowest bound here: the coverage less 5 is past it.
        assert starts == checkpointed, (starts, checkpointed)
        # The worker folds on, and reads what it folded.
        receipt = await client.put("r:0", {"later": 1})
        got = await client.get("r:0", min_offset=receipt, timeout=30)
        assert got.doc == {"later": 1}
    metrics = worker.materializer.metrics
    assert metrics.wal_pruned._value.get() >= 1
