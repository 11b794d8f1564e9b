"""Every error of the read API is an RFC 9457 problem (``processors.problems``): the
handlers' own, aiohttp's (no route, wrong method, body too large, a request it cannot parse),
an exception no handler caught, and the listener's refusals. A worker that has not started
folding answers them (no broker is needed)."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from lukhas_context.processors.api import ReadApi
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.materializer import Materializer
from lukhas_context.processors.problems import (
    KINDS,
    PROBLEM_CONTENT_TYPE,
    TYPE_PREFIX,
    problem_bytes,
    problem_document,
)
from lukhas_context.streams.topics import DOWNSTREAM_MAX_MESSAGE_BYTES

#: What a Python class name in a detail looks like (``ValueError``, ``CodecError: ...``).
CLASS_NAME = re.compile(r"\b[A-Z][A-Za-z]*(Error|Exception)\b")

Answer = tuple[int, Any, dict[str, Any]]


def check_problem(status: int, headers: Any, body: dict[str, Any]) -> None:
    """``body`` is a well-formed problem of ``status`` that names no Python class."""
    assert headers["Content-Type"].split(";")[0] == PROBLEM_CONTENT_TYPE, headers
    assert body["status"] == status, body
    assert isinstance(body["title"], str) and body["title"], body
    assert isinstance(body["detail"], str) and body["detail"], body
    assert body["error"] == body["detail"], body  # the deprecated alias
    assert body["type"] == "about:blank" or body["type"].startswith(TYPE_PREFIX), body
    if body["type"] != "about:blank":
        assert body["title"] == KINDS[body["type"][len(TYPE_PREFIX) :]], body
    assert not CLASS_NAME.search(body["detail"]), body


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[ReadApi, Any]]:
    """A read API whose worker knows the WAL has 6 partitions and serves none of them, and
    ``await call(method, path, body=None)``: (status, headers, JSON body)."""
    materializer = Materializer(WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path))
    materializer.assignment.partition_count = 6
    read_api = ReadApi(materializer)
    await read_api.start("127.0.0.1", 0)
    session = aiohttp.ClientSession()

    async def call(method: str, path: str, body: bytes | None = None) -> Answer:
        url = f"http://127.0.0.1:{read_api.port}{path}"
        timeout = aiohttp.ClientTimeout(total=30)
        async with session.request(method, url, data=body, timeout=timeout) as response:
            return response.status, response.headers, orjson.loads(await response.read())

    yield read_api, call
    await session.close()
    await read_api.close()


@pytest.mark.parametrize(
    ("method", "path", "status", "kind", "says"),
    [
        ("GET", "/v1/contexts/a?from=0", 400, "unknown-parameter", "unknown query parameter"),
        ("GET", "/v1/outcomes/0/0?timeout=1&timeout=2", 400, None, "given twice"),
        ("GET", "/v1/contexts/a/history?limit=0", 400, None, "limit"),
        ("GET", f"/v1/changes?limit={'9' * 30}", 400, None, "limit"),
        ("GET", "/v1/contexts/a?as_of=yesterday", 400, None, "as_of"),
        ("GET", "/v1/contexts?limit=0", 400, None, "limit must be 1 to 1000"),
        ("GET", "/v1/contexts?limit=-1", 400, None, "limit"),
        ("GET", "/v1/contexts?limit=1001", 400, None, "limit"),
        ("GET", f"/v1/contexts?limit={'9' * 40}", 400, None, "limit"),
        ("GET", f"/v1/contexts?prefix={'x' * 300}", 400, None, "prefix is longer"),
        ("GET", f"/v1/contexts?after={'x' * 300}", 400, None, "after is longer"),
        ("GET", "/v1/contexts?sort=id", 400, "unknown-parameter", "prefix, after, limit"),
        ("GET", "/v1/outcomes/99/0", 404, "no-such-partition", "no partition 99"),
        ("GET", "/v1/contexts/a?min_offset=7:0", 404, "no-such-partition", "no partition 7"),
        ("GET", "/v1/nothing-here", 404, None, "no such resource: GET /v1/nothing-here"),
        ("GET", "/", 404, None, "no such resource"),
        ("DELETE", "/v1/contexts/a", 405, None, "DELETE is not allowed"),
        ("POST", "/v1/partitions", 405, None, "it takes GET"),
        ("POST", "/v1/dry-run", 400, None, "not an event"),
        ("GET", "/v1/contexts/a", 421, "not-served-here", "not served by this worker"),
    ],
)
async def test_each_error_is_a_problem(
    served: tuple[ReadApi, Any], method: str, path: str, status: int, kind: str | None, says: str
) -> None:
    _, call = served
    got, headers, body = await call(method, path, b"garbage" if method == "POST" else None)
    assert got == status, body
    check_problem(status, headers, body)
    assert body["type"] == ("about:blank" if kind is None else TYPE_PREFIX + kind), body
    assert says in body["detail"], body
    if status == 405:
        assert "GET" in headers["Allow"], headers
    if kind == "no-such-partition":
        assert body["no_such"] == "partition" and body["partition_count"] == 6, body


async def test_a_body_over_the_limit_is_a_413_problem(served: tuple[ReadApi, Any]) -> None:
    _, call = served
    status, headers, body = await call(
        "POST", "/v1/dry-run", b"x" * (DOWNSTREAM_MAX_MESSAGE_BYTES + 1)
    )
    assert status == 413, body
    check_problem(413, headers, body)


async def test_an_uncaught_exception_is_a_500_problem_that_hides_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    async def broken(self: ReadApi, request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    monkeypatch.setattr(ReadApi, "members", broken)
    read_api = ReadApi(Materializer(WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path)))
    await read_api.start("127.0.0.1", 0)
    try:
        with caplog.at_level(logging.ERROR, logger="lukhas_context.processors.problems"):
            async with aiohttp.ClientSession() as session:
                url = f"http://127.0.0.1:{read_api.port}/v1/members"
                async with session.get(url) as response:
                    status, headers = response.status, response.headers
                    body = orjson.loads(await response.read())
    finally:
        await read_api.close()
    assert status == 500
    check_problem(500, headers, body)
    assert "secret" not in body["detail"] and "its log says why" in body["detail"]
    logged = [r for r in caplog.records if r.exc_info and "secret internals" in str(r.exc_info[1])]
    assert logged, "the traceback goes to the log"


async def raw(port: int, data: bytes) -> bytes:
    """What the API answers ``data`` sent on a fresh connection, up to its close."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()


