"""Issue 19, claims of the change stream against the real broker: a watch from a timestamp
yields exactly the changes logged at or after it (client, ISO string, `lukhas watch --start`),
a partition-count change ends a watch with `ReadError`, a worker serves at most
`MAX_SSE_STREAMS` server-sent event streams and frees a slot when a subscriber leaves, and a
document at the size limit (1 MiB) reaches subscribers whole.

No test here uses ``idle_timeout`` as the end of a stream: a watch reads until the changes it
waits for have arrived, and where "nothing else" matters, until one marker change per
partition written after everything else (a partition's changes arrive in order, so everything
before its marker has arrived too)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewPartitions

from lukhas_context.processors.api import MAX_SSE_STREAMS
from lukhas_context.streams import watch as watch_module
from lukhas_context.streams.changes import Change
from lukhas_context.streams.exceptions import (
    DocumentTooLargeError,
    InvalidResumeTokenError,
    ReadError,
)
from lukhas_context.streams.topics import partition_for
from lukhas_context.streams.validation import DEFAULT_MAX_DOCUMENT_BYTES, context_key

from .conftest import PARTITIONS

pytestmark = pytest.mark.timeout(300)


def _marker_ids(prefix: str) -> dict[int, str]:
    """One context id starting with ``prefix`` in each of the ``PARTITIONS`` partitions."""
    found: dict[int, str] = {}
    for i in range(1000):
        name = f"{prefix}{i}"
        found.setdefault(partition_for(context_key(name), PARTITIONS), name)
        if len(found) == PARTITIONS:
            return found
    raise AssertionError(f"no id per partition among 1000 tried: {found}")


async def _until_markers(watcher: Any, markers: set[str], timeout: float = 60) -> list[Change]:
    """The items of a started watcher until every marker context has had a change (bounded)."""
    items: list[Any] = []
    missing = set(markers)

    async def take() -> None:
        async for item in watcher:
            items.append(item)
            missing.discard(getattr(item, "context_id", None))
            if not missing:
                return

    await asyncio.wait_for(take(), timeout)
    assert all(isinstance(item, Change) for item in items), items
    return items


async def _next_millisecond(after_ms: int, timeout: float = 5) -> None:
    """Until the wall clock is past the millisecond ``after_ms`` (bounded)."""
    deadline = time.monotonic() + timeout
    while time.time_ns() // 1_000_000 <= after_ms:
        assert time.monotonic() < deadline, "the wall clock does not advance"
        await asyncio.sleep(0.001)


def _ids(changes: Any) -> set[tuple[str, int]]:
    return {(c.context_id, c.version) for c in changes}


# ---------------------------------------------------------------- a watch from a timestamp


async def _groups_of_puts(client: Any, group: str, n: int = 6) -> None:
    """``n`` puts to ``ts:GROUP:i``, then waits until the wall clock has left the millisecond
    of the last acknowledgement: the next group's log times are all later (the broker's clock
    is this machine's)."""
    for i in range(n):
        await client.put(f"ts:{group}:{i}", {"group": group, "i": i})
    await _next_millisecond(time.time_ns() // 1_000_000)


async def test_a_watch_from_a_timestamp_yields_exactly_the_changes_logged_at_or_after_it(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any
) -> None:
    markers = _marker_ids("ts:~mark:")
    async with make_client(None) as client:
        # Groups a and b are logged while no worker runs: the worker folds and publishes them
        # later, all at once, as after an outage. c and d are published as they come.
        await _groups_of_puts(client, "a")
        await _groups_of_puts(client, "b")
        await start_worker(expiry_interval_s=None)
        await _groups_of_puts(client, "c")
        await _groups_of_puts(client, "d")
        for name in markers.values():
            await client.put(name, {"marker": True})
        async with client.watch(prefix="ts:", start="earliest") as everything:
            history = await _until_markers(everything, set(markers.values()))
        assert len(history) == 4 * 6 + PARTITIONS
        for p, name in markers.items():  # each marker the last change of its partition
            assert [c for c in history if c.partition == p][-1].context_id == name

        def first_of(group: str) -> int:
            return min(c.log_time_ms for c in history if c.context_id.startswith(f"ts:{group}:"))

        # Boundaries taken from the changes: the log time of the first change of group b (in
        # the backlog the worker published late) and of group d (published as it came).
        for boundary in (first_of("b"), first_of("d")):
            expected = [c for c in history if c.log_time_ms >= boundary]
            earlier = [c for c in history if c.log_time_ms < boundary]
            assert earlier and len(expected) < len(history)  # the boundary splits the history
            as_datetime = datetime.fromtimestamp(boundary / 1000, tz=UTC)
            for start in (as_datetime, boundary, as_datetime.isoformat(timespec="milliseconds")):
                async with client.watch(prefix="ts:", start=start) as since:
                    got = await _until_markers(since, set(markers.values()))
                assert _ids(got) == _ids(expected), (start, _ids(got) ^ _ids(expected))
                assert len(got) == len(expected)  # and each once
                # Per partition in the order of the history (its WAL order).
                for p in range(PARTITIONS):
                    assert [(c.context_id, c.version) for c in got if c.partition == p] == [
                        (c.context_id, c.version) for c in expected if c.partition == p
                    ]

        # `lukhas watch --start ISO-TIME`: the same changes, as JSON lines; --limit is exactly
        # their number, so a change from before the boundary would push a marker out.
        boundary = first_of("b")
        expected_lines = {(c.context_id, c.version) for c in history if c.log_time_ms >= boundary}
        iso = datetime.fromtimestamp(boundary / 1000, tz=UTC).isoformat(timespec="milliseconds")
        env = {**os.environ, "LUKHAS_TOPIC_PREFIX": topics.prefix}
        argv = [sys.executable, "-m", "lukhas_context.ops", "watch", "--bootstrap",
                cluster.bootstrap, "--prefix", "ts:", "--start", iso,
                "--limit", str(len(expected_lines))]  # fmt: skip
        done = await asyncio.to_thread(
            subprocess.run, argv, env=env, capture_output=True, text=True, timeout=120, check=False
        )
        assert done.returncode == 0, done.stderr
        lines = [json.loads(line) for line in done.stdout.splitlines()]
        assert {(line["context_id"], line["version"]) for line in lines} == expected_lines
        assert len(lines) == len(expected_lines)


# ---------------------------------------------------------------- partition count changes


async def test_a_partition_count_change_ends_a_watch_with_read_error(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, monkeypatch: Any
) -> None:
    # The watcher checks the partition count every METADATA_CHECK_S (30 s): a shorter period,
    # the same check.
    monkeypatch.setattr(watch_module, "METADATA_CHECK_S", 0.5)
    worker = await start_worker(expiry_interval_s=None)
    async with make_client(worker.url) as client:
        async with client.watch(start="latest") as w:
            await client.put("pc", {"i": 1})
            first = await _until_markers(w, {"pc"})
            assert [c.version for c in first] == [1]
            old_token = first[-1].token
            # Checks of an unchanged count do not end the watch: after three more checks
            # (each moves the time of the next), a change still arrives.
            reading = asyncio.create_task(_until_markers(w, {"pc"}))
            checks = {w._next_metadata_check}
            deadline = time.monotonic() + 60
            while len(checks) < 4:
                assert not reading.done(), reading
                assert time.monotonic() < deadline, "the watcher does not check the count"
                await asyncio.sleep(0.05)
                checks.add(w._next_metadata_check)
            await client.put("pc", {"i": 2})
            assert [c.version for c in await reading] == [2]

            admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
            await admin.start()
            try:
                await admin.create_partitions({topics.changes: NewPartitions(PARTITIONS + 1)})
            finally:
                await admin.close()
            with pytest.raises(ReadError) as ended:
                await _until_markers(w, {"never-written"})
        assert str(ended.value) == (
            f"{topics.changes} went from {PARTITIONS} to {PARTITIONS + 1} partitions; "
            "subscribe again (a token of the old layout no longer applies)"
        )
        # As it says: a token of the old layout is refused, a new subscription works.
        with pytest.raises(InvalidResumeTokenError, match=f"not {topics.changes} with 4"):
            async with client.watch(start=old_token):
                pass
        async with client.watch(start="earliest") as again:
            assert [c.version for c in await _until_markers(again, {"pc"})] == [1]


# ---------------------------------------------------------------- the SSE cap


async def _open_stream(http: aiohttp.ClientSession, url: str) -> aiohttp.ClientResponse:
    """A GET of the change stream, its headers read (the body not)."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=None)
    return await http.get(url, params={"prefix": "sse-cap:"}, timeout=timeout)


async def test_a_worker_serves_at_most_max_sse_streams_and_frees_a_slot_when_one_leaves(
    start_worker: Any,
) -> None:
    worker = await start_worker(expiry_interval_s=None)
    url = f"{worker.url}/v1/changes"
    connector = aiohttp.TCPConnector(limit=0)
    open_streams: list[aiohttp.ClientResponse] = []
    async with aiohttp.ClientSession(connector=connector) as http:
        try:
            for _ in range(MAX_SSE_STREAMS):
                response = await _open_stream(http, url)
                open_streams.append(response)
                assert response.status == 200, await response.text()
                # The opening id-only block: the stream is live (its consumer positioned).
                assert (await response.content.readline()).startswith(b"id: lk1.")
            over = await _open_stream(http, url)
            assert over.status == 503
            refused = await over.json(content_type="application/problem+json")
            assert refused["status"] == 503 and refused["detail"] == (
                f"this worker serves {MAX_SSE_STREAMS} change streams already"
            )
            over.close()

            # One subscriber leaves: the worker notices (at the latest when its next
            # keepalive to it fails) and takes a new stream.
            open_streams.pop(0).close()
            deadline = time.monotonic() + 90
            while True:
                response = await _open_stream(http, url)
                if response.status == 200:
                    open_streams.append(response)
                    break
                assert response.status == 503, response.status
                response.close()
                assert time.monotonic() < deadline, "the closed stream's slot was never freed"
                await asyncio.sleep(0.2)
            # ...and only one: the cap holds again.
            over = await _open_stream(http, url)
            assert over.status == 503
            over.close()
        finally:
            for response in open_streams:
                response.close()


# ---------------------------------------------------------------- a document at the limit


def _doc_of_size(size: int, fill: str = "x") -> dict[str, Any]:
    """A document whose canonical JSON is exactly ``size`` bytes."""
    overhead = len(b'{"blob":""}')
    doc = {"blob": fill * (size - overhead)}
    assert len(json.dumps(doc, separators=(",", ":")).encode()) == size
    return doc


async def test_a_document_at_the_size_limit_reaches_subscribers_whole(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any
) -> None:
    assert DEFAULT_MAX_DOCUMENT_BYTES == 1024 * 1024  # the limit the docs promise
    big = _doc_of_size(DEFAULT_MAX_DOCUMENT_BYTES)
    worker = await start_worker(expiry_interval_s=None)
    async with make_client(worker.url) as client:
        with pytest.raises(DocumentTooLargeError):  # one byte more is refused
            await client.put("big", _doc_of_size(DEFAULT_MAX_DOCUMENT_BYTES + 1))
        async with client.watch(context_id="big", start="latest") as w:
            await client.put("big", big)
            # A change after it: the stream goes on past the large record.
            await client.put("big", {"small": True})
            got = await _until_markers(w, {"big"})
            while len(got) < 2:
                got += await _until_markers(w, {"big"})
        assert [c.version for c in got] == [1, 2]
        assert got[0].kind == "put" and got[0].doc == big
        assert got[1].doc == {"small": True}

    # On the change topic itself: one record larger than the document, which decodes to it.
    consumer = AIOKafkaConsumer(bootstrap_servers=cluster.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        tp = TopicPartition(topics.changes, got[0].partition)
        consumer.assign([tp])
        consumer.seek(tp, got[0].offset)
        record = None
        deadline = time.monotonic() + 60
        while record is None:
            assert time.monotonic() < deadline, "the change record was not read back"
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=1)
            record = next(iter(batch.get(tp, ())), None)
    finally:
        await consumer.stop()
    assert record.offset == got[0].offset and record.key == b"big"
    assert len(record.value) > DEFAULT_MAX_DOCUMENT_BYTES

    # The SSE endpoint serves it whole too (limit=1: the response ends after it).
    async with aiohttp.ClientSession() as http:
        params = {"context_id": "big", "start": "earliest", "limit": "1"}
        async with http.get(f"{worker.url}/v1/changes", params=params, timeout=60) as response:
            assert response.status == 200
            body = await response.text()
    data = [line[len("data: ") :] for line in body.split("\n") if line.startswith("data: ")]
    assert len(data) == 1 and json.loads(data[0])["doc"] == big
