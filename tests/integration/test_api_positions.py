"""The read API tells an offset not folded yet from one that does not exist, against a real
broker and worker: past the end is a 404 at once; an offset just written, which the worker's
fetcher may not have seen yet, is never taken for one past the end (nor is one behind an
open transaction)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest

from lukhas_context.streams.client import ContextClient
from lukhas_context.streams.exceptions import NoSuchPositionError

from .conftest import kafka_transaction

pytestmark = pytest.mark.integration

MakeClient = Callable[[str | None], ContextClient]


async def _get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session:
        timeout = aiohttp.ClientTimeout(total=60)
        async with session.get(url, timeout=timeout) as response:
            return response.status, await response.json(content_type=None)


async def test_an_offset_past_the_end_is_a_404_at_once(
    start_worker: Any, make_client: MakeClient
) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        receipt = await client.put("p:1", {"n": 1})
        await receipt.outcome(timeout=30)
        p, end = receipt.partition, receipt.offset + 1
        # timeout=30: a wait, were there one, would end in a 504 instead.
        status, body = await _get(f"{worker.url}/v1/outcomes/{p}/{end}?timeout=30")
        assert status == 404, body
        detail = (
            f"no offset {end} in partition {p}: it ends at {end} "
            f"(the next write there gets offset {end})"
        )
        assert body == {
            "type": "urn:lukhas:problem:no-such-offset", "title": "No such offset",
            "status": 404, "detail": detail, "no_such": "offset", "end_offset": end,
            "error": detail,
        }  # fmt: skip
        status, body = await _get(f"{worker.url}/v1/contexts/p:1?min_offset={p}:{end + 9}")
        assert status == 404 and body["no_such"] == "offset", body
        status, body = await _get(f"{worker.url}/v1/outcomes/3/0")  # PARTITIONS is 3
        assert status == 404 and body["no_such"] == "partition", body
        with pytest.raises(NoSuchPositionError):
            await client.outcome(p, end + 1, timeout=30)


async def test_a_fresh_write_is_never_past_the_end(
    start_worker: Any, make_client: MakeClient
) -> None:
    """Each outcome asked for right after its write: the worker's cached end lags it."""
    worker = await start_worker()
    async with make_client(worker.url) as client:
        receipts = await asyncio.gather(*(client.put(f"f:{i}", {"i": i}) for i in range(50)))
        outcomes = await asyncio.gather(*(r.outcome(timeout=30) for r in receipts))
        assert {o.status for o in outcomes} == {"applied"}
        for i in range(20):
            receipt = await client.put("f:0", {"again": i})
            assert (await receipt.outcome(timeout=30)).status == "applied"


async def test_a_write_behind_an_open_transaction_exists(
    start_worker: Any, make_client: MakeClient
) -> None:
    """An open transaction holds the committed end (the last stable offset) back; a write
    acknowledged after it is in the log all the same: not past the end, only not folded."""
    worker = await start_worker()
    async with make_client(worker.url) as writer, make_client(worker.url) as other:
        async with kafka_transaction(writer) as tx:
            await tx.put("tx:held", {"held": True})  # in the log (uncommitted) before the other
            # Same context, so the same partition as the open transaction.
            receipt = await other.put("tx:held", {"after": True})
            status, body = await _get(
                f"{worker.url}/v1/outcomes/{receipt.partition}/{receipt.offset}?timeout=1"
            )
            assert status == 504, body  # not folded yet (the transaction holds it), not 404
        assert (await receipt.outcome(timeout=30)).status == "applied"
