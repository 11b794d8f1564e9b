"""``GET /v1/contexts/{id}?as_of=``: the owner of the context's partition builds the state as
of a WAL position or a log time (from its checkpoint when it has one), aside from its live
store, and answers from it; the same point again is read from the state already built."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from lukhas_context.streams.topics import partition_for

pytestmark = pytest.mark.integration


async def _get(url: str) -> tuple[int, Any]:
    timeout = aiohttp.ClientTimeout(total=90)
    async with aiohttp.ClientSession() as session, session.get(url, timeout=timeout) as answer:
        return answer.status, await answer.json(content_type=None)


async def test_the_state_as_of_a_position_and_a_time(start_worker: Any, make_client: Any) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        first = await client.put("t:1", {"v": 1})
        await first.outcome(timeout=30)
        await asyncio.sleep(1.1)  # a log time between the two writes
        between_ms = int(time.time() * 1000) - 500
        second = await client.put("t:1", {"v": 2})
        await second.outcome(timeout=30)
        request = await client.checkpoint("asof-ck")
        await client.wait_checkpoint(request, timeout=60)
        third = await client.put("t:1", {"v": 3})
        live = await client.get("t:1", min_offset=third, timeout=30)
        p = first.partition
        base = f"{worker.url}/v1/contexts/t:1?timeout=30&as_of="

        status, body = await _get(base + first.position)
        assert status == 200 and body["doc"] == {"v": 1} and body["version"] == 1, body
        assert body["as_of"]["next_offset"] == first.offset + 1
        assert "replay" in body["as_of"]["source"]
        status, body = await _get(base + third.position)  # past the checkpoint: from it
        assert status == 200 and body["version"] == 3 and body["checksum"] == live.checksum
        assert "checkpoint asof-ck" in body["as_of"]["source"], body
        status, body = await _get(base + quote(f"ms:{between_ms}"))
        assert status == 200 and body["doc"] == {"v": 1}, body
        status, body = await _get(base + first.position)  # built already: read again
        assert status == 200 and body["version"] == 1
        # the live state is untouched
        assert (await client.get("t:1")).version == 3

        other = (p + 1) % 3
        status, body = await _get(base + f"{other}:0")
        assert status == 400 and f"is in partition {p}" in body["error"], body
        q = partition_for(b"never:written", 3)
        status, body = await _get(f"{worker.url}/v1/contexts/never:written?as_of={q}:0&timeout=30")
        assert status == 404 and "did not exist" in body["error"], body
        status, body = await _get(base + f"{p}:999999")
        assert status == 409 and "no offset 999999" in body["error"], body
        status, body = await _get(base + quote("2000-01-01T00:00:00Z"))
        assert status == 404 and "did not exist as of" in body["error"], body
        status, body = await _get(base + quote("2999-01-01T00:00:00Z"))
        assert status == 409 and "not" in body["error"] and "in the past" in body["error"], body
