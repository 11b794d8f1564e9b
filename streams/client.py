"""``ContextClient``: the public client (async), and ``SyncContextClient``, its sync face.

Writes go to the WAL through an idempotent producer with ``acks=all``, key = context id, so
one context lives in one partition and its events are totally ordered. A write returns when the
brokers acknowledged it, with a ``Receipt`` naming where it landed; a read with
``after=receipt`` waits until the processor folded that position (read-your-writes).

Arguments are validated before anything is sent; each failure is a typed ``ValidationError``.
"""

from __future__ import annotations

import asyncio
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
from lukhas_context.schemas.patch import make_json_patch
from lukhas_context.state.checkpoints import check_checkpoint_id
from lukhas_context.streams.barriers import append_barriers, published_manifest
from lukhas_context.streams.exceptions import (
    CheckpointTimeoutError,
    ChecksumMismatchError,
    ContextNotFoundError,
    DocumentTooLargeError,
    InvalidPatchError,
    InvalidTTLError,
    NotAppliedYetError,
    PublishError,
    ReadError,
    ValidationError,
)
from lukhas_context.streams.topics import Topics, partition_for
from lukhas_context.streams.validation import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    canonical_json,
    context_key,
    ttl_ms,
)
from lukhas_context.streams.watch import Watcher

