"""One ``ContextClient`` holds one producer, one transactional producer and one HTTP session,
however many calls start at once (a fake producer stands in for aiokafka's: this tests the
client's sharing, not Kafka)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest

from lukhas_context.streams import kafka
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import PublishError
from lukhas_context.streams.topics import partition_for


class FakeProducer:
    """Counts starts and stops; ``start`` yields to the loop as a real connection would."""

    started = 0
    stopped = 0
    fail = False

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs

    async def start(self) -> None:
        FakeProducer.started += 1
        await asyncio.sleep(0.01)
        if FakeProducer.fail:
            raise OSError("connection refused")

    async def stop(self) -> None:
        FakeProducer.stopped += 1

    async def begin_transaction(self) -> None:
        await asyncio.sleep(0)

    async def commit_transaction(self) -> None:
        await asyncio.sleep(0)

    async def partitions_for(self, topic: str) -> set[int]:
        return {0, 1, 2}

    async def send(self, topic: str, value: bytes, key: bytes, partition: int) -> Any:
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(SimpleNamespace(partition=partition, offset=0))
        return done


@pytest.fixture
def fake_producer(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    FakeProducer.started = FakeProducer.stopped = 0
    FakeProducer.fail = False
    monkeypatch.setattr(kafka, "wal_producer", lambda config, transactional_id=None: FakeProducer())
    return FakeProducer


async def test_concurrent_first_writes_start_one_producer(fake_producer: Any) -> None:
    client = ContextClient(ClientConfig("127.0.0.1:9092"))
    producers = await asyncio.gather(*(client.writer.producer() for _ in range(256)))
    assert fake_producer.started == 1
    assert len({id(p) for p in producers}) == 1
    await client.close()
    assert fake_producer.stopped == 1  # nothing leaked


async def test_a_failed_start_is_shared_and_the_next_call_tries_again(fake_producer: Any) -> None:
    fake_producer.fail = True
    client = ContextClient(ClientConfig("127.0.0.1:9092"))
    results = await asyncio.gather(
        *(client.writer.producer() for _ in range(64)), return_exceptions=True
    )
    assert all(isinstance(r, PublishError) for r in results)
    assert fake_producer.started == 1 and fake_producer.stopped == 1
    fake_producer.fail = False
    await client.writer.producer()
    assert fake_producer.started == 2
    await client.close()
    assert fake_producer.stopped == 2


async def test_a_cancelled_caller_does_not_cancel_the_start_for_the_others(
    fake_producer: Any,
) -> None:
    client = ContextClient(ClientConfig("127.0.0.1:9092"))
    first = asyncio.ensure_future(client.writer.producer())
    second = asyncio.ensure_future(client.writer.producer())
    await asyncio.sleep(0)
    first.cancel()
    assert await second is not None and fake_producer.started == 1
    await client.close()
    assert fake_producer.stopped == 1


async def test_close_during_a_start_stops_the_producer(fake_producer: Any) -> None:
    client = ContextClient(ClientConfig("127.0.0.1:9092"))
    starting = asyncio.ensure_future(client.writer.producer())
    await asyncio.sleep(0)
    await client.close()
    await starting
    assert fake_producer.started == 1 and fake_producer.stopped == 1


async def test_concurrent_transactions_share_one_transactional_producer(
    fake_producer: Any,
) -> None:
    client = ContextClient(ClientConfig("127.0.0.1:9092"))
    ids = {partition_for(f"c{i}".encode(), 3): f"c{i}" for i in range(50)}

    async def across_partitions() -> None:  # committed in a Kafka transaction
        async with client.transaction() as tx:
            for cid in ids.values():
                await tx.put(cid, {})
            await asyncio.sleep(0)

    await asyncio.gather(*(across_partitions() for _ in range(32)))
    assert fake_producer.started == 2  # the idempotent producer (metadata), the transactional
    await client.close()
    assert fake_producer.stopped == 2


async def test_concurrent_first_reads_open_one_http_session(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sessions: list[aiohttp.ClientSession] = []
    real = aiohttp.ClientSession

    def counting(*args: Any, **kwargs: Any) -> aiohttp.ClientSession:
        session = real(*args, **kwargs)
        sessions.append(session)
        return session

    monkeypatch.setattr(aiohttp, "ClientSession", counting)
    client = ContextClient(ClientConfig("", "http://127.0.0.1:9"))
    # GETs to an http:// worker take streams.http1's connections: no aiohttp session at all.
    await asyncio.gather(
        *(client.router.send("http://127.0.0.1:9", "GET", "/", {}, 1, b"") for _ in range(64)),
        return_exceptions=True,
    )
    assert sessions == []
    # The rest (a POST: a dry run) shares one aiohttp session, however many start at once.
    await asyncio.gather(
        *(client.router.send("http://127.0.0.1:9", "POST", "/", {}, 1, b"x") for _ in range(64)),
        return_exceptions=True,
    )
    assert len(sessions) == 1
    await client.close()
    assert sessions[0].closed
