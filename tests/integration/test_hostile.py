"""Hostile but well-formed events on real parts (issue 9, items 1-4; RELIABILITY.md row 15):
the worker rejects them with reasons and keeps serving, the dry run says what the fold does,
and an offline replay of the WAL reaches the live digests, rejected patches included."""

from __future__ import annotations

import uuid
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.offline import From, restore_offline
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import ContextEvent, Patch, PatchFormat, Put
from lukhas_context.streams.topics import partition_for

from .conftest import drained

pytestmark = pytest.mark.integration

PARTITIONS = 3


def _doubling(copies: int) -> list[dict[str, Any]]:
    return [{"op": "copy", "from": "", "path": f"/a{i}"} for i in range(copies)]


def _deepening(levels: int) -> list[dict[str, Any]]:
    """Values 60 levels deep added at the deepest point so far, then a copy of it all."""
    ops: list[dict[str, Any]] = []
    path, built = "", 1
    while built < levels:
        value: Any = {}
        for _ in range(59):
            value = {"k": value}
        ops.append({"op": "add", "path": path + "/k", "value": value})
        path += "/k" * 60
        built += 60
    return [*ops, {"op": "copy", "from": "/k", "path": "/z"}, {"op": "remove", "path": "/z"}]


def _patch(context_id: str, ops: Any) -> ContextEvent:
    return ContextEvent(
        uuid.uuid4().bytes, context_id, Patch(PatchFormat.JSON_PATCH, orjson.dumps(ops))
    )


def _put(context_id: str, doc: bytes) -> ContextEvent:
    return ContextEvent(uuid.uuid4().bytes, context_id, Put(doc))


async def _dry_run(url: str, value: bytes) -> dict[str, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.post(url + "/v1/dry-run", data=value, timeout=aiohttp.ClientTimeout(30)) as answer,
    ):
        assert answer.status == 200, await answer.text()
        data: dict[str, Any] = await answer.json()
        return data


async def test_hostile_events_are_rejected_the_dry_run_agrees_and_a_replay_matches(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    worker = await start_worker(expiry_interval_s=None)
    codec = EventCodec()
    seed = {f"k{i}": "x" * 40 for i in range(30)}  # about 1.3 KB
    big_int_patch = b'[{"op":"add","path":"/n","value":18446744073709551616}]'
    hostile = [
        _patch("victim:0", _doubling(30)),
        _patch("victim:1", _deepening(480)),
        _patch("victim:2", _deepening(120)),
        _put("victim:3", b'{"a":123456789012345678901234567890}'),
        ContextEvent(uuid.uuid4().bytes, "victim:0", Patch(PatchFormat.JSON_PATCH, big_int_patch)),
        _put("x" * 300, b'{"a":1}'),  # an id the fold dead-letters
    ]
    raw = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True)
    await raw.start()
    try:
        async with make_client(worker.url) as client:
            for i in range(3):
                assert (await (await client.put(f"victim:{i}", seed)).outcome(30)).applied
            # The dry run first: it must say what the fold then does, and keep the worker live.
            dry = [await _dry_run(worker.url, codec.encode(e)) for e in hostile]
            async with aiohttp.ClientSession() as http, http.get(worker.url + "/healthz") as h:
                assert h.status == 200
            folded = []
            for event in hostile:
                key = event.context_id.encode()
                meta = await raw.send_and_wait(topics.events, codec.encode(event), key)
                folded.append(await client.outcome(meta.partition, meta.offset, 30))
            for d, f, event in zip(dry, folded, hostile, strict=True):
                assert d["status"] == f.status, (event.context_id[:20], d, f)
                assert d["reason"] == f.reason
            assert [f.status for f in folded] == ["rejected"] * 5 + ["dead_lettered"]
            assert "limit of one patch's work" in (folded[0].reason or "")
            assert "deeper than 64 levels" in (folded[1].reason or "")
            assert "deeper than 64 levels" in (folded[2].reason or "")
            assert "outside the range" in (folded[3].reason or "")
            assert "outside the range" in (folded[4].reason or "")
            # Nothing changed, and the worker still folds and serves.
            for i in range(3):
                assert (await client.get(f"victim:{i}")).doc == seed
            after = await client.put("after", {"ok": True})
            assert (await client.get("after", min_offset=after)).doc == {"ok": True}
            # An event id used again with the same bytes is a retry, and the dry run says so.
            again = await _dry_run(worker.url, codec.encode(hostile[0]))
            assert again["status"] == "duplicate"
            # Each partition's log ends with an applied event (an offline restore folds up to the
            # change topic's coverage).
            ends = {}
            for n in range(200):
                ends.setdefault(partition_for(f"end:{n}".encode(), PARTITIONS), f"end:{n}")
            for context_id in ends.values():
                await (await client.put(context_id, {"end": True})).outcome(30)
        live = await drained(worker)
    finally:
        await raw.stop()

    replay = WorkerConfig(bootstrap=cluster.bootstrap, state_dir=tmp_path / "replay", topics=topics)
    for p in range(PARTITIONS):
        report = await restore_offline(replay, p, From.SCRATCH, progress=False)
        assert report.restore.next_offset == live[p].next_offset
        assert report.restore.digest == live[p].digest_hex, f"partition {p}"
