"""Issue 3 on real parts: conditions without lost updates, exactly-once per event id, patches
(atomic, checksummed), TTL and touch, dry-run, outcomes, update() deltas."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition

from lukhas_context.processors.fold import checksum
from lukhas_context.streams.client import ContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError

pytestmark = pytest.mark.integration

MakeClient = Callable[[str | None], ContextClient]


async def test_concurrent_conditional_writers_lose_no_update(
    start_worker, make_client: MakeClient
) -> None:
    worker = await start_worker()
    writers, increments = 4, 15
    applied_versions: list[int] = []
    async with make_client(worker.url) as setup:
        first = await setup.put("counter", {"n": 0}, expected_version=0)
        assert (await first.outcome(timeout=30)).applied

    async def writer() -> None:
        async with make_client(worker.url) as client:
            done = 0
            for _ in range(increments * 20):  # bounded retries
                if done == increments:
                    return
                ctx = await client.get("counter")
                receipt = await client.put(
                    "counter", {"n": ctx.doc["n"] + 1}, expected_version=ctx.version
                )
                outcome = await receipt.outcome(timeout=30)
                if outcome.applied:
                    assert outcome.version == ctx.version + 1  # it saw the version before it
                    applied_versions.append(outcome.version)
                    done += 1
                else:
                    assert outcome.status == "conflict", outcome
            raise AssertionError("writer did not finish within its retry bound")

    await asyncio.gather(*(writer() for _ in range(writers)))
    async with make_client(worker.url) as client:
        final = await client.get("counter")
    total = writers * increments
    assert final.doc["n"] == total  # no lost update
    assert final.version == total + 1
    assert sorted(applied_versions) == list(range(2, total + 2))  # each version exactly once


async def test_a_retried_event_applies_once_and_reused_ids_are_dead_lettered(
    start_worker, make_client: MakeClient, cluster, topics
) -> None:
    worker = await start_worker()
    raw = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True)
    await raw.start()
    try:
        async with make_client(worker.url) as client:
            from lukhas_context.schemas.event import Put

            key, value, _ = client.event("retry", Put(b'{"x":1}'), None)
            first = await raw.send_and_wait(topics.events, value, key=key)
            again = await raw.send_and_wait(topics.events, value, key=key)  # the retry
            # The same event id for other bytes: flip the document's last digit.
            forged = value.replace(b'{"x":1}', b'{"x":2}')
            third = await raw.send_and_wait(topics.events, forged, key=key)
            ctx = await client.get(
                "retry", min_offset=f"{third.partition}:{third.offset}", timeout=30
            )
            assert (ctx.version, ctx.doc) == (1, {"x": 1})
            o1 = await client.outcome(first.partition, first.offset)
            o2 = await client.outcome(again.partition, again.offset)
            o3 = await client.outcome(third.partition, third.offset)
    finally:
        await raw.stop()
    assert (o1.status, o1.version) == ("applied", 1)
    assert (o2.status, o2.version, o2.duplicate_of) == ("applied", 1, first.offset)
    assert o3.status == "dead_lettered" and "EventIdConflictError" in (o3.reason or "")
    assert worker.materializer.metrics.events.labels("duplicate")._value.get() == 1


async def test_patches_apply_atomically_and_checksums_are_enforced(
    start_worker, make_client: MakeClient
) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        await client.put("doc", {"messages": ["a"], "meta": {"k": 1}})
        r = await client.patch("doc", [{"op": "add", "path": "/messages/-", "value": "b"}])
        assert (await r.outcome(timeout=30)).version == 2
        r = await client.patch("doc", {"meta": {"k": None, "j": 2}}, merge=True)
        assert (await r.outcome(timeout=30)).applied
        ctx = await client.get("doc", min_offset=r)
        assert ctx.doc == {"messages": ["a", "b"], "meta": {"j": 2}}
        # A patch whose second op fails changes nothing.
        bad = await client.patch(
            "doc",
            [{"op": "add", "path": "/x", "value": 1}, {"op": "remove", "path": "/nope"}],
        )
        outcome = await bad.outcome(timeout=30)
        assert outcome.status == "rejected" and "nope" in (outcome.reason or "")
        failing_test = await client.patch("doc", [{"op": "test", "path": "/meta/j", "value": 3}])
        assert (await failing_test.outcome(timeout=30)).status == "rejected"
        # The checksum the writer expects after the patch: right, then wrong.
        expected = {"messages": ["a", "b", "c"], "meta": {"j": 2}}
        good_sum = checksum(orjson.dumps(expected, option=orjson.OPT_SORT_KEYS)).hex()
        op = [{"op": "add", "path": "/messages/-", "value": "c"}]
        ok = await client.patch("doc", op, expected_checksum=good_sum)
        assert (await ok.outcome(timeout=30)).applied
        wrong = await client.patch("doc", op, expected_checksum="00" * 8)
        outcome = await wrong.outcome(timeout=30)
        assert outcome.status == "rejected" and "checksum" in (outcome.reason or "")
        final = await client.get("doc", min_offset=wrong)
        assert final.doc == expected and final.version == 4


async def test_ttl_touch_and_reads_hiding_expired_contexts(
    start_worker, make_client: MakeClient
) -> None:
    """No race with the clock: what must stay alive has a TTL far longer than the test can
    take, and what must expire is waited for as a condition (with a deadline)."""
    worker = await start_worker()
    async with make_client(worker.url) as client:
        kept = await client.put("kept", {"v": 1}, ttl=120)
        before = (await client.get("kept", min_offset=kept)).expires_at_ms
        touched = await client.touch("kept", 600)
        assert (await touched.outcome(timeout=30)).applied
        after = (await client.get("kept", min_offset=touched)).expires_at_ms
        assert before is not None and after is not None and after > before
        created = await client.put("persisted", {"v": 1}, ttl=120)
        assert (await created.outcome(timeout=30)).applied
        cleared = await client.touch("persisted", None)
        assert (await cleared.outcome(timeout=30)).applied
        assert (await client.get("persisted", min_offset=cleared)).expires_at_ms is None

        short = await client.put("ephemeral", {"v": 1}, ttl=1.0)
        assert (await short.outcome(timeout=30)).applied
        deadline = time.monotonic() + 60
        while True:  # hidden once its TTL ran out, before (or after) the Expire is folded
            try:
                await client.get("ephemeral")
            except ContextNotFoundError:
                break
            assert time.monotonic() < deadline, "a context with a 1 s TTL was still readable"
            await asyncio.sleep(0.1)
        # A touch of an expired context is rejected: it no longer exists.
        late = await client.touch("ephemeral", 600)
        assert (await late.outcome(timeout=30)).status == "rejected"
        assert (await client.get("kept")).expires_at_ms == after


async def test_dry_run_reports_and_appends_nothing(
    start_worker, make_client: MakeClient, cluster, topics
) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        r = await client.put("dry", {"a": 1})
        await client.get("dry", min_offset=r)
        ends_before = await _end_offsets(worker, topics.events)
        would = await client.patch("dry", {"b": 2}, merge=True, dry_run=True)
        assert (would.status, would.version, would.doc) == ("applied", 2, {"a": 1, "b": 2})
        conflict = await client.put("dry", {"c": 3}, expected_version=7, dry_run=True)
        assert (conflict.status, conflict.version) == ("conflict", 1)
        gone = await client.delete("dry", dry_run=True)
        assert (gone.status, gone.kind, gone.doc) == ("applied", "delete", None)
        assert await _end_offsets(worker, topics.events) == ends_before
        assert (await client.get("dry")).doc == {"a": 1}


async def test_update_sends_deltas_at_least_80_percent_smaller(
    start_worker, make_client: MakeClient
) -> None:
    """200 writes of a conversation growing by one message each: bytes of the event values
    sent by update() against whole-document puts of the same documents."""
    worker = await start_worker()
    async with make_client(worker.url) as client:
        sent = await _count_sent_bytes(client)
        conversation: dict[str, object] = {"agent": "a-1", "messages": []}
        receipts = []
        for i in range(200):
            messages = list(conversation["messages"])  # type: ignore[call-overload]
            messages.append({"role": "user" if i % 2 else "agent", "text": f"message {i} " * 4})
            conversation = {**conversation, "messages": messages}
            receipts.append(await client.update("conv", conversation))
        # The counter saw every update's send (else the saving below would be vacuous).
        assert len(sent) == 200 and min(sent) > 0, sent[:5]
        update_bytes = sum(sent)
        sent.clear()
        for _ in range(1):
            await client.put("conv-whole", conversation)
        docs = [conversation]
        put_bytes = 0
        conversation = {"agent": "a-1", "messages": []}
        for i in range(200):
            messages = list(conversation["messages"])  # type: ignore[call-overload]
            messages.append({"role": "user" if i % 2 else "agent", "text": f"message {i} " * 4})
            conversation = {**conversation, "messages": messages}
            put_bytes += len(client.event("conv-put", _put_op(conversation), None)[1])
        ctx = await client.get("conv", min_offset=receipts[-1], timeout=60)
        assert ctx.doc == docs[0] and ctx.version == 200
        outcomes = [await r.outcome(timeout=30) for r in receipts]
        assert all(o.applied for o in outcomes)
    saving = 1 - update_bytes / put_bytes
    print(f"update() {update_bytes} bytes vs puts {put_bytes} bytes: {saving:.1%} fewer")
    assert saving >= 0.80


def _put_op(doc: dict[str, object]) -> object:
    from lukhas_context.schemas.event import Put

    return Put(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))


async def _count_sent_bytes(client: ContextClient) -> list[int]:
    """Wraps the client's producer to record the size of every event value it sends."""
    sizes: list[int] = []
    producer = await client.writer.producer()
    original = producer.send_and_wait

    async def counting(topic: str, value: bytes, **kw: object) -> object:
        sizes.append(len(value))
        return await original(topic, value, **kw)

    producer.send_and_wait = counting  # type: ignore[method-assign]
    return sizes


