"""The records of one of the system's topics, read between bounds fixed before the read
starts: what ``lukhas inspect``, ``lukhas dlq`` and the read API's dead-letter routes read.

A read goes partition by partition, from ``start`` (an offset, or a time: the first record
logged at or after it) to ``until`` (exclusive; the end of the partition as it is when its
read starts, at most). It reads committed records, as the fold does, with a consumer that
never joins a group and never commits. A partition that sends nothing for
``FETCH_TIMEOUT_S`` while records are still due ends the read with a ``TopicReadError``
rather than waiting for ever.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

from aiokafka import TopicPartition

from lukhas_context.schemas.exceptions import LukhasError
from lukhas_context.streams import kafka
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.position import Bound
from lukhas_context.streams.security import KafkaSecurity
from lukhas_context.streams.topics import partition_for

__all__ = [
    "FETCH_TIMEOUT_S",
    "NoSuchOffsetError",
    "NoSuchPartitionError",
    "TopicReadError",
    "records",
]

#: Seconds one fetch may return nothing before the read gives up on a partition.
FETCH_TIMEOUT_S = 10.0


class TopicReadError(LukhasError):
    """A topic cannot be read as asked: Kafka unreachable, no such topic or partition, or a
    partition that stopped sending."""


class NoSuchOffsetError(TopicReadError):
    """An offset past the end of a topic's partition."""


class NoSuchPartitionError(TopicReadError):
    """A partition the topic does not have."""


async def records(
    bootstrap: str, topic: str, partitions: list[int] | None, start: Bound | None,
    until: Bound | None, context_id: str | None = None, *, security: KafkaSecurity,
    keyed: bool = True, client_id: str = "lukhas-inspect",
) -> AsyncGenerator[Any, None]:  # fmt: skip
    """The raw records of ``topic`` (aiokafka's ``ConsumerRecord``) within the bounds,
    partition by partition: the chosen ones, else the context's (``context_id``, when the
    topic is ``keyed`` by context id), else all. Close it (``contextlib.aclosing``) when not
    read to the end."""
    consumer = kafka.consumer(bootstrap, client_id, isolation="read_committed",
                              security=security)  # fmt: skip
    try:
        with kafka_errors(TopicReadError, f"cannot reach Kafka at {bootstrap}"):
            await consumer.start()
        with kafka_errors(TopicReadError, f"cannot read the partitions of {topic}"):
            metadata = await consumer._client.fetch_all_metadata()
        count = len(metadata.partitions_for_topic(topic) or ())
        if not count:
            raise TopicReadError(f"no topic {topic} (is this the right cluster and prefix?)")
        for p in _partitions(partitions, count, topic, context_id if keyed else None):
            async for m in _partition(consumer, topic, p, start, until):
                yield m
    finally:
        await consumer.stop()


def _partitions(asked: list[int] | None, count: int, topic: str, context_id: str | None
                ) -> list[int]:  # fmt: skip
    if asked:
        bad = [p for p in asked if p >= count]
        if bad:
            raise NoSuchPartitionError(
                f"no partition {bad[0]}: {topic} has {count} (0 to {count - 1})"
            )
        return sorted(set(asked))
    if context_id is not None:
        return [partition_for(context_id.encode(), count)]
    return list(range(count))


async def _partition(
    consumer: Any, topic: str, p: int, start: Bound | None, until: Bound | None
) -> AsyncIterator[Any]:
    tp = TopicPartition(topic, p)
    consumer.assign([tp])
    with kafka_errors(TopicReadError, f"cannot read {topic}[{p}]"):
        low = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        first = await _offset(consumer, tp, start, low, end)
        stop = end if until is None else min(end, await _offset(consumer, tp, until, low, end))
    if first >= stop:
        return
    consumer.seek(tp, first)
    while True:
        with kafka_errors(TopicReadError, f"cannot read {topic}[{p}]"):
            batch = await consumer.getmany(tp, timeout_ms=int(FETCH_TIMEOUT_S * 1000))
            position = await consumer.position(tp)
        found = batch.get(tp, [])
        for m in found:
            if m.offset >= stop:
                return
            yield m
        if position >= stop:
            return
        if not found:
            raise TopicReadError(f"{topic}[{p}] sent nothing for {FETCH_TIMEOUT_S:g} s at "
                                 f"offset {position} (before {stop})")  # fmt: skip


async def _offset(consumer: Any, tp: TopicPartition, bound: Bound | None, low: int, end: int
                  ) -> int:  # fmt: skip
    if bound is None:
        return low
    if bound.offset is not None:
        if bound.offset > end:
            raise NoSuchOffsetError(f"no offset {bound.offset} in {tp.topic}[{tp.partition}]: "
                                    f"it ends at {end}")  # fmt: skip
        return max(bound.offset, low)
    found = (await consumer.offsets_for_times({tp: bound.time_ms}))[tp]
    return end if found is None else max(found.offset, low)
