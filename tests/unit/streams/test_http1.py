"""``streams.http1``, the read API's GET client, against servers on loopback that answer as
written here: keep-alive reuse, chunked and close-delimited bodies, a worker that closed an
idle connection, refused connections, and hostile answers (oversized heads and bodies,
garbage, silence), each a typed error that leaves no broken connection in the pool."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest

from lukhas_context.streams.exceptions import ReadError
from lukhas_context.streams.http1 import (
    MAX_HEADER_BYTES,
    ConnectError,
    Http1Pool,
    ProtocolError,
    http_origin,
)
from lukhas_context.streams.routing import Router, _refused

Answer = Callable[[bytes, asyncio.StreamReader, asyncio.StreamWriter], Awaitable[bool]]


@asynccontextmanager
async def serving(answer: Answer) -> AsyncIterator[dict[str, Any]]:
    """A server that reads each request's head and calls ``answer(head, reader, writer)``;
    False from it closes the connection. Yields its port, connection count and heads."""
    seen: dict[str, Any] = {"connections": 0, "heads": []}

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen["connections"] += 1
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                seen["heads"].append(head)
                if not await answer(head, reader, writer):
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    seen["port"] = server.sockets[0].getsockname()[1]
    try:
        yield seen
    finally:
        server.close()


def plain(body: bytes, extra: bytes = b"") -> Answer:
    async def answer(head: bytes, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)
        )
        return b"Connection: close" not in extra

    return answer


async def test_a_get_reuses_its_keep_alive_connection() -> None:
    async with serving(plain(b'{"ok":1}')) as seen:
        pool = Http1Pool(1 << 20)
        for _ in range(5):
            assert await pool.get("127.0.0.1", seen["port"], "/v1/x", {}, 5) == (200, b'{"ok":1}')
        assert seen["connections"] == 1
        status, _ = await pool.get("127.0.0.1", seen["port"], "/v1/y", {"a": "1:2", "b": "x y"}, 5)
        assert status == 200
        assert seen["heads"][-1].startswith(b"GET /v1/y?a=1%3A2&b=x+y HTTP/1.1\r\nHost: 127.0.0.1:")
        await pool.close()


async def test_concurrent_gets_open_connections_and_keep_them() -> None:
    async def slow(head: bytes, reader: Any, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(0.05)
        return await plain(b"x")(head, reader, writer)

    async with serving(slow) as seen:
        pool = Http1Pool(1 << 20)
        answers = await asyncio.gather(
            *(pool.get("127.0.0.1", seen["port"], "/", {}, 5) for _ in range(4))
        )
        assert answers == [(200, b"x")] * 4 and seen["connections"] == 4
        await pool.get("127.0.0.1", seen["port"], "/", {}, 5)
        assert seen["connections"] == 4  # one of the kept ones
        await pool.close()


async def test_chunked_and_close_delimited_bodies() -> None:
    async def chunked(head: bytes, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(
            b"HTTP/1.1 404 Not Found\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: 1\r\n\r\n"
        )
        return True

    async with serving(chunked) as seen:
        pool = Http1Pool(1 << 20)
        assert await pool.get("127.0.0.1", seen["port"], "/", {}, 5) == (
            404,
            b"abc0123456789abcdef",
        )
        assert await pool.get("127.0.0.1", seen["port"], "/", {}, 5) == (
            404,
            b"abc0123456789abcdef",
        )
        assert seen["connections"] == 1
        await pool.close()

    async def until_close(head: bytes, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.0 200 OK\r\n\r\n" + b"z" * 100_000)
        return False

    async with serving(until_close) as seen:
        pool = Http1Pool(1 << 20)
        for _ in range(2):
            assert await pool.get("127.0.0.1", seen["port"], "/", {}, 5) == (200, b"z" * 100_000)
        assert seen["connections"] == 2  # HTTP/1.0 without keep-alive: not reused
        await pool.close()


async def test_connection_close_is_not_reused() -> None:
    async with serving(plain(b"bye", b"Connection: close\r\n")) as seen:
        pool = Http1Pool(1 << 20)
        for _ in range(3):
            assert await pool.get("127.0.0.1", seen["port"], "/", {}, 5) == (200, b"bye")
        assert seen["connections"] == 3
        await pool.close()


async def test_an_idle_connection_the_worker_closed_is_replaced() -> None:
    async def once(head: bytes, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        return False  # closes after answering, without saying so (an idle timeout)

    async with serving(once) as seen:
        pool = Http1Pool(1 << 20)
        for _ in range(4):
            assert await pool.get("127.0.0.1", seen["port"], "/", {}, 5) == (200, b"ok")
        assert seen["connections"] == 4
        await pool.close()


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        (b"SSH-2.0-OpenSSH\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 abc OK\r\n\r\n", "not an HTTP/1.x status line"),
        (b"HTTP/1.1 100 Continue\r\n\r\n", "status 100"),
        (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "bad Content-Length"),
        (
            b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nx",
            "bad Content-Length",
        ),
        (b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999\r\n\r\n", "over 1024"),
        (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "bad header line"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "transfer encoding"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n", "both"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "bad chunk size"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nFFFFFFFF\r\n", "over 1024"),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabXY", "CRLF"),
        (b"HTTP/1.0 200 OK\r\n\r\n" + b"y" * 5000, "over 1024"),
    ],
)
async def test_hostile_answers_are_typed_errors(answer: bytes, message: str) -> None:
    async def hostile(head: bytes, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(answer)
        await writer.drain()
        await asyncio.sleep(0.05)
        return False

    async with serving(hostile) as seen:
        pool = Http1Pool(1024)
        with pytest.raises(ProtocolError, match=message):
            await pool.get("127.0.0.1", seen["port"], "/", {}, 5)
        assert not any(pool._idle.values())  # nothing broken kept
        await pool.close()


async def test_a_flood_of_header_bytes_is_cut_at_the_bound() -> None:
    async def flood(head: bytes, reader: Any, writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for _ in range(2 * MAX_HEADER_BYTES // 1000 + 2):
            writer.write(b"X-Junk: " + b"j" * 990 + b"\r\n")
        await writer.drain()
        await asyncio.sleep(0.2)
        return False

    async with serving(flood) as seen:
        pool = Http1Pool(1 << 20)
        with pytest.raises(ProtocolError, match="headers are over"):
            await pool.get("127.0.0.1", seen["port"], "/", {}, 5)
        await pool.close()


async def test_silence_times_out_and_a_refusal_says_so() -> None:
    async def silent(head: bytes, reader: Any, writer: asyncio.StreamWriter) -> bool:
        await asyncio.sleep(10)
        return False

    async with serving(silent) as seen:
        pool = Http1Pool(1 << 20)
        with pytest.raises(TimeoutError):
            await pool.get("127.0.0.1", seen["port"], "/", {}, 0.2)
        assert not any(pool._idle.values())
        await pool.close()
        port = seen["port"]
    with pytest.raises(ConnectError) as caught:
        await Http1Pool(1 << 20).get("127.0.0.1", port, "/", {}, 5)
    assert isinstance(caught.value.os_error, ConnectionRefusedError)


async def test_a_request_target_cannot_smuggle_a_line() -> None:
    with pytest.raises(ProtocolError, match="spaces or line breaks"):
        await Http1Pool(1 << 20).get("127.0.0.1", 1, "/v1/x HTTP/1.1\r\nX-Evil: 1", {}, 5)


def test_only_plain_http_origins_take_the_lean_path() -> None:
    assert http_origin("http://127.0.0.1:8080") == ("127.0.0.1", 8080)
    assert http_origin("http://worker/") == ("worker", 80)
    for other in ("https://w:1", "http://w:1/prefix", "http://", "http://w:99999", "w:1"):
        assert http_origin(other) is None


async def test_the_router_maps_failures_to_read_errors() -> None:
    async with serving(plain(b"hi")) as seen:
        router = Router(f"http://127.0.0.1:{seen['port']}")
        assert await router.send(f"http://127.0.0.1:{seen['port']}", "GET", "/", {}, 5, b"") == (
            200,
            b"hi",
        )
        await router.close()
        port = seen["port"]
    router = Router(f"http://127.0.0.1:{port}")
    with pytest.raises(ReadError, match="connection refused") as caught:
        await router.send(f"http://127.0.0.1:{port}", "GET", "/", {}, 5, b"")
    assert _refused(caught.value) == "connection refused"
    await router.close()


async def test_plain_point_reads_keep_connections_of_their_own() -> None:
    """A worker answers point reads on its fast path only on connections that carried
    nothing else: the router sends them on a lane of their own, apart from its table's GETs
    and reads with a query."""
    async with serving(plain(b"{}")) as seen:
        base = f"http://127.0.0.1:{seen['port']}"
        router = Router(base)
        for path, params in (("/v1/contexts/a:1", {}), ("/v1/members", {}),
                             ("/v1/contexts/a:1", {"min_offset": "0:1"}),
                             ("/v1/contexts/a:1/history", {}), ("/v1/contexts/b", {})):  # fmt: skip
            assert await router.send(base, "GET", path, params, 5, b"") == (200, b"{}")
        assert seen["connections"] == 2
        heads = [h.split(b"\r\n")[0] for h in seen["heads"]]
        assert heads[0] == b"GET /v1/contexts/a:1 HTTP/1.1"
        await router.close()


def test_a_context_id_keeps_the_characters_the_fast_path_takes() -> None:
    from urllib.parse import quote

    from lukhas_context.streams.reader import ID_SAFE

    assert quote("s:1;v=2@h!$&'()*+,", safe=ID_SAFE) == "s:1;v=2@h!$&'()*+,"
    assert quote("a/b?c#d%e f", safe=ID_SAFE) == "a%2Fb%3Fc%23d%25e%20f"
