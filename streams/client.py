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
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import aiohttp
import orjson
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import EMPTY_METADATA, ContextEvent, Delete, Op, Put
from lukhas_context.streams.exceptions import (
    ContextNotFoundError,
    NotAppliedYetError,
    PublishError,
    ReadError,
    ValidationError,
)
from lukhas_context.streams.topics import Topics
from lukhas_context.streams.validation import (
    DEFAULT_MAX_DOCUMENT_BYTES,
    canonical_json,
    context_key,
    ttl_ms,
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where the client writes and reads. Nothing here reads the environment."""

    bootstrap: str
    api_url: str | None = None
    topics: Topics = field(default_factory=Topics)
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    request_timeout_s: float = 30.0
    client_id: str = "lukhas-client"


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where an acknowledged event landed in the WAL."""

    context_id: str
    partition: int
    offset: int
    event_id: str

    @property
    def position(self) -> str:
        """``PARTITION:OFFSET``, the form ``get(after=...)`` and ``lukhas get --after`` take."""
        return f"{self.partition}:{self.offset}"


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


class ContextClient:
    """Async client. Use ``async with ContextClient(config) as client:``."""

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self._codec = EventCodec()
        self._producer: AIOKafkaProducer | None = None
        self._http: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._producer = AIOKafkaProducer(
            bootstrap_servers=self.config.bootstrap,
            client_id=self.config.client_id,
            enable_idempotence=True,
            acks="all",
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=int(self.config.request_timeout_s * 1000),
        )
        try:
            await self._producer.start()
        except KafkaError as exc:
            await self._producer.stop()
            raise PublishError(f"cannot reach Kafka at {self.config.bootstrap}: {exc}") from exc

    async def close(self) -> None:
        if self._producer is not None:
            await self._producer.stop()
            self._producer = None
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
    ) -> Receipt:
        """Replaces the whole document; ``ttl`` in seconds. Returns once the WAL acknowledged."""
        data = canonical_json(doc, self.config.max_document_bytes)
        return await self._append(context_id, Put(data, ttl_ms(ttl)), expected_version)

    async def delete(self, context_id: str, *, expected_version: int | None = None) -> Receipt:
        """Deletes the context. A context that does not exist is a rejected event, not an error
        here: the WAL accepted it and the fold refuses it."""
        return await self._append(context_id, Delete(), expected_version)

    async def _append(self, context_id: str, op: Op, expected_version: int | None) -> Receipt:
        key = context_key(context_id)
        if expected_version is not None and (
            isinstance(expected_version, bool)
            or not isinstance(expected_version, int)
            or not 0 <= expected_version < 2**63
        ):
            raise ValidationError(f"expected_version must be an int >= 0, got {expected_version!r}")
        event_id = uuid.uuid4()
        event = ContextEvent(event_id.bytes, context_id, op, expected_version, None, EMPTY_METADATA)
        value = self._codec.encode(event)
        if self._producer is None:
            raise PublishError("the client is not started (use 'async with' or start())")
        try:
            meta = await self._producer.send_and_wait(self.config.topics.events, value, key=key)
        except KafkaError as exc:
            raise PublishError(f"the WAL did not acknowledge event {event_id}: {exc}") from exc
        return Receipt(context_id, meta.partition, meta.offset, str(event_id))

    # ---- reads ----

    async def get(
        self, context_id: str, after: Receipt | str | None = None, timeout: float = 5.0
    ) -> Context:
        """Reads a context from the read API; with ``after``, first waits (at most ``timeout``
        seconds) until that WAL position is folded. ``ContextNotFoundError`` when it does not
        exist, ``NotAppliedYetError`` when the wait times out."""
        context_key(context_id)
        if self.config.api_url is None:
            raise ReadError("no api_url configured: reads need a worker's read API")
        params = {}
        if after is not None:
            params["min_offset"] = after.position if isinstance(after, Receipt) else after
            params["timeout"] = str(timeout)
        url = f"{self.config.api_url.rstrip('/')}/v1/contexts/{quote(context_id, safe='')}"
        if self._http is None:
            self._http = aiohttp.ClientSession()
        try:
            client_timeout = aiohttp.ClientTimeout(total=timeout + 5)
            async with self._http.get(url, params=params, timeout=client_timeout) as response:
                body = await response.read()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise ReadError(f"read API {self.config.api_url} failed: {exc!r}") from exc
        return _context_from(status, body, context_id)


def _context_from(status: int, body: bytes, context_id: str) -> Context:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ReadError(f"read API answered {status} with a non-JSON body") from None
    if status == 404:
        raise ContextNotFoundError(context_id)
    if status == 504:
        raise NotAppliedYetError(str(data.get("error", "not applied yet")))
    if status != 200:
        reason = data.get("error") if isinstance(data, dict) else None
        raise ReadError(f"read API answered {status}: {reason or body[:200]!r}")
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

    def put(
        self, context_id: str, doc: dict[str, Any], ttl: float | None = None, **kw: Any
    ) -> Receipt:
        return self._call(self._client.put(context_id, doc, ttl, **kw))

    def delete(self, context_id: str, **kw: Any) -> Receipt:
        return self._call(self._client.delete(context_id, **kw))

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
