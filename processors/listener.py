"""The read API's TCP listener: a cap on connections and deadlines for slow clients.

aiohttp serves HTTP on the connections this listener accepts, but it has neither a connection
cap nor a deadline for a request's headers (its keep-alive timer closes only idle connections,
after an hour by default), and asyncio's accept loop logs every failed ``accept()``: at the
process's file-descriptor limit, thousands of lines a second. So the listener accepts for
itself and hands each connection to aiohttp's request handler through a thin protocol:

* **Cap.** At most ``max_connections`` are open at once (default from ``RLIMIT_NOFILE``, see
  ``default_max_connections``, so the fold's own sockets and files always have room). A
  connection over the cap evicts the oldest one that is idle or still sending its headers
  (connections whose first bytes are not read yet are told apart first: accepting waits a
  few milliseconds for them, and the rest wait in the backlog); when every one is busy with a
  request, it is answered ``503`` and closed at once, before any protocol or task exists.
* **Deadlines.** A request's headers must be complete ``header_timeout_s`` after its first byte
  (else ``408`` and close: slowloris), its body ``body_timeout_s`` after its headers (else
  close); a new connection that sends nothing is closed after ``header_timeout_s``, and one
  idle between requests (or whose client does not read its answer) after ``idle_timeout_s``.
  A request being handled has no deadline here: its handler bounds its own waits.
* **Descriptor exhaustion.** A failed ``accept()`` (EMFILE, ENFILE, ENOBUFS, ENOMEM) pauses
  accepting, 50 ms doubling up to 2 s, with one log line per pause, instead of retrying at
  once; pending clients wait in the backlog.

* **Fast path.** A connection whose requests are all plain reads of one context (``GET
  /v1/contexts/{id}`` with no query, one request per packet, nothing pipelined) is answered
  by ``Listener.fast`` (``ReadApi.fast_get``) in ``data_received``, without aiohttp's request
  machinery, with the same bytes aiohttp would send; anything else (another route, a query,
  a body, ``Connection: close``, a context not served here, a miss) goes to aiohttp, and from
  then on that connection stays with aiohttp, so answers never overtake one another.

Every refusal, eviction, timeout and failed accept is counted in the worker's metrics.

About 540 lines: accepting connections under a cap and deadlines, and the fast path; most of
it is the protocol wrapper that times a request's headers, body and idleness.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import itertools
import logging
import math
import re
import resource
import socket
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from lukhas_context.processors.exceptions import InvalidWorkerConfigError
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.problems import ProblemRequestHandler, problem_bytes

log = logging.getLogger(__name__)

#: The request heads the fast path takes (``_Connection._answer_fast``); longer ones go to
#: aiohttp, which has its own limit (8190 bytes a line).
FAST_MAX_HEAD = 4096
#: Request headers after which the fast path leaves a request to aiohttp (lower case).
_NOT_FAST_HEADERS = frozenset(
    (b"content-length", b"transfer-encoding", b"expect", b"upgrade", b"if-none-match",
     b"if-match", b"if-modified-since", b"range", b"origin")
)  # fmt: skip
#: A header line the fast path reads: a token, a colon, a value of visible characters,
#: spaces and tabs (RFC 9110); anything else goes to aiohttp, which answers it as it does.
_HEADER_LINE = re.compile(rb"[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e\x80-\xff]*")
_GET = b"GET "
_HTTP11 = b" HTTP/1.1\r\n"

#: Connections accepted per readiness event of the listening socket (asyncio uses the backlog).
ACCEPT_BATCH = 32
#: Evictable connections looked at for one eviction (oldest first).
EVICTION_SCAN = 64
#: At the cap, while new connections are not told apart yet, accepting waits this long at a
#: time, and at most ``HOLD_MAX_S`` in a row (then the next client is refused).
HOLD_S = 0.01
HOLD_MAX_S = 1.0
BACKLOG = 512
PAUSE_MIN_S = 0.05
PAUSE_MAX_S = 2.0
#: ``accept()`` errors that mean "out of descriptors or memory": pause, do not spin.
RESOURCE_ERRNOS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
#: The default cap: half the descriptor limit less a reserve for Kafka connections, change
#: streams, RocksDB files and one accept batch; within these bounds.
FD_RESERVE = 64
MIN_DEFAULT_CONNECTIONS = 16
MAX_DEFAULT_CONNECTIONS = 4096

#: Over the cap: the same problem as a read shed over the read budget (``processors.shed``),
#: so a client honours both alike.
_REFUSAL = problem_bytes(
    503, "too many connections: this worker serves its limit already", b"Retry-After: 1\r\n",
    "overloaded", retry_after=1,
)  # fmt: skip
_HEADER_TIMEOUT = problem_bytes(408, "request headers not received in time")
_END_OF_HEADERS = b"\r\n\r\n"


def default_max_connections() -> int:
    """The default cap on the read API's connections, from the soft ``RLIMIT_NOFILE``."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_DEFAULT_CONNECTIONS
    return min(MAX_DEFAULT_CONNECTIONS, max(MIN_DEFAULT_CONNECTIONS, soft // 2 - FD_RESERVE))


@dataclass(frozen=True, slots=True)
class ListenerLimits:
    """The read API's connection cap (None: ``default_max_connections()``) and deadlines."""

    max_connections: int | None = None
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    idle_timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.max_connections is not None and self.max_connections < 1:
            raise InvalidWorkerConfigError(
                f"max_connections must be at least 1, got {self.max_connections}"
            )
        for name in ("header_timeout_s", "body_timeout_s", "idle_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise InvalidWorkerConfigError(
                    f"{name} must be a positive number of seconds, got {value!r}"
                )

    @property
    def cap(self) -> int:
        return self.max_connections or default_max_connections()


class _Phase(enum.Enum):
    IDLE = "idle"  # between requests: evictable, idle deadline
    HEADERS = "headers"  # a request's first bytes arrived: evictable, header deadline
    HANDLING = "handling"  # headers complete: the handler runs (body deadline until read)


class Listener:
    """Accepts connections for an aiohttp ``Server`` (see the module doc)."""

    def __init__(self, server: web.Server, limits: ListenerLimits, metrics: WorkerMetrics) -> None:
        self._server = server
        self.limits = limits
        self.cap = limits.cap
        self.metrics = metrics
        self._sockets: list[socket.socket] = []
        self._open: set[_Connection] = set()
        #: Idle or header-phase connections, oldest first: the ones a new connection evicts.
        self._evictable: dict[_Connection, None] = {}
        self._by_handler: dict[RequestHandler, _Connection] = {}
        self._starting: set[asyncio.Task[None]] = set()
        self._pause_s = 0.0
        self._paused: asyncio.TimerHandle | None = None
        self._holding_since: float | None = None
        self._loop = asyncio.get_running_loop()
        #: The fast path: the target of a plain GET (bytes) -> the whole answer, or None to
        #: leave the request to aiohttp (``ReadApi.fast_get``). None: no fast path.
        self.fast: Callable[[bytes], bytes | None] | None = None
        metrics.api_max_connections.set(self.cap)
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and self.cap > soft // 2:
            log.warning(
                "the read API may hold %d connections but the process may open only %d "
                "files: at the limit the fold cannot open sockets or files either",
                self.cap, soft,
            )  # fmt: skip

    async def start(self, host: str, port: int) -> None:
        """Binds ``host:port`` (every address the name resolves to) and starts accepting."""
        infos = await self._loop.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
        try:
            for family, type_, proto, _, address in dict.fromkeys(infos):
                sock = socket.socket(family, type_, proto)
                self._sockets.append(sock)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                sock.bind(address)
                sock.listen(BACKLOG)
                sock.setblocking(False)
        except OSError:
            self.close()
            raise
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def close(self) -> None:
        """Stops accepting and closes the connections that are not in a request (aiohttp's
        shutdown lets the others finish)."""
        if self._paused is not None:
            self._paused.cancel()
            self._paused = None
        for sock in self._sockets:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock.fileno())
            sock.close()
        self._sockets.clear()
        for conn in list(self._evictable):
            conn.close()

    @property
    def ports(self) -> list[int]:
        """The ports it listens on (port 0 in ``start`` picks a free one)."""
        return sorted({int(sock.getsockname()[1]) for sock in self._sockets})

    @property
    def open_connections(self) -> int:
        return len(self._open)

    async def guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """The body of an aiohttp middleware: tells the request's connection when its handler
        starts and ends (the deadlines depend on it)."""
        conn = self._by_handler.get(request.protocol)
        if conn is None:
            return await handler(request)
        conn.request_started(request)
        try:
            return await handler(request)
        except ConnectionError:
            if not conn.body_timed_out:
                raise
            return web.Response(status=408)  # never written: the connection is closed
        finally:
            conn.request_finished()

    # ---- accepting ----

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(ACCEPT_BATCH):
            if len(self._open) + len(self._starting) < self.cap:
                self._holding_since = None
            elif not self._make_room():
                return  # holding: the rest wait in the backlog
            try:
                client, _ = sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                self.metrics.api_accept_errors.inc()
                if exc.errno in RESOURCE_ERRNOS:
                    self._pause(exc)
                else:
                    log.warning("accept() on %s failed: %r", sock.getsockname(), exc)
                return
            self._pause_s = 0.0
            if len(self._open) + len(self._starting) >= self.cap:
                self.metrics.api_connections_refused.inc()
                _refuse(client)  # every slot is busy with a request
                continue
            client.setblocking(False)
            task = self._loop.create_task(self._serve(client))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    def _make_room(self) -> bool:
        """At the cap: evicts the oldest idle or header-phase connection and returns True; or,
        when some connections are not told apart yet (being set up, or their first bytes not
        read: in a burst every new connection looks idle), stops accepting for ``HOLD_S`` and
        returns False, so that what waits in the backlog is admitted once they are; or, when
        every slot is busy with a request (or holding went on for ``HOLD_MAX_S``), returns
        True: the next client is answered 503."""
        victim = self._victim()
        if victim is not None:
            self._evict(victim)
            self._holding_since = None
            return True
        now = self._loop.time()
        unsorted = self._starting or any(
            conn.has_input() for conn in itertools.islice(self._evictable, EVICTION_SCAN)
        )
        if not unsorted:
            self._holding_since = None
            return True
        if self._holding_since is None:
            self._holding_since = now
        elif now - self._holding_since >= HOLD_MAX_S:
            return True
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        self._paused = self._loop.call_later(HOLD_S, self._resume)
        return False

    def _pause(self, exc: OSError) -> None:
        """Stops accepting for a while: the kernel keeps reporting the socket readable, and
        retrying at once would spin (and log) thousands of times a second."""
        for sock in self._sockets:
            self._loop.remove_reader(sock.fileno())
        self._pause_s = min(PAUSE_MAX_S, max(PAUSE_MIN_S, self._pause_s * 2))
        log.warning(
            "accept() failed (%s); accepting again in %.2f s (%d connections open, cap %d)",
            exc.strerror or exc, self._pause_s, len(self._open), self.cap,
        )  # fmt: skip
        self._paused = self._loop.call_later(self._pause_s, self._resume)

    def _resume(self) -> None:
        self._paused = None
        for sock in self._sockets:
            self._loop.add_reader(sock.fileno(), self._accept, sock)

    def _victim(self) -> _Connection | None:
        """The oldest idle or header-phase connection with no unread input (one with input
        is about to be a request), looking at ``EVICTION_SCAN`` at most; None when none."""
        for conn in itertools.islice(self._evictable, EVICTION_SCAN):
            if not conn.has_input():
                return conn
        return None

    def _evict(self, conn: _Connection) -> None:
        self.metrics.api_connections_evicted.inc()
        conn.close()

    def _handler(self) -> RequestHandler:
        """A connection handler of the server's, one that answers a request it cannot
        parse with a problem (``processors.problems``); aiohttp's own where its server's
        settings cannot be read."""
        server = self._server
        settings = getattr(server, "_kwargs", None)
        if isinstance(settings, dict):
            with contextlib.suppress(TypeError):
                return ProblemRequestHandler(server, loop=self._loop, **settings)
        return server()

    async def _serve(self, client: socket.socket) -> None:
        try:
            await self._loop.connect_accepted_socket(
                lambda: _Connection(self, self._handler(), client), sock=client
            )
        except Exception as exc:  # e.g. reset before it was set up: that client is gone
            log.info("a connection closed before it was served: %r", exc)
            client.close()

    # ---- connection bookkeeping (called by _Connection) ----

    def _opened(self, conn: _Connection) -> None:
        self._open.add(conn)
        self._by_handler[conn.handler] = conn
        self.metrics.api_connections_accepted.inc()
        self.metrics.api_connections.set(len(self._open))

    def _released(self, conn: _Connection) -> None:
        self._open.discard(conn)
        self._evictable.pop(conn, None)
        self._by_handler.pop(conn.handler, None)
        self.metrics.api_connections.set(len(self._open))


def _refuse(client: socket.socket) -> None:
    """Answers 503 and closes, without a transport. What the client sent already is read
    first, so the close is a FIN after the answer rather than a reset that could drop it."""
    try:
        client.setblocking(False)
        with contextlib.suppress(BlockingIOError, InterruptedError):
            client.recv(65536)
        client.send(_REFUSAL)
    except OSError:
        pass
    finally:
        client.close()


def _keep_aiohttp_from_closing(handler: RequestHandler, now: float) -> None:
    """aiohttp closes a connection its keep-alive timeout after the last request *it*
    handled; requests answered on the fast path count as activity too (the listener's own
    idle deadline still closes idle connections)."""
    timeout = handler.keepalive_timeout
    if timeout and hasattr(handler, "_next_keepalive_close_time"):
        handler._next_keepalive_close_time = now + timeout


class _Connection(asyncio.Protocol):
    """One accepted connection: aiohttp's handler inside, this listener's deadlines around."""

    def __init__(self, listener: Listener, handler: RequestHandler, sock: socket.socket) -> None:
        self.listener = listener
        self.handler = handler
        self._sock = sock
        self.transport: asyncio.Transport | None = None
        self.phase = _Phase.IDLE
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._closed = False
        self.body_timed_out = False
        #: Until a request goes to aiohttp: then it may be answering (or hold, pipelined) a
        #: request when the next arrives, and a fast answer would overtake it.
        self._fast_ok = True

    # ---- asyncio.Protocol, delegated to aiohttp ----

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        self.listener._opened(self)
        self.handler.connection_made(transport)
        # The first request's headers are due ``header_timeout_s`` after the connect.
        self._to_idle(self.listener.limits.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self._fast_ok:
            if self.phase is _Phase.IDLE and self._answer_fast(data):
                return
            self._fast_ok = False
        if self.phase is _Phase.IDLE and data:
            self.phase = _Phase.HEADERS
            self._tail = b""
            self._arm(self.listener.limits.header_timeout_s, self._headers_late)
        if self.phase is _Phase.HEADERS:
            # Seen here, not only when the handler starts: with the loop busy (a fold
            # round), the deadline could otherwise fire on headers that had arrived in time.
            if _END_OF_HEADERS in data or _END_OF_HEADERS in self._tail + data[:3]:
                self._to_handling()
            else:
                self._tail = (self._tail + data[-3:])[-3:]
        self.handler.data_received(data)

    def eof_received(self) -> None:
        self.handler.eof_received()  # None: the transport closes

    def _answer_fast(self, data: bytes) -> bool:
        """Answers ``data`` on the fast path if it is one whole plain read (see the module
        doc); False leaves it to aiohttp."""
        fast = self.listener.fast
        if (
            fast is None
            or self.transport is None
            or len(data) > FAST_MAX_HEAD
            or not data.startswith(_GET)
            or not data.endswith(b"\r\n\r\n")
        ):
            return False
        line_end = data.find(_HTTP11)
        if line_end < 0 or data.find(b"\r\n") != line_end + len(_HTTP11) - 2:
            return False
        head_start = line_end + len(_HTTP11)
        if data.find(b"\r\n\r\n", head_start - 2) != len(data) - 4:
            return False  # more than one request in the packet: pipelined
        for line in data[head_start:-4].split(b"\r\n"):
            if _HEADER_LINE.fullmatch(line) is None:
                return False  # not a well-formed header: aiohttp's parser decides
            name, _, value = line.partition(b":")
            name = name.lower()
            if name in _NOT_FAST_HEADERS:
                return False
            if name == b"connection" and value.strip().lower() != b"keep-alive":
                return False
        answer = fast(data[len(_GET) : line_end])
        if answer is None:
            return False
        self.transport.write(answer)
        self._to_idle(self.listener.limits.idle_timeout_s)
        _keep_aiohttp_from_closing(self.handler, self.listener._loop.time())
        return True

    def pause_writing(self) -> None:
        self.handler.pause_writing()

    def resume_writing(self) -> None:
        self.handler.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._closed = True
        self.listener._released(self)
        self.handler.connection_lost(exc)

    def has_input(self) -> bool:
        """Whether the client sent bytes not read yet (a peek: nothing is consumed)."""
        if self._closed:
            return False
        try:
            return bool(self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT))
        except (BlockingIOError, InterruptedError):
            return False
        except OSError:
            return False

    # ---- phases ----

    def request_started(self, request: web.BaseRequest) -> None:
        self._to_handling()
        if not request.content.is_eof():
            self._arm(self.listener.limits.body_timeout_s, self._body_late)
            request.content.on_eof(self._body_complete)

    def request_finished(self) -> None:
        if not self._closed and self.phase is _Phase.HANDLING:
            self._to_idle(self.listener.limits.idle_timeout_s)

    def close(self) -> None:
        """Closes the connection at once (counted by the caller)."""
        if self._closed:
            return
        self._closed = True
        self._cancel_timer()
        self.listener._released(self)  # its slot is free now, not after connection_lost
        self.handler.force_close()

    def _to_idle(self, timeout_s: float) -> None:
        self.phase = _Phase.IDLE
        self.listener._evictable[self] = None  # (re)inserted last: the newest
        self._arm(timeout_s, self._idle_too_long)

    def _to_handling(self) -> None:
        self.phase = _Phase.HANDLING
        self.listener._evictable.pop(self, None)
        self._cancel_timer()

    def _body_complete(self) -> None:
        if self.phase is _Phase.HANDLING:
            self._cancel_timer()

    # ---- deadlines ----

    def _arm(self, seconds: float, callback: Callable[[], None]) -> None:
        self._cancel_timer()
        self._timer = asyncio.get_running_loop().call_later(seconds, callback)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _idle_too_long(self) -> None:
        self._timer = None
        if self.phase is _Phase.IDLE:
            self.listener.metrics.api_timeouts.labels("idle").inc()
            self.close()

    def _headers_late(self) -> None:
        self._timer = None
        if self.phase is _Phase.HEADERS:
            self.listener.metrics.api_timeouts.labels("headers").inc()
            if self.transport is not None:
                self.transport.write(_HEADER_TIMEOUT)
            self.close()

    def _body_late(self) -> None:
        self._timer = None
        if self.phase is _Phase.HANDLING:
            self.listener.metrics.api_timeouts.labels("body").inc()
            self.body_timed_out = True
            self.close()
