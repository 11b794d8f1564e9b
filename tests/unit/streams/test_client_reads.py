"""The client never returns a document that does not match its checksum (a fake read API
stands in for the worker: this tests the client's own check, not Kafka)."""

from __future__ import annotations

import asyncio
import math
import socket

import orjson
import pytest
import xxhash
from aiohttp import web

from lukhas_context.processors.problems import problem_document
from lukhas_context.streams.client import CheckpointRequest, ClientConfig, ContextClient
from lukhas_context.streams.exceptions import (
    ChecksumMismatchError,
    NoSuchPositionError,
    NotAppliedYetError,
    ReadError,
    ValidationError,
)
from lukhas_context.streams.topics import partition_for


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
                await client.get("c", min_offset="0:9", timeout=1)
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
            assert client.router.seeds == [url, dead]  # the dead one went to the back
            assert (await client.get("c", timeout=5)).version == 3
    finally:
        await runner.cleanup()
    assert served == ["/v1/contexts/c", "/v1/contexts/c"]


def _dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}"


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -1.0, 1e9, "5", True])
async def test_a_wait_that_could_not_end_is_refused(timeout: object) -> None:
    """NaN made the retry loop's deadline never come; infinity overflowed in the timer."""
    async with ContextClient(ClientConfig("", _dead_url())) as client:
        request = CheckpointRequest("ck-1", {0: 5})
        calls = (
            client.get("c", timeout=timeout),  # type: ignore[arg-type]
            client.outcome(0, 1, timeout),  # type: ignore[arg-type]
            client.wait_checkpoint(request, timeout),  # type: ignore[arg-type]
        )
        for call in calls:
            with pytest.raises(ValidationError, match="timeout"):
                await asyncio.wait_for(call, 10)


async def test_every_configured_worker_refusing_fails_at_once_with_a_clear_reason() -> None:
    """A wrong api_url: not 35 s of retries ending in a raw ClientConnectorError."""
    urls = [_dead_url(), _dead_url()]
    async with ContextClient(ClientConfig("", ",".join(urls))) as client:
        with pytest.raises(ReadError) as caught:
            # The deadline is the test's condition: with retries until the timeout (plus 5 s)
            # the call would still be running when it passes.
            await asyncio.wait_for(client.get("c", timeout=30), 10)
    message = str(caught.value)
    assert "cannot connect to the read API" in message and "connection refused" in message
    assert all(url in message for url in urls)
    assert "ClientConnectorError" not in message and "ConnectionKey" not in message


async def test_a_position_that_does_not_exist_is_typed() -> None:
    """The worker's 404 for a position (``no_such``) is not a missing context, nor a
    forgotten outcome that a read-your-writes wait would take as folded."""

    async def handler(request: web.Request) -> web.Response:
        body = {"error": "no offset 9 in partition 0: it ends at 3", "no_such": "offset"}
        return web.json_response(body, status=404)

    app = web.Application()
    app.router.add_get("/v1/contexts/{id}", handler)
    app.router.add_get("/v1/outcomes/{p}/{o}", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        async with ContextClient(ClientConfig("", f"http://127.0.0.1:{port}")) as client:
            with pytest.raises(NoSuchPositionError, match="no offset 9"):
                await client.outcome(0, 9, timeout=1)
            with pytest.raises(NoSuchPositionError):
                await client.get("c", min_offset="0:9", timeout=1)
            client.router.partition_count = 2  # a wait on the other partition than c's
            other = next(p for p in range(2) if p != partition_for(b"c", 2))
            with pytest.raises(NoSuchPositionError):
                await client.get("c", min_offset=f"{other}:9", timeout=1)
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("alias", [False, True])
async def test_the_client_reads_a_problems_detail(alias: bool) -> None:
    """Workers answer errors as RFC 9457 problems; the client says their ``detail`` (and
    still reads the ``error`` of workers from before them: the tests above)."""

    async def handler(request: web.Request) -> web.Response:
        body = problem_document(409, "the state as of 5:5 cannot be built: pruned")
        if not alias:
            del body["error"]
        return web.json_response(body, status=409, content_type="application/problem+json")

    runner, url = await _serve(handler)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            with pytest.raises(ReadError, match="409: the state as of 5:5 cannot be built"):
                await client.get("c")
    finally:
        await runner.cleanup()


async def test_after_is_the_old_name_of_min_offset() -> None:
    """One vocabulary with the HTTP API: ``min_offset``; ``after=`` still works, with a
    ``DeprecationWarning``, and both at once are refused."""

    async def handler(request: web.Request) -> web.Response:
        assert request.query["min_offset"] == "0:9"
        return web.json_response({"error": "offset 0:9 not applied within 1 s"}, status=504)

    runner, url = await _serve(handler)
    try:
        async with ContextClient(ClientConfig("unused:9092", url)) as client:
            with (
                pytest.warns(DeprecationWarning, match="after= is deprecated: use min_offset="),
                pytest.raises(NotAppliedYetError),
            ):
                await client.get("c", after="0:9", timeout=1)
            with pytest.raises(ValidationError, match="give min_offset= only"):
                await client.get("c", min_offset="0:9", after="0:9", timeout=1)
            with pytest.raises(NotAppliedYetError):
                await client.get("c", min_offset="0:9", timeout=1)
    finally:
        await runner.cleanup()
