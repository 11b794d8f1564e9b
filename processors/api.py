"""The read API of a worker (aiohttp), served from the worker's own event loop.

``GET /v1/contexts/{id}`` returns ``{"context_id", "version", "doc", "checksum", "offset",
"partition", "expires_at_ms"}`` (checksum: 16 hex digits of xxh3-64) or 404 when the context
does not exist, was deleted or has expired (expiry is checked against the wall clock at once,
before the Expire event is folded). ``?min_offset=PARTITION:OFFSET`` first waits until that WAL
offset is folded (read-your-writes), at most ``timeout`` seconds (default 5, at most 30): 504
when it is not. A partition this worker does not serve answers 421.

``GET /v1/outcomes/{partition}/{offset}`` waits (``timeout``, default 5 s) until that record
is folded and returns its journal entry: ``{"status": "applied" | "conflict" | "rejected" |
"dead_lettered" | "duplicate", "version", "reason", "duplicate_of"}``; 404 when the journal no
longer holds it, 504 when it is not folded in time.

``POST /v1/dry-run`` takes one encoded event (single-object Avro, the body) and returns what
the fold would do to the current state — ``{"status", "version", "reason", "kind", "doc",
"checksum", "expires_at_ms"}`` — appending nothing. Time is the worker's clock.

``GET /v1/partitions`` lists the partitions the worker serves, each with ``next_offset``,
``digest`` (16 hex digits: the order-independent digest of the partition's state, equal on
every replica and replay of the same WAL prefix), ``records``, ``documents`` and how its store
was opened (``local``, ``checkpoint``, ``changes``, ``replay``) with what it set aside on the
way (``skipped``: paths, and change-topic records passed over, with reasons); ``digest`` at
the top is the sum of the partitions' digests (mod 2^64), and ``restoring`` the partitions
still being opened.

``GET /v1/changes`` streams the change stream as server-sent events: ``?context_id=ID`` or
``?prefix=P`` (else everything), ``?start=latest|earliest|EPOCH_MS|TOKEN`` (default latest),
``?deltas=1``, and ``?limit=N`` / ``?idle_timeout=S`` to end the stream. Each event has
``id:`` its resume token, ``event: change`` (or ``gap``) and ``data:`` the JSON of
``Change.to_dict()``; a reconnecting browser sends ``Last-Event-ID`` and resumes right after
the last event it got, exactly once. A comment line every 15 s keeps an idle stream open.

``GET /v1/members`` is the routing table: ``{"member", "api", "partition_count", "owners":
{partition: api url}, "members": [...]}`` (see ``processors.members``). A request for a
context or an outcome of a partition another worker serves is forwarded to it (one hop,
marked with ``X-Lukhas-Forwarded-By``; the answer carries ``X-Lukhas-Served-By``); a forwarded
request for a partition the receiver does not serve either is 421 at once.

``GET /healthz`` is 200 while the worker folds, 503 otherwise. ``GET /metrics`` is the
Prometheus text exposition.
"""

from __future__ import annotations

import asyncio
import math
import time

import aiohttp
import orjson
from aiohttp import web

from lukhas_context.processors.exceptions import NotOwnerError
from lukhas_context.processors.fold import apply
from lukhas_context.processors.materializer import MAX_REQUEST_BYTES, Materializer
from lukhas_context.schemas.exceptions import CodecError
from lukhas_context.state.journal import EntryStatus
from lukhas_context.state.store import HASH_MASK
from lukhas_context.streams.exceptions import ReadError, ValidationError
from lukhas_context.streams.topics import partition_for
from lukhas_context.streams.watch import Gap, Watcher

MAX_WAIT_S = 30.0
#: Set on a request one worker forwards to another (its value: the forwarder's URL).
FORWARDED_HEADER = "X-Lukhas-Forwarded-By"
#: Set on a forwarded answer: the URL of the worker that answered.
SERVED_BY_HEADER = "X-Lukhas-Served-By"
#: Seconds between SSE comments that keep an idle connection (and its proxies) open.
SSE_KEEPALIVE_S = 15.0
#: Server-sent event streams one worker serves at once (each is a Kafka consumer).
MAX_SSE_STREAMS = 64


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def _parse_position(raw: str) -> tuple[int, int]:
    partition, _, offset = raw.partition(":")
    try:
        p, o = int(partition), int(offset)
    except ValueError:
        raise _bad_request(f"min_offset must be PARTITION:OFFSET, got {raw!r}") from None
    if p < 0 or o < 0:
        raise _bad_request(f"min_offset must be non-negative, got {raw!r}")
    return p, o


def _bad_request(reason: str) -> web.HTTPBadRequest:
    """A 400 with the same JSON body as every other error, so clients can show the reason."""
    return web.HTTPBadRequest(
        text=orjson.dumps({"error": reason}).decode(), content_type="application/json"
    )


def _parse_timeout(raw: str | None) -> float:
    if raw is None:
        return 5.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise _bad_request(f"timeout must be a finite number of seconds, got {raw!r}")
    return min(max(value, 0.0), MAX_WAIT_S)


