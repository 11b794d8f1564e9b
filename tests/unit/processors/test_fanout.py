"""Asking every other member at once (``processors.fanout``): each member's JSON object, or
why there is none -- no answer in time, a refused connection, another status, an answer that
is not a JSON object -- in the members' order, never an exception; every request is marked
forwarded and carries the token."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from lukhas_context.processors.fanout import FORWARDED_HEADER, Peers
from lukhas_context.processors.members import Member

SELF = "http://self:1"


def member(name: str, url: str) -> Member:
    return Member(name, url, (), 1, 0)


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, list[dict[str, str]], asyncio.Event]]:
    """A worker stand-in: ``/ok`` answers its request's headers, ``/list`` a JSON list,
    ``/text`` plain text, ``/gone`` 404, ``/slow`` never (until the test ends)."""
    seen: list[dict[str, str]] = []
    release = asyncio.Event()

    async def ok(request: web.Request) -> web.Response:
        seen.append(dict(request.headers))
        return web.json_response({"query": request.query_string})

    async def slow(request: web.Request) -> web.Response:
        await release.wait()
        return web.json_response({})

    async def a_list(request: web.Request) -> web.Response:
        return web.json_response([1])

    async def text(request: web.Request) -> web.Response:
        return web.Response(text="<html>")

    app = web.Application()
    app.add_routes(
        [
            web.get("/ok", ok),
            web.get("/list", a_list),
            web.get("/text", text),
            web.get("/slow", slow),
        ]
    )
    async with serving(app) as url:
        try:
            yield url, seen, release
        finally:
            release.set()  # before the server stops: it waits for its handlers


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` listening on a free loopback port: its URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_each_member_gives_its_object_or_why_in_order(
    server: tuple[str, list[dict[str, str]], asyncio.Event],
) -> None:
    url, seen, _ = server
    peers = Peers(SELF, {"Authorization": "Bearer t"})
    members = [member("a", url + "/"), member("b", f"http://127.0.0.1:{closed_port()}")]
    try:
        answers = await peers.ask_all(members, "/ok?x=1")
    finally:
        await peers.close()
    assert [a.member.member for a in answers] == ["a", "b"]
    assert (answers[0].data, answers[0].why) == ({"query": "x=1"}, None)
    assert answers[1].data is None and "ClientConnectorError" in (answers[1].why or "")
    assert seen[0][FORWARDED_HEADER] == SELF and seen[0]["Authorization"] == "Bearer t"


@pytest.mark.parametrize(
    ("path", "why"),
    [
        ("/gone", "its /gone answered 404"),
        ("/text", "its /text answer is not JSON"),
        ("/list", "its /list answer is odd"),
        ("/slow", "no answer within 0.2 s"),
    ],
)
async def test_an_answer_that_is_no_object_says_why(
    server: tuple[str, list[dict[str, str]], asyncio.Event], path: str, why: str
) -> None:
    url, _, _ = server
    peers = Peers(SELF, {})
    try:
        (answer,) = await peers.ask_all([member("a", url)], path, timeout=0.2)
    finally:
        await peers.close()
    assert (answer.data, answer.why) == (None, why)


async def test_no_members_no_requests() -> None:
    peers = Peers(SELF, {})
    assert await peers.ask_all([], "/ok") == []
    await peers.close()


async def test_every_member_is_asked_at_once() -> None:
    """Each stand-in answers only once all three requests have arrived: asked one after
    another, the first would wait for the others in vain and answer 500."""
    arrived: list[int] = []
    all_in = asyncio.Event()

    async def together(request: web.Request) -> web.Response:
        arrived.append(1)
        if len(arrived) == 3:
            all_in.set()
        try:
            await asyncio.wait_for(all_in.wait(), 5)
        except TimeoutError:
            return web.json_response({}, status=500)
        return web.json_response({"n": len(arrived)})

    app = web.Application()
    app.router.add_get("/together", together)
    peers = Peers(SELF, {})
    async with serving(app) as url:
        try:
            answers = await peers.ask_all([member(n, url) for n in "abc"], "/together", timeout=10)
        finally:
            await peers.close()
    assert [(a.data, a.why) for a in answers] == [({"n": 3}, None)] * 3
