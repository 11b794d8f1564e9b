"""Access-driven TTL (issue 17) against the real broker: under a read pattern, hot contexts
outlive their base TTL and cold ones expire (at their TTL, or sooner under a policy with a
``hot`` threshold); every Touch is an event in the WAL, and a replay of the WAL gives the
worker's digests."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.offline import From, restore_offline
from lukhas_context.processors.toucher import TOUCHED_BY
from lukhas_context.processors.ttl_policy import TtlPolicies
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import Touch
from lukhas_context.streams.exceptions import ContextNotFoundError

from .conftest import PARTITIONS, serving_all, summaries

pytestmark = pytest.mark.timeout(120)

#: hot:  base 3 s, each read beyond the first in a 0.5 s interval adds 2 s (up to 30 s).
#: rare: base 10 s, but fewer than 4 reads in an interval shorten it, down to 2 s.
POLICIES = TtlPolicies.parse([
    "ttl:=base=3s,min=2s,max=30s,per_read=2s",
    "ttl:rare:=base=10s,min=2s,max=30s,per_read=3s,hot=4",
])  # fmt: skip


def _store_record(worker: Any, cid: str) -> Any:
    key = cid.encode()
    for store in worker.materializer.stores.values():
        record = store.get(key)
        if record is not None:
            return record
    return None


async def _until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.1)


async def test_hot_contexts_outlive_their_base_ttl_cold_ones_expire_and_a_replay_agrees(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, read_topic: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    worker = await start_worker(
        expiry_interval_s=0.2, ttl_policies=POLICIES, ttl_touch_interval_s=0.5
    )
    await serving_all(worker)
    hot = [f"ttl:hot:{i}" for i in range(4)]
    cold = [f"ttl:cold:{i}" for i in range(4)]
    rare = [f"ttl:rare:{i}" for i in range(2)]
    kept = "ttl:rare:unread"  # its writer's 10 s, which nothing shortens
    async with make_client(worker.url) as client:
        receipts = {}
        for cid in cold:
            receipts[cid] = await client.put(cid, {"id": cid}, ttl=3.0)
        for cid in hot:  # 5 s: time for the first Touch to be folded on a loaded machine
            receipts[cid] = await client.put(cid, {"id": cid}, ttl=5.0)
        for cid in [kept, *rare]:
            receipts[cid] = await client.put(cid, {"id": cid}, ttl=10.0)
        written = time.monotonic()
        # Read once, when folded: rarely, under a policy that wants 4 reads an interval.
        for cid in rare:
            await client.get(cid, min_offset=receipts[cid], timeout=30)
        for cid in hot:
            await client.get(cid, min_offset=receipts[cid], timeout=30)
        # Read the hot ones for well past their writer's TTL of 5 s.
        while time.monotonic() - written < 8.0:
            for cid in hot:
                await client.get(cid)
            await asyncio.sleep(0.1)
        for cid in hot:  # alive past their writer's TTL, extended by Touch events
            got = await client.get(cid)
            assert got.version > 1, cid
        # Unread, the cold ones expire at their TTL (= base); the rarely read ones sooner than
        # their writer's 10 s, by the policy's Touch to its min of 2 s.
        await _until(
            lambda: all(_store_record(worker, c).doc is None for c in cold + rare), 30,
            "the cold and rare contexts did not expire",
        )  # fmt: skip
        for cid in cold:
            with pytest.raises(ContextNotFoundError):
                await client.get(cid)
        record = _store_record(worker, kept)
        assert record.version == 1  # never read: never touched
    codec = EventCodec()
    wal = await read_topic(topics.events, lambda rs: False, timeout=3)
    events = [(m.key.decode(), codec.decode(m.value)) for m in wal if m.key.startswith(b"ttl:")]
    touches = [(cid, e) for cid, e in events if isinstance(e.op, Touch)]
    touched = {cid for cid, _ in touches}
    assert set(hot) <= touched and set(rare) <= touched
    assert not touched & {*cold, kept}
    for cid, event in touches:
        assert event.metadata["by"] == TOUCHED_BY and int(event.metadata["reads"]) >= 1
        assert event.expected_version is not None
        if cid in rare:
            assert event.op.ttl_ms == 2_000  # clamp(10 - (1 - 4) * 3 s, ...) = its min
        else:  # hot: base for an interval with one read, more with more
            assert event.op.ttl_ms >= 3_000
    for cid in hot:
        assert max(e.op.ttl_ms for c, e in touches if c == cid) > 3_000, cid
    # At most one Touch per context per interval: about 8 s of reads, 0.5 s intervals.
    per_context = {cid: sum(1 for c, _ in touches if c == cid) for cid in hot}
    assert max(per_context.values()) <= 8.0 / 0.5 + 4, per_context
    # None was dead-lettered (a Touch of a version appended twice, with other bytes, would
    # be if the ids were shared).
    dead = await read_topic(topics.dlq, lambda rs: False, timeout=1)
    assert not [m for m in dead if m.key.startswith(b"ttl:")]
    assert worker.materializer.metrics.ttl_touches._value.get() >= len(touches)

    # A replay of the WAL, offline, up to where the worker is, gives the same digests.
    live = summaries(worker)
    assert len(live) == PARTITIONS
    replay = WorkerConfig(bootstrap=cluster.bootstrap, state_dir=tmp_path / "replay", topics=topics)
    for p, summary in live.items():
        report = await restore_offline(
            replay, p, From.SCRATCH, progress=False, until=summary.next_offset
        )
        assert report.restore.next_offset == summary.next_offset
        assert report.restore.digest == summary.digest_hex, f"partition {p}"