class ReadApi:
    def __init__(self, materializer: Materializer) -> None:
        self.m = materializer
        # Dry runs post whole events: a 1 MiB document and its envelope must fit.
        self.app = web.Application(client_max_size=MAX_REQUEST_BYTES)
        self.app.add_routes(
            [
                web.get("/v1/contexts/{context_id}", self.get_context),
                web.get("/v1/outcomes/{partition}/{offset}", self.get_outcome),
                web.post("/v1/dry-run", self.dry_run),
                web.get("/v1/partitions", self.partitions),
                web.get("/v1/changes", self.changes),
                web.get("/v1/members", self.members),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
            ]
        )
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        #: Open server-sent event streams (each one a consumer), closed on shutdown.
        self._streams: set[Watcher] = set()

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def close(self) -> None:
        for watcher in list(self._streams):  # ends their handlers' loops
            await watcher.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def _forward(self, request: web.Request, partition: int) -> web.Response | None:
        """The owner's answer when another worker serves ``partition`` (one hop: a forwarded
        request is answered where it lands); None to answer here."""
        m = self.m
        if partition in m.stores or partition in m.restoring:
            return None
        if request.headers.get(FORWARDED_HEADER):
            return _error(421, f"partition {partition} is not served by this worker either")
        owner = m.membership.owner(partition)
        if owner is None or owner.api == m.config.api_url:
            return None
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = owner.api.rstrip("/") + request.path_qs
        try:
            async with self._http.request(
                request.method, url, data=await request.read() or None,
                headers={FORWARDED_HEADER: m.config.api_url},
                timeout=aiohttp.ClientTimeout(total=MAX_WAIT_S + 10),
            ) as answer:  # fmt: skip
                return web.Response(
                    status=answer.status, body=await answer.read(),
                    content_type=answer.content_type, headers={SERVED_BY_HEADER: owner.api},
                )  # fmt: skip
        except (aiohttp.ClientError, TimeoutError):
            return None  # the owner is gone: answer here (wait for the partition, or 421)

    async def members(self, request: web.Request) -> web.Response:
        """Which worker serves which partition (``processors.members``)."""
        membership = self.m.membership
        owners = {str(p): membership.owner(p) for p in range(self.m.partition_count)}
        return web.json_response(
            {
                "member": membership.member,
                "api": self.m.config.api_url,
                "partition_count": self.m.partition_count,
                "owners": {p: o.api for p, o in owners.items() if o is not None},
                "members": [member.to_dict() for member in membership.members()],
            }
        )

    async def get_context(self, request: web.Request) -> web.Response:
        context_id = request.match_info["context_id"]
        key = context_id.encode()
        partition = None
        if self.m.partition_count:
            partition = partition_for(key, self.m.partition_count)
            forwarded = await self._forward(request, partition)
            if forwarded is not None:
                return forwarded
        try:
            if "min_offset" in request.query:
                p, offset = _parse_position(request.query["min_offset"])
                timeout = _parse_timeout(request.query.get("timeout"))
                if not await self.m.wait_applied(p, offset, timeout):
                    return _error(504, f"offset {p}:{offset} not applied within {timeout:g} s")
            if not self.m.partition_count:
                return _error(503, "the worker has no partitions yet")
            if partition is None:  # assigned while this request waited
                partition = partition_for(key, self.m.partition_count)
            record = self.m.store_for(partition).get(key)
        except NotOwnerError as exc:
            return _error(421, str(exc))
        if record is None or not record.is_live(int(time.time() * 1000)):
            return _error(404, f"context {context_id!r} not found")
        assert record.doc is not None
        head = orjson.dumps(
            {
                "context_id": context_id,
                "version": record.version,
                "checksum": record.checksum.hex(),
                "offset": record.offset,
                "partition": partition,
                "expires_at_ms": record.expires_at_ms,
            }
        )
        # The stored document is canonical JSON already: splice it in, never re-encode it.
        body = head[:-1] + b',"doc":' + record.doc + b"}"
        return web.Response(body=body, content_type="application/json")

    async def get_outcome(self, request: web.Request) -> web.Response:
        try:
            partition = int(request.match_info["partition"])
            offset = int(request.match_info["offset"])
        except ValueError:
            return _error(400, "partition and offset must be integers")
        if partition < 0 or not 0 <= offset < 2**63:
            return _error(400, f"no such position {partition}:{offset}")
        timeout = _parse_timeout(request.query.get("timeout"))
        forwarded = await self._forward(request, partition)
        if forwarded is not None:
            return forwarded
        try:
            if not await self.m.wait_applied(partition, offset, timeout):
                return _error(504, f"offset {partition}:{offset} not folded within {timeout:g} s")
            entry = self.m.store_for(partition).outcome(offset)
        except NotOwnerError as exc:
            return _error(421, str(exc))
        if entry is None:
            return _error(404, f"no outcome for {partition}:{offset} (forgotten, or a marker)")
        duplicate = entry.status is EntryStatus.DUPLICATE
        return web.json_response(
            {
                "partition": partition,
                "offset": offset,
                "status": entry.status.name.lower(),
                "version": None if duplicate else entry.version,
                "reason": entry.reason,
                "duplicate_of": entry.version if duplicate else None,
            }
        )

    async def dry_run(self, request: web.Request) -> web.Response:
        body = await request.read()
        try:
            event = self.m.decode_event(body)
        except CodecError as exc:
            return _error(400, f"{type(exc).__name__}: {exc}")
        key = event.context_id.encode()
        if not self.m.partition_count:
            return _error(503, "the worker has no partitions yet")
        partition = partition_for(key, self.m.partition_count)
        forwarded = await self._forward(request, partition)
        if forwarded is not None:
            return forwarded
        try:
            store = self.m.store_for(partition)
        except NotOwnerError as exc:
            return _error(421, str(exc))
        now = int(time.time() * 1000)
        new, outcome = apply(store.get(key), event, store.next_offset, now, self.m.config.limits)
        result: dict[str, object] = {
            "status": outcome.status.name.lower(),
            "version": outcome.version,
            "reason": outcome.reason,
            "kind": None if outcome.kind is None else outcome.kind.name.lower(),
            "doc": None,
            "checksum": None,
            "expires_at_ms": None,
        }
        if new is not None and new.doc is not None and new.is_live(now):
            result.update(
                doc=orjson.loads(new.doc), checksum=new.checksum.hex(),
                expires_at_ms=new.expires_at_ms,
            )  # fmt: skip
        return web.json_response(result)

    async def changes(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events of the change stream (see the module doc)."""
        if len(self._streams) >= MAX_SSE_STREAMS:
            return _error(503, f"this worker serves {MAX_SSE_STREAMS} change streams already")
        query = request.query
        start: object = request.headers.get("Last-Event-ID") or query.get("start", "latest")
        try:
            limit = int(query["limit"]) if "limit" in query else None
            idle = float(query["idle_timeout"]) if "idle_timeout" in query else None
            watcher = Watcher(
                self.m.config.bootstrap, self.m.config.topics,
                context_id=query.get("context_id"), prefix=query.get("prefix"), start=start,
                deltas=query.get("deltas") in ("1", "true"), idle_timeout=idle,
                client_id=f"{self.m.config.client_id}-sse",
            )  # fmt: skip
        except (ValidationError, ValueError) as exc:
            return _error(400, f"{type(exc).__name__}: {exc}")
        self._streams.add(watcher)
        try:
            try:
                await watcher.start()
            except (ValidationError, ReadError) as exc:
                return _error(400 if isinstance(exc, ValidationError) else 503, str(exc))
            response = web.StreamResponse(
                headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
            )
            await response.prepare(request)
            # An event with only an id sets the browser's Last-Event-ID: a reconnect before
            # the first change resumes from here, not from "latest" again.
            await response.write(b"id: %s\n\n" % watcher.token().encode())
            sent = 0
            while limit is None or sent < limit:
                try:
                    item = await asyncio.wait_for(anext(watcher), SSE_KEEPALIVE_S)
                except TimeoutError:
                    await response.write(b": keepalive\nid: %s\n\n" % watcher.token().encode())
                    continue
                except StopAsyncIteration:
                    break
                kind = b"gap" if isinstance(item, Gap) else b"change"
                data = orjson.dumps(item.to_dict())
                await response.write(
                    b"id: %s\nevent: %s\ndata: %s\n\n" % (item.token.encode(), kind, data)
                )
                sent += kind == b"change"
            return response
        except ConnectionResetError:
            return response  # the subscriber went away
        finally:
            self._streams.discard(watcher)
            await watcher.close()

    async def partitions(self, request: web.Request) -> web.Response:
        """The partitions this worker serves, each with its summary (next offset, digest,
        counts) and how its store was opened; and the partitions it is still restoring."""
        served = []
        total = 0
        for p in sorted(self.m.stores):
            summary = self.m.stores[p].summary()
            total = (total + summary.digest) & HASH_MASK
            report = self.m.restore_reports.get(p)
            served.append(
                {
                    "partition": p,
                    "next_offset": summary.next_offset,
                    "digest": summary.digest_hex,
                    "records": summary.records,
                    "documents": summary.documents,
                    "opened_from": None if report is None else report.source.value,
                    "open_seconds": None if report is None else round(report.seconds, 3),
                    "checkpoint_id": None if report is None else report.checkpoint_id,
                    "skipped": [] if report is None else report.skipped,
                }
            )
        return web.json_response(
            {"partitions": served, "digest": f"{total:016x}", "restoring": self.m.restoring}
        )

    async def healthz(self, request: web.Request) -> web.Response:
        body = {
            "status": "ok" if self.m.running else "starting",
            "partitions": sorted(self.m.stores),
            "restoring": self.m.restoring,
        }
        return web.json_response(body, status=200 if self.m.running else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.m.metrics.render(), content_type="text/plain")
