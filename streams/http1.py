"""A lean HTTP/1.1 client for the read API's GETs: keep-alive connections, nothing else.

aiohttp's client spends about 0.15 ms of Python on each request (URL and query objects,
timeout handles, its connector, its response object), where a point read of a cached context
takes the worker about 0.06 ms: most of ``client.get``'s time was the client's. ``Http1Pool``
sends a GET on an idle keep-alive connection to the worker (a new one when none is idle) and
reads the answer by its ``Content-Length`` (or chunked, or to the end of a connection the
worker closes). The ``Router`` uses it for GETs to ``http://`` workers; other requests and
``https://`` keep aiohttp.

Bounded and hostile-proof: the answer's head may take at most ``MAX_HEADER_BYTES``, its body at
most ``max_body`` bytes (a larger ``Content-Length`` or chunk is refused before it is read),
the whole exchange at most the caller's timeout; whatever goes wrong, the connection is closed,
never put back. A connection the worker closed while idle (its ``idle_timeout_s``) is noticed
when the request finds it closed, or gets no byte of an answer, and the request is sent once
more on a new connection (a GET: asking again changes nothing).
"""

from __future__ import annotations

import asyncio
import contextlib
from urllib.parse import urlencode, urlsplit

__all__ = ["MAX_HEADER_BYTES", "ConnectError", "Http1Pool", "ProtocolError", "http_origin"]

#: The most bytes an answer's status line and headers may take.
MAX_HEADER_BYTES = 64 * 1024
#: Idle connections kept per worker; more are closed when their request is done.
MAX_IDLE = 16


class ConnectError(OSError):
    """The worker could not be connected to; ``os_error`` says why."""

    def __init__(self, host: str, port: int, os_error: OSError) -> None:
        super().__init__(f"cannot connect to {host}:{port}: {os_error}")
        self.os_error = os_error


class ProtocolError(Exception):
    """The answer is not HTTP/1.x as this client reads it, or is over its bounds."""


class _Stale(Exception):
    """A reused connection gave no byte of an answer: the worker closed it while idle."""


def http_origin(base: str) -> tuple[str, int] | None:
    """``(host, port)`` of an ``http://`` URL without a path prefix (where this client can
    send), else None (``https://``, a path prefix, no host: aiohttp's business)."""
    try:
        parts = urlsplit(base.strip())
        port = parts.port or 80
    except ValueError:
        return None
    if parts.scheme != "http" or not parts.hostname or parts.path.strip("/"):
        return None
    return parts.hostname, port


