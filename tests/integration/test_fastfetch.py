"""The worker's fetched records built in C (``streams.fastfetch``): the records of one fetch,
read through aiokafka's ``ConsumerRecord`` and through ``WalRecord``, are equal field by
field — keys and values absent, empty and large, headers, transactional batches with an
aborted one among them, control records — and a consumer with deserializers keeps aiokafka's."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord

from lukhas_context.streams import fastfetch
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.topics import TopicSpec

pytestmark = pytest.mark.integration

FIELDS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value",
          "checksum", "serialized_key_size", "serialized_value_size", "headers")  # fmt: skip


@pytest.fixture
def native() -> Iterator[None]:
    was = fastfetch.installed()
    fastfetch.uninstall()
    if not fastfetch.install():
        pytest.skip("the native extension is not built")
    yield
    if not was:
        fastfetch.uninstall()


async def _read(
    bootstrap: str, topic: str, n: int, max_records: int | None = None, **options: Any
) -> list[Any]:
    """The first ``n`` records, ``getmany`` at a time (``max_records`` each); with
    ``positions``, after each non-empty ``getmany`` the consumer's position on each partition
    it returned, as a tuple ``("position", partition, offset)``, and at the end (after a few
    more polls, which pass a last commit marker) on every partition."""
    positions = options.pop("positions", False)
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        isolation_level="read_committed", enable_auto_commit=False, **options,
    )  # fmt: skip
    await consumer.start()
    out: list[Any] = []
    try:
        for _ in range(200):
            batch = await consumer.getmany(timeout_ms=500, max_records=max_records)
            for tp, records in sorted(batch.items()):
                out += records
                if positions:
                    out.append(("position", tp.partition, await consumer.position(tp)))
            if sum(not isinstance(m, tuple) for m in out) >= n:
                break
        if positions:  # past any commit marker after the last record
            for _ in range(3):
                out += [m for records in (await consumer.getmany(timeout_ms=300)).values()
                        for m in records]  # fmt: skip
            for tp in sorted(consumer.assignment()):
                out.append(("position", tp.partition, await consumer.position(tp)))
    finally:
        await consumer.stop()
    return out


async def _fill(bootstrap: str) -> tuple[str, int]:
    """A topic of two partitions: three transactions on partition 0 (the middle one aborted)
    and a plain record on 1; returns it and how many records a read_committed consumer gets."""
    topic = f"fastfetch-{uuid.uuid4().hex[:8]}"
    await ensure_topics(bootstrap, [TopicSpec(topic, 2, {})], brokers=None)
    sent = [
        (None, b"no key", []), (b"", b"", []),
        (b"k", b"v", [("h", b"1"), ("h", b""), ("\u00e9", b"x")]),
        (b"big", b"x" * 300_000, []), ("clé".encode(), None, [("only", b"header")]),
    ]  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, transactional_id=topic)
    await producer.start()
    try:
        for aborted in (False, True, False):
            await producer.begin_transaction()
            for key, value, headers in sent:
                await producer.send(topic, value, key=key, headers=headers, partition=0)
            if aborted:
                await producer.abort_transaction()
            else:
                await producer.commit_transaction()
    finally:
        await producer.stop()
    plain_producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await plain_producer.start()
    try:
        await plain_producer.send_and_wait(topic, b"plain", key=b"p", partition=1)
    finally:
        await plain_producer.stop()
    return topic, 2 * len(sent) + 1


async def test_the_records_of_a_fetch_are_the_same_either_way(cluster: Any, native: None) -> None:
    topic, want = await _fill(cluster.bootstrap)
    fast = await _read(cluster.bootstrap, topic, want)
    fastfetch.uninstall()
    plain = await _read(cluster.bootstrap, topic, want)
    assert len(fast) == len(plain) == want  # the aborted transaction is in neither
    assert all(type(m) is ConsumerRecord for m in plain)
    assert all(type(m).__name__ == "WalRecord" for m in fast)
    key = lambda m: (m.partition, m.offset)  # noqa: E731
    for a, b in zip(sorted(fast, key=key), sorted(plain, key=key), strict=True):
        assert [getattr(a, f) for f in FIELDS] == [getattr(b, f) for f in FIELDS]
    assert fastfetch.install()
    decoded = await _read(cluster.bootstrap, topic, want, value_deserializer=lambda v: v and v[:1])
    assert all(type(m) is ConsumerRecord for m in decoded)  # deserializers: aiokafka's own
    assert sorted(m.value for m in decoded if m.value) == sorted(
        m.value[:1] for m in plain if m.value
    )


@pytest.mark.parametrize("max_records", [1, 2, 4, None])
async def test_a_fetch_taken_in_parts_gives_the_same_records_and_positions(
    cluster: Any, native: None, max_records: int | None
) -> None:
    """``getmany(max_records=...)`` takes a fetch in parts (the rest stays for the next call):
    the same records either way, and the same positions at the end, the aborted transaction
    and the commit markers skipped alike. (Where the parts fall depends on what each fetch
    brought back: the unit test of ``drain`` compares them part by part.)"""
    topic, want = await _fill(cluster.bootstrap)

    def records(out: list[Any]) -> list[Any]:
        return [[getattr(m, f) for f in FIELDS] for m in out if not isinstance(m, tuple)]

    def last_positions(out: list[Any]) -> dict[int, int]:
        return {m[1]: m[2] for m in out if isinstance(m, tuple)}

    fast = await _read(cluster.bootstrap, topic, want, max_records, positions=True)
    fastfetch.uninstall()
    try:
        plain = await _read(cluster.bootstrap, topic, want, max_records, positions=True)
    finally:
        assert fastfetch.install()
    assert len(records(plain)) == want
    key = lambda m: (m[1], m[2])  # noqa: E731
    assert sorted(records(fast), key=key) == sorted(records(plain), key=key)
    # Partition 0: 15 records and three commit/abort markers; partition 1: one record.
    assert last_positions(fast) == last_positions(plain) == {0: 3 * 5 + 3, 1: 1}
