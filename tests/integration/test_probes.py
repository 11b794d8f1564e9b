"""``/livez`` and ``/readyz`` of a real worker: alive from the start, ready once it has its
partitions open and has caught up with the WAL."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import pytest

pytestmark = pytest.mark.integration


async def _probe(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        return answer.status, await answer.json()


async def test_a_worker_is_ready_once_its_partitions_are_open_and_caught_up(
    start_worker: Any, make_client: Any
) -> None:
    worker = await start_worker()
    assert await _probe(f"{worker.url}/livez") == (200, {"status": "alive"})
    async with make_client(worker.url) as client:
        receipts = [await client.put(f"probe:{i}", {"i": i}) for i in range(30)]
        for receipt in receipts:
            await receipt.outcome(timeout=30)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        status, body = await _probe(f"{worker.url}/readyz?max_lag=0")
        if status == 200 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.1)  # the fetcher's view of the WAL's end catches up
    assert status == 200, body
    assert body["status"] == "ready" and body["reasons"] == []
    assert sorted(body["partitions"]) == ["0", "1", "2"]  # the test topics' 3 partitions
    for part in body["partitions"].values():
        assert part["lag"] == 0 and part["end"] == part["next_offset"]
    assert sum(p["next_offset"] for p in body["partitions"].values()) >= 30
    assert (await _probe(f"{worker.url}/livez"))[0] == 200
