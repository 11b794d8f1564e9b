"""The read API's listener alone (``processors.listener``), on loopback with a tiny aiohttp
app: the cap, eviction, refusal, and each deadline."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web

from lukhas_context.processors.listener import Listener, ListenerLimits
from lukhas_context.processors.metrics import WorkerMetrics

CAP = 8


@pytest.fixture
async def served(listening: Any) -> AsyncIterator[tuple[Listener, int, WorkerMetrics]]:
    async def hello(request: web.Request) -> web.Response:
        await request.read()
        await asyncio.sleep(float(request.query.get("sleep", "0")))
        return web.Response(text="hello")

    routes = [web.get("/", hello), web.post("/", hello)]
    async with listening(routes, ListenerLimits(CAP, 0.3, 0.3, 0.5)) as served:
        yield served


async def _open(port: int, data: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    await writer.drain()
    return reader, writer


async def _answer(reader: asyncio.StreamReader) -> bytes:
    """What the server sent until it closed the connection (or reset it)."""
    try:
        return await asyncio.wait_for(reader.read(), 10)
    except ConnectionResetError:
        return b"<reset>"


def _count(metrics: WorkerMetrics, name: str, **labels: str) -> float:
    value = metrics.registry.get_sample_value(name, labels or None)
    return 0.0 if value is None else value


GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
HALF = b"GET / HTTP/1.1\r\nHost: x\r\n"


async def test_half_sent_requests_are_evicted_or_timed_out_and_a_request_gets_in(
    served: tuple[Listener, int, WorkerMetrics],
) -> None:
    listener, port, metrics = served
    slow = [await _open(port, HALF) for _ in range(5 * CAP)]
    reader, writer = await _open(port, GET)
    assert (await reader.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
    writer.close()
    assert listener.open_connections <= CAP
    answers = [await _answer(r) for r, _ in slow]  # every one closed by the server
    assert any(a.startswith(b"HTTP/1.1 408") for a in answers), answers
    closed = _count(metrics, "lukhas_api_connections_evicted_total") + _count(
        metrics, "lukhas_api_timeouts_total", phase="headers"
    )
    assert closed >= 5 * CAP
    for _, w in slow:
        w.close()


async def test_with_every_slot_busy_the_next_connection_is_answered_503(
    served: tuple[Listener, int, WorkerMetrics],
) -> None:
    listener, port, metrics = served
    busy = [await _open(port, b"GET /?sleep=2 HTTP/1.1\r\nHost: x\r\n\r\n") for _ in range(CAP)]
    deadline = time.monotonic() + 10
    while listener.open_connections < CAP:
        assert time.monotonic() < deadline
        await asyncio.sleep(0.01)
    reader, writer = await _open(port, GET)
    answer = await _answer(reader)
    assert answer.startswith(b"HTTP/1.1 503") and b"too many connections" in answer, answer
    assert b"Retry-After: 1\r\n" in answer and b"urn:lukhas:problem:overloaded" in answer
    assert _count(metrics, "lukhas_api_connections_refused_total") == 1
    for r, w in busy:  # the busy ones are served, not evicted
        assert (await r.readuntil(b"hello")).startswith(b"HTTP/1.1 200")
        w.close()
    writer.close()


async def test_a_slow_body_an_idle_connection_and_a_silent_one_are_closed(
    served: tuple[Listener, int, WorkerMetrics], caplog: pytest.LogCaptureFixture
) -> None:
    _, port, metrics = served
    body, w1 = await _open(port, b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    idle, w2 = await _open(port, GET)
    silent, w3 = await _open(port, b"")
    assert not (await _answer(body)).startswith(b"HTTP/1.1 200")
    assert (await _answer(idle)).startswith(b"HTTP/1.1 200")  # answered, then closed idle
    assert await _answer(silent) == b""
    assert _count(metrics, "lukhas_api_timeouts_total", phase="body") == 1
    assert _count(metrics, "lukhas_api_timeouts_total", phase="idle") == 2
    for w in (w1, w2, w3):
        w.close()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


def test_limits_are_validated() -> None:
    with pytest.raises(ValueError, match="header_timeout_s"):
        ListenerLimits(header_timeout_s=float("nan"))
    with pytest.raises(ValueError, match="max_connections"):
        ListenerLimits(max_connections=0)
    assert ListenerLimits().cap >= 16
