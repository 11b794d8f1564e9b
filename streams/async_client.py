"""``ContextClient``: the public client (async), a front over its parts.

Writes go to the WAL (``WalWriter``: producers, deadlines, retries) and return when the brokers
acknowledged them, with a ``Receipt`` naming where they landed; a read with ``min_offset=receipt``
waits until the processor folded that position (read-your-writes; ``Reader`` over
``Router``). ``update()`` sends deltas against the document last seen (``DeltaCache``).

Arguments are validated before anything is sent; each failure is a typed ``ValidationError``.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from typing import Any

from lukhas_context.schemas.event import Delete, Fence, Op, Patch, PatchFormat, Put, Touch
from lukhas_context.state.manifest import check_checkpoint_id
from lukhas_context.streams import tracing
from lukhas_context.streams.breaker import Breakers, metrics_text
from lukhas_context.streams.config import ClientConfig
from lukhas_context.streams.deltas import DeltaCache
from lukhas_context.streams.exceptions import InvalidPatchError, InvalidTTLError, ValidationError
from lukhas_context.streams.locks import Lock, LockManager
from lukhas_context.streams.manifests import wait_manifests
from lukhas_context.streams.reader import Reader
from lukhas_context.streams.results import (
    CheckpointRequest,
    Context,
    ContextPage,
    DryRun,
    History,
    Outcome,
    Receipt,
)
from lukhas_context.streams.routing import Router
from lukhas_context.streams.transaction import Transaction
from lukhas_context.streams.validation import (
    canonical_json,
    check_metadata,
    check_patch,
    check_wait,
    checksum_bytes,
    json_bytes,
    renamed_argument,
    ttl_ms,
)
from lukhas_context.streams.watch import Watcher
from lukhas_context.streams.writer import WalWriter

__all__ = ["ContextClient"]


class ContextClient:
    """Async client. Use ``async with ContextClient(config) as client:``.

    Every mutation takes ``expected_version`` (apply only if the context is at that version;
    0 = must not exist) and ``dry_run`` (return what the fold would do, append nothing).

    ``writer`` and ``router`` are its parts (the WAL's producers, the read API's routing
    table), reachable for tests and tools; the calls below are the front door.
    """

    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.writer = WalWriter(config)
        self.router = Router(
            config.api_url,
            config.api_token,
            Breakers(config.breaker_policy),
            config.deadline_policy,
            route=config.route_reads,
        )
        self._reader = Reader(self.router)
        self._deltas = DeltaCache()
        self._locks: LockManager | None = None
        #: ``update()``'s per-context locks: ``[lock, holders and waiters]``.
        self._context_locks: dict[str, list[Any]] = {}

    async def start(self) -> None:
        """Connects nothing: the producer starts on the first write, so that reads work
        without Kafka and invalid arguments fail before any connection is tried."""

    async def close(self) -> None:
        """Closes the producers and HTTP sessions, within about ``close_timeout_s``: sends
        not acknowledged by then are given up (they may still land: their outcome is
        unknown)."""
        if self._locks is not None:
            await self._locks.close()
        await self.writer.close()
        await self.router.close()

    def breakers(self) -> list[dict[str, Any]]:
        """The circuit breaker of each read API endpoint the client has called, and of its
        producer path (endpoint ``kafka:P`` per WAL partition written to, ``kafka`` before the
        producer started) (``streams.breaker``): its
        state (closed, open, half_open), the outcomes seen, the moving averages of its
        failure rate (and the baseline its threshold adapts to) and latency, the latency
        past which a call counts as failed, the seconds until an open one lets a probe
        through, and its transitions."""
        wal = [b for b in self.writer.breakers.snapshot() if b["samples"]]
        return [*self.router.breakers.snapshot(), *wal]

    def breaker_metrics(self, prefix: str = "lukhas_client") -> str:
        """``breakers()`` in the Prometheus text format, for an application to serve with
        its own metrics (``streams.breaker.metrics_text``)."""
        return metrics_text(self.breakers(), prefix)

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
        event_id: uuid.UUID | str | None = None,
        fence: Fence | Lock | str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Replaces the whole document; ``ttl`` in seconds. Returns a ``Receipt`` once the WAL
        acknowledged (a ``DryRun`` with ``dry_run=True``). ``event_id`` (every write takes
        it): the caller's own id, so that a retry after a crash is the same event — folded
        once, the repeat journaled ``duplicate`` while it is within the worker's dedupe window
        (by default the last 100,000 records of the partition). ``fence`` (every write takes it
        too): a held ``Lock`` (``client.lock``), its ``Fence``, or ``"LOCK:TOKEN"``; the fold
        refuses the write as ``fenced`` when a later holder of that lock has written to the
        partition (``streams.locks``). ``metadata`` (every write takes it): a few short
        text entries kept with the event in the WAL, such as who wrote it
        (``check_metadata``); with the ``[otel]`` extra the write's trace context is added.
        """
        data = canonical_json(doc, self.config.max_document_bytes)
        op = Put(data, ttl_ms(ttl))
        result = await self._submit(
            context_id, op, expected_version, dry_run, event_id, fence, metadata
        )
        if not dry_run:
            self._deltas.remember(context_id, None, data)
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
        event_id: uuid.UUID | str | None = None,
        fence: Fence | Lock | str | None = None,
        metadata: Mapping[str, str] | None = None,
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
        data = json_bytes(patch, self.config.max_document_bytes, "patch")
        check_patch(patch, merge)
        if not dry_run:
            self._deltas.forget(context_id)  # the base update() would diff against is gone
        fmt = PatchFormat.MERGE_PATCH if merge else PatchFormat.JSON_PATCH
        op = Patch(fmt, data, checksum_bytes(expected_checksum), ttl_ms(ttl), clear_ttl)
        return await self._submit(
            context_id, op, expected_version, dry_run, event_id, fence, metadata
        )

    async def touch(
        self,
        context_id: str,
        ttl: float | None,
        *,
        expected_version: int | None = None,
        dry_run: bool = False,
        event_id: uuid.UUID | str | None = None,
        fence: Fence | Lock | str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:
        """Sets the TTL to ``ttl`` seconds from now (log time), or removes it with None."""
        if not dry_run:
            self._deltas.forget(context_id)  # its version moves on
        op = Touch(ttl_ms(ttl))
        return await self._submit(
            context_id, op, expected_version, dry_run, event_id, fence, metadata
        )

    async def delete(
        self, context_id: str, *, expected_version: int | None = None, dry_run: bool = False,
        event_id: uuid.UUID | str | None = None, fence: Fence | Lock | str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:  # fmt: skip
        """Deletes the context. A context that does not exist is a rejected event, not an error
        here: the WAL accepted it and the fold refuses it (see ``Receipt.outcome()``)."""
        if not dry_run:
            self._deltas.forget(context_id)
        return await self._submit(
            context_id, Delete(), expected_version, dry_run, event_id, fence, metadata
        )

    async def update(
        self, context_id: str, new_doc: dict[str, Any], ttl: float | None = None, *,
        metadata: Mapping[str, str] | None = None,
    ) -> Receipt:  # fmt: skip
        """Writes ``new_doc`` as the whole new document, sending only a delta when it can.

        Against the document this client last saw for the context (from ``get`` or an earlier
        ``update``), it sends a JSON Patch when that is smaller than the document, conditioned
        on the version it saw (when known) and on the checksum of ``new_doc``: the fold rejects
        it if the base was not what this client thought. Otherwise, it sends a put.
        """
        data = canonical_json(new_doc, self.config.max_document_bytes)
        # One update of a context at a time in this client: the next one diffs against the
        # document this one wrote, at the version it makes, instead of conflicting with it.
        async with self._context_lock(context_id):
            op, expected = self._deltas.update_op(context_id, new_doc, data, ttl_ms(ttl))
            receipt: Receipt = await self._submit(
                context_id, op, expected, False, metadata=metadata
            )
            self._deltas.remember(context_id, None if expected is None else expected + 1, data)
        return receipt

    @contextlib.asynccontextmanager
    async def _context_lock(self, context_id: str) -> AsyncIterator[None]:
        """A lock per context id, in this process (the seed's keyed AsyncLock); dropped once
        nobody holds or waits for it, so the map stays as small as the calls in flight."""
        entry = self._context_locks.get(context_id)
        if entry is None:
            entry = self._context_locks[context_id] = [asyncio.Lock(), 0]
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                del self._context_locks[context_id]

    def transaction(self) -> Transaction:
        """``async with client.transaction() as tx:`` — writes that land together or not at
        all (one Kafka transaction). See ``Transaction``."""
        return Transaction(self.writer, self)

    def event(
        self, context_id: str, op: Op, expected_version: int | None
    ) -> tuple[bytes, bytes, uuid.UUID]:
        """Validates and encodes one event: (key, value, event id)."""
        return self.writer.event(context_id, op, expected_version)

    async def _submit(
        self, context_id: str, op: Op, expected_version: int | None, dry_run: bool,
        event_id: uuid.UUID | str | None = None, fence: Fence | Lock | str | None = None,
        metadata: Mapping[str, str] | None = None,
    ) -> Any:  # fmt: skip
        if dry_run:
            key, value, event_id = self.writer.event(
                context_id, op, expected_version, event_id, fence, metadata
            )
            return await self._reader.dry_run(value)
        check_metadata(metadata)  # the caller's, before a trace context is added to it
        topic = self.config.topics.events
        with tracing.write_span(type(op).__name__.lower(), topic, context_id, metadata) as traced:
            key, value, event_id = self.writer.event(
                context_id, op, expected_version, event_id, fence, traced
            )
            meta = await self.writer.send(key, value, event_id)
        return Receipt(context_id, meta.partition, meta.offset, str(event_id), self)

    # ---- reads ----

    async def get(
        self, context_id: str, min_offset: Receipt | str | None = None, timeout: float = 5.0,
        *, allow_stale: bool = False, max_lag: int | None = None,
        after: Receipt | str | None = None,
    ) -> Context:  # fmt: skip
        """Reads a context from the read API; with ``min_offset`` (a receipt, or
        ``"PARTITION:OFFSET"``), first waits (at most ``timeout`` seconds) until that WAL
        position is folded. ``ContextNotFoundError`` when it does not exist,
        ``NotAppliedYetError`` when the wait times out, ``ChecksumMismatchError`` when the
        document does not match its checksum (it is never returned then);
        ``NoSuchPositionError`` when ``min_offset`` names a position the WAL does not have.

        ``allow_stale=True`` (any lag) or ``max_lag=N`` (at most N change records behind):
        a worker keeping a standby copy of the partition (``--standby-replicas``) may answer,
        from the copy; ``Context.standby_position`` then says which WAL prefix it holds. Not
        with ``min_offset``. ``after=`` is the old name of ``min_offset`` (deprecated: a
        ``DeprecationWarning``)."""
        min_offset = renamed_argument(min_offset, after, "min_offset", "after")
        ctx, canonical = await self._reader.context(
            context_id, min_offset, timeout, allow_stale, max_lag
        )
        self._deltas.remember(context_id, ctx.version, canonical)
        return ctx

    async def history(
        self, context_id: str, after: int | None = None, limit: int = 1000, timeout: float = 5.0
    ) -> History:
        """What became of every WAL record of ``context_id``, oldest first: a page of at most
        ``limit`` (1 to 10,000) entries with offsets above ``after``; ``History.more`` says
        whether another follows. Each entry has the record's offset, its status (``applied``,
        ``conflict``, ``rejected``, ``fenced``, ``dead_lettered``, ``duplicate``), version and
        reason. A context never written has no entries (no error). Served from the owning worker's
        history index (``state.history``)."""
        return await self._reader.history(context_id, after, limit, timeout)

    async def list_contexts(
        self, prefix: str = "", after: str | None = None, limit: int = 100, timeout: float = 10.0
    ) -> ContextPage:
        """A page of the live contexts whose id starts with ``prefix``, in id order, after the
        id ``after``: at most ``limit`` (1 to 1,000) of them, without their documents. Ask
        again with ``after=page.next_after`` while ``page.more``. Any worker answers, asking
        the owners of the partitions it does not serve; ``page.incomplete`` names partitions
        none answered for (restoring, or their worker is down)."""
        return await self._reader.list_contexts(prefix, after, limit, timeout)

    async def dry_run_encoded(self, value: bytes) -> DryRun:
        """What the fold would do now with an event already encoded (the bytes of a dead
        letter, say), appending nothing: bytes the worker cannot read as an event give status
        ``dead_lettered`` and the reason, as folding them would."""
        return await self._reader.dry_run(value, undecodable_ok=True)

    async def outcome(self, partition: int, offset: int, timeout: float = 5.0) -> Outcome:
        """The outcome of the event at ``partition:offset`` (see ``Receipt.outcome``):
        ``NotAppliedYetError`` when it is not folded within ``timeout`` seconds,
        ``NoSuchPositionError`` at once when the WAL has no such partition or offset."""
        return await self._reader.outcome(partition, offset, timeout)

    # ---- locks ----

    def lock(self, name: str, ttl: float, timeout: float = 10.0) -> Lock:
        """A distributed lock on redis-server (``ClientConfig.redis_url``) with a fencing
        token: ``async with client.lock("agent:7", ttl=10) as lock: ... lock.token``.
        Renewed every third of ``ttl`` while held, released on exit; ``LockTimeoutError``
        after ``timeout`` seconds of waiting, ``LockUnavailableError`` at once when Redis is
        down, ``lock.check()`` raises ``LockLostError`` once it is known to be gone. Writes
        made with ``fence=lock`` are refused by the fold (outcome ``fenced``) once a later
        holder has written with a higher token. See ``streams.locks``."""
        if self.config.redis_url is None:
            raise ValidationError("no redis_url in the client's config: locks need Redis")
        if self._locks is None:
            self._locks = LockManager(self.config.redis_url, self.config.topics.prefix)
        return self._locks.lock(name, ttl, timeout)

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
            client_id=f"{self.config.client_id}-watch", security=self.config.kafka_security,
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
        offsets = await self.writer.append_barriers(checkpoint_id)
        return CheckpointRequest(checkpoint_id, offsets)

    async def wait_checkpoint(
        self, request: CheckpointRequest, timeout: float = 60.0
    ) -> list[dict[str, Any]]:
        """Waits until every partition's checkpoint of ``request`` is published and returns
        their manifests (partition order); ``CheckpointTimeoutError`` names the missing ones."""
        check_wait(timeout)
        return await wait_manifests(self.config, request, timeout)
