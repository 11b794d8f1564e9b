"""``WalWriter``: a client's way into the WAL — its producers, and appends that are
acknowledged within the call's deadline or fail saying why.

Writes go to the WAL through an idempotent producer with ``acks=all``, key = context id, so one
context lives in one partition and its events are totally ordered. The producer starts on the
first write (reads need no Kafka), once however many calls ask for it meanwhile. Each call
runs under one deadline (``ClientConfig.timeout_s``): aiokafka's idempotent producer retries a
batch no broker acknowledges without end, and its start waits for a producer id that a broker
without its controller cannot hand out. When the deadline passes, the rest of it
(``diagnosis_s``) goes to finding out why (``streams.health``), and the call raises
``PublishTimeoutError`` with that reason.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    KafkaConnectionError,
    KafkaError,
    KafkaTimeoutError,
    OutOfOrderSequenceNumber,
    ProducerClosed,
    ProducerFenced,
    UnknownProducerId,
)

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import EMPTY_METADATA, ContextEvent, Op
from lukhas_context.streams import kafka
from lukhas_context.streams.barriers import append_barriers
from lukhas_context.streams.breaker import Breaker, Breakers
from lukhas_context.streams.config import ClientConfig
from lukhas_context.streams.exceptions import (
    PublishCircuitOpenError,
    PublishError,
    PublishTimeoutError,
)
from lukhas_context.streams.health import Broker, explain, explained, parse_bootstrap
from lukhas_context.streams.kafka import kafka_error, kafka_errors
from lukhas_context.streams.locks import as_fence
from lukhas_context.streams.producer import WalProducer
from lukhas_context.streams.topics import partition_for
from lukhas_context.streams.validation import (
    check_event_id,
    check_metadata,
    check_version,
    context_key,
)

__all__ = ["PRODUCER_BROKEN", "WalWriter", "when_room"]

log = logging.getLogger(__name__)

T = TypeVar("T")
#: Errors after which an idempotent producer cannot send to that partition again: the broker
#: lost track of its sequence (a batch that timed out on the client may or may not have been
#: written) or its epoch (aiokafka reports INVALID_PRODUCER_EPOCH as ``ProducerFenced``). The
#: writer replaces the producer and sends again, the same bytes.
PRODUCER_BROKEN = (OutOfOrderSequenceNumber, UnknownProducerId, InvalidProducerEpoch,
                   ProducerFenced)  # fmt: skip


async def when_room(send: Callable[[], Awaitable[T]]) -> T:
    """``send()`` (a producer's ``send`` or ``send_and_wait``), waiting for room in the
    producer's buffer as long as the caller's deadline allows. aiokafka gives up on room
    after its request timeout with ``KafkaTimeoutError`` (the batches before the event are
    not acknowledged: a broker that does not answer), having appended nothing: that is a
    wait, not a failed send, so it goes on, and the caller's deadline then raises
    ``PublishTimeoutError`` with the brokers' reason."""
    while True:  # bounded by the caller's deadline
        try:
            return await send()
        except KafkaTimeoutError:
            continue


class WalWriter:
    """The producers of one client (an idempotent one, and a transactional one used by one
    transaction at a time under ``transaction_lock``) and the appends made with them."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.codec = EventCodec()
        self._producer: AIOKafkaProducer | None = None
        #: The producer's start, shared by every call that needs it meanwhile: concurrent
        #: first writes start one producer, not one each.
        self._producer_start: asyncio.Future[AIOKafkaProducer] | None = None
        #: The idempotent producer created last (the one starting, if a start is under way).
        self._started_producer: AIOKafkaProducer | None = None
        #: One transactional producer per client, used by one transaction at a time.
        self._tx_producer: AIOKafkaProducer | None = None
        self.transaction_lock = asyncio.Lock()
        #: Held while a broken producer is stopped and replaced (``_replace_producer``).
        self._replacing = asyncio.Lock()
        self._closed = False
        #: The producer path's circuit breakers (``streams.breaker``), one per WAL partition
        #: (``kafka:P``: one partition without a leader does not stop writes to the
        #: others), and ``kafka`` for writes before the partitions are known (the
        #: producer's start: Kafka unreachable). Judged by failures only, never by latency
        #: (an ``acks=all`` write is slow while the in-sync replicas change, yet
        #: acknowledged).
        self.breakers = Breakers(config.breaker_policy)
        #: When each breaker last counted a failure (``send``).
        self._failed_at: dict[str, float] = {}

    @property
    def producer_started(self) -> bool:
        """Whether the idempotent producer has started (no write has needed it otherwise)."""
        return self._producer is not None

    def event(
        self, context_id: str, op: Op, expected_version: int | None,
        event_id: uuid.UUID | str | None = None, fence: Any = None,
        metadata: Mapping[str, str] | None = None,
    ) -> tuple[bytes, bytes, uuid.UUID]:  # fmt: skip
        """Validates and encodes one event: (key, value, event id); the id is the caller's
        (a ``UUID`` or its text) or a new random one. ``fence``: a ``Fence``, or a held
        ``Lock`` (its ``fence``), or None. ``metadata``: see ``check_metadata``."""
        key = context_key(context_id)
        check_version(expected_version)
        event_id = uuid.uuid4() if event_id is None else check_event_id(event_id)
        checked = None if fence is None else as_fence(fence)
        meta = check_metadata(metadata) if metadata else EMPTY_METADATA
        event = ContextEvent(event_id.bytes, context_id, op, expected_version, checked, meta)
        return key, self.codec.encode(event), event_id

    # ---- the idempotent producer ----

    async def producer(self) -> AIOKafkaProducer:
        """The client's one producer, started by the first call that needs it; calls made
        while it starts wait for that start (and share its failure; the next call tries
        again). A caller cancelled meanwhile does not cancel the start for the others."""
        if self._producer is not None:
            return self._producer
        if self._producer_start is None:
            start = asyncio.ensure_future(self._start_producer())
            # Retrieved even when every caller was cancelled: no "never retrieved" warning.
            start.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._producer_start = start
        return await asyncio.shield(self._producer_start)

    async def _start_producer(self) -> AIOKafkaProducer:
        try:
            if not self.config.bootstrap:
                raise PublishError("no Kafka bootstrap configured: writes need one")
            self._closed = False  # a client used again after close
            producer = kafka.wal_producer(self.config)
            self._started_producer = producer  # what it answered explains a failed start
            try:
                cannot = f"cannot reach Kafka at {self.config.bootstrap}"
                with kafka_errors(PublishError, cannot, also=(ValueError, OSError)):
                    await producer.start()
            except (TimeoutError, PublishError) as exc:
                # A timeout is its start deadline (an OSError too): the caller's deadline
                # handling says why.
                await producer.stop()
                config = self.config
                better = await explained(
                    exc, cannot, config.bootstrap, config.kafka_security, config.diagnosis_s
                )
                if better is exc:
                    raise
                raise better from exc
            self._producer = producer
            return producer
        finally:
            self._producer_start = None

    async def send(
        self, key: bytes, value: bytes, event_id: uuid.UUID, partition: int | None = None,
        what: str = "event",
    ) -> Any:  # fmt: skip
        """Appends one encoded event (``event()``) and returns its record metadata once the
        WAL acknowledged it; the producer's start and every retry within the deadline.
        ``partition``: where (None: the key's partition); ``what`` names the record in
        errors (a transaction's record is sent here too)."""
        breaker = self.breaker_of(key, partition)
        permit = breaker.acquire()
        if permit is None:
            retry = breaker.retry_after_s()
            raise PublishCircuitOpenError(
                f"{what} {event_id} not sent: the WAL's circuit breaker is open after writes "
                f"that failed (the last: {breaker.last_error}); it lets a write through in "
                f"{retry:.3f} s. Nothing was sent: sending again is safe.",
                retry,
            )
        # One deadline for the whole call: the idempotent producer retries a batch no broker
        # acknowledges without end, and its start waits for a producer id.
        where = (lambda: None) if partition is not None else (lambda: [key])
        started = time.monotonic()
        try:
            async with self.deadline(f"the WAL did not acknowledge {what} {event_id}", where):
                producer = await self.producer()
                meta = await self._send_until_acknowledged(
                    producer, key, value, event_id, partition, what
                )
        except PublishError as exc:
            # Writes that were all in flight when one failed saw one outage, not several: a
            # failure counts only for a write sent after the last failure counted, so a
            # burst of writes timing out together does not open the breaker by itself.
            if _kafka_failed(exc) and started >= self._failed_at.get(breaker.name, -1.0):
                breaker.record(False, error=str(exc))
                self._failed_at[breaker.name] = time.monotonic()
            else:  # the record's own fault (too large, refused), or an outage counted
                breaker.release(permit)
            raise
        except BaseException:  # cancelled, or a bug: nothing to judge Kafka by
            breaker.release(permit)
            raise
        breaker.record(True)
        return meta

    def breaker_of(self, key: bytes, partition: int | None = None) -> Breaker:
        """The breaker of the WAL partition a record goes to (``kafka`` while the
        partition count is not known: the producer has not started)."""
        if partition is None:
            producer = self._producer
            cluster = getattr(getattr(producer, "client", None), "cluster", None)
            known = cluster.partitions_for_topic(self.config.topics.events) if cluster else None
            if known:
                partition = partition_for(key, len(known))
        return self.breakers[WAL_ENDPOINT if partition is None else f"{WAL_ENDPOINT}:{partition}"]

    async def partition_count(self) -> int:
        """How many partitions the WAL has (the producer's metadata, within the deadline)."""
        topic = self.config.topics.events
        async with self.deadline(f"no metadata of {topic}", lambda: None):
            with kafka_errors(PublishError, f"no metadata of {topic}"):
                producer = await self.producer()
                return len(await producer.partitions_for(topic))

    async def _send_until_acknowledged(
        self, producer: AIOKafkaProducer, key: bytes, value: bytes, event_id: uuid.UUID,
        partition: int | None = None, what: str = "event",
    ) -> Any:  # fmt: skip
        """Sends until acknowledged; a send that an error failed is repeated, up to
        ``send_attempts`` sends. A repeat carries the very same bytes, event id included: if
        the first did land after all, the fold applies the event once. Waiting for room in
        the producer's buffer is not a send (``when_room``). After an error that breaks the
        producer (``PRODUCER_BROKEN``) the repeat goes through a new one."""
        attempts = self.config.send_attempts
        topic = self.config.topics.events
        for attempt in range(1, attempts + 1):
            try:
                send = functools.partial(
                    producer.send_and_wait, topic, value, key=key, partition=partition
                )
                return await when_room(send)
            except (KafkaError, PublishError) as exc:
                # A producer another call is replacing or replaced: closed, or gave up what it
                # held (not the client's own close: nothing is sent after that).
                replaced = (
                    isinstance(exc, ProducerClosed | PublishError)
                    and not self._closed
                    and (producer is not self._producer or self._replacing.locked())
                )
                broken = replaced or isinstance(exc, PRODUCER_BROKEN)
                if not (broken or getattr(exc, "retriable", False)) or attempt == attempts:
                    if isinstance(exc, PublishError):
                        raise
                    said = (
                        f"the WAL did not acknowledge {what} {event_id} after {attempt} attempt(s)"
                    )
                    raise kafka_error(PublishError, said, exc) from exc
                if broken:
                    producer = await self._replace_producer(producer, exc)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _replace_producer(self, broken: AIOKafkaProducer, why: BaseException
                                ) -> AIOKafkaProducer:  # fmt: skip
        """A new idempotent producer in place of ``broken`` (once, however many calls saw it
        break). The old one is stopped first, with its bounded flush: what it holds for other
        partitions is still delivered (and acknowledged to its callers), what it holds for
        the broken one fails again and is sent again, by its callers, through the new one.
        Calls that meanwhile find the old one closed send again through the new one too."""
        async with self._replacing:
            if self._producer is not None and id(self._producer) == id(broken):
                log.warning("the WAL producer broke (%r): replacing it", why)
                await broken.stop()
                self._producer = None
        return await self.producer()

    async def append_barriers(self, checkpoint_id: str) -> dict[int, int]:
        """Appends the barrier of ``checkpoint_id`` to every WAL partition, within the
        deadline; returns the offset of each."""
        topic = self.config.topics.events
        late = f"the barriers of checkpoint {checkpoint_id} were not acknowledged"
        async with self.deadline(late, lambda: None):
            with kafka_errors(PublishError, "could not append the checkpoint barriers"):
                producer = await self.producer()
                partitions = len(await producer.partitions_for(topic))
                offsets = await append_barriers(
                    producer, self.codec, topic, checkpoint_id, partitions
                )
        return offsets

    # ---- the transactional producer ----

    def transactional(self) -> AIOKafkaProducer | None:
        """The transactional producer, if one was made (and not dropped)."""
        return self._tx_producer

    async def transactional_producer(self) -> AIOKafkaProducer:
        """The transactional producer, made and started by the first transaction. One that
        fails to start stays until ``drop_transactional_producer``."""
        if self._tx_producer is None:
            tid = f"{self.config.client_id}-tx-{uuid.uuid4().hex}"
            self._tx_producer = kafka.wal_producer(self.config, transactional_id=tid)
            await self._tx_producer.start()
        return self._tx_producer

    async def drop_transactional_producer(self) -> None:
        """Stops the transactional producer after a transaction that did not end cleanly:
        what it still holds belongs to that transaction, so nothing is flushed."""
        producer, self._tx_producer = self._tx_producer, None
        if isinstance(producer, WalProducer):
            await producer.stop(flush=False)
        elif producer is not None:
            await producer.stop()

    # ---- deadlines and their reasons ----

    @contextlib.asynccontextmanager
    async def deadline(
        self,
        what: str,
        keys: Callable[[], list[bytes] | None],
        producer: AIOKafkaProducer | None = None,
        after: str = "",
    ) -> AsyncIterator[None]:
        """Runs the block within the call's deadline (``send_window_s``). When it passes,
        raises ``PublishTimeoutError``: ``what`` did not happen within ``timeout_s``
        (``after``: what the caller adds), and why the brokers did not acknowledge writes of
        ``keys()`` with ``producer`` (None: the idempotent producer)."""
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.send_window_s):
                yield
        except TimeoutError:
            current = producer or self._producer or self._started_producer
            reason = await self.why_not_acknowledged(current, started, keys())
            raise PublishTimeoutError(
                f"{what} within {self.config.timeout_s:g} s{after}: {reason}"
            ) from None

    async def why_not_acknowledged(
        self, producer: AIOKafkaProducer | None, since: float, keys: list[bytes] | None
    ) -> str:
        """Why the brokers did not acknowledge writes of ``keys`` (None: the topic's every
        partition; []: none in particular), found within the config's diagnosis time."""
        topic = self.config.topics.events
        brokers: list[Broker] = []
        partitions: list[int] | None = None
        answers: dict[int, str] = {}
        if isinstance(producer, WalProducer):
            cluster = producer.client.cluster
            brokers = [Broker(b.host, b.port, b.nodeId) for b in cluster.brokers()]
            count = len(cluster.partitions_for_topic(topic) or ())
            if keys is not None and (count or not keys):
                partitions = sorted({partition_for(key, count) for key in keys})
            answers = producer.answers(since)
        brokers = brokers or parse_bootstrap(self.config.bootstrap)
        return await explain(
            brokers, topic, partitions, self.config.diagnosis_s, answers,
            self.config.kafka_security,
        )  # fmt: skip

    async def close(self) -> None:
        """Stops both producers, within about ``close_timeout_s``: sends not acknowledged by
        then are given up (they may still land: their outcome is unknown)."""
        self._closed = True
        if self._producer_start is not None:  # a start in flight: its producer is closed too
            with contextlib.suppress(Exception):
                await asyncio.shield(self._producer_start)
        producers = [p for p in (self._producer, self._tx_producer) if p is not None]
        self._producer = self._tx_producer = None
        await asyncio.gather(*(producer.stop() for producer in producers))


#: The name of the producer path's breaker (``ContextClient.breakers()``, metrics).
WAL_ENDPOINT = "kafka"


def _kafka_failed(exc: PublishError) -> bool:
    """Whether a failed write says Kafka failed (its deadline passed, no connection, a
    retriable error to the end), as opposed to the record being refused for what it is (a
    Kafka error that is not retriable: too large, not authorized)."""
    if isinstance(exc, PublishTimeoutError):
        return True
    cause: BaseException | None = exc.__cause__
    for _ in range(8):  # a chain of errors explaining one another; a cycle ends here
        if cause is None:
            break
        if isinstance(cause, (KafkaConnectionError, *PRODUCER_BROKEN)):
            return True
        if isinstance(cause, KafkaError):
            return bool(getattr(cause, "retriable", False))
        cause = cause.__cause__
    return True