class _Connection:
    __slots__ = ("loop", "reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.loop = asyncio.get_running_loop()
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        """Open, and of the running event loop (a client used again under another
        ``asyncio.run`` must not touch the last loop's sockets)."""
        return (
            self.loop is asyncio.get_running_loop()
            and not self.reader.at_eof()
            and not self.writer.is_closing()
        )

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Http1Pool:
    """Keep-alive connections to workers, for GETs; ``max_body``: the largest answer body."""

    def __init__(self, max_body: int, headers: dict[str, str] | None = None) -> None:
        self._max_body = max_body
        lines = [f"{name}: {value}" for name, value in (headers or {}).items()]
        if any("\r" in line or "\n" in line for line in lines):
            raise ProtocolError("a header may not contain line breaks")
        #: Header lines sent with every request (the read API's token).
        self._extra = "".join(f"{line}\r\n" for line in lines)
        self._idle: dict[tuple[str, int, bool], list[_Connection]] = {}
        self._closed = False

    async def get(
        self, host: str, port: int, path: str, params: dict[str, str], timeout: float,
        lane: bool = False,
    ) -> tuple[int, bytes]:  # fmt: skip
        """``GET path?params`` from ``host:port``: the answer's status and body; ``lane``
        picks one of two sets of idle connections (requests of one kind share theirs). Raises
        ``ConnectError`` (no connection), ``ProtocolError`` (an answer this client does not
        read, or over its bounds), ``TimeoutError`` (not answered within ``timeout``
        seconds), ``OSError`` and ``asyncio.IncompleteReadError`` (the connection broke)."""
        if self._closed:
            raise ProtocolError("the client is closed")
        target = f"{path}?{urlencode(params)}" if params else path
        if any(c in target for c in "\r\n "):
            raise ProtocolError("a request target may not contain spaces or line breaks")
        request = f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\n{self._extra}\r\n".encode()
        key = (host, port, lane)
        async with asyncio.timeout(timeout):
            idle = self._idle.get(key)
            while idle:
                connection = idle.pop()
                if not connection.usable():
                    connection.close()
                    continue
                try:
                    return await self._exchange(connection, key, request, reused=True)
                except _Stale:
                    continue  # closed by the worker while idle: the next, or a new one
            connection = await self._connect(host, port)
            return await self._exchange(connection, key, request, reused=False)

    async def close(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, {}
        for connections in idle.values():
            for connection in connections:
                connection.close()

    async def _connect(self, host: str, port: int) -> _Connection:
        try:
            reader, writer = await asyncio.open_connection(host, port, limit=MAX_HEADER_BYTES)
        except OSError as exc:
            raise ConnectError(host, port, exc) from exc
        return _Connection(reader, writer)

    async def _exchange(
        self, connection: _Connection, key: tuple[str, int, bool], request: bytes, reused: bool
    ) -> tuple[int, bytes]:
        keep = False
        try:
            connection.writer.write(request)
            try:
                head = await connection.reader.readuntil(b"\r\n\r\n")
            except asyncio.IncompleteReadError as exc:
                if reused and not exc.partial:
                    raise _Stale from None
                raise
            except ConnectionResetError:
                if reused:
                    raise _Stale from None
                raise
            except asyncio.LimitOverrunError:
                raise ProtocolError(
                    f"the answer's headers are over {MAX_HEADER_BYTES} bytes"
                ) from None
            status, keep, length, chunked = _parse_head(head)
            if chunked:
                body = await self._read_chunked(connection.reader)
            elif length is not None:
                if length > self._max_body:
                    raise ProtocolError(f"an answer of {length} bytes is over {self._max_body}")
                body = await connection.reader.readexactly(length)
            elif status in (204, 304):
                body = b""
            else:  # no length: the body ends with the connection
                keep = False
                body = b""
                while len(body) <= self._max_body and not connection.reader.at_eof():
                    body += await connection.reader.read(self._max_body + 1 - len(body))
                if len(body) > self._max_body:
                    raise ProtocolError(f"an answer over {self._max_body} bytes")
            return status, body
        except BaseException:
            keep = False
            raise
        finally:
            idle = self._idle.setdefault(key, [])
            if keep and not self._closed and len(idle) < MAX_IDLE and connection.usable():
                idle.append(connection)
            else:
                connection.close()

    async def _read_chunked(self, reader: asyncio.StreamReader) -> bytes:
        parts: list[bytes] = []
        total = 0
        while True:
            line = await reader.readuntil(b"\r\n")
            size_text = line.split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16) if size_text else -1
            except ValueError:
                size = -1
            if size < 0 or len(size_text) > 16:
                raise ProtocolError(f"a bad chunk size {line[:40]!r}")
            if size == 0:
                while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                return b"".join(parts)
            total += size
            if total > self._max_body:
                raise ProtocolError(f"an answer over {self._max_body} bytes")
            parts.append(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise ProtocolError("a chunk does not end with CRLF")


def _parse_head(head: bytes) -> tuple[int, bool, int | None, bool]:
    """``(status, keep_alive, content_length, chunked)`` of an answer's status line and
    headers (``head`` ends with the blank line)."""
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or not parts[1].isdigit():
        raise ProtocolError(f"not an HTTP/1.x status line: {lines[0][:80]!r}")
    status = int(parts[1])
    if not 200 <= status <= 599:
        raise ProtocolError(f"status {status} is not an answer this client reads")
    keep = parts[0] == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    for line in lines[1:]:
        name, sep, value = line.partition(b":")
        if not sep:
            raise ProtocolError(f"a bad header line: {line[:80]!r}")
        name = name.strip().lower()
        value = value.strip()
        if name == b"content-length":
            if not value.isdigit() or len(value) > 18 or (length is not None and
                                                          int(value) != length):  # fmt: skip
                raise ProtocolError(f"a bad Content-Length: {value[:40]!r}")
            length = int(value)
        elif name == b"transfer-encoding":
            if value.lower() != b"chunked":
                raise ProtocolError(f"a transfer encoding this client does not read: {value!r}")
            chunked = True
        elif name == b"connection":
            tokens = {t.strip() for t in value.lower().split(b",")}
            if b"close" in tokens:
                keep = False
            elif b"keep-alive" in tokens:
                keep = True
    if chunked and length is not None:
        raise ProtocolError("an answer with both Content-Length and chunked encoding")
    return status, keep, length, chunked
