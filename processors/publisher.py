"""What the worker publishes downstream: change batches, dead letters, checkpoint manifests.

A round's changes go to the same partition of the change topic as their WAL partition, in
batches (``create_batch``/``send_batch``), in WAL order: the idempotent producer keeps a
partition's records in order, so what reached the topic is always a prefix (the change
topic's coverage relies on it, ``processors.opener``). Dead letters keep the WAL record's
bytes, key and partition number and say why in their headers. When these are sent relative to
the store's commit is the commit order in ``Materializer.fold_segment``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from lukhas_context.processors.exceptions import ProcessorError
from lukhas_context.processors.round import PartitionRound
from lukhas_context.state.manifest import Manifest
from lukhas_context.streams.batching import fill_batch
from lukhas_context.streams.topics import Topics

log = logging.getLogger(__name__)


class Publisher:
    """Sends on the worker's producer (idempotent, ``acks=all``)."""

    def __init__(self, producer: AIOKafkaProducer, topics: Topics) -> None:
        self.producer = producer
        self.topics = topics

    async def publish(self, r: PartitionRound) -> None:
        """Sends the round's changes, dead letters, and the votes and decisions of
        transactions across partitions (to the WAL), and returns once the brokers have
        acknowledged every one of them (step 2 of the commit order); raises what a send
        raised. ``ProcessorError`` for a change that fits no batch."""
        producer = self.producer
        topic = self.topics.changes
        acks = []
        changes = r.changes
        i = 0
        while i < len(changes):
            batch = producer.create_batch()
            j = fill_batch(batch, changes, i)
            if j == i:
                size = len(changes[i][1] or b"")
                raise ProcessorError(f"a change of {size} bytes fits no batch")
            acks.append(await producer.send_batch(batch, topic, partition=r.partition))
            i = j
        for message, error in r.dead:
            acks.append(await self.dead_letter(message, error))
        for partition, key, value in r.wal_sends:  # votes and decisions (processors.twophase)
            acks.append(
                await producer.send(self.topics.events, value, key=key, partition=partition)
            )
        await asyncio.gather(*acks)

    async def dead_letter(self, message: Any, error: BaseException) -> Awaitable[Any]:
        """Sends a WAL record to the DLQ (same partition number), its headers naming the error
        and the source; returns the acknowledgement to await."""
        value = message.value or b""
        headers = [
            ("error.class", type(error).__name__.encode()),
            ("error.message", str(error).encode("utf-8", "replace")[:1000]),
            ("source.topic", message.topic.encode()),
            ("source.partition", b"%d" % message.partition),
            ("source.offset", b"%d" % message.offset),
            ("schema.fingerprint", value[2:10].hex().encode()),
        ]
        log.warning(
            "dead-lettering %s[%d]@%d: %s",
            message.topic, message.partition, message.offset, error,
        )  # fmt: skip
        ack: Awaitable[Any] = await self.producer.send(
            self.topics.dlq,
            value=value,
            key=message.key,
            partition=message.partition,
            headers=headers,
        )
        return ack

    async def publish_manifest(self, manifest: Manifest) -> bool:
        """Publishes a checkpoint's manifest on the checkpoints topic (key ``ID/P``) and waits
        for its acknowledgement; False (logged) when Kafka refused it."""
        key = f"{manifest.checkpoint_id}/{manifest.partition}".encode()
        try:
            ack = await self.producer.send(
                self.topics.checkpoints, value=manifest.to_json(), key=key
            )
            await ack
        except KafkaError as exc:
            log.error("could not publish checkpoint %s: %s", key.decode(), exc)
            return False
        return True
