"""The read API's dead-letter routes (``processors.deadletters_api``) against a real worker
and broker: a garbage record and an event of a newer schema are dead-lettered; they are
listed with their reasons, decoded one at a time and dry-run; a read-only worker refuses the
re-drive; once the worker knows the newer schema, the re-drive folds that event (once,
however often it is asked) and the garbage goes back to the DLQ."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaProducer

from .conftest import free_port, serving_all, v2_event, v2_writer_schema

pytestmark = pytest.mark.integration

WRITE_TOKEN = "dead-letters-write-0123456789"


async def send_raw(bootstrap: str, topic: str, records: list[tuple[bytes, bytes]]) -> list[str]:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap)
    await producer.start()
    try:
        sent = [await producer.send_and_wait(topic, value, key=key) for key, value in records]
        return [f"{s.partition}:{s.offset}" for s in sent]
    finally:
        await producer.stop()


async def letters(http: aiohttp.ClientSession, url: str, query: str = "") -> list[dict[str, Any]]:
    async with http.get(f"{url}/v1/dead-letters{query}") as answer:
        assert answer.status == 200, await answer.text()
        body = await answer.json()
        return list(body["dead_letters"])


async def wait_letters(
    http: aiohttp.ClientSession, url: str, count: int, timeout: float = 60
) -> list[dict[str, Any]]:
    """The dead letters once there are ``count`` (a busy answer, 503 or 504, is asked
    again), or what there is at the deadline."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        async with http.get(f"{url}/v1/dead-letters") as answer:
            if answer.status == 200:
                found = (await answer.json())["dead_letters"]
                if len(found) >= count:
                    return found
            else:
                assert answer.status in (503, 504), await answer.text()
        await asyncio.sleep(0.2)
    return found


async def post(
    http: aiohttp.ClientSession, url: str, body: Any, token: str | None = None
) -> tuple[int, Any]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with http.post(url, json=body, headers=headers) as answer:
        return answer.status, await answer.json(content_type=None)