async def _end_offsets(worker: object, topic: str) -> dict[int, int]:
    """End offsets of the WAL, asked through the worker's own consumer."""
    consumer = worker.materializer.assignment.consumer  # type: ignore[attr-defined]
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    ends = await consumer.end_offsets(parts)
    return {tp.partition: offset for tp, offset in ends.items()}


async def test_transactions_are_all_or_nothing(start_worker, make_client: MakeClient) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        async with client.transaction() as tx:
            await tx.put("tx-a", {"n": 1})
            await tx.put("tx-b", {"n": 1})
        with pytest.raises(RuntimeError):
            async with client.transaction() as tx:
                await tx.put("tx-a", {"n": 2})
                await tx.put("tx-c", {"n": 2})
                raise RuntimeError("abort")
        async with client.transaction() as tx:
            await tx.patch("tx-a", {"n": 3}, merge=True)
            await tx.delete("tx-b")
        last = tx.receipts[-1]
        await client.get("tx-a", min_offset=last, timeout=30)
        a = await client.get("tx-a")
        assert (a.version, a.doc) == (2, {"n": 3})  # the aborted put left no trace
        with pytest.raises(ContextNotFoundError):
            await client.get("tx-b")
        with pytest.raises(ContextNotFoundError):
            await client.get("tx-c")
        # Across partitions (tx-a in 2, tx-c in 0), either receipt orders reads of both.
        async with client.transaction() as tx:
            await tx.put("tx-a", {"n": 4})
            await tx.put("tx-c", {"n": 4})
        first, second = tx.receipts
        assert first.partition != second.partition and first.transaction == second.transaction
        assert (await client.get("tx-c", min_offset=first, timeout=30)).doc == {"n": 4}
        assert (await client.get("tx-a", min_offset=second, timeout=30)).doc == {"n": 4}
    _ = time
