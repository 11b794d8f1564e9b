"""Put, get, delete through the real WAL and a real worker; read-your-writes; restart."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer

from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ContextEvent, Put
from lukhas_context.streams.client import ContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError, InvalidDocumentError
from lukhas_context.streams.topics import Topics

pytestmark = pytest.mark.integration

MakeClient = Callable[[str | None], ContextClient]


async def test_put_get_delete_round_trip(start_worker, make_client: MakeClient) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        receipt = await client.put("agent:1", {"messages": ["hi"], "turn": 1}, ttl=600)
        ctx = await client.get("agent:1", min_offset=receipt, timeout=30)
        assert ctx.doc == {"messages": ["hi"], "turn": 1}
        assert (ctx.version, ctx.offset, ctx.partition) == (1, receipt.offset, receipt.partition)
        assert len(ctx.checksum) == 16 and ctx.expires_at_ms is not None
        receipt = await client.put("agent:1", {"turn": 2})
        ctx = await client.get("agent:1", min_offset=receipt)
        assert (ctx.version, ctx.doc, ctx.expires_at_ms) == (2, {"turn": 2}, None)
        receipt = await client.delete("agent:1")
        with pytest.raises(ContextNotFoundError):
            await client.get("agent:1", min_offset=receipt)
        with pytest.raises(ContextNotFoundError):
            await client.get("never-written")


async def test_bad_input_is_refused_before_sending(start_worker, make_client: MakeClient) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        with pytest.raises(InvalidDocumentError):
            await client.put("x", ["not", "an", "object"])  # type: ignore[arg-type]
        receipt = await client.put("x", {"ok": True})
        assert receipt.offset == 0  # the refused put appended nothing before it


async def test_read_your_writes_every_time(start_worker, make_client: MakeClient) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        for i in range(1, 31):
            receipt = await client.put("counter", {"n": i})
            ctx = await client.get("counter", min_offset=receipt, timeout=30)
            assert (ctx.version, ctx.doc["n"]) == (i, i)


async def test_restart_resumes_without_reapplying(
    start_worker, make_client: MakeClient, tmp_path: Path
) -> None:
    state = tmp_path / "resume"
    worker = await start_worker(state_dir=state)
    async with make_client(worker.url) as client:
        receipts = [await client.put(f"c{i % 5}", {"i": i}) for i in range(50)]
        for r in receipts[-5:]:  # the last write of each context, in whichever partition
            await client.get(r.context_id, min_offset=r, timeout=30)
    await worker.stop()

    worker = await start_worker(state_dir=state)
    async with make_client(worker.url) as client:
        receipts = [await client.put(f"c{i % 5}", {"i": i}) for i in range(50, 60)]
        for r in receipts:
            await client.get(r.context_id, min_offset=r, timeout=30)
        for i in range(5):
            assert (await client.get(f"c{i}")).version == 12
    # the second worker folded only the new events
    assert worker.materializer.metrics.events.labels("applied")._value.get() == 10


async def test_undecodable_records_go_to_the_dlq_and_later_events_apply(
    start_worker, make_client: MakeClient, cluster, topics: Topics, read_topic
) -> None:
    worker = await start_worker()
    raw = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True)
    await raw.start()
    try:
        async with make_client(worker.url) as client:
            valid_a = client.event("a", Put(b'{"x":1}'), None)[1]
            empty_id = client.writer.codec.encode(ContextEvent(bytes(16), "", Put(b"{}")))
            long_id = client.writer.codec.encode(ContextEvent(bytes(16), "x" * 300, Put(b"{}")))
        bad = [
            (b"poison", b"not avro at all"),
            (b"poison", b"\xc3\x01" + b"\x00" * 8 + b"unknown fingerprint"),
            (b"poison", b""),
            (b"b", valid_a),  # key is not the payload's context id
            (b"", empty_id),
            (b"x" * 300, long_id),
            (b"poison", valid_a[:-3]),  # truncated
        ]
        for key, value in bad:
            await raw.send_and_wait(topics.events, value, key=key)
        async with make_client(worker.url) as client:
            good = await client.put("poison", {"still": "works"})
            await client.get("poison", min_offset=good, timeout=30)
            assert (await client.get("poison")).doc == {"still": "works"}
            with pytest.raises(ContextNotFoundError):
                await client.get("a")
    finally:
        await raw.stop()

    letters = await read_topic(topics.dlq, lambda rs: len(rs) >= len(bad), timeout=30)
    assert sorted(m.value for m in letters) == sorted(v for _, v in bad)
    headers = [dict(m.headers) for m in letters]
    classes = sorted(h["error.class"].decode() for h in headers)
    assert classes == sorted(
        ["BadMagicError", "UnknownSchemaError", "BadMagicError", "KeyMismatchError",
         "KeyMismatchError", "KeyMismatchError", "MalformedPayloadError"]
    )  # fmt: skip
    for h in headers:
        assert h["source.topic"].decode() == topics.events
        assert {"error.message", "source.partition", "source.offset"} <= set(h)
    # Counted once each partition's round commits, after its dead letters are published (and
    # the bad records went to other partitions than the read above waited on).
    metric = worker.materializer.metrics.events.labels("dead_lettered")._value
    deadline = time.monotonic() + 30
    while True:
        if metric.get() >= len(bad) or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert metric.get() == len(bad)


async def test_changes_are_published_for_every_applied_event(
    start_worker, make_client: MakeClient, cluster, topics: Topics, read_topic
) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        receipts = [await client.put("ch", {"v": i}) for i in range(5)]
        await client.get("ch", min_offset=receipts[-1], timeout=30)  # before the delete lands
        receipts.append(await client.delete("ch"))
    seen = await read_topic(topics.changes, lambda rs: len(rs) >= 6, timeout=30)
    codec = ChangeCodec()
    puts = [codec.decode(m.value) for m in seen[:5]]
    assert [c.version for c in puts] == [1, 2, 3, 4, 5]
    assert [c.wal_offset for c in puts] == [r.offset for r in receipts[:5]]
    tombstone = seen[5]
    assert tombstone.value is None
    assert dict(tombstone.headers)["kind"] == b"deleted"
    assert dict(tombstone.headers)["version"] == b"6"


async def test_producer_timestamps_do_not_matter_log_time_does(
    start_worker, make_client: MakeClient, cluster, topics: Topics
) -> None:
    """An absurd producer timestamp (1970, or the year 2200) changes nothing: the WAL uses
    LogAppendTime, so TTLs count from the broker's clock."""
    worker = await start_worker()
    raw = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True)
    await raw.start()
    try:
        async with make_client(worker.url) as client:
            for name, stamp in (("epoch", 1), ("future", 7_258_118_400_000)):
                key, value, _ = client.event(name, Put(b'{"t":1}', 60_000), None)
                sent_ms = time.time() * 1000
                meta = await raw.send_and_wait(topics.events, value, key=key, timestamp_ms=stamp)
                appended_ms = time.time() * 1000
                ctx = await client.get(
                    name, min_offset=f"{meta.partition}:{meta.offset}", timeout=30
                )
                assert ctx.expires_at_ms is not None
                # The TTL counts from when the broker appended the event (between the send and
                # its answer, to the millisecond), whatever the producer stamped on it.
                expires = ctx.expires_at_ms - 60_000
                assert sent_ms - 1 <= expires <= appended_ms + 1, (name, sent_ms, expires)
    finally:
        await raw.stop()
