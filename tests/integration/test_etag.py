"""A context read carries its version as ``ETag``, and ``If-None-Match`` answers 304 while
the context is at that version (weak comparison, lists and ``*`` as RFC 9110 says)."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.integration

MakeClient = Any


async def _get(url: str, **headers: str) -> tuple[int, Any, bytes]:
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as answer:
        return answer.status, answer.headers, await answer.read()


async def test_etag_is_the_version_and_if_none_match_answers_304(
    start_worker: Any, make_client: MakeClient
) -> None:
    worker = await start_worker()
    url = f"{worker.url}/v1/contexts/etag:1"
    async with make_client(worker.url) as client:
        await (await client.put("etag:1", {"n": 1})).outcome(timeout=30)
        status, headers, body = await _get(url)
        assert status == 200 and headers["ETag"] == '"1"', headers
        for matching in ('"1"', 'W/"1"', '"0", "1"', '"7",W/"1"', "*"):
            status, headers, body = await _get(url, **{"If-None-Match": matching})
            assert (status, headers["ETag"], body) == (304, '"1"', b""), matching
        for other in ('"2"', '"01"', "1", 'W/"11"'):
            status, headers, body = await _get(url, **{"If-None-Match": other})
            assert status == 200 and b'"version":1' in body, other

        await (await client.put("etag:1", {"n": 2})).outcome(timeout=30)
        status, headers, _ = await _get(url, **{"If-None-Match": '"1"'})
        assert status == 200 and headers["ETag"] == '"2"'

        # Gone, then written again: the version goes on, so an old tag never matches.
        await (await client.delete("etag:1")).outcome(timeout=30)
        status, headers, body = await _get(url, **{"If-None-Match": "*"})
        assert status == 404 and "ETag" not in headers, body
        await (await client.put("etag:1", {"n": 1})).outcome(timeout=30)
        status, headers, _ = await _get(url, **{"If-None-Match": '"1"'})
        assert status == 200 and headers["ETag"] == '"4"'
