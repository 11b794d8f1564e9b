"""``ContextClient``: the public client (async), and ``SyncContextClient``, its sync face.

Writes go to the WAL through an idempotent producer with ``acks=all``, key = context id, so
one context lives in one partition and its events are totally ordered. A write returns when the
brokers acknowledged it, with a ``Receipt`` naming where it landed; a read with
``after=receipt`` waits until the processor folded that position (read-your-writes).

Arguments are validated before anything is sent; each failure is a typed ``ValidationError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload
from urllib.parse import quote

import aiohttp
import orjson
import xxhash
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import (
    EMPTY_METADATA,
    ContextEvent,
    Delete,
    Op,
    Patch,
    PatchFormat,
    Put,
    Touch,
)
from lukhas_context.schemas.patch import PatchError, make_json_patch, validate_json_patch
from lukhas_context.state.checkpoints import check_checkpoint_id
from lukhas_context.streams.barriers import append_barriers, published_manifest
from lukhas_context.streams.exceptions import (
    CheckpointTimeoutError,
    ChecksumMismatchError,
    ContextNotFoundError,
    DocumentTooLargeError,
    InvalidConfigError,
    InvalidPatchError,
    InvalidPositionError,
    InvalidTTLError,
    NoSuchPositionError,
    NotAppliedYetError,
    PublishError,
    PublishTimeoutError,
    ReadError,
    ValidationError,
)
from lukhas_context.streams.health import Broker, explain, parse_bootstrap
from lukhas_context.streams.position import parse_position
from lukhas_context.streams.producer import WalProducer
from lukhas_context.streams.topics import Topics, partition_for
from lukhas_context.streams.validation import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    canonical_json,
    check_patch,
    context_key,
    ttl_ms,
)
from lukhas_context.streams.watch import Watcher

T = TypeVar("T")
#: Pause before a read is tried again on another worker (after a 421 or a failure).
ROUTE_RETRY_S = 0.2
#: The longest wait a read may ask for, in seconds (the read API waits at most 30 s a request).
MAX_WAIT_S = 3600.0
#: The longest Kafka transaction a client may ask for. A transaction left open (its client
#: killed mid-way) holds every partition it wrote for this long: readers ``read_committed``
#: see nothing past it. Brokers started by ``lukhas up`` refuse more
#: (``transaction.max.timeout.ms``).
MAX_TRANSACTION_TIMEOUT_S = 60.0
#: The most of a call's deadline kept for finding out why it failed (``streams.health``).
DIAGNOSIS_S = 3.0


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where the client writes and reads, and how long it waits. Nothing here reads the
    environment. Times are seconds; ``InvalidConfigError`` for a value out of range.

    ``timeout_s`` is the deadline of each call that talks to Kafka (a mutation, ``checkpoint``,
    a transaction's begin, send, commit or abort), retries and the producer's start included:
    the call returns or raises ``PublishTimeoutError`` with the brokers' reason within it.
    ``request_timeout_s`` bounds one Kafka request inside it (aiokafka's
    ``request_timeout_ms``, also how long a broker waits for its replicas before it answers
    ``REQUEST_TIMED_OUT``), at most half of ``timeout_s`` so that a call sees that answer
    and can retry. ``close_timeout_s``: how long ``close()`` waits for sends not yet
    acknowledged before it gives them up. ``transaction_timeout_s``: how long a transaction
    may stay open before the brokers abort it, at most ``MAX_TRANSACTION_TIMEOUT_S``.
    """

    bootstrap: str
    api_url: str | None = None
    topics: Topics = field(default_factory=Topics)
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    request_timeout_s: float = 10.0
    client_id: str = "lukhas-client"
    #: Sends of one event (same bytes, same event id) before a write fails, all within
    #: ``timeout_s``: a send is repeated after an error that failed it, never after a wait.
    send_attempts: int = 3
    timeout_s: float = 30.0
    close_timeout_s: float = 5.0
    transaction_timeout_s: float = 10.0

    def __post_init__(self) -> None:
        if isinstance(self.send_attempts, bool) or not (
            isinstance(self.send_attempts, int) and self.send_attempts >= 1
        ):
            raise InvalidConfigError(
                f"send_attempts must be an int >= 1, got {self.send_attempts!r}"
            )
        for name in ("timeout_s", "request_timeout_s", "close_timeout_s", "transaction_timeout_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise InvalidConfigError(f"{name} must be a positive finite number of seconds, "
                                         f"got {value!r}")  # fmt: skip
        if self.transaction_timeout_s > MAX_TRANSACTION_TIMEOUT_S:
            raise InvalidConfigError(
                f"transaction_timeout_s must be at most {MAX_TRANSACTION_TIMEOUT_S:g}, got "
                f"{self.transaction_timeout_s:g}: an open transaction holds its partitions "
                "for that long"
            )

    @property
    def send_window_s(self) -> float:
        """The part of ``timeout_s`` a call waits for Kafka; the rest is for saying why not."""
        return self.timeout_s - self.diagnosis_s

    @property
    def kafka_request_timeout_s(self) -> float:
        """``request_timeout_s``, at most half of ``timeout_s``."""
        return min(self.request_timeout_s, self.timeout_s / 2)

    @property
    def diagnosis_s(self) -> float:
        return min(DIAGNOSIS_S, self.timeout_s * 0.2)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the fold did with an event.

    ``status``: ``applied`` (``version`` is the new version), ``conflict`` (a version condition
    failed; ``version`` is the current one), ``rejected`` (``reason`` says why; nothing
    changed), ``dead_lettered`` (the record could not be read as an event). A retried event
    reports the outcome of its original, with ``duplicate_of`` naming the original's offset.
    """

    status: str
    version: int | None
    reason: str | None = None
    duplicate_of: int | None = None

    @property
    def applied(self) -> bool:
        return self.status == "applied"


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where an acknowledged event landed in the WAL."""

    context_id: str
    partition: int
    offset: int
    event_id: str
    _client: ContextClient | None = field(default=None, compare=False, repr=False)

    @property
    def position(self) -> str:
        """``PARTITION:OFFSET``, the form ``get(after=...)`` and ``lukhas get --after`` take."""
        return f"{self.partition}:{self.offset}"

    async def outcome(self, timeout: float = 5.0) -> Outcome:
        """Waits (at most ``timeout`` s) until the event is folded and returns its outcome."""
        if self._client is None:
            raise ReadError("this receipt is not bound to a client")
        return await self._client.outcome(self.partition, self.offset, timeout)