async def test_dead_letters_listed_decoded_dry_run_and_re_driven(
    start_worker: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    v2 = v2_writer_schema(tmp_path / "schemas")
    sources = await send_raw(
        cluster.bootstrap,
        topics.events,
        [(b"junk:1", b"\x00junk"), (b"dl:new", v2_event(v2, "dl:new", '{"n": 1}'))],
    )
    worker = await start_worker()  # read-only, and without the newer schema
    await serving_all(worker)
    async with aiohttp.ClientSession() as http:
        found = await wait_letters(http, worker.url, 2)
        by_id = {d["context_id"]: d for d in found}
        assert set(by_id) == {"junk:1", "dl:new"}, found
        assert by_id["junk:1"]["source"] == sources[0]
        assert by_id["junk:1"]["reason"].startswith("BadMagicError"), found
        assert by_id["dl:new"]["reason"].startswith("UnknownSchemaError"), found
        assert by_id["dl:new"]["event"].startswith("does not decode"), found
        # Filters, as `lukhas dlq list` takes them.
        chosen = await letters(http, worker.url, "?reason=unknownschema")
        assert [d["context_id"] for d in chosen] == ["dl:new"]
        assert len(await letters(http, worker.url, "?limit=1")) == 1
        assert [d["context_id"] for d in await letters(http, worker.url, "?context_id=junk:1")] == [
            "junk:1"
        ]
        # One, decoded: the garbage says why it does not decode.
        junk = by_id["junk:1"]["position"]
        async with http.get(f"{worker.url}/v1/dead-letters/{junk.replace(':', '/')}") as answer:
            detail = await answer.json()
        assert answer.status == 200
        assert detail["key"] == "junk:1" and detail["value_bytes"] == 5
        assert detail["value_head"] == b"\x00junk".hex()
        assert detail["headers"]["error.class"] == "BadMagicError"
        assert detail["undecodable"].startswith("BadMagicError") and "decoded" not in detail
        # Dry runs: both would be dead-lettered again, nothing appended.
        for context_id in ("junk:1", "dl:new"):
            status, report = await post(
                http, f"{worker.url}/v1/dead-letters/dry-run",
                {"position": by_id[context_id]["position"]},
            )  # fmt: skip
            assert status == 200, report
            assert report["appended"] is False
            (entry,) = report["records"]
            assert entry["now"]["status"] == "dead_lettered", entry
            assert "outcome" not in entry
        # A read-only worker refuses the re-drive, and says how to allow it.
        status, refused = await post(
            http, f"{worker.url}/v1/dead-letters/redrive", {"position": by_id["dl:new"]["position"]}
        )
        assert status == 403 and "--api-write-token-file" in refused["detail"]
        assert len(await letters(http, worker.url)) == 2

        # The upgrade: the worker knows the newer schema, and may write. It advertises a URL
        # it cannot reach itself (docker compose's published port): the re-drive goes to
        # its own listener all the same.
        await worker.stop()
        worker = await start_worker(
            schema_dir=tmp_path / "schemas", api_write_token=WRITE_TOKEN,
            advertised_url=f"http://127.0.0.1:{free_port()}",
        )  # fmt: skip
        await serving_all(worker)
        new = by_id["dl:new"]["position"]
        async with http.get(f"{worker.url}/v1/dead-letters/{new.replace(':', '/')}") as answer:
            detail = await answer.json()
        assert detail["decoded"]["doc"] == {"n": 1} and detail["decoded"]["kind"] == "put"
        status, report = await post(
            http, f"{worker.url}/v1/dead-letters/dry-run", {"position": new}
        )
        assert report["records"][0]["now"]["status"] == "applied", report
        status, refused = await post(
            http, f"{worker.url}/v1/dead-letters/redrive", {"position": new}
        )
        assert status == 401  # the write token, not the read one
        status, report = await post(
            http, f"{worker.url}/v1/dead-letters/redrive", {"position": new}, WRITE_TOKEN
        )
        assert status == 200, report
        assert report["appended"] is True
        (entry,) = report["records"]
        assert entry["outcome"]["status"] == "applied" and entry["outcome"]["version"] == 1
        async with http.get(f"{worker.url}/v1/contexts/dl:new") as answer:
            assert answer.status == 200 and (await answer.json())["doc"] == {"n": 1}
        # Again: a duplicate of the first re-drive, never applied twice.
        status, again = await post(
            http, f"{worker.url}/v1/dead-letters/redrive", {"position": new}, WRITE_TOKEN
        )
        assert again["records"][0]["outcome"]["status"] == "duplicate", again
        async with http.get(f"{worker.url}/v1/contexts/dl:new") as answer:
            assert (await answer.json())["version"] == 1
        # Garbage stays garbage: re-driven, it is dead-lettered again, with its reason.
        status, bad = await post(
            http, f"{worker.url}/v1/dead-letters/redrive", {"position": junk}, WRITE_TOKEN
        )
        assert bad["records"][0]["outcome"]["status"] == "dead_lettered", bad
        assert len(await wait_letters(http, worker.url, 3)) == 3


async def test_bad_requests_are_problems_and_change_nothing(start_worker: Any) -> None:
    worker = await start_worker(api_write_token=WRITE_TOKEN)
    await serving_all(worker)
    base = f"{worker.url}/v1/dead-letters"
    async with aiohttp.ClientSession() as http:
        for query, words in (
            ("?limit=0", "limit"),
            ("?limit=1001", "at most 1000"),
            ("?limit=x", "limit"),
            ("?partition=-1", "partition"),
            ("?partition=99", "no partition 99"),
            ("?since=yesterday", "since"),
            ("?from=0", "unknown query parameter"),
            ("?limit=1&limit=2", "given twice"),
        ):
            async with http.get(base + query) as answer:
                body = await answer.json(content_type=None)
            assert answer.status == 400, (query, body)
            assert answer.content_type == "application/problem+json"
            assert words in body["detail"], (query, body)
        async with http.get(f"{base}/0/999999") as answer:
            assert answer.status == 404  # past the partition's end: none there
        async with http.get(f"{base}/0/0") as answer:
            assert answer.status == 404  # an empty DLQ holds nothing there
        async with http.get(f"{base}/x/0") as answer:
            assert answer.status == 400
        for body in (None, [], {"position": 1}, {"position": "0"}, {"position": "0:0", "x": 1},
                     {"position": "0:" + "9" * 40}):  # fmt: skip
            for route in ("dry-run", "redrive"):
                status, problem = await post(http, f"{base}/{route}", body, WRITE_TOKEN)
                assert status == 400, (route, body, problem)
        async with http.post(f"{base}/dry-run", data=b"{not json") as answer:
            assert answer.status == 400
        status, _ = await post(http, f"{base}/redrive", {"position": "0:0"}, WRITE_TOKEN)
        assert status == 404
        assert await letters(http, worker.url) == []
