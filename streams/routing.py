"""``Router``: which worker's read API a request goes to, and what happens when it is gone.

A client is configured with one or more workers' URLs (``api_url``, comma-separated). The
routing table — which worker serves which partition, and how many partitions there are — is
learned from the workers themselves (``GET /v1/members``), so a read goes straight to the
worker that serves its context's partition; any configured worker forwards a request it does
not serve. A worker that is gone, or that answers 421 (the partition moved), makes the
client reload the table and try again until the request's time is up.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
import orjson

from lukhas_context.streams.breaker import Breakers, CircuitOpenError
from lukhas_context.streams.config import bearer_headers
from lukhas_context.streams.deadlines import (
    DeadlineExceededError,
    DeadlinePolicy,
    LatencyWindow,
    OverloadedError,
    retry_after_of,
)
from lukhas_context.streams.exceptions import ReadError
from lukhas_context.streams.http1 import ConnectError, Http1Pool, ProtocolError, http_origin
from lukhas_context.streams.topics import partition_for
from lukhas_context.streams.validation import check_wait

__all__ = ["ROUTE_RETRY_S", "Router"]

#: The largest answer body a GET may have (a history page of 10,000 entries with long reasons
#: is about 12 MB).
MAX_ANSWER_BYTES = 64 * 1024 * 1024
#: Pause before a read is tried again on another worker (after a 421 or a failure).
ROUTE_RETRY_S = 0.2
#: The longest reload of the routing table (seconds), and never past the call's budget.
REFRESH_TIMEOUT_S = 5.0
#: Latency windows kept at most ((worker, kind of request) pairs).
MAX_LATENCY_WINDOWS = 1024
#: While the partition count is not known (no worker had its partitions yet when asked), the
#: routing table is asked for again at most this often.
COUNT_RETRY_S = 1.0


class Router:
    """Sends read API requests (one HTTP session, opened on first use) to the worker that
    serves a partition; ``partition_count``: as the workers said (0: not known yet)."""

    def __init__(
        self,
        api_url: str | None,
        token: str | None = None,
        breakers: Breakers | None = None,
        deadlines: DeadlinePolicy | None = None,
        route: bool = True,
    ) -> None:
        #: Read API URLs configured (``api_url``, comma-separated), and the routing table
        #: learned from the workers: partition -> URL of the worker serving it.
        self._seeds = [u.strip() for u in (api_url or "").split(",") if u.strip()]
        self._routes: dict[int, str] = {}
        #: partition -> URLs of the workers keeping a standby copy of it (stale reads).
        self._standbys: dict[int, list[str]] = {}
        self.partition_count = 0
        self._count_asked_at: float | None = None
        self._http: aiohttp.ClientSession | None = None
        #: GETs to ``http://`` workers go over lean keep-alive connections (``streams.http1``).
        #: Headers of every request: the read API's bearer token, if it needs one.
        self._headers = bearer_headers(token)
        self._pool = Http1Pool(MAX_ANSWER_BYTES, self._headers)
        self._origins: dict[str, tuple[str, int] | None] = {}
        #: One circuit breaker per worker URL (``streams.breaker``): a worker whose breaker
        #: is open is passed over while another can answer.
        self.breakers = breakers or Breakers()
        #: How attempt timeouts follow latency, and the latencies seen: (worker URL, kind of
        #: request) -> its newest latencies (``streams.deadlines``).
        self.deadlines = deadlines or DeadlinePolicy()
        self._latencies: dict[tuple[str, str], LatencyWindow] = {}
        #: False: the routing table's URLs are never asked; the configured workers forward
        #: (``ClientConfig.route_reads``).
        self._route = route

    @property
    def seeds(self) -> list[str]:
        """The configured URLs, in the order they are tried (one that failed goes last)."""
        return list(self._seeds)

    async def close(self) -> None:
        await self._pool.close()
        self._pool = Http1Pool(MAX_ANSWER_BYTES, self._headers)  # a closed client may be used again
        if self._http is not None:
            await self._http.close()
            self._http = None

    async def request(
        self,
        method: str,
        path: str,
        params: dict[str, str],
        timeout: float,
        body: bytes = b"",
        partition: int | None = None,
        stale: bool = False,
    ) -> tuple[int, bytes]:
        """One read API request, sent to the worker that serves ``partition`` when the
        routing table knows it (else to a configured worker, which forwards it). A worker
        that is gone, does not answer within its attempt's time, or answers 421 (the
        partition moved), makes the client refresh the table and try again, until the
        call's budget is spent: ``timeout`` plus a transport allowance that follows the
        worker's latency (``streams.deadlines``); then ``DeadlineExceededError``. When no
        worker can be connected to at all (every configured URL refused), it fails at once.
        A ``503`` that says "ask again" (a partition being restored) is asked again while
        the caller's ``timeout`` lasts, then returned.
        A worker shedding load (``503`` of kind ``overloaded``) is asked again after its
        ``Retry-After`` when that is within the budget, else ``OverloadedError`` at once.
        ``stale``: the request accepts a standby's answer: sent first to a worker keeping a
        copy of ``partition``, when the table names one."""
        if not self._seeds:
            raise ReadError("no api_url configured: reads need a worker's read API")
        check_wait(timeout)
        started = time.monotonic()
        kind = _kind(method, path)
        waits = "timeout" in params
        copies = list(self._standbys.get(partition, ())) if stale and partition is not None else []
        routed = self._routes.get(partition) if partition is not None else None
        first = copies[0] if copies else routed or self._seeds[0]
        allowance = self.deadlines.allowance_s(self._latencies.get((first, kind)))
        if waits:  # the worker's 504 must come back in time, over a forward and a busy loop
            allowance = max(allowance, WAIT_SLACK_S)
        # Only point reads are cut to the learnt allowance and tried again: cheap, and
        # timed alike. A listing (which asks the other workers for their part), a history
        # page or a dry run may take long, and would be done again by each attempt.
        cut = kind == POINT_READ
        budget = timeout + allowance
        deadline = started + budget
        failure: ReadError | None = None
        last_status = 0
        timeouts: dict[str, int] = {}
        while True:
            routed = self._routes.get(partition) if partition is not None else None
            # Waiting for a breaker to let a call through is waiting: only within the
            # caller's time, not the transport allowance.
            candidates = [*copies, routed or self._seeds[0], *self._seeds]
            chosen = self._choose(candidates, started + timeout)
            now = time.monotonic()
            if chosen is None:
                await asyncio.sleep(min(ROUTE_RETRY_S, max(0.0, deadline - now)))
                if time.monotonic() >= deadline:
                    raise self._spent(budget, started, failure, last_status=last_status)
                continue
            base, permit = chosen
            if copies and base in copies:
                copies.remove(base)
            left = deadline - now
            window = self._latencies.get((base, kind))
            usual = self.deadlines.usual_s(window)
            if left <= 0 or left < usual:
                raise self._spent(budget, started, failure, usual, last_status)
            attempt = left
            if waits:
                # The worker waits at most the time left less the allowance, so its answer
                # (the 504 of a position not folded in time) comes back within the budget.
                params = {**params, "timeout": f"{max(0.0, left - allowance):.3f}"}
            elif cut:
                # A point read gets the worker's allowance; each attempt of this call that
                # timed out doubles it (a slow answer is not given up on forever), never
                # past the budget.
                n = timeouts.get(base, 0)
                attempt = min(left, self.deadlines.allowance_s(window) * (1 << min(n, 16)))
            try:
                status, answer = await self.send(
                    base, method, path, params, attempt, body, kind, permit
                )
                failure, last_status = None, status
            except ReadError as exc:
                failure, status, answer = exc, 0, b""
                if _timed_out(exc):
                    timeouts[base] = timeouts.get(base, 0) + 1
            shed = _shed(answer) if status == 503 else None
            if shed is not None:
                # At least the usual pause: a worker asking for 0 s is not called in a loop.
                retry = max(ROUTE_RETRY_S, retry_after_of(shed, ROUTE_RETRY_S))
                if time.monotonic() + retry >= deadline:
                    raise OverloadedError(
                        f"read API {base} sheds load and asks to be called again in "
                        f"{retry:.3f} s, after this call's budget of {budget:.3f} s: "
                        f"{shed.get('detail') or 'overloaded'}",
                        retry,
                    )
                await asyncio.sleep(retry)
                continue
            # A 503 of a partition not ready (being restored, or a worker with no partitions
            # yet: a failover under way) says "ask again": asked again within the caller's
            # time; then the caller reads it.
            again = (
                status == 503
                and _problem_type(answer) == NOT_READY_TYPE
                and time.monotonic() + ROUTE_RETRY_S < started + timeout
            )
            if failure is None and status != 421 and not again:
                return status, answer
            if time.monotonic() >= deadline:
                if failure is None:
                    return status, answer
                raise self._spent(budget, started, failure, last_status=last_status)
            left = deadline - time.monotonic()
            reachable = await self.refresh(exclude=base, timeout=min(REFRESH_TIMEOUT_S, left))
            if failure is not None and _refused(failure) and not reachable:
                urls = ", ".join(dict.fromkeys([base, *self._seeds]))
                raise ReadError(
                    f"cannot connect to the read API at {urls}: {_refused(failure)} "
                    "(is a worker running there? `lukhas status` shows the local one)"
                ) from failure
            await asyncio.sleep(min(ROUTE_RETRY_S, max(0.0, deadline - time.monotonic())))

    @staticmethod
    def _spent(
        budget: float, started: float, failure: ReadError | None, usual_s: float = 0.0,
        last_status: int = 0,
    ) -> DeadlineExceededError:  # fmt: skip
        """The error of a call whose budget is spent (or too little of it is left for the
        worker's ``usual_s`` latency), with its last attempt's failure (or the status of
        the last answer, a 421 or 503, when that is what came)."""
        elapsed = time.monotonic() - started
        if usual_s and elapsed < budget:
            why = (
                f"{budget - elapsed:.3f} s of this call's budget of {budget:.3f} s are left, "
                f"under the worker's usual latency of {usual_s:.3f} s"
            )
        else:
            why = f"this call's budget of {budget:.3f} s ran out"
        last = str(failure) if failure is not None else None
        if last:
            message = f"{last} ({why})"
        elif last_status:
            message = f"the last answer was a {last_status}, asked again until: {why}"
        else:
            message = f"no answer in time: {why}"
        error = DeadlineExceededError(message, budget, elapsed, last)
        error.__cause__ = failure
        return error

    def _choose(self, candidates: list[str], deadline: float) -> tuple[str, int] | None:
        """The first of ``candidates`` whose breaker lets a call through, with its permit
        (``Breaker.acquire``); None when none
        does yet but one will before ``deadline`` (the caller's time); ``CircuitOpenError``
        when none will: a read with no time left fails at once, as it did before breakers
        when every worker refused."""
        waits = []
        for base in dict.fromkeys(candidates):
            breaker = self.breakers[base]
            permit = breaker.acquire()
            if permit is not None:
                return base, permit
            waits.append((breaker.retry_after_s(), breaker))
        soonest, first = min(waits, key=lambda w: w[0])
        if time.monotonic() + soonest >= deadline:
            names = ", ".join(dict.fromkeys(candidates))
            last = f"; the last failure: {first.last_error}" if first.last_error else ""
            raise CircuitOpenError(
                f"the circuit breaker of every worker that could answer is open ({names}); "
                f"the first lets a call through in {soonest:.3f} s, after this call's "
                f"time{last}",
                soonest,
            )
        return None

    async def send(
        self, base: str, method: str, path: str, params: dict[str, str], timeout: float,
        body: bytes, kind: str | None = None, permit: int = 0,
    ) -> tuple[int, bytes]:  # fmt: skip
        """One request to the worker at ``base``, as it answers (any status); ``ReadError``
        when it cannot be connected to or does not answer within ``timeout`` seconds.
        A GET to an ``http://`` worker goes over ``streams.http1``; anything else over
        aiohttp. Its outcome goes to the worker's breaker, and its latency (unless the
        request waits on purpose: a ``timeout`` parameter) to the breaker and to the
        latencies of its ``kind`` of request at that worker (``streams.deadlines``).
        ``permit``: the breaker's, when it let this call through (``Breaker.acquire``); 0
        for a call that goes around it."""
        breaker = self.breakers[base]
        started = time.monotonic()
        try:
            answer = await self._send(base, method, path, params, timeout, body)
        except ReadError as exc:
            breaker.record(False, error=str(exc))
            if _timed_out(exc) and "timeout" not in params:
                # It took at least that long: the window is not left to the answers that
                # beat the cut, or a worker slow for good would look fast for ever.
                self._window(base, kind or _kind(method, path)).add(timeout)
            raise
        except BaseException:  # cancelled, or a bug: nothing to judge the endpoint by
            breaker.release(permit)
            raise
        latency = None if "timeout" in params else time.monotonic() - started
        breaker.record(True, latency)
        if latency is not None:
            self._window(base, kind or _kind(method, path)).add(latency)
        return answer

    def _window(self, base: str, kind: str) -> LatencyWindow:
        """The latencies of ``kind`` of request at ``base``, made on first use."""
        window = self._latencies.get((base, kind))
        if window is None:
            if len(self._latencies) >= MAX_LATENCY_WINDOWS:
                self._latencies.clear()  # a client of very many workers: start again
            window = self._latencies[base, kind] = LatencyWindow(self.deadlines.window)
        return window

    async def _send(
        self, base: str, method: str, path: str, params: dict[str, str], timeout: float,
        body: bytes,
    ) -> tuple[int, bytes]:  # fmt: skip
        if method == "GET" and body == b"":
            if base not in self._origins:
                self._origins[base] = http_origin(base)
            origin = self._origins[base]
            if origin is not None:
                return await self._get(base, origin, path, params, timeout)
        if self._http is None:
            self._http = aiohttp.ClientSession()
        url = base.rstrip("/") + path
        try:
            client_timeout = aiohttp.ClientTimeout(total=timeout)
            async with self._http.request(
                method,
                url,
                params=params,
                data=body or None,
                timeout=client_timeout,
                headers=self._headers,
            ) as response:
                return response.status, await response.read()
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise _read_error(base, exc) from exc

    async def _get(
        self, base: str, origin: tuple[str, int], path: str, params: dict[str, str], timeout: float
    ) -> tuple[int, bytes]:
        # Plain point reads keep connections of their own: a worker answers those on its
        # fast path only while every request on the connection has been one
        # (``processors.listener``), and the routing table's GETs would end that.
        plain = not params and path.startswith("/v1/contexts/") and path.count("/") == 3
        try:
            return await self._pool.get(*origin, path, params, timeout, lane=plain)
        except (ProtocolError, OSError, asyncio.IncompleteReadError, TimeoutError) as exc:
            raise _read_error(base, exc) from exc

    async def refresh(self, exclude: str | None = None, timeout: float = REFRESH_TIMEOUT_S) -> bool:
        """Reloads the routing table (``GET /v1/members``) from the first worker that
        answers, configured ones first; a worker that just failed is asked last; all within
        ``timeout`` seconds. False when no worker could be connected to at all (each refused
        the connection)."""
        deadline = time.monotonic() + timeout
        # A configured worker that just failed goes to the back of the line, so requests with
        # no route (no partition, or none known) try the next one.
        if exclude in self._seeds and len(self._seeds) > 1:
            self._seeds = [u for u in self._seeds if u != exclude] + [exclude]
        known = list(dict.fromkeys([*self._seeds, *self._routes.values()]))
        known.sort(key=lambda url: url == exclude)
        reachable = False
        for base in known:
            left = deadline - time.monotonic()
            if left <= 0:
                # Not asked, so not refused: the caller is not told nobody is there.
                return True
            # One worker that hangs does not take all of it: the others are asked too.
            window = self._latencies.get((base, MEMBERS))
            each = min(left, self.deadlines.allowance_s(window))
            try:
                status, answer = await self.send(base, "GET", "/v1/members", {}, each, b"")
                reachable = True
                if status != 200:
                    continue
                data = orjson.loads(answer)
                routes = {int(p): str(url) for p, url in data["owners"].items()}
                count = int(data["partition_count"])
                standbys: dict[int, list[str]] = {}
                for member in data.get("members") or ():
                    for p in member.get("standbys") or ():
                        standbys.setdefault(int(p), []).append(str(member["api"]))
            except ReadError as exc:
                reachable = reachable or not _refused(exc)
                continue  # gone: ask the next
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # not a worker's answer: ask the next
            if self._route:
                self._routes = routes
                self._standbys = standbys
            self.partition_count = count or self.partition_count
            return True
        return reachable

    async def partition_of(self, context_id: str, timeout: float = REFRESH_TIMEOUT_S) -> int | None:
        """The partition of a context, once the routing table said how many there are
        (asked within ``timeout`` seconds, when not known yet)."""
        asked = self._count_asked_at
        due = asked is None or time.monotonic() - asked >= COUNT_RETRY_S
        if not self.partition_count and due:
            # Asked again while unknown: a client that first asked a worker before it had its
            # partitions must not route (and order reads after receipts) without them forever.
            self._count_asked_at = time.monotonic()
            await self.refresh(timeout=min(REFRESH_TIMEOUT_S, timeout))
        if not self.partition_count:
            return None
        return partition_for(context_id.encode(), self.partition_count)


def _read_error(base: str, exc: BaseException) -> ReadError:
    """The ``ReadError`` of a request to ``base`` that failed with ``exc`` (aiohttp's or
    ``streams.http1``'s): one that says it could not connect, or what went wrong."""
    if isinstance(exc, (aiohttp.ClientConnectorError, ConnectError)):
        return ReadError(f"cannot connect to the read API at {base}: {_refused(exc)}")
    reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return ReadError(f"read API {base} failed: {reason}")


def _refused(error: BaseException) -> str | None:
    """Why a connection could not be made (``connection refused``, a DNS failure), None when
    ``error`` (or its cause) is not a failure to connect."""
    connect_errors = (aiohttp.ClientConnectorError, ConnectError)
    cause = error if isinstance(error, connect_errors) else error.__cause__
    if not isinstance(cause, connect_errors):
        return None
    if isinstance(cause.os_error, ConnectionRefusedError):
        return "connection refused"
    return str(cause.os_error) or type(cause.os_error).__name__


def _kind(method: str, path: str) -> str:
    """The kind of a request, for its latencies: its method and path with the context id
    left out (``GET /v1/contexts/*``, ``GET /v1/contexts/*/history``, ``GET /v1/outcomes``):
    a point read and a 10,000-entry history page are timed apart."""
    parts = path.split("/", 5)
    if len(parts) > 3 and parts[2] == "contexts":
        parts[3] = "*"
    elif len(parts) > 3:
        del parts[3:]
    return f"{method} {'/'.join(parts)}"


#: The problem types of a worker's 503s (``processors.problems``): it sheds load; a partition
#: is not ready (being restored, or no partitions yet).
OVERLOADED_TYPE = "urn:lukhas:problem:overloaded"
NOT_READY_TYPE = "urn:lukhas:problem:partition-not-ready"
#: The kinds of request of a point read and of the routing table (``_kind``).
POINT_READ = "GET /v1/contexts/*"
MEMBERS = "GET /v1/members"
#: The least transport allowance of a read that waits for its ``min_offset`` (seconds).
WAIT_SLACK_S = 1.0


def _problem(answer: bytes) -> dict[str, object] | None:
    try:
        data = orjson.loads(answer)
    except orjson.JSONDecodeError:
        return None
    return data if isinstance(data, dict) else None


def _problem_type(answer: bytes) -> object:
    data = _problem(answer)
    return None if data is None else data.get("type")


def _shed(answer: bytes) -> dict[str, object] | None:
    """The problem document of a 503 that sheds load (``overloaded``), None for another."""
    data = _problem(answer)
    return data if data is not None and data.get("type") == OVERLOADED_TYPE else None


def _timed_out(error: ReadError) -> bool:
    """Whether a request failed by not being answered in time."""
    return isinstance(error.__cause__, TimeoutError)