@dataclass(frozen=True, slots=True)
class DryRun:
    """What a mutation would do to the current state; nothing was appended. ``status`` is
    one of the fold's (``applied``, ``conflict``, ``rejected``), or ``dead_lettered`` /
    ``duplicate`` when the fold would not fold the event at all (``version`` None then)."""

    status: str
    version: int | None
    reason: str | None
    kind: str | None
    doc: dict[str, Any] | None
    checksum: str | None
    expires_at_ms: int | None

    @property
    def applied(self) -> bool:
        return self.status == "applied"


@dataclass(frozen=True, slots=True)
class Context:
    """A context as the read API returns it."""

    context_id: str
    version: int
    doc: dict[str, Any]
    checksum: str
    offset: int
    partition: int
    expires_at_ms: int | None = None


@dataclass(frozen=True, slots=True)
class CheckpointRequest:
    """A checkpoint asked for: its id and the WAL offset of its barrier in each partition."""

    checkpoint_id: str
    offsets: dict[int, int]


class ContextClient:
    """Async client. Use ``async with ContextClient(config) as client:``.

    Every mutation takes ``expected_version`` (apply only if the context is at that version;
    0 = must not exist) and ``dry_run`` (return what the fold would do, append nothing).
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._codec = EventCodec()
        self._producer: AIOKafkaProducer | None = None
        #: The producer's start, shared by every call that needs it meanwhile: concurrent
        #: first writes start one producer, not one each.
        self._producer_start: asyncio.Future[AIOKafkaProducer] | None = None
        self._http: aiohttp.ClientSession | None = None
        #: One transactional producer per client, used by one transaction at a time.
        self._tx_producer: AIOKafkaProducer | None = None
        self._tx_lock = asyncio.Lock()
        #: The idempotent producer created last (the one starting, if a start is under way).
        self._started_producer: AIOKafkaProducer | None = None
        #: Last document seen per context (from get/update), for update()'s deltas.
        self._seen: OrderedDict[str, tuple[int | None, dict[str, Any]]] = OrderedDict()
        #: Read API URLs configured (``api_url``, comma-separated), and the routing table
        #: learned from the workers: partition -> URL of the worker serving it.
        self._seeds = [u.strip() for u in (config.api_url or "").split(",") if u.strip()]
        self._routes: dict[int, str] = {}
        self._partition_count = 0
        self._routes_loaded = False

    async def start(self) -> None:
        """Connects nothing: the producer starts on the first write, so that reads work
        without Kafka and invalid arguments fail before any connection is tried."""

    async def _ensure_producer(self) -> AIOKafkaProducer:
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
            producer = self._new_producer()
            try:
                await producer.start()
            except TimeoutError:
                # Its start deadline (an OSError too): the caller's deadline handling says why.
                await producer.stop()
                raise
            except (KafkaError, ValueError, OSError) as exc:
                await producer.stop()
                raise PublishError(
                    f"cannot reach Kafka at {self.config.bootstrap}: {_error_text(exc)}"
                ) from exc
            self._producer = producer
            return producer
        finally:
            self._producer_start = None

    def _new_producer(self, transactional_id: str | None = None) -> AIOKafkaProducer:
        config = self.config
        producer = WalProducer(
            start_timeout_s=config.timeout_s,
            close_timeout_s=config.close_timeout_s,
            bootstrap_servers=config.bootstrap,
            client_id=config.client_id,
            enable_idempotence=True,
            acks="all",
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=int(config.kafka_request_timeout_s * 1000),
            transactional_id=transactional_id,
            transaction_timeout_ms=int(config.transaction_timeout_s * 1000),
        )
        if transactional_id is None:
            self._started_producer = producer  # what it answered explains a failed start
        return producer

    async def _why_not_acknowledged(
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
        return await explain(brokers, topic, partitions, self.config.diagnosis_s, answers)

    async def close(self) -> None:
        """Closes the producers and HTTP sessions, within about ``close_timeout_s``: sends
        not acknowledged by then are given up (they may still land: their outcome is
        unknown)."""
        if self._producer_start is not None:  # a start in flight: its producer is closed too
            with contextlib.suppress(Exception):
                await asyncio.shield(self._producer_start)
        producers = [p for p in (self._producer, self._tx_producer) if p is not None]
        self._producer = self._tx_producer = None
        await asyncio.gather(*(producer.stop() for producer in producers))
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def __aenter__(self) -> ContextClient:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    # ---- writes ----

    async def put(
        self,
        context_id: str,
        doc: dict[str, Any],
        ttl: float | None = None,
        *,
        expected_version: int | None = None,
        dry_run: bool = False,
    ) -> Any:
        """Replaces the whole document; ``ttl`` in seconds. Returns a ``Receipt`` once the WAL
        acknowledged (a ``DryRun`` with ``dry_run=True``)."""
        data = canonical_json(doc, self.config.max_document_bytes)
        result = await self._submit(context_id, Put(data, ttl_ms(ttl)), expected_version, dry_run)
        if not dry_run:
            self._remember(context_id, None, data)
        return result

    async def patch(
        self,
        context_id: str,
        patch: list[Any] | dict[str, Any],
        *,
        merge: bool = False,
        expected_version: int | None = None,
        expected_checksum: str | None = None,
        ttl: float | None = None,
        clear_ttl: bool = False,
        dry_run: bool = False,
    ) -> Any:
        """Applies an RFC 6902 JSON Patch (a list of ops), or with ``merge=True`` an RFC 7386
        merge patch (an object), atomically: an invalid op rejects the whole patch.
        ``expected_checksum`` (16 hex digits) is the checksum the writer expects after it."""
        if merge and not isinstance(patch, dict):
            raise InvalidPatchError("a merge patch must be a JSON object")
        if not merge and not isinstance(patch, list):
            raise InvalidPatchError("a JSON Patch must be a list of operations")
        if ttl is not None and clear_ttl:
            raise InvalidTTLError("a patch cannot both set and clear the TTL")
        data = _json_bytes(patch, self.config.max_document_bytes, "patch")
        check_patch(patch, merge)
        if not dry_run:
            self._seen.pop(context_id, None)  # the base update() would diff against is gone
        fmt = PatchFormat.MERGE_PATCH if merge else PatchFormat.JSON_PATCH
        op = Patch(fmt, data, _checksum_bytes(expected_checksum), ttl_ms(ttl), clear_ttl)
        return await self._submit(context_id, op, expected_version, dry_run)

    async def touch(
        self,
        context_id: str,
        ttl: float | None,
        *,
        expected_version: int | None = None,
        dry_run: bool = False,
    ) -> Any:
        """Sets the TTL to ``ttl`` seconds from now (log time), or removes it with None."""
        if not dry_run:
            self._seen.pop(context_id, None)  # its version moves on
        return await self._submit(context_id, Touch(ttl_ms(ttl)), expected_version, dry_run)

    async def delete(
        self, context_id: str, *, expected_version: int | None = None, dry_run: bool = False
    ) -> Any:
        """Deletes the context. A context that does not exist is a rejected event, not an error
        here: the WAL accepted it and the fold refuses it (see ``Receipt.outcome()``)."""
        if not dry_run:
            self._seen.pop(context_id, None)
        return await self._submit(context_id, Delete(), expected_version, dry_run)

    async def update(
        self, context_id: str, new_doc: dict[str, Any], ttl: float | None = None
    ) -> Receipt:
        """Writes ``new_doc`` as the whole new document, sending only a delta when it can.

        Against the document this client last saw for the context (from ``get`` or an earlier
        ``update``), it sends a JSON Patch when that is smaller than the document, conditioned
        on the version it saw (when known) and on the checksum of ``new_doc``: the fold rejects
        it if the base was not what this client thought. Otherwise, it sends a put.
        """
        data = canonical_json(new_doc, self.config.max_document_bytes)
        seen = self._seen.get(context_id)
        expected = seen[0] if seen is not None else None
        op: Op = Put(data, ttl_ms(ttl))
        if seen is not None:
            ops = make_json_patch(seen[1], new_doc)
            delta = _json_bytes(ops, len(data), "patch", quiet=True)
            if delta is not None and len(delta) < len(data) and _patch_fits(ops):
                # clear_ttl when no ttl is given: update() writes the whole new document, and a
                # put of it would leave no TTL either, whichever form goes on the wire.
                op = Patch(
                    PatchFormat.JSON_PATCH, delta, xxhash.xxh3_64_digest(data), ttl_ms(ttl),
                    clear_ttl=ttl is None,
                )  # fmt: skip
        receipt: Receipt = await self._submit(context_id, op, expected, False)
        self._remember(context_id, None if expected is None else expected + 1, data)
        return receipt

    def _remember(self, context_id: str, version: int | None, canonical: bytes) -> None:
        """Keeps the document last seen of a context (``update()`` diffs against it), parsed
        from its canonical JSON: a private copy the caller's dict cannot change."""
        self._seen.pop(context_id, None)
        self._seen[context_id] = (version, orjson.loads(canonical))
        while len(self._seen) > SEEN_CACHE_SIZE:
            self._seen.popitem(last=False)

    async def _drop_tx_producer(self) -> None:
        """Stops the transactional producer after a transaction that did not end cleanly:
        what it still holds belongs to that transaction, so nothing is flushed."""
        producer, self._tx_producer = self._tx_producer, None
        if isinstance(producer, WalProducer):
            await producer.stop(flush=False)
        elif producer is not None:
            await producer.stop()

    def transaction(self) -> Transaction:
        """``async with client.transaction() as tx:`` — writes that land together or not at
        all (one Kafka transaction). See ``Transaction``."""
        return Transaction(self)

    def event(
        self, context_id: str, op: Op, expected_version: int | None
    ) -> tuple[bytes, bytes, uuid.UUID]:
        """Validates and encodes one event: (key, value, event id)."""
        key = context_key(context_id)
        _check_version(expected_version)
        event_id = uuid.uuid4()
        event = ContextEvent(event_id.bytes, context_id, op, expected_version, None, EMPTY_METADATA)
        return key, self._codec.encode(event), event_id

    async def _submit(
        self, context_id: str, op: Op, expected_version: int | None, dry_run: bool
    ) -> Any:
        key, value, event_id = self.event(context_id, op, expected_version)
        if dry_run:
            return await self._dry_run(value)
        started = time.monotonic()
        try:
            # One deadline for the whole call: the idempotent producer retries a batch no
            # broker acknowledges without end, and its start waits for a producer id.
            async with asyncio.timeout(self.config.send_window_s):
                producer = await self._ensure_producer()
                meta = await self._send_event(producer, key, value, event_id)
        except TimeoutError:
            producer = self._producer or self._started_producer
            reason = await self._why_not_acknowledged(producer, started, [key])
            raise PublishTimeoutError(
                f"the WAL did not acknowledge event {event_id} within "
                f"{self.config.timeout_s:g} s: {reason}"
            ) from None
        return Receipt(context_id, meta.partition, meta.offset, str(event_id), self)

    async def _send_event(
        self, producer: AIOKafkaProducer, key: bytes, value: bytes, event_id: uuid.UUID
    ) -> Any:
        """Sends until acknowledged; a send that an error failed is repeated, up to
        ``send_attempts`` sends. A repeat carries the very same bytes, event id included: if
        the first did land after all, the fold applies the event once."""
        attempts = self.config.send_attempts
        for attempt in range(1, attempts + 1):
            try:
                return await producer.send_and_wait(self.config.topics.events, value, key=key)
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) or attempt == attempts:
                    raise PublishError(
                        f"the WAL did not acknowledge event {event_id} after {attempt} "
                        f"attempt(s): {_error_text(exc)}"
                    ) from exc
        raise AssertionError("unreachable")  # pragma: no cover

    # ---- reads ----

    async def get(
        self, context_id: str, after: Receipt | str | None = None, timeout: float = 5.0
    ) -> Context:
        """Reads a context from the read API; with ``after``, first waits (at most ``timeout``
        seconds) until that WAL position is folded. ``ContextNotFoundError`` when it does not
        exist, ``NotAppliedYetError`` when the wait times out, ``ChecksumMismatchError`` when
        the document does not match its checksum (it is never returned then);
        ``NoSuchPositionError`` when ``after`` names a position the WAL does not have."""
        context_key(context_id)
        _check_wait(timeout)
        params = {}
        partition = await self._partition_of(context_id)
        if after is not None:
            position = after.position if isinstance(after, Receipt) else after
            wait_on = _parse_position(position)
            if partition is not None and wait_on is not None and wait_on[0] != partition:
                # Another partition, perhaps another worker: wait there, then read here.
                await self._wait_folded(*wait_on, timeout)
            else:
                params["min_offset"] = position
                params["timeout"] = str(timeout)
        path = f"/v1/contexts/{quote(context_id, safe='')}"
        status, body = await self._request("GET", path, params, timeout, partition=partition)
        ctx = _context_from(status, body, context_id)
        canonical = orjson.dumps(ctx.doc, option=orjson.OPT_SORT_KEYS)
        expected = xxhash.xxh3_64_hexdigest(canonical)
        if expected != ctx.checksum:
            raise ChecksumMismatchError(
                f"context {context_id!r} version {ctx.version}: document checksum {expected}, "
                f"stored checksum {ctx.checksum}"
            )
        self._remember(context_id, ctx.version, canonical)
        return ctx

    async def outcome(self, partition: int, offset: int, timeout: float = 5.0) -> Outcome:
        """The outcome of the event at ``partition:offset`` (see ``Receipt.outcome``):
        ``NotAppliedYetError`` when it is not folded within ``timeout`` seconds,
        ``NoSuchPositionError`` at once when the WAL has no such partition or offset."""
        _check_wait(timeout)
        data = await self._outcome_of(partition, offset, timeout)
        assert data is not None
        if data["status"] == "duplicate":
            original = await self.outcome(partition, data["duplicate_of"], timeout)
            return Outcome(original.status, original.version, original.reason, data["duplicate_of"])
        return Outcome(data["status"], data["version"], data["reason"])

    async def _wait_folded(self, partition: int, offset: int, timeout: float) -> None:
        """Until the worker serving ``partition`` folded ``offset`` (its outcome endpoint
        waits: 200 or 404, the journal forgot it, both mean folded)."""
        await self._outcome_of(partition, offset, timeout, forgotten_ok=True)

    async def _outcome_of(
        self, partition: int, offset: int, timeout: float, forgotten_ok: bool = False
    ) -> dict[str, Any] | None:
        """``GET /v1/outcomes/P/O``, which waits until the offset is folded: the entry, or
        None when the journal forgot it (``forgotten_ok``; else a ``ReadError``)."""
        path = f"/v1/outcomes/{partition}/{offset}"
        status, body = await self._request(
            "GET", path, {"timeout": str(timeout)}, timeout, partition=partition
        )
        data = _json_body(status, body)
        if status == 404 and data.get("no_such"):
            raise NoSuchPositionError(str(data.get("error")))
        if status == 404 and forgotten_ok:
            return None
        if status == 504:
            raise NotAppliedYetError(str(data.get("error")), data.get("open_transaction"))
        if status != 200:
            raise ReadError(f"read API answered {status}: {data.get('error')}")
        return data

    # ---- subscriptions ----

    def watch(
        self,
        context_id: str | None = None,
        prefix: str | None = None,
        start: object = "latest",
        deltas: bool = False,
        idle_timeout: float | None = None,
        on_gap: str = "report",
    ) -> Watcher:
        """Subscribes to the change stream: ``async with client.watch(prefix="agent:") as w:
        async for change in w: ...`` yields ``Change`` (and ``Gap``) items.

        One context (``context_id``), the ids starting with ``prefix``, or everything.
        ``start``: ``"latest"`` (changes from now on), ``"earliest"``, a timestamp
        (``datetime``, epoch ms or ISO time: the changes logged at or after it) or a resume
        token (``change.token`` of the last change handled: every later change arrives
        exactly once). ``deltas=True``: a change carries the RFC 6902 patch from the previous
        document seen instead of the whole document.
        See ``streams.watch`` for the guarantees."""
        return Watcher(
            self.config.bootstrap, self.config.topics, context_id=context_id, prefix=prefix,
            start=start, deltas=deltas, idle_timeout=idle_timeout, on_gap=on_gap,
            client_id=f"{self.config.client_id}-watch",
        )  # fmt: skip

    # ---- operations ----

    async def checkpoint(self, checkpoint_id: str | None = None) -> CheckpointRequest:
        """Appends a checkpoint barrier to every WAL partition. Each worker that folds a
        partition checkpoints its store at exactly that offset and publishes the manifest on
        the checkpoints topic (``wait_checkpoint``). The id defaults to
        ``ck-YYYYmmddTHHMMSSZ-XXXX``. A worker that already holds a checkpoint of the id
        compares it with its store instead of taking it again."""
        if checkpoint_id is None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            checkpoint_id = f"ck-{stamp}-{uuid.uuid4().hex[:4]}"
        check_checkpoint_id(checkpoint_id)
        topic = self.config.topics.events
        started = time.monotonic()
        try:
            async with asyncio.timeout(self.config.send_window_s):
                producer = await self._ensure_producer()
                partitions = len(await producer.partitions_for(topic))
                offsets = await append_barriers(
                    producer, self._codec, topic, checkpoint_id, partitions
                )
        except KafkaError as exc:
            raise PublishError(
                f"could not append the checkpoint barriers: {_error_text(exc)}"
            ) from exc
        except TimeoutError:
            producer = self._producer or self._started_producer
            reason = await self._why_not_acknowledged(producer, started, None)
            raise PublishTimeoutError(
                f"the barriers of checkpoint {checkpoint_id} were not acknowledged within "
                f"{self.config.timeout_s:g} s: {reason}"
            ) from None
        return CheckpointRequest(checkpoint_id, offsets)

    async def wait_checkpoint(
        self, request: CheckpointRequest, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Waits until every partition's checkpoint of ``request`` is published and returns
        their manifests (partition order); ``CheckpointTimeoutError`` names the missing ones."""
        _check_wait(timeout)
        topic = self.config.topics.checkpoints
        found: dict[int, dict[str, Any]] = {}
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.config.bootstrap, client_id=self.config.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            try:
                await asyncio.wait_for(consumer.start(), max(0.001, timeout))
            except TimeoutError:
                raise CheckpointTimeoutError(
                    f"checkpoint {request.checkpoint_id}: no broker of {self.config.bootstrap} "
                    f"let {topic} be read within {timeout:g} s"
                ) from None
            while len(found) < len(request.offsets):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(request.offsets) - set(found))
                    raise CheckpointTimeoutError(
                        f"checkpoint {request.checkpoint_id}: no manifest from partitions "
                        f"{missing} within {timeout:g} s (is a worker folding them?)"
                    )
                batch = await consumer.getmany(timeout_ms=int(min(left, 1.0) * 1000))
                for records in batch.values():
                    for m in records:
                        manifest = published_manifest(
                            m.key, m.value, request.checkpoint_id, request.offsets,
                            self.config.topics.events,
                        )  # fmt: skip
                        if manifest is not None:
                            found[manifest["partition"]] = manifest
        except KafkaError as exc:
            raise ReadError(f"cannot read {topic}: {exc}") from exc
        finally:
            await consumer.stop()
        return [found[p] for p in sorted(found)]

    async def _dry_run(self, value: bytes) -> DryRun:
        status, body = await self._request("POST", "/v1/dry-run", {}, 5.0, value)
        data = _json_body(status, body)
        if status != 200:
            raise ReadError(f"read API answered {status}: {data.get('error')}")
        fields: dict[str, Any] = {name: data.get(name) for name in DryRun.__slots__}
        return DryRun(**fields)

    async def _request(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        timeout: float,
        body: bytes = b"",
        partition: int | None = None,
    ) -> tuple[int, bytes]:
        """One read API request, sent to the worker that serves ``partition`` when the
        routing table knows it (else to a configured worker, which forwards it). A worker
        that is gone, or answers 421 (the partition moved), makes the client refresh the
        table and try again, until ``timeout`` (plus 5 s) has passed; but when no worker
        can be connected to at all (every configured URL refused), it fails at once."""
        if not self._seeds:
            raise ReadError("no api_url configured: reads need a worker's read API")
        _check_wait(timeout)
        deadline = time.monotonic() + timeout + 5
        while True:
            routed = self._routes.get(partition) if partition is not None else None
            base = routed or self._seeds[0]
            left = max(0.0, deadline - 5 - time.monotonic())
            if "timeout" in params:  # a retry waits no longer than the time left
                params = {**params, "timeout": f"{left:.3f}"}
            try:
                status, answer = await self._send_request(base, method, path, params, left, body)
                if status != 421:
                    return status, answer
                failure: ReadError | None = None
            except ReadError as exc:
                failure, status, answer = exc, 0, b""
            if time.monotonic() >= deadline:
                if failure is not None:
                    raise failure
                return status, answer
            reachable = await self._refresh_routes(exclude=base)
            if failure is not None and _refused(failure) and not reachable:
                urls = ", ".join(dict.fromkeys([base, *self._seeds]))
                raise ReadError(
                    f"cannot connect to the read API at {urls}: {_refused(failure)} "
                    "(is a worker running there? `lukhas status` shows the local one)"
                ) from failure
            await asyncio.sleep(ROUTE_RETRY_S)

    async def _send_request(
        self, base: str, method: str, path: str, params: dict[str, str], timeout: float,
        body: bytes,
    ) -> tuple[int, bytes]:  # fmt: skip
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = base.rstrip("/") + path
        try:
            client_timeout = aiohttp.ClientTimeout(total=timeout + 5)
            async with self._http.request(
                method, url, params=params, data=body or None, timeout=client_timeout
            ) as response:
                return response.status, await response.read()
        except aiohttp.ClientConnectorError as exc:
            raise ReadError(f"cannot connect to the read API at {base}: {_refused(exc)}") from exc
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise ReadError(f"read API {base} failed: {reason}") from exc

    async def _refresh_routes(self, exclude: str | None = None) -> bool:
        """Reloads the routing table (``GET /v1/members``) from the first worker that
        answers, configured ones first; a worker that just failed is asked last. False when
        no worker could be connected to at all (each refused the connection)."""
        # A configured worker that just failed goes to the back of the line, so requests with
        # no route (no partition, or none known) try the next one.
        if exclude in self._seeds and len(self._seeds) > 1:
            self._seeds = [u for u in self._seeds if u != exclude] + [exclude]
        known = list(dict.fromkeys([*self._seeds, *self._routes.values()]))
        known.sort(key=lambda url: url == exclude)
        reachable = False
        for base in known:
            try:
                status, answer = await self._send_request(base, "GET", "/v1/members", {}, 5, b"")
                reachable = True
                if status != 200:
                    continue
                data = orjson.loads(answer)
                routes = {int(p): str(url) for p, url in data["owners"].items()}
                count = int(data["partition_count"])
            except ReadError as exc:
                reachable = reachable or not _refused(exc)
                continue  # gone: ask the next
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not a worker's answer: ask the next
            self._routes = routes
            self._partition_count = count or self._partition_count
            return True
        return reachable

    async def _partition_of(self, context_id: str) -> int | None:
        """The partition of a context, once the routing table said how many there are."""
        if not self._partition_count and not self._routes_loaded:
            self._routes_loaded = True
            await self._refresh_routes()
        if not self._partition_count:
            return None
        return partition_for(context_id.encode(), self._partition_count)


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

    def __init__(self, client: ContextClient) -> None:
        self._client = client
        self._producer: AIOKafkaProducer | None = None
        #: (context id, event id, ack future, key) of each event sent.
        self._pending: list[tuple[str, uuid.UUID, Any, bytes]] = []
        self.receipts: list[Receipt] = []

    async def __aenter__(self) -> Transaction:
        client = self._client
        config = client.config
        started = time.monotonic()
        until = asyncio.get_running_loop().time() + config.send_window_s
        try:
            async with asyncio.timeout_at(until):
                await client._tx_lock.acquire()
        except TimeoutError:
            raise PublishTimeoutError(
                f"cannot begin a transaction within {config.timeout_s:g} s: another "
                "transaction of this client is still open"
            ) from None
        try:
            async with asyncio.timeout_at(until):
                if client._tx_producer is None:
                    tid = f"{config.client_id}-tx-{uuid.uuid4().hex}"
                    client._tx_producer = client._new_producer(transactional_id=tid)
                    await client._tx_producer.start()
                self._producer = client._tx_producer
                await self._producer.begin_transaction()
        except TimeoutError:
            reason = await client._why_not_acknowledged(client._tx_producer, started, [])
            await self._fail_begin()
            raise PublishTimeoutError(
                f"cannot begin a transaction within {config.timeout_s:g} s: {reason}"
            ) from None
        except (KafkaError, ValueError, OSError) as exc:
            await self._fail_begin()
            raise PublishError(f"cannot begin a transaction: {_error_text(exc)}") from exc
        except BaseException:
            await self._fail_begin()
            raise
        return self

    async def _fail_begin(self) -> None:
        self._producer = None
        try:
            await self._client._drop_tx_producer()
        finally:
            self._client._tx_lock.release()

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
                await self._client._drop_tx_producer()
            self._client._tx_lock.release()

    async def _abort(self) -> bool:
        """Aborts within the deadline; False when it could not (the producer is dropped and
        the brokers abort the transaction at its timeout)."""
        assert self._producer is not None
        try:
            async with asyncio.timeout(self._client.config.timeout_s):
                await self._producer.abort_transaction()
        except (KafkaError, TimeoutError):
            return False  # the caller's own exception goes on; the producer is dropped
        return True

    async def _commit(self) -> None:
        assert self._producer is not None
        config = self._client.config
        started = time.monotonic()
        try:
            async with asyncio.timeout(config.send_window_s):
                await self._producer.commit_transaction()
        except KafkaError as error:
            raise PublishError(f"the transaction did not commit: {_error_text(error)}") from error
        except TimeoutError:
            # The events no broker acknowledged, else (all were) the coordinator's answer.
            keys = [key for *_, future, key in self._pending if not future.done()]
            reason = await self._client._why_not_acknowledged(self._producer, started, keys)
            raise PublishTimeoutError(
                f"the transaction did not commit within {config.timeout_s:g} s (it may still "
                f"commit, or be aborted when its {config.transaction_timeout_s:g} s transaction "
                f"timeout runs out): {reason}"
            ) from None
        for context_id, event_id, future, _ in self._pending:
            meta = future.result()
            self.receipts.append(
                Receipt(context_id, meta.partition, meta.offset, str(event_id), self._client)
            )

    async def put(self, context_id: str, doc: dict[str, Any], ttl: float | None = None,
                  *, expected_version: int | None = None) -> None:  # fmt: skip
        data = canonical_json(doc, self._client.config.max_document_bytes)
        await self._send(context_id, Put(data, ttl_ms(ttl)), expected_version)

    async def patch(self, context_id: str, patch: list[Any] | dict[str, Any], *,
                    merge: bool = False, expected_version: int | None = None) -> None:  # fmt: skip
        data = _json_bytes(patch, self._client.config.max_document_bytes, "patch")
        fmt = PatchFormat.MERGE_PATCH if merge else PatchFormat.JSON_PATCH
        await self._send(context_id, Patch(fmt, data), expected_version)

    async def touch(self, context_id: str, ttl: float | None, *,
                    expected_version: int | None = None) -> None:  # fmt: skip
        await self._send(context_id, Touch(ttl_ms(ttl)), expected_version)

    async def delete(self, context_id: str, *, expected_version: int | None = None) -> None:
        await self._send(context_id, Delete(), expected_version)

    async def _send(self, context_id: str, op: Op, expected_version: int | None) -> None:
        """Queues the event in the transaction (its acknowledgement is awaited by the
        commit); waits only for the topic's metadata and buffer space, within the deadline."""
        assert self._producer is not None, "use 'async with client.transaction() as tx'"
        client = self._client
        key, value, event_id = client.event(context_id, op, expected_version)
        started = time.monotonic()
        try:
            async with asyncio.timeout(client.config.send_window_s):
                future = await self._producer.send(client.config.topics.events, value, key=key)
        except KafkaError as exc:
            raise PublishError(f"cannot send event {event_id}: {_error_text(exc)}") from exc
        except TimeoutError:
            reason = await client._why_not_acknowledged(self._producer, started, [key])
            raise PublishTimeoutError(
                f"cannot send event {event_id} within {client.config.timeout_s:g} s: {reason}"
            ) from None
        self._pending.append((context_id, event_id, future, key))


SEEN_CACHE_SIZE = 1024


def _check_version(expected_version: int | None) -> None:
    if expected_version is not None and (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or not 0 <= expected_version < 2**63
    ):
        raise ValidationError(f"expected_version must be an int >= 0, got {expected_version!r}")


def _check_wait(timeout: object) -> None:
    """A wait is a finite number of seconds in ``[0, MAX_WAIT_S]`` (NaN would never end)."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 <= timeout <= MAX_WAIT_S  # NaN fails this too
    ):
        shown = repr(timeout)[:40] if not isinstance(timeout, int) or timeout < 2**64 else "more"
        raise ValidationError(f"timeout must be seconds in [0, {MAX_WAIT_S:g}], got {shown}")


def _refused(error: BaseException) -> str | None:
    """Why a connection could not be made (``connection refused``, a DNS failure), None when
    ``error`` (or its cause) is not a failure to connect."""
    cause = error if isinstance(error, aiohttp.ClientConnectorError) else error.__cause__
    if not isinstance(cause, aiohttp.ClientConnectorError):
        return None
    if isinstance(cause.os_error, ConnectionRefusedError):
        return "connection refused"
    return str(cause.os_error) or type(cause.os_error).__name__


def _error_text(exc: BaseException) -> str:
    """An error as one line that is never empty (``str(TimeoutError())`` is)."""
    text = str(exc)
    name = type(exc).__name__
    return text if name in text else f"{name}: {text}".rstrip(": ")


def _checksum_bytes(checksum: str | None) -> bytes | None:
    if checksum is None:
        return None
    try:
        raw = bytes.fromhex(checksum)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise ValidationError(f"a checksum is 16 hex digits, got {checksum!r}")
    return raw


@overload
def _json_bytes(value: Any, limit: int, what: str) -> bytes: ...
@overload
def _json_bytes(value: Any, limit: int, what: str, quiet: bool) -> bytes | None: ...
def _json_bytes(value: Any, limit: int, what: str, quiet: bool = False) -> bytes | None:
    """JSON bytes of a patch, bounded; ``quiet``: None instead of an error."""
    try:
        data = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as exc:
        if quiet:
            return None
        raise InvalidPatchError(f"{what} is not JSON-serialisable: {exc}") from None
    if len(data) > limit:
        if quiet:
            return None
        raise DocumentTooLargeError(f"{what} is {len(data)} bytes, over the limit of {limit}")
    return data


def _patch_fits(ops: list[dict[str, Any]]) -> bool:
    """Whether ``update()`` may send these operations (else it sends the document)."""
    try:
        validate_json_patch(ops)
    except PatchError:
        return False
    return True


def _json_body(status: int, body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ReadError(f"read API answered {status} with a non-JSON body") from None
    if not isinstance(data, dict):
        raise ReadError(f"read API answered {status} with a JSON {type(data).__name__}")
    return data


def _parse_position(position: str) -> tuple[int, int] | None:
    """``(partition, offset)`` of ``PARTITION:OFFSET`` (None when it is not one: the read
    API then says why)."""
    try:
        return parse_position(position)
    except InvalidPositionError:
        return None


def _context_from(status: int, body: bytes, context_id: str) -> Context:
    data = _json_body(status, body)
    if status == 404 and data.get("no_such"):  # the position of min_offset, not the context
        raise NoSuchPositionError(str(data.get("error")))
    if status == 404:
        raise ContextNotFoundError(context_id)
    if status == 504:
        error = str(data.get("error", "not applied yet"))
        raise NotAppliedYetError(error, data.get("open_transaction"))
    if status != 200:
        raise ReadError(f"read API answered {status}: {data.get('error') or body[:200]!r}")
    return Context(
        data["context_id"],
        data["version"],
        data["doc"],
        data["checksum"],
        data["offset"],
        data["partition"],
        data.get("expires_at_ms"),
    )


class SyncContextClient:
    """The same calls, blocking: an event loop runs the async client in a private thread."""

    def __init__(self, config: ClientConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = ContextClient(config)
        try:
            self._call(self._client.start())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def put(self, context_id: str, doc: dict[str, Any], ttl: float | None = None, **kw: Any) -> Any:
        """A ``Receipt``, or a ``DryRun`` with ``dry_run=True`` (as every mutation here)."""
        return self._call(self._client.put(context_id, doc, ttl, **kw))

    def delete(self, context_id: str, **kw: Any) -> Any:
        return self._call(self._client.delete(context_id, **kw))

    def patch(self, context_id: str, patch: list[Any] | dict[str, Any], **kw: Any) -> Any:
        return self._call(self._client.patch(context_id, patch, **kw))

    def touch(self, context_id: str, ttl: float | None, **kw: Any) -> Any:
        return self._call(self._client.touch(context_id, ttl, **kw))

    def update(self, context_id: str, new_doc: dict[str, Any], ttl: float | None = None) -> Receipt:
        return self._call(self._client.update(context_id, new_doc, ttl))

    def outcome(self, receipt: Receipt, timeout: float = 5.0) -> Outcome:
        return self._call(receipt.outcome(timeout))

    def get(
        self, context_id: str, after: Receipt | str | None = None, timeout: float = 5.0
    ) -> Context:
        return self._call(self._client.get(context_id, after, timeout))

    def close(self) -> None:
        try:
            self._call(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> SyncContextClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
