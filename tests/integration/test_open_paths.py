"""The contract of the restore order (``processors.opener``): each of the four ways a
partition's store can be opened — the local store, a checkpoint plus the WAL after it, the
change topic plus the WAL after it, a full replay of the WAL — reaches the very state the live
worker folded from the same log: the same digest, record and document counts and
``next_offset``. Written once and run over every path, like a store conformance suite."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.offline import replay_wal
from lukhas_context.processors.opener import StoreOpener
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import ContextEvent, Fence, Put
from lukhas_context.state.store import PartitionStore, Summary

from .conftest import PARTITIONS, drained, serving_all, wal_ends

pytestmark = pytest.mark.timeout(300)

#: How each path opens partition ``p``'s store (before the WAL after it is folded).
OpenPath = Callable[[StoreOpener, int], Awaitable[PartitionStore]]


async def _local(opener: StoreOpener, p: int) -> PartitionStore:
    store = opener.open_local(p, [])
    assert store is not None, "the live worker's store did not open"
    return store


async def _checkpoint(opener: StoreOpener, p: int) -> PartitionStore:
    manifest = opener.checkpoints.find(p, "contract")
    return opener.from_checkpoint(manifest)


async def _changes(opener: StoreOpener, p: int) -> PartitionStore:
    store = await opener.from_changes(p, 0)
    assert store is not None, "the change topic holds nothing"
    return store


async def _replay(opener: StoreOpener, p: int) -> PartitionStore:
    return opener.empty(p)


PATHS: dict[str, OpenPath] = {
    "local": _local,
    "checkpoint": _checkpoint,
    "changes": _changes,
    "replay": _replay,
}


async def _history(client: Any, n: int, tag: str) -> None:
    """Puts (some with a TTL that runs out soon, some fenced: tokens that go up and down, so
    some are stale), merge patches, deletes and touches."""
    for i in range(n):
        cid = f"{tag}:{i % 40}"
        if i % 23 == 2:
            await client.put(cid, {"fenced": i}, fence=Fence(f"lock{i % 2}", (i * 7) % 50))
        elif i % 29 == 4:  # transactions, across partitions too; every third one fails
            async with client.transaction() as tx:
                await tx.put(cid, {"tx": i})
                await tx.patch(cid, {"then": i}, merge=True)
                await tx.put(f"{tag}:{(i + 7) % 40}", {"tx": i}, expected_version=i % 3 or None)
        elif i % 11 == 5:  # rejected, and journaled so, if the context does not exist yet
            await client.patch(cid, {"patched": i}, merge=True)
        elif i % 13 == 7:
            await client.delete(cid)
        elif i % 17 == 3:
            await client.touch(cid, ttl=3600)
        elif i % 19 == 0:
            await client.put(f"{tag}:short:{i}", {"i": i}, ttl=0.5)  # expires: a tombstone
        else:
            await client.put(cid, {"n": i, "tag": tag, "pad": "x" * (i % 50)})


async def _append(bootstrap: str, topic: str, key: bytes, value: bytes) -> None:
    """Appends raw bytes to the WAL, as a client's retry sends the very same bytes again."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=True)
    await producer.start()
    try:
        await producer.send_and_wait(topic, value, key)
    finally:
        await producer.stop()


async def _all_short_ones_expired(worker: Any, timeout: float = 60) -> None:
    """Until no store's expiry index holds a context with a short TTL (each was expired by
    an Expire event, folded)."""
    deadline = asyncio.get_running_loop().time() + timeout
    stores = worker.materializer.stores
    while any(b":short:" in key for s in stores.values() for key, *_ in s.expiry_index()):
        assert asyncio.get_running_loop().time() < deadline, "the short TTLs did not expire"
        await asyncio.sleep(0.1)


async def test_every_open_path_reaches_the_live_state(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    live_dir = tmp_path / "live"
    worker = await start_worker(state_dir=live_dir, expiry_interval_s=0.2)
    await serving_all(worker)
    retried = EventCodec().encode(ContextEvent(uuid.uuid4().bytes, "retried", Put(b"{}")))
    async with make_client(worker.url) as client:
        await _history(client, 300, "before")
        await _append(cluster.bootstrap, topics.events, b"retried", retried)
        request = await client.checkpoint("contract")
        await client.wait_checkpoint(request, timeout=60)
        await _history(client, 200, "after")  # the WAL after the checkpoint
        # A retry within the dedupe window, across the checkpoint: journaled, not applied.
        await _append(cluster.bootstrap, topics.events, b"retried", retried)
        await _all_short_ones_expired(worker)  # then the sweeper has nothing to append
        await client.put("after:final", {"last": True})
    live = await drained(worker)
    assert sum(s.records - s.documents for s in live.values()) > 0, "no tombstone to restore"
    stores = worker.materializer.stores.values()
    assert sum(1 for s in stores for _ in s.fences()) > 0, "no fence to restore"
    fenced = sum(1 for s in stores for e in s.journal_since(0) if e.status.name == "FENCED")
    assert fenced > 0, "no stale token to refuse"
    # Only transactions carry a version condition here: a conflict is one that applied nothing.
    failed = sum(1 for s in stores for e in s.journal_since(0) if e.status.name == "CONFLICT")
    assert failed > 0, "no transaction failed"
    await worker.stop()
    ends = await wal_ends(cluster.bootstrap, topics.events)
    assert {p: s.next_offset for p, s in live.items()} == ends

    reached: dict[str, dict[int, Summary]] = {}
    for name, open_path in PATHS.items():
        state = live_dir if name == "local" else tmp_path / name
        # Only the checkpoint path reads the live worker's checkpoints; the others take
        # their own when their replay passes the barrier.
        checkpoints = live_dir / "checkpoints" if name == "checkpoint" else state / "checkpoints"
        config = WorkerConfig(
            bootstrap=cluster.bootstrap, state_dir=state, topics=topics,
            checkpoint_dir=checkpoints,
        )  # fmt: skip
        opener = StoreOpener(config)
        reached[name] = {}
        for p in range(PARTITIONS):
            store = await open_path(opener, p)
            try:
                await replay_wal(opener, store, p, ends[p], progress=False)
                reached[name][p] = store.summary()
            finally:
                store.close()
    for name, summaries in reached.items():
        assert summaries == live, name
