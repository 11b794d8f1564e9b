"""The read API's dead-letter routes (``streams.deadletters``), which the console's Dead
letters view uses:

* ``GET /v1/dead-letters`` — the dead letters, partition by partition, each oldest first,
  with their reasons: the query chooses them as ``lukhas dlq list`` does (``partition``,
  ``since``, ``reason``, ``context_id``, ``limit``, at most ``MAX_LIMIT``).
* ``GET /v1/dead-letters/{partition}/{offset}`` — one, decoded with this worker's codec (so
  the writer schemas it was given decode too): every header, the key, the value's size and
  first bytes, and the event (its document or patch) when it decodes; 404 when there is none
  at that offset, 400 for a partition the DLQ does not have.
* ``POST /v1/dead-letters/dry-run`` (``{"position": "P:O"}``) — what re-driving it would do
  now: the owner's dry run of its bytes. Reads only.
* ``POST /v1/dead-letters/redrive`` (``{"position": "P:O"}``) — the dry run, then its
  original bytes appended to the WAL under its original key, and the fold's outcome, as
  ``lukhas dlq redrive --yes`` does. It changes the log: it needs the write token
  (``--api-write-token-file``), 403 on a read-only worker.

Any worker answers: the DLQ is read from Kafka, not from a store. Each request reads with a
consumer of its own within ``READ_TIMEOUT_S`` (a 504 past it; a 503 when Kafka cannot be
reached), and ``MAX_READS`` of them at once (a 503 with ``Retry-After`` over that): the DLQ
is not a hot path. A dry run or re-drive ends within ``REDRIVE_TIMEOUT_S`` all told. It goes
through a client of this worker's own (a producer, and this worker's API at its own address
with ``route_reads`` off: the dry run and the outcome are forwarded to the owner over the
peer URLs, as any request is, so a worker that advertises a URL it cannot reach itself, as
in docker compose, still re-drives), started on the first and closed with the API.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from lukhas_context.processors.materializer import Materializer
from lukhas_context.processors.problems import bad_request, problem, query_params
from lukhas_context.schemas.exceptions import LukhasError
from lukhas_context.streams.async_client import ContextClient
from lukhas_context.streams.config import ClientConfig
from lukhas_context.streams.deadletters import (
    DeadLetterError,
    Filters,
    NoSuchDeadLetterError,
    letter_detail,
    letter_line,
    listing,
    read_one,
    redrive,
)
from lukhas_context.streams.exceptions import ValidationError
from lukhas_context.streams.position import (
    MAX_PARTITION,
    Bound,
    parse_bound,
    parse_natural,
    parse_position,
)
from lukhas_context.streams.records import NoSuchPartitionError, TopicReadError

__all__ = ["MAX_LIMIT", "DeadLetterRoutes"]

Handler = Callable[["DeadLetterRoutes", web.Request], Awaitable[web.Response]]

#: Dead letters one listing answers at most (and by default ``DEFAULT_LIMIT``).
MAX_LIMIT = 1000
DEFAULT_LIMIT = 100
#: Seconds one request may read the DLQ; a dry run or re-drive, all told (the console waits
#: 30 s and 60 s).
READ_TIMEOUT_S = 25.0
REDRIVE_TIMEOUT_S = 50.0
#: Requests reading the DLQ at once (each holds a Kafka consumer).
MAX_READS = 4


def _since(raw: str) -> Bound:
    try:
        return parse_bound(raw)
    except ValueError as exc:
        raise bad_request(f"since: {exc}") from None


class _Answer(Exception):
    """Ends a handler with ``response`` (an error found deep in it)."""

    def __init__(self, response: web.Response) -> None:
        super().__init__(response.status)
        self.response = response


def _answering(handler: Handler) -> Handler:
    @functools.wraps(handler)
    async def answer(routes: DeadLetterRoutes, request: web.Request) -> web.Response:
        try:
            return await handler(routes, request)
        except _Answer as exc:
            return exc.response

    return answer


class DeadLetterRoutes:
    """The handlers of the routes above, for one worker."""

    def __init__(self, m: Materializer, local_url: Callable[[], str]) -> None:
        self.m = m
        #: This worker's API at an address it reaches itself (its listener's).
        self._local_url = local_url
        self._reads = asyncio.Semaphore(MAX_READS)
        self._client: ContextClient | None = None
        self._client_start = asyncio.Lock()
        self._closed = False

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/v1/dead-letters", self.list_letters),
            web.get("/v1/dead-letters/{partition}/{offset}", self.show),
            web.post("/v1/dead-letters/dry-run", self.dry_run),
            web.post("/v1/dead-letters/redrive", self.redrive),
        ]

    async def close(self) -> None:
        """Closes the re-drive client (after the API stopped taking requests); none is
        started after this."""
        self._closed = True
        if self._client is not None:
            await self._client.close()
            self._client = None

    @query_params("partition", "since", "reason", "context_id", "limit")
    @_answering
    async def list_letters(self, request: web.Request) -> web.Response:
        q = request.query
        try:
            partitions = (
                None
                if "partition" not in q
                else [parse_natural(q["partition"], "partition", MAX_PARTITION)]
            )
            since = None if "since" not in q else _since(q["since"])
            limit = parse_natural(q.get("limit", str(DEFAULT_LIMIT)), "limit", MAX_LIMIT)
        except (ValidationError, ValueError) as exc:
            raise bad_request(str(exc)) from None
        if limit < 1:
            raise bad_request(f"limit must be 1 to {MAX_LIMIT}")
        f = Filters(partitions, since, q.get("reason") or None, q.get("context_id"), limit)
        config = self.m.config
        found = await self._read(
            lambda: listing(
                config.bootstrap,
                config.topics,
                f,
                security=config.kafka_security,
                decode=self.m.decode_event,
            )
        )
        return web.json_response(
            {
                "dead_letters": found,
                "limit": limit,
                "writable": config.api_write_token is not None,
            }
        )

    @query_params()
    @_answering
    async def show(self, request: web.Request) -> web.Response:
        partition, offset = self._position_of(
            f"{request.match_info['partition']}:{request.match_info['offset']}"
        )
        m = await self._letter(partition, offset)
        detail = letter_detail(m, self.m.decode_event)
        detail["writable"] = self.m.config.api_write_token is not None
        return web.json_response(detail)

    @query_params()
    @_answering
    async def dry_run(self, request: web.Request) -> web.Response:
        return await self._redrive(request, yes=False)

    @query_params()
    @_answering
    async def redrive(self, request: web.Request) -> web.Response:
        if self.m.config.api_write_token is None:
            return problem(
                403,
                "this worker's API is read-only: start it with --api-write-token-file "
                "to re-drive dead letters through it (or run `lukhas dlq redrive`)",
            )
        return await self._redrive(request, yes=True)

    async def _redrive(self, request: web.Request, yes: bool) -> web.Response:
        raw = await request.read()
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise bad_request('the body is not JSON: {"position": "PARTITION:OFFSET"}') from None
        if not isinstance(body, dict) or set(body) != {"position"}:
            raise bad_request('the body is {"position": "PARTITION:OFFSET"} (of the DLQ)')
        if not isinstance(body["position"], str):
            raise bad_request("position is a string, PARTITION:OFFSET")
        partition, offset = self._position_of(body["position"])
        started = time.monotonic()
        m = await self._letter(partition, offset)
        line = letter_line(m, self.m.decode_event)
        left = REDRIVE_TIMEOUT_S - (time.monotonic() - started)
        try:
            async with asyncio.timeout(left):
                client = await self._redrive_client()
                report = await redrive(client, [(m, line)], yes, outcome_timeout=left / 2)
        except TimeoutError:
            maybe = " It may have been appended: a second re-drive is a duplicate." if yes else ""
            return problem(504, f"the {'re-drive' if yes else 'dry run'} did not finish "
                           f"within {REDRIVE_TIMEOUT_S:g} s.{maybe}")  # fmt: skip
        except LukhasError as exc:
            return problem(503, f"the {'re-drive' if yes else 'dry run'} failed: {exc}")
        return web.json_response(report.to_dict())

    @staticmethod
    def _position_of(text: str) -> tuple[int, int]:
        try:
            return parse_position(text)
        except ValidationError as exc:
            raise bad_request(str(exc)) from None

    async def _letter(self, partition: int, offset: int) -> Any:
        config = self.m.config
        try:
            return await self._read(
                lambda: read_one(
                    config.bootstrap,
                    config.topics,
                    partition,
                    offset,
                    security=config.kafka_security,
                )
            )
        except NoSuchDeadLetterError as exc:
            raise _Answer(problem(404, str(exc))) from None

    async def _read(self, work: Callable[[], Awaitable[Any]]) -> Any:
        """``work()`` (a read of the DLQ) within the bounds above."""
        if self._reads.locked():
            raise _Answer(
                problem(
                    503,
                    f"this worker reads the DLQ for {MAX_READS} requests already",
                    "overloaded",
                    {"retry_after": 1},
                    {"Retry-After": "1"},
                )
            )
        async with self._reads:
            try:
                return await asyncio.wait_for(work(), READ_TIMEOUT_S)
            except TimeoutError:
                raise _Answer(
                    problem(504, f"the DLQ was not read within {READ_TIMEOUT_S:g} s")
                ) from None
            except NoSuchDeadLetterError:
                raise
            except NoSuchPartitionError as exc:
                raise _Answer(problem(400, str(exc))) from None
            except TopicReadError as exc:
                raise _Answer(problem(503, str(exc))) from None

    async def _redrive_client(self) -> ContextClient:
        async with self._client_start:
            if self._closed:
                raise DeadLetterError("the worker is stopping")
            if self._client is None:
                config = self.m.config
                client = ContextClient(
                    ClientConfig(
                        config.bootstrap,
                        self._local_url(),
                        config.topics,
                        client_id=f"{config.client_id}-redrive",
                        api_token=config.api_token,
                        kafka_security=config.kafka_security,
                        route_reads=False,
                    )
                )
                try:
                    await client.start()
                except BaseException:
                    with contextlib.suppress(Exception):
                        await client.close()
                    raise
                self._client = client
        return self._client