T = TypeVar("T")
#: Pause before a read is tried again on another worker (after a 421 or a failure).
ROUTE_RETRY_S = 0.2


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where the client writes and reads. Nothing here reads the environment."""

    bootstrap: str
    api_url: str | None = None
    topics: Topics = field(default_factory=Topics)
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    request_timeout_s: float = 30.0
    client_id: str = "lukhas-client"
    #: Sends of one event (same bytes, same event id) before a write fails.
    send_attempts: int = 3

    def __post_init__(self) -> None:
        if self.send_attempts < 1:
            raise ValueError(f"send_attempts must be at least 1, got {self.send_attempts}")


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
    """What a mutation would do to the current state; nothing was appended."""

    status: str
    version: int
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
        self._http: aiohttp.ClientSession | None = None
        #: One transactional producer per client, used by one transaction at a time.
        self._tx_producer: AIOKafkaProducer | None = None
        self._tx_lock = asyncio.Lock()
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
        if self._producer is None:
            producer = self._new_producer()
            try:
                await producer.start()
            except (KafkaError, ValueError, OSError) as exc:
                await producer.stop()
                raise PublishError(f"cannot reach Kafka at {self.config.bootstrap}: {exc}") from exc
            self._producer = producer
        return self._producer

    def _new_producer(self, transactional_id: str | None = None) -> AIOKafkaProducer:
        return AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap,
            client_id=self.config.client_id,
            enable_idempotence=True,
            acks="all",
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=int(self.config.request_timeout_s * 1000),
            transactional_id=transactional_id,
        )

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
        if self._tx_producer is not None:
            await self._tx_producer.stop()
            self._tx_producer = None
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
            delta = _json_bytes(make_json_patch(seen[1], new_doc), len(data), "patch", quiet=True)
            if delta is not None and len(delta) < len(data):
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
        producer, self._tx_producer = self._tx_producer, None
        if producer is not None:
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
        producer = await self._ensure_producer()
        attempts = self.config.send_attempts
        for attempt in range(1, attempts + 1):
            try:
                # A deadline per attempt: the idempotent producer retries a lost batch without
                # end, so a lost acknowledgement would otherwise hang the call.
                meta = await asyncio.wait_for(
                    producer.send_and_wait(self.config.topics.events, value, key=key),
                    self.config.request_timeout_s,
                )
                break
            except (KafkaError, TimeoutError) as exc:
                # A retry re-sends the very same bytes, event id included: if the first send
                # did land (a lost acknowledgement), the fold recognises the repeat and applies
                # the event once.
                retriable = isinstance(exc, TimeoutError) or getattr(exc, "retriable", False)
                if not retriable or attempt == attempts:
                    raise PublishError(
                        f"the WAL did not acknowledge event {event_id} after {attempt} "
                        f"attempt(s): {exc}"
                    ) from exc
        return Receipt(context_id, meta.partition, meta.offset, str(event_id), self)

    # ---- reads ----

    async def get(
        self, context_id: str, after: Receipt | str | None = None, timeout: float = 5.0
    ) -> Context:
        """Reads a context from the read API; with ``after``, first waits (at most ``timeout``
        seconds) until that WAL position is folded. ``ContextNotFoundError`` when it does not
        exist, ``NotAppliedYetError`` when the wait times out, ``ChecksumMismatchError`` when
        the document does not match its checksum (it is never returned then)."""
        context_key(context_id)
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
        """The outcome of the event at ``partition:offset`` (see ``Receipt.outcome``)."""
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
        if status == 404 and forgotten_ok:
            return None
        data = _json_body(status, body)
        if status == 504:
            raise NotAppliedYetError(str(data.get("error")))
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
        (``datetime`` or epoch ms) or a resume token (``change.token`` of the last change
        handled: every later change arrives exactly once). ``deltas=True``: a change carries
        the RFC 6902 patch from the previous document seen instead of the whole document.
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
        producer = await self._ensure_producer()
        topic = self.config.topics.events
        try:
            partitions = len(await producer.partitions_for(topic))
            offsets = await append_barriers(producer, self._codec, topic, checkpoint_id, partitions)
        except KafkaError as exc:
            raise PublishError(f"could not append the checkpoint barriers: {exc}") from exc
        return CheckpointRequest(checkpoint_id, offsets)

    async def wait_checkpoint(
        self, request: CheckpointRequest, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Waits until every partition's checkpoint of ``request`` is published and returns
        their manifests (partition order); ``CheckpointTimeoutError`` names the missing ones."""
        topic = self.config.topics.checkpoints
        found: dict[int, dict[str, Any]] = {}
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=self.config.bootstrap, client_id=self.config.client_id,
            enable_auto_commit=False, auto_offset_reset="earliest",
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        try:
            await consumer.start()
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
        table and try again, until ``timeout`` (plus 5 s) has passed."""
        if not self._seeds:
            raise ReadError("no api_url configured: reads need a worker's read API")
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
            await self._refresh_routes(exclude=base)
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
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ReadError(f"read API {base} failed: {exc!r}") from exc

    async def _refresh_routes(self, exclude: str | None = None) -> None:
        """Reloads the routing table (``GET /v1/members``) from the first worker that
        answers, configured ones first; a worker that just failed is asked last."""
        # A configured worker that just failed goes to the back of the line, so requests with
        # no route (no partition, or none known) try the next one.
        if exclude in self._seeds and len(self._seeds) > 1:
            self._seeds = [u for u in self._seeds if u != exclude] + [exclude]
        known = list(dict.fromkeys([*self._seeds, *self._routes.values()]))
        known.sort(key=lambda url: url == exclude)
        for base in known:
            try:
                status, answer = await self._send_request(base, "GET", "/v1/members", {}, 5, b"")
                if status != 200:
                    continue
                data = orjson.loads(answer)
                routes = {int(p): str(url) for p, url in data["owners"].items()}
                count = int(data["partition_count"])
            except (ReadError, ValueError, KeyError, TypeError, AttributeError):
                continue  # gone, or not a worker's answer: ask the next
            self._routes = routes
            self._partition_count = count or self._partition_count
            return

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

    Conditions are still checked per event, in log order: if one event's ``expected_version``
    fails, that event is a ``conflict`` and the other events of the transaction still apply.
    The transaction makes the *append* atomic, not the conditions; check each receipt's
    outcome when the writes depend on each other.
    """

    def __init__(self, client: ContextClient) -> None:
        self._client = client
        self._producer: AIOKafkaProducer | None = None
        self._pending: list[tuple[str, uuid.UUID, Any]] = []
        self.receipts: list[Receipt] = []

    async def __aenter__(self) -> Transaction:
        client = self._client
        await client._tx_lock.acquire()
        try:
            if client._tx_producer is None:
                tid = f"{client.config.client_id}-tx-{uuid.uuid4().hex}"
                producer = client._new_producer(transactional_id=tid)
                try:
                    await producer.start()
                except (KafkaError, ValueError, OSError):
                    await producer.stop()
                    raise
                client._tx_producer = producer
            self._producer = client._tx_producer
            await self._producer.begin_transaction()
        except (KafkaError, ValueError, OSError) as exc:
            await client._drop_tx_producer()
            client._tx_lock.release()
            raise PublishError(f"cannot begin a transaction: {exc}") from exc
        except BaseException:
            await client._drop_tx_producer()
            client._tx_lock.release()
            raise
        return self

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
        assert self._producer is not None
        try:
            await self._producer.abort_transaction()
        except KafkaError:
            return False  # the caller's own exception goes on; the producer is dropped
        return True

    async def _commit(self) -> None:
        assert self._producer is not None
        try:
            await self._producer.commit_transaction()
        except KafkaError as error:
            raise PublishError(f"the transaction did not commit: {error}") from error
        for context_id, event_id, future in self._pending:
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
        assert self._producer is not None, "use 'async with client.transaction() as tx'"
        key, value, event_id = self._client.event(context_id, op, expected_version)
        future = await self._producer.send(self._client.config.topics.events, value, key=key)
        self._pending.append((context_id, event_id, future))


SEEN_CACHE_SIZE = 1024


def _check_version(expected_version: int | None) -> None:
    if expected_version is not None and (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or not 0 <= expected_version < 2**63
    ):
        raise ValidationError(f"expected_version must be an int >= 0, got {expected_version!r}")


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
    partition, _, offset = position.partition(":")
    digits = partition.isascii() and offset.isascii()
    if digits and partition.isdigit() and offset.isdigit():
        return int(partition), int(offset)
    return None


def _context_from(status: int, body: bytes, context_id: str) -> Context:
    data = _json_body(status, body)
    if status == 404:
        raise ContextNotFoundError(context_id)
    if status == 504:
        raise NotAppliedYetError(str(data.get("error", "not applied yet")))
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
