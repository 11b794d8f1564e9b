"""Issue 5 against the real broker: subscriptions to the change stream (order, exactly once
across a resume, repeats dropped, gaps reported, deltas), `lukhas watch`, and the SSE endpoint
resuming with Last-Event-ID."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import aiohttp
import orjson
import pytest
from aiokafka import AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from lukhas_context.processors.fold import checksum
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind
from lukhas_context.schemas.patch import apply_json_patch
from lukhas_context.streams.changes import Change, Gap, ResumeToken
from lukhas_context.streams.exceptions import (
    ChangeGapError,
    CorruptChangeError,
    InvalidResumeTokenError,
)

from .conftest import read_until, seen_all, sentinels

pytestmark = pytest.mark.timeout(300)


async def _collect(watcher: Any, n: int, timeout: float = 60) -> list[Any]:
    """The next ``n`` items of a started watcher (bounded in time)."""
    items: list[Any] = []

    async def take() -> None:
        async for item in watcher:
            items.append(item)
            if len(items) >= n:
                return

    await asyncio.wait_for(take(), timeout)
    return items


async def _history(client: Any) -> dict[str, int]:
    """20 changes to each of w:a, w:b, w:c (puts, patches, a touch, a delete and a re-create);
    returns the final version of each."""
    final = {}
    for name in ("w:a", "w:b", "w:c"):
        await client.put(name, {"n": 0, "log": []})
        for i in range(1, 16):
            await client.patch(name, [{"op": "add", "path": "/log/-", "value": i}])
        await client.touch(name, ttl=600)
        await client.delete(name)
        await client.put(name, {"again": True})
        last = await client.patch(name, {"n": 17}, merge=True)
        final[name] = 20
        await client.get(name, min_offset=last, timeout=60)
    return final


async def test_watch_in_order_exactly_once_across_a_resume(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any
) -> None:
    worker = await start_worker(expiry_interval_s=None)
    async with make_client(worker.url) as client:
        async with client.watch(prefix="w:", start="earliest") as live:
            await _history(client)
            await client.put("other", {"not": "watched"})
            changes = await _collect(live, 60)
        assert all(isinstance(c, Change) for c in changes)
        for name in ("w:a", "w:b", "w:c"):
            mine = [c for c in changes if c.context_id == name]
            assert [c.version for c in mine] == list(range(1, 21)), name
            kinds = [c.kind for c in mine]
            assert kinds == ["put"] + ["patch"] * 15 + ["touch", "delete", "put", "patch"]
            assert mine[17].doc is None and mine[-1].doc == {"again": True, "n": 17}
        assert len({(c.context_id, c.wal_offset) for c in changes}) == 60

        # The processor publishes again after a crash (at least once): repeats are dropped.
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap)
        await producer.start()
        try:
            raw = await _raw_changes(cluster, topics, 60)
            for m in raw[:25]:
                await producer.send_and_wait(
                    topics.changes, m.value, m.key, partition=m.partition, headers=list(m.headers)
                )
        finally:
            await producer.stop()

        # Resume after the 30th change: the other 30, once each, then nothing more. A last
        # change in every partition, written after the repeats, marks the end of the stream.
        ends = sentinels("w:end:")
        for name in ends:
            await client.put(name, {"end": True})
        token = changes[29].token
        async with client.watch(prefix="w:", start=token) as resumed:
            rest = await read_until(resumed, seen_all(ends))
        assert all(isinstance(c, Change) for c in rest)
        assert sorted(c.context_id for c in rest if c.context_id in ends) == sorted(ends)
        rest = [c for c in rest if c.context_id not in ends]
        # Each partition in the same order; across partitions the interleaving may differ.
        for p in {c.partition for c in changes}:
            assert [(c.context_id, c.version) for c in rest if c.partition == p] == [
                (c.context_id, c.version) for c in changes[30:] if c.partition == p
            ]
        assert len(rest) == 30
        # A token is bound to its topic and its partition count: valid tokens (they parse) for
        # another topic, or for this topic with other partitions, are refused as such.
        parsed = ResumeToken.decode(token)
        other_topic = ResumeToken("other.context.changes", parsed.positions).encode()
        fewer = ResumeToken(parsed.topic, parsed.positions[:-1]).encode()
        for wrong, named in ((other_topic, "other.context.changes"), (fewer, parsed.topic)):
            with pytest.raises(InvalidResumeTokenError, match=f"the token is for {named}"):
                async with client.watch(start=wrong):
                    pass


async def _raw_changes(cluster: Any, topics: Any, n: int) -> list[Any]:
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        topics.changes, bootstrap_servers=cluster.bootstrap, auto_offset_reset="earliest"
    )
    await consumer.start()
    records: list[Any] = []
    try:
        while len(records) < n:
            batch = await consumer.getmany(timeout_ms=1000)
            records += [m for ms in batch.values() for m in ms]
    finally:
        await consumer.stop()
    return records


async def test_one_context_deltas_and_latest(start_worker: Any, make_client: Any) -> None:
    worker = await start_worker(expiry_interval_s=None)
    async with make_client(worker.url) as client:
        await client.put("before", {"old": True})
        async with client.watch(context_id="chat", start="latest", deltas=True) as w:
            doc: dict[str, Any] = {"messages": []}
            await client.put("chat", doc)
            for i in range(5):
                await client.put("elsewhere", {"i": i})
                doc = {"messages": [*doc["messages"], {"turn": i}]}
                await client.update("chat", doc)
            items = await _collect(w, 6)
        assert [c.context_id for c in items] == ["chat"] * 6
        assert items[0].doc == {"messages": []} and items[0].delta is None
        rebuilt = items[0].doc
        for c in items[1:]:
            assert c.doc is None and c.delta is not None
            rebuilt = apply_json_patch(rebuilt, c.delta)
        assert rebuilt == doc


async def test_a_gap_is_reported_never_silent(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any
) -> None:
    worker = await start_worker(expiry_interval_s=None)
    async with make_client(worker.url) as client:
        async with client.watch(context_id="g", start="earliest") as w:
            for i in range(10):
                await client.put("g", {"i": i})
            first = await _collect(w, 3)
        token, partition = first[-1].token, first[-1].partition
        # A slow subscriber: changes 3..7 are removed, as compaction or retention would
        # (Kafka deletes records on request only from a topic whose policy includes delete).
        admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
        await admin.start()
        try:
            policy = {"cleanup.policy": "compact,delete"}
            await admin.alter_configs(
                [ConfigResource(ConfigResourceType.TOPIC, topics.changes, policy)]
            )
            tp = TopicPartition(topics.changes, partition)
            await admin.delete_records({tp: RecordsToDelete(before_offset=first[-1].offset + 6)})
        finally:
            await admin.close()
        # One more change after the gap marks the end of what the resumed watch must see.
        await client.put("g", {"i": 10})
        async with client.watch(context_id="g", start=token) as resumed:
            items = await read_until(
                resumed, lambda items: getattr(items[-1], "version", None) == 11, limit=20
            )
        gap = items[0]
        assert isinstance(gap, Gap)
        assert (gap.first_offset, gap.end_offset) == (first[-1].offset + 1, first[-1].offset + 6)
        assert [c.version for c in items[1:]] == [9, 10, 11]
        with pytest.raises(ChangeGapError):
            async with client.watch(context_id="g", start=token, on_gap="raise") as strict:
                await _collect(strict, 1, timeout=30)


async def test_a_change_that_does_not_match_its_checksum_is_never_delivered(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any
) -> None:
    """A record on the change topic whose document is not the one its checksum is of (written
    by anyone who can produce to the topic, or corrupted on its way), with a WAL offset far
    ahead: the watcher and SSE report it as a gap of kind ``checksum`` and go on; it neither
    reaches the subscriber nor hides the real changes after it."""
    worker = await start_worker(expiry_interval_s=None)
    async with make_client(worker.url) as client:
        first = await client.put("cs", {"v": 1})
        await client.get("cs", min_offset=first, timeout=60)
        real = orjson.dumps({"v": 2})
        forged = ChangeCodec().encode_fields(
            b"cs", 2, ChangeKind.PUT, b'{"v":"forged"}', checksum(real), None, 10**12,
            bytes(16), 0,
        )  # fmt: skip
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap)
        await producer.start()
        try:
            await producer.send_and_wait(
                topics.changes, forged, key=b"cs", partition=first.partition
            )
        finally:
            await producer.stop()
        second = await client.put("cs", {"v": 2})
        await client.get("cs", min_offset=second, timeout=60)
        async with client.watch(context_id="cs", start="earliest") as w:
            items = await _collect(w, 3)
        assert [type(i).__name__ for i in items] == ["Change", "Gap", "Change"]
        assert items[1].kind == "checksum" and "does not match its checksum" in items[1].reason
        assert [(c.version, c.doc) for c in (items[0], items[2])] == [(1, {"v": 1}), (2, {"v": 2})]
        with pytest.raises(CorruptChangeError):
            async with client.watch(context_id="cs", start="earliest", on_gap="raise") as strict:
                await _collect(strict, 3, timeout=30)
    async with aiohttp.ClientSession() as http:
        events = await _sse(
            http, f"{worker.url}/v1/changes",
            {"context_id": "cs", "start": "earliest", "limit": "2"},
        )  # fmt: skip
    assert [e["event"] for e in events] == ["change", "gap", "change"]
    assert json.loads(events[1]["data"])["gap"]["kind"] == "checksum"
    assert [json.loads(e["data"])["doc"] for e in (events[0], events[2])] == [{"v": 1}, {"v": 2}]


async def test_server_sent_events_resume_with_last_event_id(
    start_worker: Any, make_client: Any
) -> None:
    worker = await start_worker(expiry_interval_s=None)
    async with make_client(worker.url) as client:
        for i in range(8):
            last = await client.put(f"sse:{i % 3}", {"i": i})
        await client.put("not-sse", {"x": 1})
        await client.get(last.context_id, min_offset=last, timeout=60)
    url = f"{worker.url}/v1/changes"
    async with aiohttp.ClientSession() as http:
        events = await _sse(http, url, {"prefix": "sse:", "start": "earliest", "limit": "8"})
        assert [e["event"] for e in events] == ["change"] * 8
        data = [json.loads(e["data"]) for e in events]
        assert sorted(d["doc"]["i"] for d in data) == list(range(8))
        for name in ("sse:0", "sse:1", "sse:2"):  # per context: in version order
            versions = [d["version"] for d in data if d["context_id"] == name]
            assert versions == list(range(1, len(versions) + 1))
        assert all(e["id"] == d["token"] for e, d in zip(events, data, strict=True))
        # A reconnecting browser sends the id of the last event it got: the rest, once each.
        # A last change in every partition marks the end: with the limit set to the rest plus
        # those, one repeat would leave a marker unread.
        ends = sentinels("sse:end:")
        async with make_client(worker.url) as client:
            for name in ends:
                await client.put(name, {"end": True})
        limit = str(len(data) - 3 + len(ends))
        rest = await _sse(
            http, url, {"prefix": "sse:", "limit": limit}, {"Last-Event-ID": events[2]["id"]}
        )
        got = [json.loads(e["data"]) for e in rest]
        assert sorted(d["context_id"] for d in got if d["context_id"] in ends) == sorted(ends)
        # (Across partitions the interleaving of two reads may differ; within one, never.)
        rest_ids = _ids(d for d in got if d["context_id"] not in ends)
        assert sorted(rest_ids) == sorted(_ids(data[3:]))
        async with http.get(url, params={"start": "yesterday"}) as bad:
            assert bad.status == 400

        # A browser that connected and got no change yet still has an id to come back with:
        # changes made while it was away arrive when it reconnects. (Here the idle timeout is
        # what is tested: a quiet stream ends with no change, but with an id.)
        ids: list[str] = []
        quiet = await _sse(http, url, {"prefix": "sse:", "idle_timeout": "1"}, ids=ids)
        assert quiet == [] and ids
        async with make_client(worker.url) as client:
            await client.put("sse:later", {"i": 99})
        missed = await _sse(http, url, {"prefix": "sse:", "limit": "1"}, {"Last-Event-ID": ids[-1]})
        assert [json.loads(e["data"])["doc"] for e in missed] == [{"i": 99}]


async def _sse(
    http: aiohttp.ClientSession,
    url: str,
    params: dict[str, str],
    headers: Any = None,
    ids: list[str] | None = None,
) -> list[dict[str, str]]:
    """The events of one SSE response (blocks with data); ``ids`` collects every id seen,
    including those of blocks without data (they only move the browser's Last-Event-ID)."""
    events: list[dict[str, str]] = []
    async with http.get(url, params=params, headers=headers, timeout=60) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        current: dict[str, str] = {}
        async for raw in response.content:
            line = raw.decode().rstrip("\n")
            if not line:
                if "id" in current and ids is not None:
                    ids.append(current["id"])
                if "data" in current:
                    events.append(current)
                current = {}
            elif not line.startswith(":"):
                name, _, value = line.partition(": ")
                current[name] = value
    return events


async def test_lukhas_watch_prints_json_lines_and_resumes(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any
) -> None:
    worker = await start_worker(expiry_interval_s=None)
    async with make_client(worker.url) as client:
        for i in range(6):
            last = await client.put(f"cli:{i}", {"i": i})
        await client.get(last.context_id, min_offset=last, timeout=60)
    env = {**os.environ, "LUKHAS_TOPIC_PREFIX": topics.prefix}
    argv = [sys.executable, "-m", "lukhas_context.ops", "watch", "--bootstrap",
            cluster.bootstrap, "--prefix", "cli:"]  # fmt: skip
    everything = await asyncio.to_thread(_run, [*argv, "--start", "earliest", "--limit", "6"], env)
    every = [json.loads(line) for line in everything.stdout.splitlines()]
    assert sorted(line["doc"]["i"] for line in every) == list(range(6))
    first = await asyncio.to_thread(_run, [*argv, "--from", "earliest", "--limit", "4"], env)
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    assert len(lines) == 4
    assert {"context_id", "version", "kind", "checksum", "position", "token"} <= set(lines[0])
    # The rest, up to a last change in every partition (one repeat would leave one unread).
    ends = sentinels("cli:end:")
    async with make_client(worker.url) as client:
        for name in ends:
            await client.put(name, {"end": True})
    limit = str(6 - 4 + len(ends))
    resume = [*argv, "--from", lines[-1]["token"], "--limit", limit]
    rest = await asyncio.to_thread(_run, resume, env)
    resumed = [json.loads(line) for line in rest.stdout.splitlines()]
    assert sorted(x["context_id"] for x in resumed if x["context_id"] in ends) == sorted(ends)
    resumed = [line for line in resumed if line["context_id"] not in ends]
    assert sorted(_ids(lines + resumed)) == sorted(_ids(every))  # each once, none lost
    bad = await asyncio.to_thread(_run, [*argv, "--from", "lk1.garbage", "--limit", "1"], env, 2)
    assert "'--from': resume token does not parse" in bad.stderr  # a usage error


def _ids(changes: Any) -> list[tuple[str, int]]:
    return [(c["context_id"], c["version"]) for c in changes]


def _run(argv: list[str], env: dict[str, str], code: int = 0) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == code, done.stderr
    return done
