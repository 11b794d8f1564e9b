"""Transactions on the real broker and worker: a partition's events of a transaction apply
all or none (a failed condition anywhere in it leaves every context as it was), in one
record; reads after it see all of it; subscribers get one change per context; bad input is
refused before anything is sent."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lukhas_context.schemas.event import Fence
from lukhas_context.schemas.txrecord import MAX_TX_EVENTS
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError, ValidationError
from lukhas_context.streams.topics import partition_for

from .conftest import PARTITIONS, serving_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def same_partition(n: int, prefix: str = "txi") -> list[str]:
    """``n`` context ids that live in partition 0."""
    ids = (f"{prefix}-{i}" for i in range(10_000))
    return [c for c in ids if partition_for(c.encode(), PARTITIONS) == 0][:n]


async def test_a_failed_condition_applies_none_of_the_transactions_events(
    start_worker: Any, make_client: Any
) -> None:
    worker = await start_worker()
    await serving_all(worker)
    a, b, c = same_partition(3)
    async with make_client(worker.url) as client:
        first = await client.put(c, {"v": 1})
        await first.outcome(30)
        async with client.transaction() as tx:
            await tx.put(a, {"n": 1})
            await tx.patch(c, {"touched": True}, merge=True)
            await tx.put(b, {"n": 1}, expected_version=4)  # b does not exist: conflict
        assert len({(r.partition, r.offset) for r in tx.receipts}) == 1  # one record
        outcome = await tx.receipts[0].outcome(30)
        assert outcome.status == "conflict"
        assert outcome.reason is not None and f"event 2 ({b!r})" in outcome.reason
        assert "none of the transaction's 3 events applied" in outcome.reason
        for missing in (a, b):
            with pytest.raises(ContextNotFoundError):
                await client.get(missing, min_offset=tx.receipts[0], timeout=30)
        untouched = await client.get(c)
        assert untouched.doc == {"v": 1} and untouched.version == 1

        async with client.transaction() as tx:
            await tx.put(a, {"n": 2})
            await tx.patch(c, {"touched": True}, merge=True, expected_version=1)
            await tx.put(b, {"n": 2}, expected_version=0)
        outcome = await tx.receipts[-1].outcome(30)
        assert (outcome.status, outcome.version) == ("applied", 3)
        got = [await client.get(x, min_offset=tx.receipts[-1], timeout=30) for x in (a, b, c)]
        assert [g.doc for g in got] == [{"n": 2}, {"n": 2}, {"v": 1, "touched": True}]
        history = await client.history(c)
        assert [e.status for e in history.events] == ["applied", "conflict", "applied"]


async def test_subscribers_get_one_change_per_context_of_a_transaction(
    start_worker: Any, make_client: Any
) -> None:
    worker = await start_worker()
    await serving_all(worker)
    ids = same_partition(4, "txw")
    async with make_client(worker.url) as client:
        watch = client.watch(prefix="txw-", start="latest")
        await watch.start()
        async with client.transaction() as tx:
            for i, cid in enumerate(ids):
                await tx.put(cid, {"i": i})
            await tx.patch(ids[0], {"again": True}, merge=True)  # one change: its final state
        seen: list[Any] = []

        async def take() -> None:
            async for change in watch:
                seen.append(change)
                if len(seen) == len(ids):
                    return

        await asyncio.wait_for(take(), 60)
        await watch.close()
    assert sorted(c.context_id for c in seen) == sorted(ids)
    assert len({c.wal_offset for c in seen}) == 1  # all at the transaction's record
    first = next(c for c in seen if c.context_id == ids[0])
    assert first.doc == {"i": 0, "again": True} and first.version == 2


async def test_a_stale_fence_in_a_transaction_applies_none(
    start_worker: Any, cluster: Any, topics: Any
) -> None:
    worker = await start_worker()
    await serving_all(worker)
    a, b = same_partition(2, "txf")
    config = ClientConfig(cluster.bootstrap, worker.url, topics, redis_url=cluster.redis_url)
    async with ContextClient(config) as client:
        async with client.lock("txf:lock", ttl=5) as lock:
            async with client.transaction() as tx:
                await tx.put(a, {"by": "holder"}, fence=lock)
            assert (await tx.receipts[0].outcome(30)).status == "applied"
            async with client.transaction() as tx:
                await tx.put(b, {"by": "late"})
                await tx.put(a, {"by": "late"}, fence=Fence("txf:lock", lock.check() - 1))
        outcome = await tx.receipts[0].outcome(30)
        assert outcome.status == "fenced"
        with pytest.raises(ContextNotFoundError):
            await client.get(b, min_offset=tx.receipts[0], timeout=30)


async def test_bad_transactions_are_refused_before_anything_is_sent(
    cluster: Any, topics: Any
) -> None:
    async with ContextClient(ClientConfig(cluster.bootstrap, None, topics)) as client:
        with pytest.raises(ValidationError, match=f"at most {MAX_TX_EVENTS} events"):
            async with client.transaction() as tx:
                for i in range(MAX_TX_EVENTS + 1):
                    await tx.put(f"many-{i % 10}", {"i": i})
        assert client.writer._producer is None  # the block raised: nothing was sent
        big = {"pad": "x" * 600_000}
        a, b, c, d = same_partition(4, "txbig")
        with pytest.raises(ValidationError, match="one transaction record holds at most"):
            async with client.transaction() as tx:
                for cid in (a, b, c, d):  # 2.4 MB in one partition: over the WAL's 2 MiB
                    await tx.put(cid, big)
        with pytest.raises(ValidationError):
            async with client.transaction() as tx:
                await tx.put("ok", {}, fence="no-token")
        with pytest.raises(RuntimeError, match="once"):
            async with tx:
                pass


def one_per_partition(tag: str) -> list[str]:
    """A context id in each partition, partition order."""
    found: dict[int, str] = {}
    for i in range(10_000):
        cid = f"{tag}-{i}"
        found.setdefault(partition_for(cid.encode(), PARTITIONS), cid)
        if len(found) == PARTITIONS:
            return [found[p] for p in range(PARTITIONS)]
    raise AssertionError("no id for some partition")


async def test_across_partitions_one_failed_condition_and_nothing_applies_anywhere(
    start_worker: Any, make_client: Any
) -> None:
    worker = await start_worker()
    await serving_all(worker)
    a, b, c = one_per_partition("x2pc")
    async with make_client(worker.url) as client:
        await (await client.put(c, {"v": 1})).outcome(30)
        async with client.transaction() as tx:
            await tx.put(a, {"n": 1})
            await tx.put(b, {"n": 1})
            await tx.put(c, {"n": 1}, expected_version=5)  # c is at version 1
        outcomes = {r.context_id: await r.outcome(30) for r in tx.receipts}
        assert outcomes[c].status == "conflict"
        for cid in (a, b):
            assert outcomes[cid].status == "aborted", outcomes[cid]
            assert outcomes[cid].reason is not None and "expected version 5" in outcomes[cid].reason
            with pytest.raises(ContextNotFoundError):
                await client.get(cid, min_offset=tx.receipts[0], timeout=30)
        assert (await client.get(c)).doc == {"v": 1}

        async with client.transaction() as tx:
            await tx.put(a, {"n": 2})
            await tx.put(b, {"n": 2})
            await tx.patch(c, {"n": 2}, merge=True, expected_version=1)
        assert {(await r.outcome(30)).status for r in tx.receipts} == {"applied"}
        # A read at or after a receipt sees the whole transaction in that partition.
        got = [await client.get(r.context_id, min_offset=r, timeout=30) for r in tx.receipts]
        assert [g.doc["n"] for g in got] == [2, 2, 2]
        # One after another on the same contexts: the second waits for the first's decision.
        for i in (3, 4):
            async with client.transaction() as tx:
                for cid in (a, b, c):
                    await tx.patch(cid, {"n": i}, merge=True)
        assert {(await r.outcome(30)).status for r in tx.receipts} == {"applied"}
        got = [await client.get(r.context_id, min_offset=r, timeout=30) for r in tx.receipts]
        assert [(g.doc["n"], g.version) for g in got] == [(4, 3), (4, 3), (4, 4)]


async def test_a_coordinator_without_every_vote_aborts_at_its_timeout(
    start_worker: Any, cluster: Any, topics: Any
) -> None:
    """A prepare that reaches only the coordinator (as a client that died between its
    appends would leave, were they not in one Kafka transaction): no vote comes, the worker's
    ticks move the coordinator's log time past the timeout, and it aborts."""
    import os

    from aiokafka import AIOKafkaProducer

    from lukhas_context.processors.fold import Limits
    from lukhas_context.schemas.codec import EventCodec
    from lukhas_context.schemas.event import ContextEvent, Put
    from lukhas_context.schemas.txrecord import SCOPE_VOTED, TX_KEY, encode_tx

    worker = await start_worker(limits=Limits(tx_timeout_ms=2_000))
    await serving_all(worker)
    a = one_per_partition("xtimeout")[0]
    event = EventCodec().encode(ContextEvent(os.urandom(16), a, Put(b"{}")))
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap)
    await producer.start()
    try:
        value = encode_tx(os.urandom(16), [event], SCOPE_VOTED, (0, 1))
        meta = await producer.send_and_wait(topics.events, value, key=TX_KEY, partition=0)
    finally:
        await producer.stop()
    async with ContextClient(ClientConfig(cluster.bootstrap, worker.url, topics)) as client:
        held = await client.put(a, {"meanwhile": True})
        assert (await held.outcome(30)).status == "conflict"  # held by the prepared one
        dry = await client.put(a, {"dry": True}, dry_run=True)  # the dry run says so too
        assert dry.status == "conflict" and "held by transaction" in (dry.reason or "")
        outcome = await client.outcome(0, meta.offset, timeout=60)
        assert outcome.status == "aborted"
        assert outcome.reason is not None and "no vote from partition(s) [1]" in outcome.reason
        after = await client.put(a, {"after": True})
        assert (await after.outcome(30)).status == "applied"  # released


