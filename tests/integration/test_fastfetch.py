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


async def _read(bootstrap: str, topic: str, n: int, **options: Any) -> list[Any]:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
        isolation_level="read_committed", enable_auto_commit=False, **options,
    )  # fmt: skip
    await consumer.start()
    out: list[Any] = []
    try:
        for _ in range(60):
            batch = await consumer.getmany(timeout_ms=500)
            out += [m for records in batch.values() for m in records]
            if len(out) >= n:
                break
    finally:
        await consumer.stop()
    return out


async def test_the_records_of_a_fetch_are_the_same_either_way(cluster: Any, native: None) -> None:
    topic = f"fastfetch-{uuid.uuid4().hex[:8]}"
    await ensure_topics(cluster.bootstrap, [TopicSpec(topic, 2, {})], brokers=None)
    sent = [
        (None, b"no key", []), (b"", b"", []),
        (b"k", b"v", [("h", b"1"), ("h", b""), ("\u00e9", b"x")]),
        (b"big", b"x" * 300_000, []), ("clé".encode(), None, [("only", b"header")]),
    ]  # fmt: skip
    producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, transactional_id=topic)
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
    plain_producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap)
    await plain_producer.start()
    try:
        await plain_producer.send_and_wait(topic, b"plain", key=b"p", partition=1)
    finally:
        await plain_producer.stop()
    want = 2 * len(sent) + 1
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
