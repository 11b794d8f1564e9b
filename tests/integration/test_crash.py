"""kill -9 of the processor under load: every acknowledged event applied exactly once, and no
change lost. WAL truncation below the needed offset: a loud typed error, never a skip."""

from __future__ import annotations

import asyncio
import os
import random
from collections import Counter
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.streams.client import Receipt
from lukhas_context.streams.topics import partition_for

from .conftest import PARTITIONS

pytestmark = pytest.mark.integration

EVENTS = 6000
CONTEXTS = 40


async def test_kill_9_during_load_applies_every_acked_event_exactly_once(
    worker_process, make_client, cluster, topics, read_topic, kill_repeatedly
) -> None:
    seed = int(os.environ.get("LUKHAS_SEED", random.randrange(1 << 30)))
    print(f"LUKHAS_SEED={seed}")
    rng = random.Random(seed)
    worker_process.start()
    worker_process.wait_healthy()
    acked: list[Receipt] = []
    pids: set[int] = set()

    async def load() -> None:
        """EVENTS puts at least, in chunks of 100, and on until the fourth worker process
        (three restarts) has seen writes: a slow machine kills less often, never fewer
        times. Bounded: five times EVENTS."""
        async with make_client(None) as client:
            for start in range(0, 5 * EVENTS, 100):
                assert worker_process.proc is not None
                pids.add(worker_process.proc.pid)
                if start >= EVENTS and len(pids) >= 4:
                    return
                chunk = [
                    client.put(f"ctx-{i % CONTEXTS}", {"i": i, "pad": "x" * rng.randrange(200)})
                    for i in range(start, start + 100)
                ]
                acked.extend(await asyncio.gather(*chunk))
                await asyncio.sleep(0.15)  # spread the load over the kills

    loader = asyncio.create_task(load())
    kills = await kill_repeatedly(loader, worker_process, rng, (0.3, 1.2))
    await loader
    assert kills >= 3, "the load ended before the processor was killed three times"

    expected = Counter(r.context_id for r in acked)
    assert len(acked) >= EVENTS and len(acked) % 100 == 0  # every put of a chunk acked
    async with make_client(worker_process.url) as client:
        for context_id, count in expected.items():
            r = max((x for x in acked if x.context_id == context_id), key=lambda x: x.offset)
            ctx = await client.get(context_id, min_offset=r, timeout=60)
            assert ctx.version == count, (context_id, ctx.version, count, f"seed {seed}")
    assert worker_process.terminate() == 0

    # No change lost: every acknowledged event has a change with its WAL offset.
    codec = ChangeCodec()
    want = {(r.context_id, r.offset) for r in acked}

    def identities(records: list[Any]) -> set[tuple[str, int]]:
        changes = (codec.decode(m.value) for m in records)
        return {(c.context_id, c.wal_offset) for c in changes}

    seen = identities(await read_topic(topics.changes, lambda rs: want <= identities(rs)))
    assert want - seen == set(), f"changes lost (seed {seed})"
    print(f"kills={kills} events={len(acked)} changes_seen={len(seen)}")


async def test_wal_truncated_below_the_needed_offset_is_a_loud_error(
    worker_process, make_client, cluster, topics
) -> None:
    async with make_client(None) as client:
        receipts = [await client.put("t", {"i": i}) for i in range(10)]
    partition = receipts[0].partition
    admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
    await admin.start()
    try:
        tp = TopicPartition(topics.events, partition)
        await admin.delete_records({tp: RecordsToDelete(before_offset=5)})
    finally:
        await admin.close()
    worker_process.start()  # an empty store needs offset 0, which retention deleted
    assert worker_process.proc is not None
    code = await asyncio.to_thread(worker_process.proc.wait, 60)
    assert code == 1
    log = worker_process.log.read_text()
    assert "WalTruncatedError" in log
    assert f"WAL partition {partition} starts at offset 5" in log


async def test_transactions_stay_all_or_nothing_across_kill_9(
    worker_process, make_client, cluster, topics, kill_repeatedly
) -> None:
    """A stream of transactions, each writing the same counter to three contexts in two
    partitions (so each commits by the prepare, votes and decision of the 2PC), every third
    one aborted; the processor is killed in the middle, prepared transactions included. After
    the drain, the three contexts agree and have exactly one version per committed
    transaction."""
    names = ("tx-a", "tx-b", "tx-c")
    assert len({partition_for(n.encode(), PARTITIONS) for n in names}) == 2
    seed = int(os.environ.get("LUKHAS_SEED", random.randrange(1 << 30)))
    print(f"LUKHAS_SEED={seed}")
    rng = random.Random(seed)
    worker_process.start()
    worker_process.wait_healthy()
    committed = 0
    last = None
    total = 0
    pids: set[int] = set()

    async def stream() -> None:
        """60 transactions at least, and on (in threes) until a restarted worker process has
        seen some: a fast machine may finish 60 before the first kill. Bounded: 600."""
        nonlocal committed, last, total
        async with make_client(None) as client:
            for i in range(1, 601):
                assert worker_process.proc is not None
                pids.add(worker_process.proc.pid)
                if i > 60 and i % 3 == 1 and len(pids) >= 2:
                    return
                total = i
                try:
                    async with client.transaction() as tx:
                        for name in names:
                            await tx.put(name, {"i": i})
                        if i % 3 == 0:
                            raise _Abort
                except _Abort:
                    continue
                committed += 1
                last = tx.receipts

    writer = asyncio.create_task(stream())
    kills = await kill_repeatedly(writer, worker_process, rng, (0.5, 1.5), max_kills=3)
    await writer
    assert kills >= 1 and total % 3 == 0 and committed == total * 2 // 3 and last is not None
    async with make_client(worker_process.url) as client:
        seen = []
        for receipt in last:  # read-your-writes holds per partition: wait for each
            seen.append(await client.get(receipt.context_id, min_offset=receipt, timeout=60))
        docs = [await client.get(name) for name in names]
    # Read at the last transaction's position: all of it (what a read after the decision in
    # memory but before its round was committed once missed), and nothing changes after.
    shown = [[(d.context_id, d.version, d.doc) for d in ds] for ds in (seen, docs)]
    assert shown[0] == shown[1], (shown, f"seed {seed}, topics {topics.prefix}")
    assert {d.version for d in docs} == {committed}, (docs, f"seed {seed}")
    assert {d.doc["i"] for d in docs} == {total - 1}  # the last committed (total aborted)
    assert worker_process.terminate() == 0


class _Abort(Exception):
    pass
