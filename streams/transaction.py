"""``Transaction``: a client's writes that apply together or not at all."""

from __future__ import annotations

import asyncio
import functools
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer

from lukhas_context.schemas.event import Delete, Op, Patch, PatchFormat, Put, Touch
from lukhas_context.schemas.txrecord import (
    MAX_TX_EVENTS,
    SCOPE_PARTITION,
    SCOPE_VOTED,
    TX_KEY,
    encode_tx,
)
from lukhas_context.streams.exceptions import PublishError, PublishTimeoutError, ValidationError
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.results import OutcomeSource, Receipt
from lukhas_context.streams.topics import WAL_MAX_MESSAGE_BYTES, partition_for
from lukhas_context.streams.validation import canonical_json, json_bytes, ttl_ms
from lukhas_context.streams.writer import WalWriter, when_room

__all__ = ["MAX_TX_RECORD_BYTES", "Transaction"]

#: The largest transaction record sent: the WAL's message size, less room for the record's
#: key, headers and batch framing.
MAX_TX_RECORD_BYTES = WAL_MAX_MESSAGE_BYTES - 4096


class Transaction:
    """Writes that apply together or not at all.

    ``async with client.transaction() as tx:`` then ``await tx.put(...)``, ``tx.patch``,
    ``tx.touch``, ``tx.delete`` (each takes ``expected_version`` and ``fence`` as the client's
    writes do); leaving the block commits, an exception discards them. The events are kept
    here until the commit, which sends, for each WAL partition they live in, *one* transaction
    record holding that partition's events (``schemas.txrecord``); the fold applies its
    events in order, each against the state the ones before it left, and then all of them or
    — if any one's condition fails (a version, a checksum, a fence, a bad document) — none.
    Receipts are in ``tx.receipts`` after the commit: one per event, in the order written,
    each at its partition's transaction record; its ``outcome()`` is the record's (``applied``
    with the number of events as ``version``, or the failing event's status and a reason that
    names it). A read at or after a receipt's position sees all of that partition's events of
    the transaction or none.

    A transaction in one partition is sent as one record by the idempotent producer. Across
    partitions the records (one per partition) are appended in one Kafka transaction and
    decided by a commit protocol in the log (``processors.twophase``): each partition votes,
    the lowest decides, and each applies its part at the decision or drops it — one failed
    condition anywhere and nothing applies. A receipt's ``outcome()`` then waits for the
    decision (``applied``, ``aborted`` with the reason, or the part's own ``conflict``...),
    and a read ``after`` a receipt sees the whole transaction. At most ``MAX_TX_EVENTS``
    events (``ValidationError`` for the next one), and each partition's record must fit the
    WAL's message size (``ValidationError`` at the commit, before anything is sent).

    The commit finishes within the config's ``timeout_s`` (``PublishTimeoutError`` with the
    brokers' reason). A commit across partitions that timed out is unknown: the coordinator
    may still complete it, or abort it when the transaction's ``transaction_timeout_s`` runs
    out; until then the open Kafka transaction holds the partitions it wrote (``lukhas
    transactions``).
    """

    def __init__(self, writer: WalWriter, client: OutcomeSource) -> None:
        """``writer``: the client's producers; ``client``: where receipts ask for outcomes."""
        self._writer = writer
        self._client = client
        #: The transaction record's id, in every record of it (retries are duplicates).
        self.tx_id = uuid.uuid4()
        #: (context id, key, encoded event, event id) of each event, in the order written.
        self._events: list[tuple[str, bytes, bytes, uuid.UUID]] = []
        self._state = "new"
        self.receipts: list[Receipt] = []

    async def __aenter__(self) -> Transaction:
        if self._state != "new":
            raise RuntimeError("a transaction is used in one `async with` block, once")
        self._state = "open"
        return self

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        """Commits, or (the block raised) discards the events: nothing was sent."""
        state, self._state = self._state, "done"
        if exc_type is None and state == "open" and self._events:
            await self._commit()

    async def _commit(self) -> None:
        writer = self._writer
        count = await writer.partition_count()
        parts: dict[int, list[int]] = {}
        for i, (_, key, _, _) in enumerate(self._events):
            parts.setdefault(partition_for(key, count), []).append(i)
        # One partition: decided there. Several: each part prepared and voted on, the lowest
        # partition coordinating (processors.twophase).
        scope, partitions = (SCOPE_PARTITION, ()) if len(parts) == 1 else (
            SCOPE_VOTED, tuple(sorted(parts)))  # fmt: skip
        records = {
            p: encode_tx(self.tx_id.bytes, [self._events[i][2] for i in idx], scope, partitions)
            for p, idx in parts.items()
        }
        for p, value in records.items():
            if len(value) > MAX_TX_RECORD_BYTES:
                raise ValidationError(
                    f"the transaction's events in partition {p} take {len(value):,} bytes: one "
                    f"transaction record holds at most {MAX_TX_RECORD_BYTES:,}"
                )
        if len(records) == 1:
            ((p, value),) = records.items()
            meta = await writer.send(TX_KEY, value, self.tx_id, partition=p, what="transaction")
            metas = {p: meta}
        else:
            metas = await self._commit_across(records)
        spans = tuple(sorted((p, m.offset) for p, m in metas.items())) if len(metas) > 1 else ()
        for context_id, key, _, event_id in self._events:
            meta = metas[partition_for(key, count)]
            self.receipts.append(Receipt(
                context_id, meta.partition, meta.offset, str(event_id), self._client, spans
            ))  # fmt: skip

    async def _commit_across(self, records: dict[int, bytes]) -> dict[int, Any]:
        """Appends the records in one Kafka transaction, within the deadline; the lock keeps
        the client's one transactional producer to one transaction at a time. On any exit
        that did not end cleanly the producer is dropped, since its state is unknown."""
        writer = self._writer
        config = writer.config
        topic = config.topics.events
        unknown = (
            f" (it may still commit, or be aborted when its {config.transaction_timeout_s:g} s "
            "transaction timeout runs out)"
        )
        until = asyncio.get_running_loop().time() + config.send_window_s
        try:
            async with asyncio.timeout_at(until):
                await writer.transaction_lock.acquire()
        except TimeoutError:
            raise PublishTimeoutError(
                f"the transaction did not commit within {config.timeout_s:g} s: another "
                "transaction of this client is still committing"
            ) from None
        clean = False
        producer: AIOKafkaProducer | None = None
        futures: dict[int, Any] = {}
        try:
            async with writer.deadline(
                "the transaction did not commit",
                lambda: None,
                writer.transactional(),
                unknown,
            ):
                with kafka_errors(PublishError, "the transaction did not commit",
                                  also=(ValueError, OSError)):  # fmt: skip
                    producer = await writer.transactional_producer()
                    await producer.begin_transaction()
                    for p, value in records.items():
                        futures[p] = await when_room(
                            functools.partial(producer.send, topic, value, key=TX_KEY, partition=p)
                        )
                    await producer.commit_transaction()
            clean = True
        finally:
            if not clean:
                await writer.drop_transactional_producer()
            writer.transaction_lock.release()
        return {p: future.result() for p, future in futures.items()}

    async def put(self, context_id: str, doc: dict[str, Any], ttl: float | None = None,
                  *, expected_version: int | None = None, fence: Any = None) -> None:  # fmt: skip
        data = canonical_json(doc, self._writer.config.max_document_bytes)
        await self._send(context_id, Put(data, ttl_ms(ttl)), expected_version, fence)

    async def patch(self, context_id: str, patch: list[Any] | dict[str, Any], *,
                    merge: bool = False, expected_version: int | None = None,
                    fence: Any = None) -> None:  # fmt: skip
        data = json_bytes(patch, self._writer.config.max_document_bytes, "patch")
        fmt = PatchFormat.MERGE_PATCH if merge else PatchFormat.JSON_PATCH
        await self._send(context_id, Patch(fmt, data), expected_version, fence)

    async def touch(self, context_id: str, ttl: float | None, *,
                    expected_version: int | None = None, fence: Any = None) -> None:  # fmt: skip
        await self._send(context_id, Touch(ttl_ms(ttl)), expected_version, fence)

    async def delete(self, context_id: str, *, expected_version: int | None = None,
                     fence: Any = None) -> None:  # fmt: skip
        await self._send(context_id, Delete(), expected_version, fence)

    async def _send(
        self, context_id: str, op: Op, expected_version: int | None, fence: Any = None
    ) -> None:
        """Checks and encodes the event, and keeps it for the commit. ``fence``: as the
        client's writes take it."""
        if self._state != "open":
            raise RuntimeError("use 'async with client.transaction() as tx', and write inside it")
        if len(self._events) >= MAX_TX_EVENTS:
            raise ValidationError(f"a transaction holds at most {MAX_TX_EVENTS} events")
        key, value, event_id = self._writer.event(context_id, op, expected_version, None, fence)
        self._events.append((context_id, key, value, event_id))
