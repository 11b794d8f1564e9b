"""The client never returns a document that does not match its checksum (a fake read API
stands in for the worker: this tests the client's own check, not Kafka)."""

from __future__ import annotations

import orjson
import pytest
import xxhash
from aiohttp import web

from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import ChecksumMismatchError, NotAppliedYetError


async def _serve(handler: web.RequestHandler) -> tuple[web.AppRunner, str]:  # type: ignore[type-arg]
    app = web.Application()
    app.router.add_get("/v1/contexts/{id}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}"


def _body(doc: dict[str, object], checksum: str) -> web.Response:
    return web.json_response(
        {
            "context_id": "c",
            "version": 3,
            "doc": doc,
            "checksum": checksum,
            "offset": 7,
            "partition": 0,
            "expires_at_ms": None,
        }
    )


async def test_a_matching_checksum_is_returned_and_a_wrong_one_raises() -> None:
    doc = {"b": 1, "a": [1, 2]}
    good = xxhash.xxh3_64_hexdigest(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    answers = [_body(doc, good), _body({"b": 2, "a": [1, 2]}, good)]

    async def handler(request: web.Request) -> web.Response:
        return answers.pop(0)

    runner, url = await _serve(handler)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            ctx = await client.get("c")
            assert ctx.doc == doc and ctx.version == 3
            with pytest.raises(ChecksumMismatchError):
                await client.get("c")  # a silently changed document is never returned
    finally:
        await runner.cleanup()


async def test_a_read_your_writes_timeout_is_typed() -> None:
    async def handler(request: web.Request) -> web.Response:
        return web.json_response({"error": "offset 0:9 not applied within 1 s"}, status=504)

    runner, url = await _serve(handler)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            with pytest.raises(NotAppliedYetError):
                await client.get("c", after="0:9", timeout=1)
    finally:
        await runner.cleanup()


async def test_reads_fail_over_from_a_dead_configured_worker() -> None:
    """The first configured worker is gone: reads (with a route and without) move on to the
    next one instead of retrying the dead one until the timeout."""
    doc = {"k": 1}
    checksum = xxhash.xxh3_64_hexdigest(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
    served: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        served.append(request.path)
        return _body(doc, checksum)

    runner, url = await _serve(handler)
    dead = "http://127.0.0.1:9"  # discard port: nothing listens
    try:
        async with ContextClient(ClientConfig("unused:9092", f"{dead},{url}")) as client:
            ctx = await client.get("c", timeout=5)
            assert ctx.doc == doc
            assert client._seeds == [url, dead]  # the dead one went to the back
            assert (await client.get("c", timeout=5)).version == 3
    finally:
        await runner.cleanup()
    assert served == ["/v1/contexts/c", "/v1/contexts/c"]
