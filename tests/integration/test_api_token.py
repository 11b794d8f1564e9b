"""A worker with an API token serves the client that has it (reads, waits, listings) and
refuses requests without it; its probes stay open."""

from __future__ import annotations

from typing import Any

import aiohttp
import pytest

from lukhas_context.streams.exceptions import ReadError

pytestmark = pytest.mark.integration

TOKEN = "integration-token-0123456789"


async def test_a_token_guards_the_api_and_the_client_carries_it(
    start_worker: Any, cluster: Any, topics: Any
) -> None:
    from lukhas_context.streams.client import ClientConfig, ContextClient

    worker = await start_worker(api_token=TOKEN)
    config = ClientConfig(cluster.bootstrap, worker.url, topics, api_token=TOKEN)
    async with ContextClient(config) as client:
        receipt = await client.put("tok:1", {"n": 1})
        ctx = await client.get("tok:1", min_offset=receipt, timeout=30)
        assert ctx.doc == {"n": 1}
        assert [c.context_id for c in (await client.list_contexts("tok:")).contexts] == ["tok:1"]
        assert (await receipt.outcome(timeout=30)).status == "applied"
    async with ContextClient(ClientConfig(cluster.bootstrap, worker.url, topics)) as client:
        with pytest.raises(ReadError, match="401"):
            await client.get("tok:1")
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{worker.url}/v1/contexts/tok:1") as answer:
            assert answer.status == 401
        async with http.get(f"{worker.url}/livez") as answer:
            assert answer.status == 200
