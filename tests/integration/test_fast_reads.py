"""The read API's fast path answers a plain context read with the bytes aiohttp's handler
answers it with, and leaves every other case to the handler (``processors.listener``)."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import pytest

pytestmark = pytest.mark.integration

MakeClient = Any


async def _exchange(port: int, *requests: bytes) -> list[bytes]:
    """Sends each request on one connection in turn; returns each whole answer."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    answers = []
    try:
        for request in requests:
            writer.write(request)
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
            length = int(re.search(rb"Content-Length: (\d+)", head).group(1))  # type: ignore[union-attr]
            answers.append(head + await asyncio.wait_for(reader.readexactly(length), 10))
    finally:
        writer.close()
    return answers


def _undated(answer: bytes) -> bytes:
    return re.sub(rb"\r\nDate: [^\r]*", b"", answer)


async def test_fast_answers_are_the_handlers_bytes(
    start_worker: Any, make_client: MakeClient
) -> None:
    worker = await start_worker()
    port = int(worker.url.rsplit(":", 1)[1])
    async with make_client(worker.url) as client:
        receipts = [
            await client.put("fast:1", {"text": "ünïcode <b>", "n": [1, 2.5, None]}),
            await client.put("fast:gone", {"n": 1}),
            await client.delete("fast:gone"),
        ]
        for receipt in receipts:
            await receipt.outcome(timeout=30)  # folded: what the reads below see
    plain = b"GET /v1/contexts/fast:1 HTTP/1.1\r\nHost: x\r\n\r\n"
    fast = await _exchange(port, plain, plain)
    # The same read, through aiohttp: the connection's first request goes there (a query it
    # ignores), so the next ones do too.
    handled = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", plain)
    assert _undated(fast[0]) == _undated(fast[1]) == _undated(handled[1])
    assert fast[0].startswith(b"HTTP/1.1 200 OK\r\n") and b"\r\nDate: " in fast[0]
    assert b'"context_id":"fast:1"' in fast[0]

    # A miss and a deleted context get the handler's 404, as before.
    missing = await _exchange(port, b"GET /v1/contexts/fast:none HTTP/1.1\r\nHost: x\r\n\r\n")
    deleted = await _exchange(port, b"GET /v1/contexts/fast:gone HTTP/1.1\r\nHost: x\r\n\r\n")
    assert missing[0].startswith(b"HTTP/1.1 404") and deleted[0].startswith(b"HTTP/1.1 404")
    # A percent-encoded id is decoded by aiohttp: the same context.
    encoded = await _exchange(port, b"GET /v1/contexts/fast%3A1 HTTP/1.1\r\nHost: x\r\n\r\n")
    assert _undated(encoded[0]) == _undated(fast[0])


async def test_ids_with_every_character_the_fast_path_takes_read_alike(
    start_worker: Any, make_client: MakeClient
) -> None:
    ids = ["a+b", "x;y=1", "q'(r)*!$&,", "~u.v_w-z@h:1", "..x", ".", ".."]
    worker = await start_worker()
    port = int(worker.url.rsplit(":", 1)[1])
    async with make_client(worker.url) as client:
        receipts = [await client.put(i, {"id": i}) for i in ids]
        for receipt in receipts:
            await receipt.outcome(timeout=30)
    for i in ids:
        plain = b"GET /v1/contexts/%s HTTP/1.1\r\nHost: x\r\n\r\n" % i.encode()
        fast = await _exchange(port, plain)
        handled = await _exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n", plain)
        assert _undated(fast[0]) == _undated(handled[1]), i
