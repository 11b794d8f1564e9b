"""Exactly-once change publishing (issue 14), on the real broker: each partition's changes go
out in Kafka transactions of its own transactional producer, with the WAL offset; a producer
that opens the partition later fences the earlier one, whose rounds then never reach a
subscriber, a restore or the log cleaner; the commit markers are no gaps to a watcher."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.processors.publisher import PartitionFencedError, Publisher, transactional_id
from lukhas_context.processors.round import PartitionRound
from lukhas_context.schemas.change import TX_END_HEADER, seq_of
from lukhas_context.streams import kafka, watch
from lukhas_context.streams.changes import Change, Gap
from lukhas_context.streams.security import PLAINTEXT

from .conftest import PARTITIONS, read_until, seen_all, sentinels, serving_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _round(partition: int, next_offset: int, *keys: bytes, seq: int = 0) -> PartitionRound:
    r = PartitionRound(partition, next_offset=next_offset, first_seq=seq, end_seq=seq + len(keys))
    r.changes = [(key, b"not a change: only its place in the log is looked at", [])
                 for key in keys]  # fmt: skip
    return r


def _producers(bootstrap: str, group: str) -> Callable[[int], Any]:
    """Makes a partition's transactional change producer, as a worker does."""

    def make(partition: int) -> Any:
        return kafka.producer(
            bootstrap, f"test-{partition}", retry_backoff_ms=5,
            transactional_id=transactional_id(group, partition), security=PLAINTEXT,
        )  # fmt: skip

    return make


async def _read(bootstrap: str, topic: str, partition: int, isolation: str) -> list[Any]:
    consumer = kafka.consumer(
        bootstrap, "lukhas-test-read", isolation=isolation,  # type: ignore[arg-type]
        security=PLAINTEXT,
    )  # fmt: skip
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        end = (await consumer.end_offsets([tp]))[tp]
        consumer.seek(tp, 0)
        records: list[Any] = []
        while await consumer.position(tp) < end:
            batch = await consumer.getmany(tp, timeout_ms=1000)
            records += batch.get(tp, [])
        return records
    finally:
        await consumer.stop()


async def test_a_producer_that_opens_the_partition_fences_the_last_one(
    cluster: Any, topics: Any
) -> None:
    """A (the zombie) and B both publish partition 1 under the group's transactional id for
    it. Once B has opened it, every round A tries fails with ``PartitionFencedError`` and
    leaves nothing a committed reader sees; B's rounds are there, with the WAL offset
    committed for the group in the same transaction."""
    group = f"{topics.prefix}-group"

    make = _producers(cluster.bootstrap, group)

    idle = kafka.producer(cluster.bootstrap, "test-idle", security=PLAINTEXT)
    await idle.start()
    a = Publisher(idle, topics, exactly_once=True, make_producer=make, group_id=group)
    b = Publisher(idle, topics, exactly_once=True, make_producer=make, group_id=group)
    try:
        await a.open_partition(1)
        await a.publish(_round(1, 5, b"x", b"y"))  # A's round while it owns the partition
        await b.open_partition(1)  # the group moved it to B
        with pytest.raises(PartitionFencedError) as info:
            await a.publish(_round(1, 7, b"zombie"))
        assert info.value.partition == 1
        await b.publish(_round(1, 7, b"z"))
        with pytest.raises(PartitionFencedError):  # and again: A never gets back in
            await a.publish(_round(1, 9, b"zombie"))
    finally:
        await a.close()
        await b.close()
        await idle.stop()
    committed = await _read(cluster.bootstrap, topics.changes, 1, "read_committed")
    assert [m.key for m in committed] == [b"x", b"y", b"z"]
    # The last record of each transaction says so: a watcher skips the marker after it.
    assert [any(k == TX_END_HEADER for k, _ in m.headers) for m in committed] == [
        False, True, True,
    ]  # fmt: skip
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, group_id=group)
    await consumer.start()
    try:
        assert await consumer.committed(TopicPartition(topics.events, 1)) == 7
    finally:
        await consumer.stop()


