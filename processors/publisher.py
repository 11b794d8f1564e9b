"""What the worker publishes downstream: change batches, dead letters, checkpoint manifests.

A round's changes go to the same partition of the change topic as their WAL partition, in
batches (``create_batch``/``send_batch``), in WAL order. Dead letters keep the WAL record's
bytes, key and partition number and say why in their headers. When these are sent relative to
the store's commit is the commit order in ``Materializer.fold_segment``. Every record on a
change partition carries its sequence number there (header ``seq``, counted by the fold:
``PartitionRound.first_seq``), by which a subscriber tells a hole of transaction markers from
lost changes (``streams.watch``).

**Exactly once** (``WorkerConfig.exactly_once``, the default): each partition has a
transactional producer of its own, ``transactional.id`` = ``<group>.changes.<partition>``
(Kafka Streams' exactly-once with a producer per task). A round's changes, dead letters and
WAL appends (votes and decisions of transactions) go out in one Kafka transaction, with the
WAL partition's consumer offset (``next_offset``, ``send_offsets_to_transaction``): all of it
or none becomes visible. A worker that opens a partition starts its producer first, which
fences any earlier producer of that id (a zombie that still folds it: its open transaction is
aborted by the broker, and its next commit fails, ``PartitionFencedError``) before the change
topic is read for the partition's coverage or a restore. The last change of a transaction in
a change partition carries the header ``txend``: the transaction's commit marker takes the
offset after it, which a subscriber reading ``read_committed`` never sees and must not take
for a gap (``streams.watch``).

**At least once** (``exactly_once=False``, ``--at-least-once``): one idempotent producer for
everything; what reached a change partition is always a prefix (the idempotent producer
keeps a partition's records in order), which the change topic's coverage relies on
(``processors.opener``); a zombie can publish a round it folded after its partition moved.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.errors import InvalidProducerEpoch, InvalidTxnState, KafkaError, ProducerFenced

from lukhas_context.processors.exceptions import ProcessorError
from lukhas_context.processors.mirror import Mirror
from lukhas_context.processors.round import PartitionRound
from lukhas_context.schemas.change import ROUND_END_HEADER, SEQ_HEADER, TX_END_HEADER
from lukhas_context.state.manifest import Manifest
from lukhas_context.streams.batching import next_batch
from lukhas_context.streams.topics import Topics

log = logging.getLogger(__name__)


_TX_END = (TX_END_HEADER, b"1")
#: At least once: the last change of a round in its partition (a standby copy writes at round
#: ends: ``processors.standby``). Not ``txend``: no marker follows it.
_ROUND_END = (ROUND_END_HEADER, b"1")
#: How long a partition's producer may take to get its producer id (and so fence the last).
INIT_TIMEOUT_S = 60.0
#: How long closing a partition's producer may take.
CLOSE_TIMEOUT_S = 10.0


class PartitionFencedError(ProcessorError):
    """A newer producer of this partition's transactional id exists (another worker opened the
    partition: this one is a zombie for it), or the broker aborted the round's transaction:
    the round was not published and must not be committed."""

    def __init__(self, partition: int, cause: BaseException) -> None:
        super().__init__(f"partition {partition}: change producer fenced ({cause!r})")
        self.partition = partition


def transactional_id(group_id: str, partition: int) -> str:
    """The transactional id of a partition's change producer: one per partition of the group,
    whichever worker owns it, so the next owner fences the last."""
    return f"{group_id}.changes.{partition}"


class Publisher:
    """Sends on the worker's producer (idempotent, ``acks=all``), or, exactly once, a round's
    records on its partition's transactional producer (``open_partition``)."""

    def __init__(
        self,
        producer: AIOKafkaProducer,
        topics: Topics,
        *,
        exactly_once: bool = False,
        make_producer: Callable[[int], AIOKafkaProducer] | None = None,
        group_id: str = "",
        compression: str = "none",
    ) -> None:
        self.producer = producer
        #: How change batches are compressed (``streams.batching.COMPRESSIONS``).
        self.compression = compression
        self.topics = topics
        self.exactly_once = exactly_once
        self._make_producer = make_producer
        self._group_id = group_id
        #: Where the changes are sent again in Schema Registry wire format (``processors.
        #: mirror``), in the same round (and transaction); None: nowhere.
        self.mirror: Mirror | None = None
        #: Partition -> its started transactional producer (exactly once).
        self._partitions: dict[int, AIOKafkaProducer] = {}

    async def open_partition(self, partition: int) -> None:
        """Starts ``partition``'s transactional producer (exactly once; nothing otherwise):
        InitProducerId fences every earlier producer of its id and aborts its open
        transaction, so the change topic is then stable for the opener to read."""
        if not self.exactly_once or partition in self._partitions:
            return
        assert self._make_producer is not None
        producer = self._make_producer(partition)
        await producer.start()
        try:
            # start() asks for the producer id in the background; the fencing is that
            # request (InitProducerId), so it is waited for here (aiokafka has no public
            # call for it; begin_transaction waits the same way).
            txn = producer._txn_manager
            assert txn is not None
            await asyncio.wait_for(asyncio.shield(txn.wait_for_pid()), INIT_TIMEOUT_S)
        except BaseException:
            with contextlib.suppress(Exception):
                await producer.stop()
            raise
        self._partitions[partition] = producer

    async def close_partition(self, partition: int) -> None:
        """Stops ``partition``'s transactional producer (revoked, or fenced)."""
        producer = self._partitions.pop(partition, None)
        if producer is not None:
            # A fenced producer may refuse to close, or wait on a broker that is gone.
            with contextlib.suppress(Exception):
                await asyncio.wait_for(producer.stop(), CLOSE_TIMEOUT_S)

    async def close(self) -> None:
        for partition in list(self._partitions):
            await self.close_partition(partition)

    async def publish(self, r: PartitionRound) -> None:
        """Sends the round's changes, dead letters, and the votes and decisions of
        transactions across partitions (to the WAL), and returns once the brokers have
        acknowledged every one of them — exactly once: once their Kafka transaction, with the
        WAL partition's offset, is committed (step 2 of the commit order); raises what a send
        raised, ``PartitionFencedError`` when this worker's producer of the partition was
        fenced. ``ProcessorError`` for a change that fits no batch."""
        if not self.exactly_once:
            await self._send_round(self.producer, r, _ROUND_END)
            return
        producer = self._partitions.get(r.partition)
        if producer is None:  # closed: revoked, or fenced before
            raise PartitionFencedError(r.partition, ProcessorError("no producer"))
        try:
            await producer.begin_transaction()
            await self._send_round(producer, r, _TX_END)
            wal = TopicPartition(self.topics.events, r.partition)
            await producer.send_offsets_to_transaction({wal: r.next_offset}, self._group_id)
            await producer.commit_transaction()
        except (ProducerFenced, InvalidProducerEpoch, InvalidTxnState) as exc:
            # Fatal for this producer (aiokafka refuses any further transaction on it).
            await self.close_partition(r.partition)
            raise PartitionFencedError(r.partition, exc) from exc
        except BaseException:
            await self._abort(producer)
            raise

    @staticmethod
    async def _abort(producer: AIOKafkaProducer) -> None:
        with contextlib.suppress(Exception):
            if producer._txn_manager is not None and producer._txn_manager.is_in_transaction():
                await producer.abort_transaction()

    async def _send_round(
        self, producer: AIOKafkaProducer, r: PartitionRound, end: tuple[str, bytes] | None
    ) -> None:
        topic = self.topics.changes
        acks: list[Any] = []
        changes = r.changes
        if self.mirror is not None and changes:
            # The same changes re-framed (mirror.py), with their own headers only: the change
            # topic's sequence numbers and round markers say nothing about the mirror's
            # records. Sent first: at least once, the change topic then never holds a change
            # the mirror lacks (a restart re-folds without sending what the change topic
            # has); exactly once, both are in the round's transaction anyway.
            mirrored = self.mirror.frame(changes)
            sent: list[Any] = []
            await self._send_batches(producer, self.mirror.topic, r, mirrored, sent, False)
            if end is _ROUND_END:
                await asyncio.gather(*sent)
            else:
                acks += sent
        if end is not None and changes:  # marks the last change of the transaction here
            key, value, headers = changes[-1]
            changes = [*changes[:-1], (key, value, [*headers, end])]
        await self._send_batches(producer, topic, r, changes, acks)
        for message, error in r.dead:
            acks.append(await self.dead_letter(message, error, producer))
        for partition, key, value in r.wal_sends:  # votes and decisions (processors.twophase)
            acks.append(
                await producer.send(self.topics.events, value, key=key, partition=partition)
            )
        await asyncio.gather(*acks)

    async def _send_batches(
        self, producer: AIOKafkaProducer, topic: str, r: PartitionRound,
        changes: Sequence[tuple[bytes, bytes | None, list[tuple[str, bytes]]]], acks: list[Any],
        numbered: bool = True,
    ) -> None:  # fmt: skip
        seq = (SEQ_HEADER, r.first_seq) if numbered else None
        i = 0
        while i < len(changes):
            batch, j = next_batch(producer, changes, i, seq, self.compression)
            if j == i:
                size = len(changes[i][1] or b"")
                raise ProcessorError(f"a change of {size} bytes fits no batch")
            acks.append(await producer.send_batch(batch, topic, partition=r.partition))
            i = j

    async def dead_letter(
        self, message: Any, error: BaseException, producer: AIOKafkaProducer | None = None
    ) -> Awaitable[Any]:
        """Sends a WAL record to the DLQ (same partition number), its headers naming the error
        and the source, on ``producer`` (default: the worker's); returns the acknowledgement
        to await."""
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
        ack: Awaitable[Any] = await (producer or self.producer).send(
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
