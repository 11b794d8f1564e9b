"""``Transaction``: a client's writes that land together or not at all."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from lukhas_context.schemas.event import Delete, Op, Patch, PatchFormat, Put, Touch
from lukhas_context.streams.exceptions import PublishError, PublishTimeoutError
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.results import OutcomeSource, Receipt
from lukhas_context.streams.validation import canonical_json, json_bytes, ttl_ms
from lukhas_context.streams.writer import WalWriter, when_room

__all__ = ["Transaction"]


class Transaction:
    """Writes that land together or not at all: one Kafka transaction around their events.

    ``async with client.transaction() as tx:`` then ``await tx.put(...)``, ``tx.patch``,
    ``tx.touch``, ``tx.delete``; leaving the block commits, an exception aborts. Processors
    read ``read_committed``, so an aborted transaction leaves no trace in state and a committed
    one is folded whole. Receipts are in ``tx.receipts`` after the commit.

    One transaction at a time per client (the client's transactional producer is shared;
    a second ``transaction()`` waits for the first to end).

    Begin, each send, the commit and the abort each finish within the config's
    ``timeout_s`` (``PublishTimeoutError`` with the brokers' reason). A commit that timed out
    is unknown: the coordinator may still complete it, or abort it when the transaction's
    ``transaction_timeout_s`` runs out. Until then, an open transaction holds the partitions
    it wrote: readers see nothing after its first event (``lukhas transactions``).

    Conditions are still checked per event, in log order: if one event's ``expected_version``
    fails, that event is a ``conflict`` and the other events of the transaction still apply.
    The transaction makes the *append* atomic, not the conditions; check each receipt's
    outcome when the writes depend on each other.
    """

    def __init__(self, writer: WalWriter, client: OutcomeSource) -> None:
        """``writer``: the client's producers; ``client``: where receipts ask for outcomes."""
        self._writer = writer
        self._client = client
        self._producer: AIOKafkaProducer | None = None
        #: (context id, event id, ack future, key) of each event sent.
        self._pending: list[tuple[str, uuid.UUID, Any, bytes]] = []
        self.receipts: list[Receipt] = []

    async def __aenter__(self) -> Transaction:
        writer = self._writer
        config = writer.config
        started = time.monotonic()
        until = asyncio.get_running_loop().time() + config.send_window_s
        try:
            async with asyncio.timeout_at(until):
                await writer.transaction_lock.acquire()
        except TimeoutError:
            raise PublishTimeoutError(
                f"cannot begin a transaction within {config.timeout_s:g} s: another "
                "transaction of this client is still open"
            ) from None
        try:
            async with asyncio.timeout_at(until):
                cannot = "cannot begin a transaction"
                with kafka_errors(PublishError, cannot, also=(ValueError, OSError)):
                    self._producer = await writer.transactional_producer()
                    await self._producer.begin_transaction()
        except TimeoutError:
            reason = await writer.why_not_acknowledged(writer.transactional(), started, [])
            await self._fail_begin()
            raise PublishTimeoutError(
                f"cannot begin a transaction within {config.timeout_s:g} s: {reason}"
            ) from None
        except BaseException:
            await self._fail_begin()
            raise
        return self

    async def _fail_begin(self) -> None:
        self._producer = None
        try:
            await self._writer.drop_transactional_producer()
        finally:
            self._writer.transaction_lock.release()

    async def __aexit__(self, exc_type: object, exc: object, tb: object) -> None:
        """Commits, or aborts when the block raised. On any exit that did not end cleanly
        (a failed commit or abort, a cancellation) the client's transactional producer is
        dropped, since its state is unknown; the lock is released on every path."""
        clean = False
        try:
            if exc_type is not None:
                clean = await self._abort()
            else:
                await self._commit()
                clean = True
        finally:
            if not clean:
                await self._writer.drop_transactional_producer()
            self._writer.transaction_lock.release()

    async def _abort(self) -> bool:
        """Aborts within the deadline; False when it could not (the producer is dropped and
        the brokers abort the transaction at its timeout)."""
        assert self._producer is not None
        try:
            async with asyncio.timeout(self._writer.config.timeout_s):
                await self._producer.abort_transaction()
        except (KafkaError, TimeoutError):
            return False  # the caller's own exception goes on; the producer is dropped
        return True

    async def _commit(self) -> None:
        assert self._producer is not None
        config = self._writer.config
        unknown = (
            f" (it may still commit, or be aborted when its {config.transaction_timeout_s:g} s "
            "transaction timeout runs out)"
        )
        # On a timeout: the events no broker acknowledged, else (all were) the coordinator's.
        async with self._writer.deadline(
            "the transaction did not commit", self._unacknowledged, self._producer, unknown
        ):
            with kafka_errors(PublishError, "the transaction did not commit"):
                await self._producer.commit_transaction()
        for context_id, event_id, future, _ in self._pending:
            meta = future.result()
            self.receipts.append(
                Receipt(context_id, meta.partition, meta.offset, str(event_id), self._client)
            )

    def _unacknowledged(self) -> list[bytes]:
        return [key for *_, future, key in self._pending if not future.done()]

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
        """Queues the event in the transaction (its acknowledgement is awaited by the
        commit); waits only for the topic's metadata and buffer space, within the deadline.
        ``fence``: as the client's writes take it."""
        assert self._producer is not None, "use 'async with client.transaction() as tx'"
        writer = self._writer
        key, value, event_id = writer.event(context_id, op, expected_version, None, fence)
        async with writer.deadline(f"cannot send event {event_id}", lambda: [key], self._producer):
            with kafka_errors(PublishError, f"cannot send event {event_id}"):
                producer, topic = self._producer, writer.config.topics.events
                future = await when_room(lambda: producer.send(topic, value, key=key))
        self._pending.append((context_id, event_id, future, key))
