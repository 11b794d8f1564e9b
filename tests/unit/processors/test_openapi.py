"""The OpenAPI document (``processors.openapi``) describes the read API as its routes are:
every route and nothing else, each operation with exactly the query parameters its handler
takes; it is valid OpenAPI 3.1, and the worker serves it at ``/v1/openapi.json``."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from openapi_spec_validator import validate

from lukhas_context import __version__
from lukhas_context.processors.api import ReadApi
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.materializer import Materializer
from lukhas_context.processors.openapi import document
from lukhas_context.processors.shed import sheds

METHODS = ("get", "post", "put", "delete", "patch")


@pytest.fixture
def api(tmp_path: Path) -> ReadApi:
    return ReadApi(Materializer(WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path)))


def routes(api: ReadApi) -> dict[tuple[str, str], object]:
    """(method, path template) -> handler, of every route of the app (HEAD, which aiohttp
    adds to each GET, left out)."""
    found = {}
    for route in api.app.router.routes():
        if route.method == "HEAD":
            continue
        assert route.resource is not None
        found[(route.method.lower(), route.resource.canonical)] = route.handler
    return found


def operations(doc: dict[str, object]) -> dict[tuple[str, str], dict[str, object]]:
    paths = doc["paths"]
    assert isinstance(paths, dict)
    return {
        (method, path): item[method]
        for path, item in paths.items()
        for method in METHODS
        if method in item
    }


def test_the_document_is_valid_openapi() -> None:
    validate(document(__version__))  # raises what is wrong


def test_every_route_is_described_and_nothing_else(api: ReadApi) -> None:
    assert set(routes(api)) == set(operations(document(__version__)))


def test_each_operation_takes_the_query_parameters_its_handler_takes(api: ReadApi) -> None:
    described = operations(document(__version__))
    checked = 0
    for key, handler in routes(api).items():
        params = described[key]["parameters"]
        assert isinstance(params, list)
        query = sorted(p["name"] for p in params if p["in"] == "query")
        known = getattr(handler, "query_parameters", None)
        if known is None:  # the verify session's routes check their own: none
            assert query == [], key
            continue
        assert query == sorted(known), key
        checked += 1
    assert checked >= 12


def test_path_parameters_are_the_templates_names(api: ReadApi) -> None:
    doc = document(__version__)
    for path, item in doc["paths"].items():
        named = {p["name"] for p in item.get("parameters", []) if p["in"] == "path"}
        assert named == set(re.findall(r"{(\w+)}", path)), path


async def test_the_worker_serves_it(api: ReadApi) -> None:
    await api.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession() as session:
            url = f"http://127.0.0.1:{api.port}/v1/openapi.json"
            async with session.get(url) as response:
                assert response.status == 200
                assert response.content_type == "application/json"
                served = orjson.loads(await response.read())
    finally:
        await api.close()
    assert served == orjson.loads(orjson.dumps(document(__version__)))
    assert served["info"]["version"] == __version__


def test_every_read_the_worker_sheds_documents_its_503_with_retry_after(api: ReadApi) -> None:
    doc: Any = document(__version__)
    ops: Any = operations(doc)
    shed = [(method, path) for method, path in routes(api) if sheds(method.upper(), path)]
    assert len(shed) == 5, shed
    for key in shed:
        assert ops[key]["responses"]["503"] == {"$ref": "#/components/responses/Overloaded"}, key
    overloaded = doc["components"]["responses"]["Overloaded"]
    assert "Retry-After" in overloaded["headers"]
    assert ops[("get", "/healthz")]["responses"]["503"] != overloaded  # a probe: never shed
