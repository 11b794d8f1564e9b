"""The read API of a worker (aiohttp), served from the worker's own event loop.

``GET /v1/contexts/{id}`` returns ``{"context_id", "version", "doc", "checksum", "offset",
"partition", "expires_at_ms"}`` (checksum: 16 hex digits of xxh3-64; ``ETag``: the version,
quoted, and ``If-None-Match`` naming it answers 304) or 404 when the context
does not exist, was deleted or has expired (expiry is checked at once, before the Expire event
is folded, by the log's clock as this worker measures it: ``processors.clock``; hidden once
expired for certain, so a live context never reads as gone).
``?min_offset=PARTITION:OFFSET`` first waits until that WAL
offset is folded (read-your-writes), at most ``timeout`` seconds (default 5, at most 30): 504
when it is not; when an open Kafka transaction holds the partition (nothing after its first
offset is readable ``read_committed``) the 504's ``error`` says so and ``open_transaction``
gives ``{"partition", "first_offset", "high_watermark"}``. A partition this worker does not
serve answers 421.

Positions are checked before any wait: a partition the WAL does not have, or an offset past the
partition's end (the next write lands there), is a 404 at once whose body says which —
``{"error", "no_such": "partition", "partition_count"}`` or ``{"error", "no_such": "offset",
"end_offset"}`` — for ``min_offset`` here and for ``/v1/outcomes`` below.

``GET /v1/contexts/{id}?as_of=POINT`` answers from the state as of a point of the log (a
time: ISO 8601 or ``ms:EPOCH_MS``, the log's time; or ``P:O``, the context's partition),
built by the owner of the context's partition as ``lukhas replay --as-of`` builds it
(``processors.asof``; from its newest checkpoint at or below the point), with ``as_of``:
``{"point", "next_offset", "source"}`` added: 404 when the context did not exist then, 504
while the state is still being built (ask again), 409 when it cannot be built (a time not
settled yet, records pruned...), 400 for a point that does not parse or names another
partition.

``GET /v1/contexts?prefix=&after=&limit=`` lists the live contexts whose id starts with
``prefix``, in id order, after the id ``after``, at most ``limit`` (default 100, 1 to 1000):
``{"contexts": [{"context_id", "version", "checksum", "offset", "partition",
"expires_at_ms"}], "more", "next_after", "partition_count", "partitions", "incomplete"}`` —
from this worker's stores and, unless the request was forwarded, from every other owner,
asked at once (``processors.listing``); ``incomplete`` names the partitions no one answered
for (restoring, unowned, or an owner that did not answer).

``GET /v1/contexts/{id}/history`` lists what became of every WAL record of the context, in
offset order, from the history index (``state.history``): ``{"context_id", "partition",
"covered_from", "pruned_below", "next_offset", "events": [{"offset", "status", "version",
"reason", "duplicate_of"}], "more"}`` — ``?after=OFFSET`` (exclusive) and ``?limit=N``
(default 1000, at most 10000) page through it (``more``: the next page starts after the last
offset), ``min_offset``/``timeout`` wait as above. ``covered_from``: the index holds every
record from this offset on (null: none yet); ``pruned_below``: entries below it were trimmed
with the WAL; ``reason`` comes from the journal while it holds the entry. A context never
written has no events (200, ``events`` empty).

``GET /v1/outcomes/{partition}/{offset}`` waits (``timeout``, default 5 s) until that record
is folded and returns its journal entry: ``{"status": "applied" | "conflict" | "rejected" |
"fenced" | "dead_lettered" | "duplicate", "version", "reason", "duplicate_of"}``; 404 when
the journal no longer holds it, 504 when it is not folded in time (with ``open_transaction``
as above).

``POST /v1/dry-run`` takes one encoded event (single-object Avro, the body) and returns what
the fold would do to the current state — ``{"status", "version", "reason", "kind", "doc",
"checksum", "expires_at_ms"}`` — appending nothing. Time is the log's clock as this worker
measures it (the earliest time an append now could get, as for reads).

``GET /v1/partitions`` lists the partitions the worker serves, each with ``next_offset``,
``digest`` (16 hex digits: the order-independent digest of the partition's state, equal on
every replica and replay of the same WAL prefix), ``records``, ``documents`` and how its store
was opened (``local``, ``checkpoint``, ``changes``, ``replay``) with what it set aside on the
way (``skipped``: paths, and change-topic records passed over, with reasons), and
``open_transaction_from`` (the first offset of an open transaction that holds the partition,
else null); ``digest`` at
the top is the sum of the partitions' digests (mod 2^64), and ``restoring`` the partitions
still being opened.

``GET /v1/changes`` streams the change stream as server-sent events: ``?context_id=ID`` or
``?prefix=P`` (else everything), ``?start=latest|earliest|EPOCH_MS|TOKEN`` (default latest),
``?deltas=1``, and ``?limit=N`` / ``?idle_timeout=S`` to end the stream. Each event has
``id:`` its resume token, ``event: change`` (or ``gap``) and ``data:`` the JSON of
``Change.to_dict()``; a reconnecting browser sends ``Last-Event-ID`` and resumes right after
the last event it got, exactly once. A comment line every 15 s keeps an idle stream open.

``POST /v1/partitions/{p}/verify`` and the session endpoints under it serve ``lukhas
verify``: range digests of a frozen copy of a store (``processors.verify_api``).

``GET /v1/members`` is the routing table: ``{"member", "api", "partition_count", "owners":
{partition: api url}, "members": [...]}`` (see ``processors.members``). A request for a
context or an outcome of a partition another worker serves is forwarded to it (one hop,
marked with ``X-Lukhas-Forwarded-By``; the answer carries ``X-Lukhas-Served-By``); a forwarded
request for a partition the receiver does not serve either is 421 at once.

``GET /v1/advice`` is the scaling advice (``processors.advisor``): ``{"sample", "load",
"advice", "desired_workers", "peers_answered", "interval_s", "cooldown_s"}`` — this worker's
counters now, its load over its last advice interval, the group's advice then and the figure
``lukhas_desired_workers`` exports; 404 when the worker computes none.

``GET /v1/cluster`` is the cluster as this worker sees it (``processors.overview``):
``{"api", "partition_count", "workers": [{"api", "member", "reachable", "error", "status",
"partitions": [{"partition", "next_offset", "end", "lag", "digest", "documents",
"opened_from"}], "restoring", "standbys"}], "partitions": [{"partition", "owner",
"next_offset", "end", "lag", "digest", "restoring", "standbys", "digests"}]}`` — each other
member asked for its own view at once, one that does not answer listed with
``"reachable": false`` and why; ``digests`` says whether the copies at the owner's position
agree (``equal``, ``differ``, ``behind``, ``single``, ``unknown``).

``GET /v1/cluster/metrics`` is what the console's Metrics view plots, for every worker
(``processors.cluster_metrics``): ``{"api", "workers": [{"api", "member", "reachable",
"error", "at_ms", "folded", "read_seconds", "reads", "memory_resident_bytes",
"memory_budget_bytes"}]}`` — this worker's figures (counters since it started, and its memory
gauges, null without a budget) and each other member's, asked at once; one that does not
answer is listed with ``"reachable": false``, why, and null figures.

``GET /v1/checkpoints`` lists the checkpoints the workers hold (``processors.checkpoint_list``):
``{"partition_count", "checkpoints": [{"checkpoint_id", "created_at_ms", "partitions":
[{"partition", "next_offset", "records", "documents", "digest", "created_at_ms", "held_by",
"digests"}]}], "held", "unreachable", "writable"}`` — newest first, merged from every member
(asked at once; ``held``: this worker's own manifests, ``unreachable``: members that did not
answer, ``writable``: whether a write token is configured, so a checkpoint can be started);
``digests`` is ``equal`` or ``differ`` across the workers that hold a partition's checkpoint
(``single``: one does).

``POST /v1/checkpoints`` starts a checkpoint as ``lukhas checkpoint`` does: a barrier on every
WAL partition (body ``{"checkpoint_id": ID}`` or empty for a generated id); 202 with
``{"checkpoint_id", "barriers": {partition: offset}}``. It needs the write token
(``processors.access``); a worker without one answers 403 (its API is read-only).

``GET /console`` is the operators' console (``processors.console``): static pages, bundled
with the package, that use only the routes above.

``GET /v1/openapi.json`` is this API as OpenAPI 3.1 (``processors.openapi``).

``GET /healthz`` is 200 while the worker folds, 503 otherwise: ``{"status": "ok" | "starting"
| "stopped", "error", "partitions", "restoring", "clock"}`` — ``stopped`` once the fold loop
ended, with ``error`` naming what ended it (``"WalTruncatedError: ..."``; null after a clean
stop); its ``clock`` says how far this worker's wall clock is off the log's (``skew_ms``,
``error_ms``). ``GET /metrics`` is the Prometheus text exposition (version 0.0.4).

For probes that tell "restart it" from "send it no traffic": ``GET /livez`` is 200 while the
process works, starting and restoring included (``{"status": "alive"}``), 503 once the fold
loop has ended with an error (``{"status": "stopped", "error"}``); ``GET /readyz`` is 200
when the worker folds, has its assignment, no partition of it is still opening or
restoring, and each is within ``max_lag`` records of the WAL's end the fetcher last saw
(default ``READY_MAX_LAG``), else 503; both say why: ``{"status": "ready" | "not_ready",
"reasons": [...], "max_lag", "partitions": {p: {"next_offset", "end", "lag"}}}``.

Every error is an RFC 9457 problem (``processors.problems``): ``application/problem+json``
with ``type`` (``about:blank``, or ``urn:lukhas:problem:NAME`` where a client tells it apart),
``title``, ``status``, ``detail`` and the extension members named above (``no_such``,
``open_transaction``...); ``error`` repeats ``detail`` (deprecated). Routes that do not exist
(404) and methods a route does not take (405, with ``Allow``) answer so too.

Every endpoint rejects a query parameter it does not take, or one given twice, with a 400
naming the ones it takes; numbers are decimal ASCII digits within range (offsets and
timestamps at most 2^63-1), else a 400 (never a 500).
Connections are accepted by ``processors.listener``: capped, with deadlines for headers,
bodies and idle connections; a connection over the cap is answered 503, late headers 408.
Reads (contexts, listings, history, outcomes, dry runs) are shed when more of them than
``read_queue_budget`` are in progress (``processors.shed``): ``503`` with ``Retry-After`` and
the problem ``overloaded`` (``retry_after``), at once and without doing the read; health,
metrics, members, partitions, the change stream and verify sessions never are.

About 1,400 lines, for one job: the worker's HTTP surface (the console's additions,
``/v1/cluster``, ``/v1/cluster/metrics``, ``/v1/checkpoints``, are a few short handlers over
``processors.overview``, ``processors.cluster_metrics`` and ``processors.checkpoint_list``;
they and the listing ask the other members through ``processors.fanout``). Each handler is
short (parse and bound the parameters, wait or forward, answer); what they share (the
parameter checks, the forwarding to the owner, the error shape) is what keeps their answers
alike, so they stay together. The work behind them lives elsewhere: the store,
``processors.listener``, ``streams.watch``.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import math
import re
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

import aiohttp
import orjson
import xxhash
from aiohttp import web
from aiohttp.http import SERVER_SOFTWARE
from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from lukhas_context import __version__
from lukhas_context.processors.access import Cors, token_middleware
from lukhas_context.processors.asof import AsOfStates
from lukhas_context.processors.checkpoint_list import gathered, held, merged
from lukhas_context.processors.cluster_metrics import own_figures, peer_figures
from lukhas_context.processors.console import console_routes
from lukhas_context.processors.deadletters_api import DeadLetterRoutes
from lukhas_context.processors.exceptions import NotOwnerError
from lukhas_context.processors.fanout import FORWARDED_HEADER, Answer, Peers
from lukhas_context.processors.fold import MAX_ID_BYTES, apply, dead_letter_reason, is_barrier
from lukhas_context.processors.listener import Listener
from lukhas_context.processors.listing import (
    DEFAULT_LIMIT,
    MAX_LIMIT,
    SCAN_PER_PAGE,
    RemotePage,
    SourcePage,
    merge,
    remote_page,
    start_after,
)
from lukhas_context.processors.materializer import Materializer
from lukhas_context.processors.members import Member
from lukhas_context.processors.metrics import PROMETHEUS_CONTENT_TYPE
from lukhas_context.processors.openapi import document as openapi_document
from lukhas_context.processors.overview import peer_view, replicas, worker_view
from lukhas_context.processors.pointintime import parse_as_of, read_context
from lukhas_context.processors.problems import bad_request, problem, problem_middleware
from lukhas_context.processors.problems import query_params as _params
from lukhas_context.processors.round import reused_event_id
from lukhas_context.processors.shed import ReadQueue, sheds
from lukhas_context.processors.verify_api import VerifySessions
from lukhas_context.processors.wal_end import WalEnds
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import fence_problem
from lukhas_context.schemas.exceptions import CodecError, LukhasError
from lukhas_context.state.exceptions import InvalidCheckpointError
from lukhas_context.state.history import MAX_PAGE
from lukhas_context.state.journal import EntryStatus
from lukhas_context.state.manifest import check_checkpoint_id
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import HASH_MASK, PartitionStore
from lukhas_context.streams import kafka
from lukhas_context.streams.barriers import append_barriers
from lukhas_context.streams.changes import Gap
from lukhas_context.streams.config import bearer_headers
from lukhas_context.streams.exceptions import InvalidPositionError, ReadError, ValidationError
from lukhas_context.streams.position import MAX_OFFSET, MAX_PARTITION, parse_natural, parse_position
from lukhas_context.streams.topics import DOWNSTREAM_MAX_MESSAGE_BYTES, partition_for
from lukhas_context.streams.watch import Watcher

MAX_WAIT_S = 30.0
#: Seconds another owner has to answer for its part of a listing's page.
LISTING_TIMEOUT_S = 10.0
#: Set on a forwarded answer: the URL of the worker that answered.
SERVED_BY_HEADER = "X-Lukhas-Served-By"
#: Seconds between SSE comments that keep an idle connection (and its proxies) open.
SSE_KEEPALIVE_S = 15.0
#: Seconds between checks, on a quiet stream, that its subscriber is still connected: one
#: that left frees its slot (of ``MAX_SSE_STREAMS``) this soon, not at the next keepalive.
SSE_GONE_CHECK_S = 1.0
#: Server-sent event streams one worker serves at once (each is a Kafka consumer).
MAX_SSE_STREAMS = 64
#: The members of a dry run's answer (``DryRun`` in ``streams.client``).
_DRY_RUN_FIELDS = ("status", "version", "reason", "kind", "doc", "checksum", "expires_at_ms")
#: The longest ``idle_timeout`` of a change stream, in seconds (a day).
MAX_IDLE_S = 86_400.0
#: History entries one answer holds unless ``limit`` says otherwise.
HISTORY_PAGE = 1000


def _natural(raw: str, what: str, high: int = MAX_OFFSET) -> int:
    """A decimal integer in ``[0, high]`` (``streams.position.parse_natural``); a 400
    naming ``what`` otherwise."""
    try:
        return parse_natural(raw, what, high)
    except ValidationError as exc:
        raise bad_request(str(exc)) from None


def _error(status: int, reason: str, kind: str | None = None, **extensions: object) -> web.Response:
    """An error answer: an RFC 9457 problem (``processors.problems``)."""
    return problem(status, reason, kind, extensions)


def _no_such(what: str, reason: str, **detail: int) -> web.Response:
    """The 404 of a WAL position that does not exist (``no_such``: partition or offset)."""
    return problem(404, reason, f"no-such-{what}", {"no_such": what, **detail})


def _parse_timeout(raw: str | None) -> float:
    if raw is None:
        return 5.0
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value >= 0):
        shown = raw if len(raw) <= 40 else f"{raw[:40]}..."
        raise bad_request(f"timeout must be a finite number of seconds >= 0, got {shown!r}")
    return min(value, MAX_WAIT_S)  # longer waits are cut to the cap


def _parse_idle(raw: str) -> float:
    """``idle_timeout``: finite seconds in ``[0, MAX_IDLE_S]``."""
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 <= value <= MAX_IDLE_S):
        raise bad_request(f"idle_timeout must be seconds in [0, {MAX_IDLE_S:g}], got {raw[:40]!r}")
    return value


def _context_body(context_id: str, record: ContextRecord, partition: int, **extra: object) -> bytes:
    """The JSON of a context read: its fields, ``extra`` ones, and the document."""
    assert record.doc is not None
    head = orjson.dumps(
        {
            "context_id": context_id,
            "version": record.version,
            "checksum": record.checksum.hex(),
            "offset": record.offset,
            "partition": partition,
            "expires_at_ms": record.expires_at_ms,
            **extra,
        }
    )
    # The stored document is canonical JSON already: splice it in, never re-encode it.
    return head[:-1] + b',"doc":' + record.doc + b"}"


def etag(version: int) -> str:
    """The entity tag of a context's live read: its version, which every applied change
    raises (deletes and expiries too, so a context written again never reuses one)."""
    return f'"{version}"'


def _none_match(fields: Iterable[str], tag: str) -> bool:
    """Whether ``If-None-Match`` (its header lines) matches ``tag``: ``*``, or a listed
    entity tag equal to it by weak comparison (RFC 9110 13.1.2: ``W/`` ignored)."""
    for field in fields:
        for item in field.split(","):
            item = item.strip()
            if item == "*" or item.removeprefix("W/") == tag:
                return True
    return False


def _listed(key: bytes, record: ContextRecord, partition: int) -> dict[str, object]:
    """A context as a listing shows it: its fields, not its document."""
    return {
        "context_id": key.decode(),
        "version": record.version,
        "checksum": record.checksum.hex(),
        "offset": record.offset,
        "partition": partition,
        "expires_at_ms": record.expires_at_ms,
    }


def _context_answer(
    context_id: str, record: ContextRecord, partition: int, **extra: object
) -> web.Response:
    """The 200 of a context read."""
    body = _context_body(context_id, record, partition, **extra)
    return web.Response(body=body, content_type="application/json")


#: ``GET /readyz``: how far behind the WAL's end (records) a partition may be and the worker
#: still ready, unless the probe says ``?max_lag=``.
READY_MAX_LAG = 10_000

#: A context id the fast path answers for as it stands in the request target: nothing to
#: percent-decode, no query, no further path segment (aiohttp takes ``.`` and ``..`` as
#: they stand too: ``test_fast_reads``); the rest go through aiohttp's router.
_PLAIN_TARGET = re.compile(rb"/v1/contexts/([A-Za-z0-9._~!$&'()*+,;=:@-]{1,512})")


class _FastHead:
    """The head of a fast-path 200, as aiohttp writes it for ``_context_answer``; its
    ``Date`` made once a second, as aiohttp does."""

    def __init__(self) -> None:
        self._second = -1
        self._date = b""
        self._server = SERVER_SOFTWARE.encode()

    def __call__(self, length: int, version: int) -> bytes:
        now = int(time.time())
        if now != self._second:
            self._second = now
            self._date = email.utils.formatdate(now, usegmt=True).encode()
        return (
            b'HTTP/1.1 200 OK\r\nETag: "%d"\r\nContent-Type: application/json\r\n'
            b"Content-Length: %d\r\nDate: %s\r\nServer: %s\r\n\r\n"
            % (version, length, self._date, self._server)
        )


class ReadApi:
    def __init__(self, materializer: Materializer) -> None:
        self.m = materializer
        # Dry runs post whole events: a 1 MiB document and its envelope must fit.
        config = materializer.config
        cors = Cors(config.cors_origins)
        #: The reads in the handlers, and whether to shed new ones (``processors.shed``).
        self.read_queue = ReadQueue(config.read_queue_budget, materializer.metrics)
        middlewares: list[Any] = [self._count, self._shed, problem_middleware, cors.preflight]
        if config.api_token is not None or config.api_write_token is not None:
            middlewares.append(token_middleware(config.api_token, config.api_write_token))
        self.app = web.Application(
            client_max_size=DOWNSTREAM_MAX_MESSAGE_BYTES,
            middlewares=[*middlewares, self._deadlines],
        )
        if cors.origins:
            self.app.on_response_prepare.append(cors.on_prepare)
        #: Sent with every request to another worker (a forward, a listing's page).
        self._peer_headers = bearer_headers(config.api_token)
        #: Other workers, asked one at a time (forwards) or all at once (``processors.fanout``).
        self.peers = Peers(config.api_url, self._peer_headers)
        self.app.add_routes(
            [
                web.get("/v1/contexts", self.list_contexts),
                web.get("/v1/contexts/{context_id}", self.get_context),
                web.get("/v1/contexts/{context_id}/history", self.history),
                web.get("/v1/outcomes/{partition}/{offset}", self.get_outcome),
                web.post("/v1/dry-run", self.dry_run),
                web.get("/v1/partitions", self.partitions),
                web.get("/v1/changes", self.changes),
                web.get("/v1/members", self.members),
                web.get("/v1/advice", self.advice),
                web.get("/healthz", self.healthz),
                web.get("/livez", self.livez),
                web.get("/readyz", self.readyz),
                web.get("/metrics", self.metrics),
                web.get("/v1/openapi.json", self.openapi),
                web.get("/v1/cluster", self.cluster),
                web.get("/v1/cluster/metrics", self.cluster_metrics),
                web.get("/v1/checkpoints", self.checkpoints),
                web.post("/v1/checkpoints", self.start_checkpoint),
            ]
        )
        #: The operators' console: static pages that use the routes above (``processors.console``).
        self.app.add_routes(console_routes())
        #: States as of a point of the log (``?as_of=``), built on request.
        self.as_of = AsOfStates(materializer.config)
        #: ``lukhas verify``'s frozen copies of stores (``processors.verify_api``).
        self.verify = VerifySessions(materializer, self._check_partition, self._forward)
        self.app.add_routes(self.verify.routes())
        #: The dead-letter queue, listed, decoded and re-driven (``processors.deadletters_api``).
        self.dead_letters = DeadLetterRoutes(materializer, self.local_url)
        self.app.add_routes(self.dead_letters.routes())
        self._runner: web.AppRunner | None = None
        self._listener: Listener | None = None
        self._fast_head = _FastHead()
        #: The point reads of contexts this worker owns are counted here for the TTL
        #: policies (``processors.toucher``); None: no policy, nothing counted.
        self._reads = materializer.reads
        #: The fast path's answers count as the handler's would (children bound once).
        metrics = materializer.metrics
        self._fast_count = metrics.http_requests.labels("GET", "/v1/contexts/{context_id}", "200")
        self._fast_seconds = metrics.http_seconds.labels("/v1/contexts/{context_id}")
        self._fast_shed_count = metrics.http_requests.labels(
            "GET", "/v1/contexts/{context_id}", "503"
        )
        self._openapi: bytes | None = None
        #: The producer of the checkpoint barriers ``POST /v1/checkpoints`` appends.
        self._barriers: AIOKafkaProducer | None = None
        self._barriers_start = asyncio.Lock()
        #: Open server-sent event streams (each one a consumer), closed on shutdown.
        self._streams: set[Watcher] = set()
        #: Dry runs apply one at a time (in a thread): a flood of costly ones waits here,
        #: and never holds more than one core.
        self._dry_runs = asyncio.Semaphore(1)
        config = materializer.config
        self._wal_ends = WalEnds(
            config.bootstrap, config.topics.events, f"{config.client_id}-ends",
            config.kafka_security,
        )  # fmt: skip

    async def start(self, host: str, port: int) -> None:
        limits = self.m.config.listener
        # aiohttp's own keep-alive timer only backs up the listener's deadlines.
        backstop = limits.idle_timeout_s + limits.header_timeout_s + limits.body_timeout_s
        self._runner = web.AppRunner(self.app, access_log=None, keepalive_timeout=backstop)
        await self._runner.setup()
        assert self._runner.server is not None
        self._listener = Listener(self._runner.server, limits, self.m.metrics)
        if self.m.config.api_token is None:  # the fast path does not check a token
            self._listener.fast = self.fast_get
        await self._listener.start(host, port)

    @property
    def port(self) -> int:
        """The port the API listens on (useful after ``start(host, 0)``)."""
        assert self._listener is not None, "the API is not started"
        return self._listener.ports[0]

    def local_url(self) -> str:
        """This API at the address it listens on, as this worker reaches itself (its
        ``api_url`` may be one only others reach: docker compose's published port)."""
        host = self.m.config.api_host
        if host in ("", "0.0.0.0", "::"):
            host = "127.0.0.1"
        elif ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"

    @web.middleware
    async def _count(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """``lukhas_http_requests_total`` and ``..._duration_seconds`` of every answer: the
        route is the path template (a path no route has counts as ``unmatched``: the
        labels stay bounded whatever clients ask for)."""
        started = time.perf_counter()
        response = await handler(request)
        resource = request.match_info.route.resource
        route = "unmatched" if resource is None else resource.canonical
        self.m.metrics.request(
            request.method, route, response.status, time.perf_counter() - started
        )
        return response

    @web.middleware
    async def _shed(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Counts the reads in the handlers and, over the budget, answers a new one 503 at
        once (``processors.shed``); the routes ``sheds`` leaves out are neither counted nor
        shed."""
        resource = request.match_info.route.resource
        if resource is None or not sheds(request.method, resource.canonical):
            return await handler(request)
        queue = self.read_queue
        if queue.in_flight >= queue.limit:
            return queue.refusal(resource.canonical)
        started = queue.enter()
        try:
            return await handler(request)
        finally:
            queue.leave(started)

    @web.middleware
    async def _deadlines(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if self._listener is None:
            return await handler(request)
        return await self._listener.guard(request, handler)

    async def close(self) -> None:
        if self._listener is not None:
            self._listener.close()
        for watcher in list(self._streams):  # ends their handlers' loops
            await watcher.close()
        await self.verify.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.dead_letters.close()  # after the requests that may use it
        await self.peers.close()
        await self._wal_ends.close()
        if self._barriers is not None:
            await self._barriers.stop()
            self._barriers = None

    def _check_partition(self, partition: int) -> web.Response | None:
        """A 404 when the WAL has no ``partition`` (None when it has, or the worker does not
        know the layout yet). Checked before forwarding: no worker serves it."""
        count = self.m.partition_count
        if not count or partition < count:
            return None
        return _no_such(
            "partition", f"no partition {partition}: the WAL has {count} (0 to {count - 1})",
            partition_count=count,
        )  # fmt: skip

    async def _check_offset(self, partition: int, offset: int) -> web.Response | None:
        """A 404 when ``offset`` is past the end of the partition; None when it exists, or
        may (the end cannot be known now). The fetcher's cached end lags a fresh write, so
        an offset at or past it is checked with the broker."""
        store = self.m.stores.get(partition)
        if not self.m.partition_count or (store is not None and offset < store.next_offset):
            return None  # folded, so it exists (the common case: no broker round trip)
        known = max(self.m.highwater(partition) or 0, self._wal_ends.seen(partition))
        if offset < known:
            return None
        end = await self._wal_ends.end(partition)
        if end is None or offset < end:
            return None
        return _no_such(
            "offset", f"no offset {offset} in partition {partition}: it ends at {end} "
            f"(the next write there gets offset {end})", end_offset=end,
        )  # fmt: skip

    async def _ask_others(self, request: web.Request, path: str) -> list[Answer]:
        """Every other member's answer to ``GET path``, asked at once (``processors.fanout``);
        none when ``request`` was forwarded (a forwarded request is answered by this worker
        alone, so a fan-out never fans out again)."""
        if request.headers.get(FORWARDED_HEADER):
            return []
        others = [x for x in self.m.membership.members() if x.api != self.m.config.api_url]
        return await self.peers.ask_all(others, path)

    async def _forward(self, request: web.Request, partition: int) -> web.Response | None:
        """The owner's answer when another worker serves ``partition`` (one hop: a forwarded
        request is answered where it lands); None to answer here."""
        m = self.m
        if partition in m.stores or partition in m.restoring:
            return None
        if request.headers.get(FORWARDED_HEADER):
            return _error(
                421, f"partition {partition} is not served by this worker either", "not-served-here"
            )
        owner = m.membership.owner(partition)
        if owner is None or owner.api == m.config.api_url:
            return None
        url = owner.forward_url.rstrip("/") + request.path_qs
        try:
            async with self.peers.session().request(
                request.method, url, data=await request.read() or None, headers=self.peers.headers,
                timeout=aiohttp.ClientTimeout(total=MAX_WAIT_S + 10),
            ) as answer:  # fmt: skip
                headers = {SERVED_BY_HEADER: owner.api}
                if "Retry-After" in answer.headers:  # the owner shed it (processors.shed)
                    headers["Retry-After"] = answer.headers["Retry-After"]
                return web.Response(
                    status=answer.status, body=await answer.read(),
                    content_type=answer.content_type, headers=headers,
                )  # fmt: skip
        except (aiohttp.ClientError, TimeoutError):
            return None  # the owner is gone: answer here (wait for the partition, or 421)

    @_params()
    async def openapi(self, request: web.Request) -> web.Response:
        """The OpenAPI 3.1 description of this API (``processors.openapi``)."""
        if self._openapi is None:
            self._openapi = orjson.dumps(openapi_document(__version__))
        return web.Response(body=self._openapi, content_type="application/json")

    @_params()
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

    @_params()
    async def cluster(self, request: web.Request) -> web.Response:
        """The cluster as this worker sees it (``processors.overview``): every member's own
        view, asked at once, and every partition's owner, lag and digests; a forwarded
        request is answered with this worker's view alone."""
        m = self.m
        workers = [worker_view(m)]
        workers += [peer_view(answer) for answer in await self._ask_others(request, "/v1/cluster")]
        count = m.partition_count
        owners = {p: o.api for p in range(count) if (o := m.membership.owner(p)) is not None}
        return web.json_response(
            {
                "api": m.config.api_url,
                "partition_count": count,
                "workers": workers,
                "partitions": replicas(count, owners, workers),
            }
        )

    @_params()
    async def cluster_metrics(self, request: web.Request) -> web.Response:
        """The figures the console's Metrics view plots (``processors.cluster_metrics``): this
        worker's and, unless the request was forwarded, every other member's, asked at once;
        one that does not answer is listed unreachable, with why."""
        answers = await self._ask_others(request, "/v1/cluster/metrics")
        workers = [own_figures(self.m), *(peer_figures(answer) for answer in answers)]
        return web.json_response({"api": self.m.config.api_url, "workers": workers})

    @_params()
    async def checkpoints(self, request: web.Request) -> web.Response:
        """The checkpoints the workers hold (``processors.checkpoint_list``): this worker's,
        and, unless the request was forwarded, every other member's, asked at once; a member
        that does not answer is named in ``unreachable`` with why."""
        m = self.m
        count = m.partition_count
        mine = await asyncio.to_thread(held, m.checkpoints, range(count))
        answers = await self._ask_others(request, "/v1/checkpoints")
        holders, missing = gathered((m.config.api_url, mine), answers)
        return web.json_response(
            {
                "partition_count": count,
                "checkpoints": merged(holders),
                "held": mine,
                "unreachable": missing,
                "writable": m.config.api_write_token is not None,
            }
        )

    @_params()
    async def start_checkpoint(self, request: web.Request) -> web.Response:
        """Appends a checkpoint barrier to every WAL partition, as ``lukhas checkpoint``
        does (the body: ``{"checkpoint_id": ID}``, or nothing for ``ck-<UTC time>-<4 hex>``);
        202 with the barriers' offsets. 403 when this worker has no write token."""
        m = self.m
        if m.config.api_write_token is None:
            return _error(
                403, "this worker's API is read-only: start it with --api-write-token-file "
                "to start checkpoints through it (or run `lukhas checkpoint`)",
            )  # fmt: skip
        raw = await request.read()
        checkpoint_id = None
        if raw:
            try:
                body = orjson.loads(raw)
            except orjson.JSONDecodeError:
                raise bad_request("the body is not JSON") from None
            if not isinstance(body, dict) or set(body) - {"checkpoint_id"}:
                raise bad_request('the body is {"checkpoint_id": ID} (or empty)')
            checkpoint_id = body.get("checkpoint_id")
        if checkpoint_id is None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            checkpoint_id = f"ck-{stamp}-{uuid.uuid4().hex[:4]}"
        if not isinstance(checkpoint_id, str):
            raise bad_request("checkpoint_id is a string")
        try:
            check_checkpoint_id(checkpoint_id)
        except InvalidCheckpointError as exc:
            raise bad_request(str(exc)) from None
        count = m.partition_count
        if not count:
            return _error(503, "the worker has no partitions yet")
        try:
            offsets = await asyncio.wait_for(
                self._append_barriers(checkpoint_id, count), MAX_WAIT_S
            )
        except (KafkaError, TimeoutError) as exc:
            return _error(503, f"the barriers were not acknowledged: {exc!r}")
        barriers = {str(p): o for p, o in sorted(offsets.items())}
        return web.json_response({"checkpoint_id": checkpoint_id, "barriers": barriers}, status=202)

    async def _append_barriers(self, checkpoint_id: str, partitions: int) -> dict[int, int]:
        """The barriers through a producer of the API's own (the fold's may be inside a
        transaction), started on the first checkpoint asked for."""
        async with self._barriers_start:  # one producer, however many ask at once
            if self._barriers is None:
                config = self.m.config
                producer = kafka.producer(
                    config.bootstrap, f"{config.client_id}-api-checkpoints",
                    security=config.kafka_security,
                )  # fmt: skip
                try:
                    await producer.start()
                except BaseException:  # Kafka down, or the caller's time ran out: not kept
                    with contextlib.suppress(Exception):
                        await producer.stop()
                    raise
                self._barriers = producer
        topic = self.m.config.topics.events
        return await append_barriers(self._barriers, EventCodec(), topic, checkpoint_id, partitions)

    async def _store_of_context(
        self, request: web.Request, key: bytes
    ) -> tuple[int, PartitionStore] | web.Response:
        """The partition and store of the context ``key``, once ``min_offset`` (if given) is
        folded; or the answer to give instead: forwarded from the owner, 400, 404, 421, 503
        or the 504 of a wait that timed out."""
        partition = None
        wait_for = None
        if "min_offset" in request.query:
            try:
                wait_for = parse_position(request.query["min_offset"], "min_offset")
            except InvalidPositionError as exc:
                raise bad_request(str(exc)) from None
            timeout = _parse_timeout(request.query.get("timeout"))
            missing = self._check_partition(wait_for[0])
            if missing is not None:
                return missing
        if self.m.partition_count:
            partition = partition_for(key, self.m.partition_count)
            forwarded = await self._forward(request, partition)
            if forwarded is not None:
                return forwarded
        try:
            if wait_for is not None:
                p, offset = wait_for
                missing = await self._check_offset(p, offset)
                if missing is not None:
                    return missing
                started = asyncio.get_running_loop().time()
                if not await self.m.wait_applied(p, offset, timeout):
                    return self._not_yet(p, offset, f"not applied within {timeout:g} s")
                left = timeout - (asyncio.get_running_loop().time() - started)
                if partition == p and not await self._decided(p, key, offset, left):
                    return _error(504, f"context {key.decode(errors='replace')!r} is held by a "
                                  f"transaction prepared at or before {p}:{offset}, not "
                                  f"decided within {timeout:g} s", "not-applied-yet")  # fmt: skip
            if not self.m.partition_count:
                return _error(503, "the worker has no partitions yet", "partition-not-ready")
            if partition is None:  # assigned while this request waited
                partition = partition_for(key, self.m.partition_count)
            return partition, self.m.store_for(partition)
        except NotOwnerError as exc:
            return _error(421, str(exc), "not-served-here")

    async def _decided(self, partition: int, key: bytes, offset: int, timeout: float) -> bool:
        """Waits (at most ``timeout``) until no transaction prepared at or before ``offset``
        holds ``key`` (``processors.twophase``), and the store shows the round that released
        it: a read at or after a transaction's position sees all of it. False when one still
        does.

        The fold's ``held`` is its state in memory, ahead of the store while a round is
        published and not yet committed (``Materializer.fold_segment``): a key it no longer
        holds may be released by a decision the store does not show yet, so the read waits
        for the store to reach what was folded when it looked (``folded_to``)."""
        deadline = asyncio.get_running_loop().time() + max(0.0, timeout)
        target: int | None = None
        while True:
            folder = self.m.folder_for(partition)
            if target is None:
                tx_id = folder.held.get(key)
                prepared = folder.prepared.get(tx_id) if tx_id is not None else None
                if prepared is None or prepared.prepare_offset > offset:
                    target = folder.folded_to
            if target is not None and folder.store.next_offset >= target:
                return True
            if asyncio.get_running_loop().time() >= deadline:
                return False
            await asyncio.sleep(0.01)

    async def _resolution(
        self, partition: int, offset: int, timeout: float
    ) -> tuple[int, int, int, str] | None:
        """How the transaction prepared at ``partition:offset`` was decided, waiting at most
        ``timeout`` for it; None when it is still undecided."""
        deadline = asyncio.get_running_loop().time() + max(0.0, timeout)
        while True:
            found = self.m.store_for(partition).resolution(offset)
            if found is not None or asyncio.get_running_loop().time() >= deadline:
                return found
            await asyncio.sleep(0.01)

    def fast_get(self, target: bytes) -> bytes | None:
        """The whole answer to ``GET target`` when it is a plain read of a context this
        worker folds, open and holding it live (``processors.listener``'s fast path: the
        same bytes ``get_context`` answers with); None for anything else, which aiohttp
        then serves as usual (a miss, a partition restoring or elsewhere, a query). Over
        the read budget, a context read is the shed 503 (``ReadQueue.fast_refusal``)."""
        found = _PLAIN_TARGET.fullmatch(target)
        if found is None:
            return None  # another route (/healthz...): never shed, aiohttp answers it
        queue = self.read_queue
        if queue.in_flight >= queue.limit:
            self._fast_shed_count.inc()
            return queue.fast_refusal()
        m = self.m
        count = m.partition_count
        if not count:
            return None
        key = found.group(1)
        partition = partition_for(key, count)
        store = m.stores.get(partition)
        if store is None or partition in m.assignment.opening:
            return None
        record = store.get(key)
        if record is None or not record.is_live(m.clock.earliest_ms()):
            return None
        if self._reads is not None:  # access-driven TTL: one dict increment
            self._reads.count(key)
        started = time.perf_counter()
        body = _context_body(key.decode(), record, partition)
        answer = self._fast_head(len(body), record.version) + body
        self._fast_count.inc()
        self._fast_seconds.observe(time.perf_counter() - started)
        return answer

    @_params("prefix", "after", "limit")
    async def list_contexts(self, request: web.Request) -> web.Response:
        """A page of the live contexts whose id starts with ``prefix``, in id order, after
        the id ``after`` (see the module doc and ``processors.listing``): this worker's
        partitions, and, unless the request was forwarded, every other owner's, asked
        concurrently. Partitions no one could answer for are listed as ``incomplete``."""
        query = request.query
        prefix, after = query.get("prefix", ""), query.get("after")
        for name, value in (("prefix", prefix), ("after", after)):
            if value is not None and len(value.encode()) > MAX_ID_BYTES:
                raise bad_request(f"{name} is longer than a context id ({MAX_ID_BYTES} bytes)")
        limit = DEFAULT_LIMIT
        if "limit" in query:
            limit = _natural(query["limit"], "limit", MAX_LIMIT)
            if limit == 0:
                raise bad_request(f"limit must be 1 to {MAX_LIMIT}, got 0")
        m = self.m
        count = m.partition_count
        if not count:
            return _error(503, "the worker has no partitions yet", "partition-not-ready")
        start, key_prefix = start_after(None if after is None else after.encode()), prefix.encode()
        now = m.clock.earliest_ms()
        pages: list[SourcePage] = []
        covered: set[int] = set()
        for partition, store in sorted(m.stores.items()):
            if partition in m.assignment.opening:
                continue
            found, resume = store.page(
                start, key_prefix, limit, SCAN_PER_PAGE, lambda r: r.is_live(now)
            )
            listed = [(k, _listed(k, r, partition)) for k, r in found]
            pages.append(SourcePage(listed, resume))
            covered.add(partition)
        if not request.headers.get(FORWARDED_HEADER):
            for remote, partitions in await self._remote_pages(request, count, covered):
                pages.append(remote)
                covered.update(partitions)
        entries, next_key = merge(pages, limit)
        return web.json_response(
            {
                "contexts": entries,
                "more": next_key is not None,
                "next_after": None if next_key is None else next_key.decode(),
                "partition_count": count,
                "partitions": sorted(covered),
                "incomplete": sorted(set(range(count)) - covered),
            }
        )

    async def _remote_pages(
        self, request: web.Request, count: int, covered: set[int]
    ) -> list[RemotePage]:
        """The same page from each other worker that owns a partition not ``covered`` here,
        asked at once (each answers for its own partitions only); an owner that does not
        answer, or answers nonsense, is left out (its partitions stay incomplete)."""
        membership = self.m.membership
        owners: dict[str, Member] = {}
        for partition in range(count):
            owner = membership.owner(partition)
            if partition in covered or owner is None or owner.api == self.m.config.api_url:
                continue
            owners[owner.api] = owner
        answers = await self.peers.ask_all(owners.values(), request.path_qs, LISTING_TIMEOUT_S)
        pages = (remote_page(a.data, covered, count) for a in answers if a.data is not None)
        return [page for page in pages if page is not None]

    @_params("min_offset", "timeout", "as_of", "allow_stale", "max_lag")
    async def get_context(self, request: web.Request) -> web.Response:
        context_id = request.match_info["context_id"]
        key = context_id.encode()
        if "allow_stale" in request.query or "max_lag" in request.query:
            stale = self._from_standby(request, context_id)
            if stale is not None:
                return stale
        if "as_of" in request.query:
            return await self._get_as_of(request, context_id)
        found = await self._store_of_context(request, key)
        if isinstance(found, web.Response):
            return found
        partition, store = found
        record = store.get(key)
        if record is None or not record.is_live(self.m.clock.earliest_ms()):
            return _error(404, f"context {context_id!r} not found", "context-not-found")
        if self._reads is not None:  # access-driven TTL (a 304 is a read too)
            self._reads.count(key)
        tag = etag(record.version)
        if _none_match(request.headers.getall("If-None-Match", ()), tag):
            return web.Response(status=304, headers={"ETag": tag})
        body = _context_body(context_id, record, partition)
        return web.Response(body=body, content_type="application/json", headers={"ETag": tag})

    def _from_standby(self, request: web.Request, context_id: str) -> web.Response | None:
        """``?allow_stale=1`` (any lag) or ``?max_lag=N`` (at most N change records behind):
        the answer of this worker's standby copy of the context's partition, with its
        position (``X-Lukhas-Standby-Position: P:NEXT_OFFSET``, the WAL prefix it holds) and
        lag (``X-Lukhas-Standby-Lag``), as Kafka Streams answers from a standby. None: read
        as usual (this worker folds the partition, has no copy of it, or the copy lags more):
        the owner answers, fresh."""
        q = request.query
        allow = q.get("allow_stale", "1" if "max_lag" in q else "0")
        if allow not in ("0", "1", "true", "false"):
            raise bad_request(f"allow_stale must be 1, 0, true or false, not {allow[:40]!r}")
        if allow in ("0", "false"):
            if "max_lag" in q:
                raise bad_request("max_lag allows a stale read; it cannot go with allow_stale=0")
            return None
        if "min_offset" in q or "as_of" in q:
            raise bad_request("a stale read (allow_stale, max_lag) takes neither min_offset "
                               "nor as_of: those ask for a position it may not have")  # fmt: skip
        max_lag = _natural(q["max_lag"], "max_lag") if "max_lag" in q else None
        count, standby = self.m.partition_count, self.m.standby
        if not count or standby is None:
            return None
        partition = partition_for(context_id.encode(), count)
        copy = standby.copy_of(partition)
        if partition in self.m.stores or copy is None:
            return None
        if max_lag is not None and copy.lag > max_lag:
            return None
        headers = {
            "X-Lukhas-Standby-Position": f"{partition}:{copy.next_offset}",
            "X-Lukhas-Standby-Lag": str(copy.lag),
        }
        record = copy.store.get(context_id.encode())
        if record is None or not record.is_live(self.m.clock.earliest_ms()):
            answer = _error(
                404, f"context {context_id!r} not found (standby copy)", "context-not-found"
            )
        else:
            answer = _context_answer(
                context_id, record, partition, standby_position=f"{partition}:{copy.next_offset}"
            )
        answer.headers.update(headers)
        return answer

    async def _get_as_of(self, request: web.Request, context_id: str) -> web.Response:
        """``?as_of=POINT``: the context in the state as of a time or ``P:O``, built (or found
        built) by the owner of its partition (``processors.asof``)."""
        if "min_offset" in request.query:
            raise bad_request("as_of reads a past state, min_offset waits for the live one: "
                               "give one")  # fmt: skip
        raw = request.query["as_of"]
        try:
            as_of = parse_as_of(raw)
        except ValueError as exc:
            raise bad_request(f"as_of: {exc}") from None
        timeout = _parse_timeout(request.query.get("timeout"))
        count = self.m.partition_count
        if not count:
            return _error(503, "the worker has no partitions yet", "partition-not-ready")
        partition = partition_for(context_id.encode(), count)
        if as_of.positions is not None and set(as_of.positions) != {partition}:
            raise bad_request(f"as_of names partition(s) {sorted(as_of.positions)}, but "
                               f"{context_id!r} is in partition {partition}")  # fmt: skip
        forwarded = await self._forward(request, partition)
        if forwarded is not None:
            return forwarded
        if partition in self.m.restoring:
            return _error(
                503, f"partition {partition} is being restored; ask again", "partition-not-ready"
            )
        if partition not in self.m.stores:
            return _error(
                421, f"partition {partition} is not served by this worker", "not-served-here"
            )
        try:
            where = await asyncio.wait_for(self.as_of.state(partition, as_of), timeout)
            record, manifest, _ = await asyncio.to_thread(read_context, where, context_id)
        except TimeoutError:
            return _error(504, f"the state as of {raw} is being built; ask again (a build "
                               "goes on without the request that started it)")  # fmt: skip
        except (LukhasError, OSError) as exc:  # it cannot be built (PointInTimeError, ...)
            return _error(409, f"the state as of {raw} cannot be built: {exc}")
        built = manifest["partitions"][str(partition)]
        if record is None:
            return _error(
                404, f"context {context_id!r} did not exist as of {raw}", "context-not-found"
            )
        point = {"point": raw, "next_offset": built["next_offset"], "source": built["source"]}
        return _context_answer(context_id, record, partition, as_of=point)

    @_params("after", "limit", "min_offset", "timeout")
    async def history(self, request: web.Request) -> web.Response:
        """The history of one context, a page at a time (see the module doc)."""
        context_id = request.match_info["context_id"]
        key = context_id.encode()
        after = -1
        if "after" in request.query:
            after = _natural(request.query["after"], "after")
        limit = _natural(request.query.get("limit", str(HISTORY_PAGE)), "limit", MAX_PAGE)
        if limit == 0:
            raise bad_request(f"limit must be 1 to {MAX_PAGE}, got 0")
        found = await self._store_of_context(request, key)
        if isinstance(found, web.Response):
            return found
        partition, store = found
        rows, more = store.history(key, after, limit)
        reasons = store.reasons(o for o, status, _ in rows if status is not EntryStatus.APPLIED)
        events = []
        for offset, status, version in rows:
            duplicate = status is EntryStatus.DUPLICATE
            events.append({
                "offset": offset,
                "status": status.name.lower(),
                "version": None if duplicate else version,
                "reason": reasons.get(offset),
                "duplicate_of": version if duplicate else None,
            })  # fmt: skip
        return web.json_response(
            {
                "context_id": context_id,
                "partition": partition,
                "covered_from": store.history_from(),
                "pruned_below": store.history_floor(),
                "next_offset": store.next_offset,
                "events": events,
                "more": more,
            }
        )

    @_params("timeout")
    async def get_outcome(self, request: web.Request) -> web.Response:
        partition = _natural(request.match_info["partition"], "partition", MAX_PARTITION)
        offset = _natural(request.match_info["offset"], "offset")
        timeout = _parse_timeout(request.query.get("timeout"))
        missing = self._check_partition(partition)
        if missing is not None:
            return missing
        forwarded = await self._forward(request, partition)
        if forwarded is not None:
            return forwarded
        try:
            missing = await self._check_offset(partition, offset)
            if missing is not None:
                return missing
            started = asyncio.get_running_loop().time()
            if not await self.m.wait_applied(partition, offset, timeout):
                return self._not_yet(partition, offset, f"not folded within {timeout:g} s")
            entry = self.m.store_for(partition).outcome(offset)
            if entry is not None and entry.status is EntryStatus.PREPARED:
                left = timeout - (asyncio.get_running_loop().time() - started)
                decided = await self._resolution(partition, offset, left)
                if decided is None:
                    return _error(504, f"the transaction prepared at {partition}:{offset} is not "
                                  f"decided within {timeout:g} s (its coordinator decides, or "
                                  "aborts it when its transaction timeout runs out)",
                                  "not-applied-yet")  # fmt: skip
                at, status, version, reason = decided
                return web.json_response({
                    "partition": partition, "offset": offset,
                    "status": EntryStatus(status).name.lower(), "version": version,
                    "reason": reason, "duplicate_of": None, "decided_at": at,
                })  # fmt: skip
        except NotOwnerError as exc:
            return _error(421, str(exc), "not-served-here")
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

    def _not_yet(self, partition: int, offset: int, what: str) -> web.Response:
        """The 504 of a wait that timed out; it names the open transaction that holds the
        partition, if one does (``open_transaction``: where it began, the high watermark)."""
        reason = f"offset {partition}:{offset} {what}"
        held = self.m.open_transaction(partition)
        if held is None or offset < held[0]:
            return _error(504, reason, "not-applied-yet")
        first, high = held
        reason += (
            f": an open transaction holds partition {partition} from offset {first} (high "
            f"watermark {high}); nothing after it is readable until that transaction commits "
            "or aborts, at the latest when its transaction timeout runs out "
            "(`lukhas transactions open` shows it, `lukhas transactions abort` ends it)"
        )
        held_by = {"partition": partition, "first_offset": first, "high_watermark": high}
        return _error(504, reason, "not-applied-yet", open_transaction=held_by)

    @_params()
    async def dry_run(self, request: web.Request) -> web.Response:
        """What the fold would do with one event (see the module doc). The same decisions
        as the fold, in its order: an event it would dead-letter (a bad key or id) or
        journal as a retry is reported so, and ``apply`` runs with the fold's limits, in a
        thread (one at a time), so a costly event never stalls this worker's loop and costs
        no more than folding it would."""
        body = await request.read()
        try:
            event = self.m.decode_event(body)
        except CodecError as exc:
            # What the fold would journal for these bytes (the reason `lukhas dlq` filters
            # on) goes with the problem, as the fold words it.
            reason = f"{type(exc).__name__}: {exc}"
            return _error(
                400, f"the body is not an event this worker reads: {exc}", None,
                dead_letter_reason=reason,
            )  # fmt: skip
        key = event.context_id.encode()
        if is_barrier(key, event):
            return _error(400, "a checkpoint barrier is not dry-run: `lukhas checkpoint`")
        result: dict[str, object] = dict.fromkeys(_DRY_RUN_FIELDS)
        mismatch = dead_letter_reason(key, event)
        if mismatch is not None:
            result.update(status="dead_lettered", reason=f"KeyMismatchError: {mismatch}")
            return web.json_response(result)
        if not self.m.partition_count:
            return _error(503, "the worker has no partitions yet", "partition-not-ready")
        partition = partition_for(key, self.m.partition_count)
        forwarded = await self._forward(request, partition)
        if forwarded is not None:
            return forwarded
        try:
            folder = self.m.folder_for(partition)
        except NotOwnerError as exc:
            return _error(421, str(exc), "not-served-here")
        store, limits = folder.store, self.m.config.limits
        offset = store.next_offset
        prior = folder.window.prior_use(event.event_id, offset)
        if prior is not None:
            if prior[1] == xxhash.xxh3_64_intdigest(body):
                result.update(status="duplicate", reason=f"duplicate of offset {prior[0]}")
            else:
                error = reused_event_id(event.event_id, prior[0])
                result.update(status="dead_lettered", reason=f"{type(error).__name__}: {error}")
            return web.json_response(result)
        held = folder.held_reason(key, event.fence)
        if held is not None:
            current = store.get(key)
            result.update(status="conflict", reason=held,
                          version=0 if current is None else current.version)  # fmt: skip
            return web.json_response(result)
        record = store.get(key)
        now = self.m.clock.earliest_ms()
        fence = event.fence
        floor = None
        if fence is not None and fence_problem(fence) is None:
            floor = store.fence(fence.lock.encode())
        async with self._dry_runs:
            new, outcome = await asyncio.to_thread(apply, record, event, offset, now, limits, floor)
        result.update(
            status=outcome.status.name.lower(), version=outcome.version, reason=outcome.reason,
            kind=None if outcome.kind is None else outcome.kind.name.lower(),
        )  # fmt: skip
        if new is not None and new.doc is not None and new.is_live(now):
            result.update(
                doc=orjson.loads(new.doc), checksum=new.checksum.hex(),
                expires_at_ms=new.expires_at_ms,
            )  # fmt: skip
        return web.json_response(result)

    @_params("context_id", "prefix", "start", "deltas", "limit", "idle_timeout")
    async def changes(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events of the change stream (see the module doc)."""
        if len(self._streams) >= MAX_SSE_STREAMS:
            return _error(503, f"this worker serves {MAX_SSE_STREAMS} change streams already")
        query = request.query
        start: object = request.headers.get("Last-Event-ID") or query.get("start", "latest")
        limit = _natural(query["limit"], "limit") if "limit" in query else None
        idle = _parse_idle(query["idle_timeout"]) if "idle_timeout" in query else None
        deltas = query.get("deltas", "0")
        if deltas not in ("0", "1", "false", "true"):
            return _error(400, f"deltas must be 1, 0, true or false, got {deltas[:40]!r}")
        try:
            watcher = Watcher(
                self.m.config.bootstrap, self.m.config.topics,
                context_id=query.get("context_id"), prefix=query.get("prefix"), start=start,
                deltas=deltas in ("1", "true"), idle_timeout=idle,
                client_id=f"{self.m.config.client_id}-sse",
                security=self.m.config.kafka_security,
            )  # fmt: skip
        except (ValidationError, ValueError) as exc:
            return _error(400, str(exc) or "the change stream's parameters do not go together")
        self._streams.add(watcher)
        self.m.metrics.sse_streams.inc()
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
            loop = asyncio.get_running_loop()
            quiet_since = loop.time()
            while limit is None or sent < limit:
                try:
                    item = await asyncio.wait_for(anext(watcher), SSE_GONE_CHECK_S)
                except TimeoutError:
                    if request.transport is None or request.transport.is_closing():
                        return response  # the subscriber went away
                    if loop.time() - quiet_since >= SSE_KEEPALIVE_S:
                        keepalive = b": keepalive\nid: %s\n\n" % watcher.token().encode()
                        await response.write(keepalive)
                        quiet_since = loop.time()
                    continue
                except StopAsyncIteration:
                    break
                quiet_since = loop.time()
                kind = b"gap" if isinstance(item, Gap) else b"change"
                data = orjson.dumps(item.to_dict())
                await response.write(
                    b"id: %s\nevent: %s\ndata: %s\n\n" % (item.token.encode(), kind, data)
                )
                self.m.metrics.sse_events.labels(kind.decode()).inc()
                sent += kind == b"change"
            return response
        except ConnectionResetError:
            return response  # the subscriber went away
        finally:
            self._streams.discard(watcher)
            self.m.metrics.sse_streams.dec()
            await watcher.close()

    @_params()
    async def partitions(self, request: web.Request) -> web.Response:
        """The partitions this worker serves, each with its summary (next offset, digest,
        counts) and how its store was opened; and the partitions it is still restoring."""
        served = []
        total = 0
        for p in sorted(self.m.stores):
            summary = self.m.stores[p].summary()
            total = (total + summary.digest) & HASH_MASK
            report = self.m.restore_reports.get(p)
            held = self.m.open_transaction(p)
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
                    "open_transaction_from": None if held is None else held[0],
                    "skipped": [] if report is None else report.skipped,
                }
            )
        standby = self.m.standby
        return web.json_response(
            {
                "partitions": served, "digest": f"{total:016x}", "restoring": self.m.restoring,
                "standbys": [] if standby is None else standby.report(),
            }
        )  # fmt: skip

    @_params("sample")
    async def advice(self, request: web.Request) -> web.Response:
        """The scaling advice and the counters it comes from (``processors.advisor``);
        ``sample=0``: the last sample, not a fresh one (what the peers ask: they read only
        the load, and a fresh sample asks the brokers for the WAL's ends)."""
        advisor = self.m.advisor
        if advisor is None:
            return _error(404, "scaling advice is off on this worker (advice_interval_s None)")
        fresh = request.query.get("sample", "1") != "0"
        return web.json_response(await advisor.report(fresh=fresh))

    @_params()
    async def healthz(self, request: web.Request) -> web.Response:
        m = self.m
        error = m.stop_error
        body = {
            "status": "ok" if m.running else "stopped" if m.stopped else "starting",
            "error": None if error is None else f"{type(error).__name__}: {error}",
            "partitions": sorted(self.m.stores),
            "restoring": self.m.restoring,
            "clock": self.m.clock.skew().to_dict(),
        }
        return web.json_response(body, status=200 if self.m.running else 503)

    @_params()
    async def livez(self, request: web.Request) -> web.Response:
        m = self.m
        if m.stopped and m.stop_error is not None:
            error = f"{type(m.stop_error).__name__}: {m.stop_error}"
            return web.json_response({"status": "stopped", "error": error}, status=503)
        return web.json_response({"status": "alive"})

    @_params("max_lag")
    async def readyz(self, request: web.Request) -> web.Response:
        raw = request.query.get("max_lag")
        max_lag = READY_MAX_LAG if raw is None else _natural(raw, "max_lag")
        m = self.m
        reasons = []
        if not m.running:
            reasons.append("stopped" if m.stopped else "starting")
        elif not m.partition_count:
            reasons.append("no assignment from the group yet")
        restoring = m.restoring
        if restoring:
            reasons.append(f"partitions {restoring} are opening or restoring")
        partitions = {}
        for p, store in sorted(m.stores.items()):
            end = m.highwater(p)
            lag = None if end is None else max(0, end - store.next_offset)
            partitions[p] = {"next_offset": store.next_offset, "end": end, "lag": lag}
            if lag is None:
                reasons.append(f"partition {p}: the WAL's end is not known yet")
            elif lag > max_lag:
                reasons.append(f"partition {p} is {lag} records behind (max_lag {max_lag})")
        body = {
            "status": "not_ready" if reasons else "ready",
            "reasons": reasons,
            "max_lag": max_lag,
            "partitions": partitions,
        }
        return web.json_response(body, status=503 if reasons else 200)

    @_params()
    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.m.metrics.render(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE}
        )