def split(answer: bytes) -> tuple[int, dict[str, str], dict[str, Any]]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, orjson.loads(body)


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"NOT A REQUEST\r\n\r\n",
        b"GET /v1/members HTTP/1.1\r\nHost: x\r\nBad Header Line\r\n\r\n",
        b"GET /v1/members HTTP/1.1\r\nHost: x\r\nContent-Length: -4\r\n\r\n",
    ],
)
async def test_a_request_that_does_not_parse_is_a_400_problem(
    served: tuple[ReadApi, Any], request_bytes: bytes
) -> None:
    read_api, _ = served
    status, headers, body = split(await raw(read_api.port, request_bytes))
    assert status == 400, body
    check_problem(400, headers, body)
    # and the connection is closed: ``raw`` read up to its end


def test_the_listeners_answers_are_problems() -> None:
    status, headers, body = split(problem_bytes(503, "too many", b"Retry-After: 1\r\n"))
    assert status == 503 and headers["Retry-After"] == "1" and headers["Connection"] == "close"
    check_problem(503, headers, body)
    assert int(headers["Content-Length"]) == len(orjson.dumps(body))
    _, _, typed = split(problem_bytes(503, "too many", b"", "overloaded", retry_after=1))
    assert typed["type"] == "urn:lukhas:problem:overloaded" and typed["retry_after"] == 1


def test_a_kind_has_its_title_and_extensions_are_kept() -> None:
    doc = problem_document(404, "no offset 9", "no-such-offset", end_offset=3)
    assert doc["type"] == "urn:lukhas:problem:no-such-offset" and doc["title"] == "No such offset"
    assert doc["end_offset"] == 3 and doc["error"] == doc["detail"] == "no offset 9"
    assert problem_document(418, "tea")["title"] == "I'm a Teapot"
    # an extension never overwrites a standard member
    clash = problem_document(400, "d", None, type="y", title="t", error="z")
    assert (clash["type"], clash["title"], clash["error"]) == ("about:blank", "Bad Request", "d")


async def test_a_listing_names_the_partitions_no_one_answered_for(
    served: tuple[ReadApi, Any],
) -> None:
    """This worker serves none of the 6 partitions and knows no owner: an empty page that
    says it is incomplete (not an empty listing that looks complete)."""
    _, call = served
    status, _, body = await call("GET", "/v1/contexts?prefix=a")
    assert status == 200, body
    assert body == {"contexts": [], "more": False, "next_after": None, "partition_count": 6,
                    "partitions": [], "incomplete": [0, 1, 2, 3, 4, 5]}  # fmt: skip