CLIENT = """
import asyncio, os, signal, sys
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics

async def main(bootstrap, prefix, *ids):
    client = ContextClient(ClientConfig(bootstrap, topics=Topics(prefix)))
    async with client.transaction() as tx:
        for cid in ids:
            await tx.put(cid, {"from": "a client killed after its prepare"})
    print(" ".join(f"{r.partition}:{r.offset}" for r in tx.receipts), flush=True)
    os.kill(os.getpid(), signal.SIGKILL)  # before any decision: the workers decide

asyncio.run(main(*sys.argv[1:]))
"""


async def test_a_client_killed_after_its_prepare_loses_nothing(
    start_worker: Any, cluster: Any, topics: Any
) -> None:
    import signal
    import sys

    worker = await start_worker()
    await serving_all(worker)
    ids = one_per_partition("xkilled")
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CLIENT, cluster.bootstrap, topics.prefix, *ids,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == -signal.SIGKILL
    positions = [tuple(map(int, p.split(":"))) for p in out.decode().split()]
    assert len(positions) == len(ids)
    async with ContextClient(ClientConfig(cluster.bootstrap, worker.url, topics)) as client:
        for (partition, offset), cid in zip(positions, ids, strict=True):
            assert (await client.outcome(partition, offset, timeout=60)).status == "applied"
            got = await client.get(cid, min_offset=f"{partition}:{offset}", timeout=60)
            assert got.doc == {"from": "a client killed after its prepare"}
