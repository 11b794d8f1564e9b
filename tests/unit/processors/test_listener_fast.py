"""The listener's fast path for plain context reads (``processors.listener``), on loopback
with a tiny aiohttp app that answers the same route: which requests it takes, which it
leaves to aiohttp, and that answers on one connection never overtake one another."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from lukhas_context.processors.listener import FAST_MAX_HEAD, ListenerLimits

IDLE_S = 0.6
AIOHTTP_KEEPALIVE_S = 0.3


def _fast(target: bytes) -> bytes | None:
    if target != b"/v1/contexts/known":
        return None
    return b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nX-Path: fast\r\n\r\nfast"


@pytest.fixture
async def port(listening: Any) -> AsyncIterator[int]:
    async def context(request: web.Request) -> web.Response:
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        name = request.match_info["context_id"]
        return web.Response(text=f"slow {name}", headers={"X-Path": "slow"})

    routes = [web.get("/v1/contexts/{context_id}", context)]
    limits = ListenerLimits(8, 2.0, 2.0, IDLE_S)
    async with listening(routes, limits, AIOHTTP_KEEPALIVE_S) as (listener, port, _):
        listener.fast = _fast
        yield port


def _get(target: str, *headers: str) -> bytes:
    lines = [f"GET {target} HTTP/1.1", "Host: x", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _answer(reader: asyncio.StreamReader) -> tuple[str, bytes]:
    """One HTTP answer: its X-Path header (or its status line) and its body."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    lines = head.decode().split("\r\n")
    fields = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    body = await asyncio.wait_for(reader.readexactly(int(fields["Content-Length"])), 5)
    return fields.get("X-Path", lines[0]), body


async def _ask(writer: asyncio.StreamWriter, reader: asyncio.StreamReader, data: bytes) -> str:
    writer.write(data)
    await writer.drain()
    return (await _answer(reader))[0]


async def test_plain_reads_take_the_fast_path_the_rest_go_to_aiohttp(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _ask(writer, reader, _get("/v1/contexts/known")) == "fast"
    kept = _get("/v1/contexts/known", "Connection: keep-alive", "User-Agent: a\tb/\u00e9 (x)")
    assert await _ask(writer, reader, kept) == "fast"
    for other in (
        _get("/v1/contexts/unknown"),  # fast() says no: a miss, elsewhere, ...
        _get("/v1/contexts/known?min_offset=0:1"),
        _get("/v1/contexts/known", "If-None-Match: x"),
        _get("/v1/contexts/known", "Origin: https://console.example"),  # CORS headers
        _get("/v1/contexts/known", "Connection: close"),
    ):
        r, w = await asyncio.open_connection("127.0.0.1", port)
        assert await _ask(w, r, other) == "slow"
        w.close()
    writer.close()


async def test_once_aiohttp_has_a_connection_it_keeps_it(port: int) -> None:
    """aiohttp may still be answering (or hold, pipelined) an earlier request: a fast answer
    would overtake it. So a connection that went to aiohttp stays there."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_get("/v1/contexts/known?sleep=0.2"))
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(_get("/v1/contexts/known"))  # arrives while the first is being answered
    await writer.drain()
    assert (await _answer(reader))[0] == "slow"
    assert (await _answer(reader))[0] == "slow"
    assert await _ask(writer, reader, _get("/v1/contexts/known")) == "slow"
    writer.close()


async def test_pipelined_split_long_and_malformed_requests_go_to_aiohttp(port: int) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(_get("/v1/contexts/known") + _get("/v1/contexts/two"))  # one packet
    await writer.drain()
    assert await _answer(reader) == ("slow", b"slow known")
    assert await _answer(reader) == ("slow", b"slow two")
    writer.close()

    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    whole = _get("/v1/contexts/known")
    writer.write(whole[:10])
    await writer.drain()
    await asyncio.sleep(0.05)
    assert await _ask(writer, reader, whole[10:]) == "slow"
    writer.close()

    padded = _get("/v1/contexts/known", "X-Pad: " + "p" * FAST_MAX_HEAD)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    assert await _ask(writer, reader, padded) == "slow"
    writer.close()

    for bad in (b"GET /v1/contexts/known HTTP/1.1\r\nHost x\r\n\r\n",
                b"GET /v1/contexts/known HTTP/1.1\r\n Host: x\r\n\r\n",
                b"GET /v1/contexts/known HTTP/1.1\r\nHost : x\r\n\r\n",
                b"GET /v1/contexts/known HTTP/1.1\r\nX Y: z\r\n\r\n",
                b"GET /v1/contexts/known HTTP/1.1\r\nX: a\x00b\r\n\r\n",
                b"GET /v1/contexts/known HTTP/1.1\r\nX: a\rb\r\n\r\n",
                b"GET /v1/contexts/known HTTP/1.1\r\n\r\n",
                b"GET /v1/contexts/known HTTP/1.0\r\n\r\n"):  # fmt: skip
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(bad)
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(), 5)  # aiohttp's, whatever it is
        assert b"X-Path: fast" not in answer
        writer.close()


async def test_a_busy_fast_connection_outlives_aiohttps_keepalive_an_idle_one_does_not(
    port: int,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    loop = asyncio.get_running_loop()
    until = loop.time() + 3 * AIOHTTP_KEEPALIVE_S
    while loop.time() < until:
        assert await _ask(writer, reader, _get("/v1/contexts/known")) == "fast"
        await asyncio.sleep(AIOHTTP_KEEPALIVE_S / 4)
    # Idle now: the listener's own deadline closes it.
    assert await asyncio.wait_for(reader.read(), IDLE_S * 4) == b""
    writer.close()