async def test_a_watcher_reads_transactional_rounds_without_a_gap(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any
) -> None:
    """Every round is a Kafka transaction whose commit marker takes an offset of the change
    partition: a subscriber from the start gets every change and no gap, and a token taken
    after any change resumes with no gap either."""
    worker = await start_worker(expiry_interval_s=None, exactly_once=True)
    await serving_all(worker)
    ends = sentinels("xo:end:")
    async with make_client(worker.url) as client:
        for i in range(30):
            receipt = await client.put(f"xo:{i % 7}", {"i": i})
            if i % 10 == 9:
                await client.get(receipt.context_id, min_offset=receipt, timeout=30)
        for name in ends:
            await client.put(name, {"end": True})
        async with client.watch(prefix="xo:", start="earliest") as w:
            items = await read_until(w, seen_all(ends), timeout=60)
        assert all(isinstance(i, Change) for i in items), [
            i for i in items if not isinstance(i, Change)
        ]
        assert len(items) == 30 + len(ends)
        # There are markers: the partitions hold more offsets than records.
        total = 0
        for p in range(PARTITIONS):
            tp = TopicPartition(topics.changes, p)
            consumer = kafka.consumer(
                cluster.bootstrap, "t", isolation="read_committed", security=PLAINTEXT
            )
            await consumer.start()
            try:
                total += (await consumer.end_offsets([tp]))[tp]
            finally:
                await consumer.stop()
        assert total > len(items)
        middle = items[12]
        async with client.watch(prefix="xo:", start=middle.token) as resumed:
            rest = await read_until(resumed, seen_all(ends), timeout=60)
        assert all(isinstance(i, Change) for i in rest)
        assert {(c.context_id, c.version) for c in rest} == {
            (c.context_id, c.version) for c in items[13:]
        }


async def test_a_hole_between_consecutive_numbers_is_no_gap_and_a_jump_is(
    cluster: Any, topics: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Offsets the committed reader never gets (a zombie's aborted round and its abort
    marker, commit markers) lie between records numbered n and n + 1 (header ``seq``): the
    watcher passes over them by the numbers alone (the uncommitted probe is switched off
    here), and reports a hole whose numbers jump as a gap."""
    monkeypatch.setattr(watch, "PROBE_LIMIT", -1)  # no hole is small enough to probe
    group = f"{topics.prefix}-group"

    make = _producers(cluster.bootstrap, group)

    async def zombie_round(seq: int) -> None:
        """A round the group's next owner fences: aborted, records and marker."""
        zombie = Publisher(idle, topics, exactly_once=True, make_producer=make, group_id=group)
        await zombie.open_partition(2)
        producer = zombie._partitions[2]
        await producer.begin_transaction()
        await (await producer.send(topics.changes, b"z", key=b"zombie", partition=2,
                                   headers=[("seq", b"%d" % seq)]))  # fmt: skip
        owner = Publisher(idle, topics, exactly_once=True, make_producer=make, group_id=group)
        await owner.open_partition(2)  # fences the zombie: its transaction is aborted
        await zombie.close()
        owners.append(owner)

    idle = kafka.producer(cluster.bootstrap, "test-idle", security=PLAINTEXT)
    await idle.start()
    owners: list[Publisher] = []
    try:
        first = Publisher(idle, topics, exactly_once=True, make_producer=make, group_id=group)
        await first.open_partition(2)
        await first.publish(_round(2, 3, b"a", b"b", seq=0))
        await first.close()
        await zombie_round(2)
        await owners[-1].publish(_round(2, 5, b"c", b"d", seq=2))  # numbered on: no gap
        await zombie_round(4)
        await owners[-1].publish(_round(2, 9, b"e", seq=6))  # 4 and 5 are missing: a gap
    finally:
        for owner in owners:
            await owner.close()
        await idle.stop()
    committed = await _read(cluster.bootstrap, topics.changes, 2, "read_committed")
    assert [(m.key, seq_of(m.headers)) for m in committed] == [
        (b"a", 0), (b"b", 1), (b"c", 2), (b"d", 3), (b"e", 6),
    ]  # fmt: skip
    holes = [
        (x.offset, y.offset) for x, y in itertools.pairwise(committed)
        if y.offset > x.offset + 1 + any(k == TX_END_HEADER for k, _ in x.headers)
    ]  # fmt: skip
    assert len(holes) == 2  # each zombie's aborted record and abort marker
    w = watch.Watcher(cluster.bootstrap, topics, prefix="none:", start="earliest",
                      idle_timeout=3)  # fmt: skip
    async with w:
        items = [item async for item in w]
    assert [(type(i), i.partition, i.first_offset, i.end_offset) for i in items] == [
        (Gap, 2, holes[1][0] + 2, holes[1][1])
    ]
