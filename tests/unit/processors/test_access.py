"""The read API's bearer token and CORS allow-list (``processors.access``), on a worker that
has not started folding (no broker is needed), and the client that sends the token."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from lukhas_context.processors.api import ReadApi
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import InvalidWorkerConfigError
from lukhas_context.processors.materializer import Materializer
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import InvalidConfigError, ReadError

TOKEN = "s3cret-token-0123456789abcdef"
ORIGIN = "https://console.example:8443"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, Any]]:
    """A read API that needs ``TOKEN`` and allows ``ORIGIN``, and ``await call(method, path,
    **headers)``: (status, headers, body bytes)."""
    config = WorkerConfig(
        bootstrap="127.0.0.1:1", state_dir=tmp_path, api_token=TOKEN, cors_origins=(ORIGIN,)
    )
    materializer = Materializer(config)
    materializer.assignment.partition_count = 2
    api = ReadApi(materializer)
    await api.start("127.0.0.1", 0)
    assert api._listener is not None and api._listener.fast is None  # no fast path with a token
    assert api._peer_headers == bearer(TOKEN)  # sent on forwards and listing pages
    session = aiohttp.ClientSession()
    url = f"http://127.0.0.1:{api.port}"

    async def call(method: str, path: str, **headers: str) -> tuple[int, Any, bytes]:
        async with session.request(method, url + path, headers=headers) as answer:
            return answer.status, answer.headers, await answer.read()

    yield url, call
    await session.close()
    await api.close()


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.mark.parametrize("path", ["/v1/members", "/v1/contexts?prefix=a", "/metrics",
                                  "/v1/openapi.json", "/v1/contexts/a", "/nowhere"])  # fmt: skip
async def test_without_the_token_every_request_is_a_401(served: tuple[str, Any], path: str) -> None:
    _, call = served
    status, headers, body = await call("GET", path)
    assert status == 401 and headers["WWW-Authenticate"] == 'Bearer realm="lukhas"'
    problem = orjson.loads(body)
    assert problem["status"] == 401 and "bearer token" in problem["detail"]
    assert headers["Content-Type"] == "application/problem+json"
    for wrong in ("nope", TOKEN + "x", TOKEN[:-1], TOKEN.upper()):
        status, headers, body = await call("GET", path, **bearer(wrong))
        assert status == 401 and 'error="invalid_token"' in headers["WWW-Authenticate"]
        assert TOKEN not in body.decode()
    status, _, _ = await call("GET", path, Authorization=TOKEN)  # no scheme
    assert status == 401


async def test_with_the_token_requests_are_served(served: tuple[str, Any]) -> None:
    _, call = served
    status, _, body = await call("GET", "/v1/members", **bearer(TOKEN))
    assert status == 200 and b"partition_count" in body
    status, _, _ = await call("GET", "/nowhere", **bearer(TOKEN))
    assert status == 404


@pytest.mark.parametrize("path", ["/livez", "/readyz", "/healthz"])
async def test_the_probes_need_no_token(served: tuple[str, Any], path: str) -> None:
    _, call = served
    status, _, body = await call("GET", path)
    assert status in (200, 503) and b'"status"' in body, body


async def test_cors_answers_say_which_origin_may_read_them(served: tuple[str, Any]) -> None:
    _, call = served
    status, headers, _ = await call("GET", "/v1/members", Origin=ORIGIN, **bearer(TOKEN))
    assert status == 200 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "ETag" in headers["Access-Control-Expose-Headers"] and "Origin" in headers["Vary"]
    # an error answer too (the page can read the problem), and no header for other origins
    status, headers, _ = await call("GET", "/v1/members", Origin=ORIGIN)
    assert status == 401 and headers["Access-Control-Allow-Origin"] == ORIGIN
    status, headers, _ = await call("GET", "/v1/members", Origin="https://evil.example")
    assert status == 401 and "Access-Control-Allow-Origin" not in headers
    # a preflight needs no token (browsers send none with it) and says what may be sent
    asked = {"Access-Control-Request-Method": "GET",
             "Access-Control-Request-Headers": "authorization"}  # fmt: skip
    status, headers, _ = await call("OPTIONS", "/v1/contexts/a", Origin=ORIGIN, **asked)
    assert status == 204 and headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "Authorization" in headers["Access-Control-Allow-Headers"]
    assert "GET" in headers["Access-Control-Allow-Methods"]
    status, headers, body = await call("OPTIONS", "/v1/contexts/a", Origin="https://x.example",
                                       **asked)  # fmt: skip
    assert status == 403 and "Access-Control-Allow-Origin" not in headers, body


async def test_the_client_sends_its_token(served: tuple[str, Any]) -> None:
    url, _ = served
    async with ContextClient(ClientConfig("unused:9092", url, api_token=TOKEN)) as client:
        page = await client.list_contexts("a")  # over the lean GET pool
        assert page.incomplete == [0, 1] and page.contexts == []
        await client.router.refresh()  # the routing table, the same way
        assert client.router.partition_count == 2
    async with ContextClient(ClientConfig("unused:9092", url)) as client:
        with pytest.raises(ReadError, match="401: this API needs a bearer token"):
            await client.list_contexts("a")


def test_tokens_and_origins_are_checked_and_never_printed(tmp_path: Path) -> None:
    for bad in ("short", "has space in it 0123456789", "new\nline-0123456789abc", "é" * 20):
        with pytest.raises(InvalidWorkerConfigError):
            WorkerConfig(bootstrap="x", state_dir=tmp_path, api_token=bad)
    for bad_origin in ("console.example", "https://x.example/path", "ftp://x", ""):
        with pytest.raises(InvalidWorkerConfigError):
            WorkerConfig(bootstrap="x", state_dir=tmp_path, cors_origins=(bad_origin,))
    WorkerConfig(bootstrap="x", state_dir=tmp_path, cors_origins=("*", "http://[::1]:8080"))
    config = WorkerConfig(bootstrap="x", state_dir=tmp_path, api_token=TOKEN)
    assert TOKEN not in repr(config)
    assert TOKEN not in repr(ClientConfig("x", api_token=TOKEN))
    for bad in ("", "a b", "x\r\n"):
        with pytest.raises(InvalidConfigError):
            ClientConfig("x", api_token=bad)
