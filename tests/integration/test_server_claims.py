"""Issue 19: claims of the read API and the sweeper that had no test, against the real broker.

``/healthz`` turns 503 when the fold stops (the WAL truncated under a worker that had not
folded it); a read sent to the worker that does not serve the context's partition is forwarded
to the owner, and answered 421 when no one can answer it (a forwarded request, or the owner
gone); ``/metrics`` scraped over HTTP is Prometheus text whose counters count the work done;
an Expire that does not take effect is appended again with the next attempt number, each
retry waiting twice as long as the one before.
"""

from __future__ import annotations

import asyncio
import platform
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete
from prometheus_client.parser import text_string_to_metric_families

from lukhas_context import __version__
from lukhas_context.processors.api import SERVED_BY_HEADER
from lukhas_context.processors.exceptions import WalTruncatedError
from lukhas_context.processors.fanout import FORWARDED_HEADER
from lukhas_context.processors.problems import problem_document
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import Expire, Put
from lukhas_context.streams.barriers import expire_event
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError
from lukhas_context.streams.topics import Topics, partition_for

from .conftest import (
    PARTITIONS,
    WorkerProcess,
    free_port,
    kafka_transaction,
    serving_all,
    wal_ends,
)

pytestmark = pytest.mark.timeout(300)

#: The Prometheus text exposition format, version 0.0.4 (what ``generate_latest`` writes).
PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def _ids_on(partition: int, n: int, prefix: str = "c") -> list[str]:
    """``n`` context ids that live on ``partition``."""
    ids = [f"{prefix}-{i}" for i in range(10_000)]
    found = [i for i in ids if partition_for(i.encode(), PARTITIONS) == partition][:n]
    assert len(found) == n
    return found


async def _http(url: str, headers: dict[str, str] | None = None) -> tuple[int, Any, Any]:
    """``(status, headers, JSON body)`` of a GET."""
    async with aiohttp.ClientSession() as session:
        timeout = aiohttp.ClientTimeout(total=60)
        async with session.get(url, headers=headers, timeout=timeout) as response:
            return response.status, response.headers, await response.json(content_type=None)


async def _until(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 90) -> None:
    """Until ``await check()`` is true, within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.1)


class _Abort(Exception):
    """Raised in a transaction's block to abort it."""


# ---- /healthz ----


async def test_healthz_turns_503_when_the_fold_stops(
    start_worker: Any, make_client: Callable[[str | None], ContextClient], cluster: Any,
    topics: Topics,
) -> None:  # fmt: skip
    """The fold stops for real: an open transaction holds the worker at its first offset
    (``read_committed``), and the WAL is truncated past it (as retention would), so the
    worker's next fetch is out of range: a ``WalTruncatedError`` ends the loop, and
    ``/healthz`` answers 503 naming it."""
    worker = await start_worker(expiry_interval_s=None)
    await serving_all(worker)
    healthz = f"{worker.url}/healthz"
    status, _, body = await _http(healthz)
    assert status == 200, body
    assert (body["status"], body["error"], body["partitions"]) == ("ok", None, [0, 1, 2]), body
    partition = 0
    held, other = _ids_on(partition, 2)
    async with make_client(worker.url) as client, make_client(worker.url) as writer:
        receipt = await client.put(other, {"before": "the transaction"})
        await client.get(other, min_offset=receipt, timeout=30)
        with pytest.raises(_Abort):
            async with kafka_transaction(writer) as tx:
                begun = (await tx.put(held, {"in": "a transaction left open"})).offset
                assert begun == receipt.offset + 1

                async def held_there() -> bool:
                    served = (await _http(f"{worker.url}/v1/partitions"))[2]["partitions"]
                    return any(
                        s["partition"] == partition and s["open_transaction_from"] == begun
                        for s in served
                    )

                await _until(held_there, f"the worker held at {partition}:{begun}")
                # Held by a transaction, the worker still folds: healthy.
                status, _, body = await _http(healthz)
                assert status == 200 and body["status"] == "ok", body

                end = (await wal_ends(cluster.bootstrap, topics.events))[partition]
                admin = AIOKafkaAdminClient(bootstrap_servers=cluster.bootstrap)
                await admin.start()
                try:
                    tp = TopicPartition(topics.events, partition)
                    await admin.delete_records({tp: RecordsToDelete(before_offset=end)})
                finally:
                    await admin.close()

                async def unhealthy() -> bool:
                    return (await _http(healthz))[0] != 200

                await _until(unhealthy, "/healthz turned 503")
                raise _Abort
    status, _, body = await _http(healthz)
    reason = (
        f"WalTruncatedError: WAL partition {partition} starts at offset {end}, but the store "
        f"needs offset {begun}: events were deleted (retention, or `lukhas wal prune`)"
    )
    assert status == 503, body
    assert body["status"] == "stopped" and body["error"] == reason, body
    assert body["partitions"] == [0, 1, 2] and body["restoring"] == [], body
    assert set(body["clock"]) >= {"skew_ms", "error_ms", "measured"}, body
    m = worker.materializer
    try:
        with pytest.raises(WalTruncatedError) as stopped:
            await worker.task
        assert f"{type(stopped.value).__name__}: {stopped.value}" == reason
        assert not m.running
    finally:  # the fixture stops only a worker whose loop still runs
        await m.close()
        await worker.api.close()


# ---- forwarding and 421 ----


def _misdirected(detail: str) -> dict[str, Any]:
    """The body of a 421: the problem a client tells apart as ``not-served-here``."""
    return problem_document(421, detail, "not-served-here")


def _worker_process(cluster: Any, topics: Topics, tmp_path: Path, name: str) -> WorkerProcess:
    """``lukhas worker`` in the test's group; its session outlasts the checks made while it
    is dead but still a member (the group names it owner until the session runs out)."""
    port = free_port()
    argv = [
        sys.executable, "-m", "lukhas_context.ops", "worker",
        "--bootstrap", cluster.bootstrap, "--state-dir", str(tmp_path / name),
        "--topic-prefix", topics.prefix, "--group", f"{topics.prefix}-group",
        "--api-port", str(port), "--session-timeout", "60",
    ]  # fmt: skip
    return WorkerProcess(argv, tmp_path / f"{name}.log", f"http://127.0.0.1:{port}")


async def _owners(url: str) -> dict[int, str]:
    """The routing table a worker serves: partition -> the owner's URL."""
    return {int(p): o for p, o in (await _http(f"{url}/v1/members"))[2]["owners"].items()}


async def test_a_read_at_the_wrong_worker_is_forwarded_and_421_when_no_one_can_answer(
    start_worker: Any, make_client: Callable[[str | None], ContextClient], cluster: Any,
    topics: Topics, tmp_path: Path,
) -> None:  # fmt: skip
    a = await start_worker(expiry_interval_s=None)
    await serving_all(a)
    b = _worker_process(cluster, topics, tmp_path, "b")
    b.start()
    try:
        await asyncio.to_thread(b.wait_healthy)
        table: dict[int, str] = {}

        async def settled() -> bool:
            """Both tables agree, name both workers, and each serves what they say."""
            nonlocal table
            try:
                table = await _owners(a.url)
                if await _owners(b.url) != table or set(table.values()) != {a.url, b.url}:
                    return False
                for url in (a.url, b.url):
                    health = (await _http(f"{url}/healthz"))[2]
                    mine = sorted(p for p, o in table.items() if o == url)
                    if health["partitions"] != mine or health["restoring"]:
                        return False
            except aiohttp.ClientError:
                return False
            return sorted(table) == list(range(PARTITIONS))

        await _until(settled, "the two workers split the partitions")
        names = {p: _ids_on(p, 1, "fwd")[0] for p in range(PARTITIONS)}
        async with make_client(a.url) as client:
            receipts = {p: await client.put(names[p], {"p": p}) for p in range(PARTITIONS)}

        for p, receipt in receipts.items():
            owner = table[p]
            other = a.url if owner == b.url else b.url
            path = f"/v1/contexts/{names[p]}?min_offset={receipt.position}&timeout=30"
            status, headers, at_owner = await _http(owner + path)
            assert status == 200 and SERVED_BY_HEADER not in headers, at_owner
            assert (at_owner["doc"], at_owner["version"], at_owner["partition"]) == ({"p": p}, 1, p)
            # Sent to the worker that does not serve the partition: the owner's answer.
            status, headers, forwarded = await _http(other + path)
            assert status == 200 and forwarded == at_owner, forwarded
            assert headers.get(SERVED_BY_HEADER) == owner, dict(headers)
            outcome = f"/v1/outcomes/{p}/{receipt.offset}"
            status, headers, body = await _http(other + outcome)
            assert status == 200 and headers.get(SERVED_BY_HEADER) == owner, body
            assert (body["status"], body["version"]) == ("applied", 1), body
            # Already forwarded once, to a worker that does not serve it either: 421 at once.
            hop = {FORWARDED_HEADER: "http://127.0.0.1:9"}
            either = _misdirected(f"partition {p} is not served by this worker either")
            for url in (other + path, other + outcome):
                status, headers, body = await _http(url, hop)
                assert (status, body) == (421, either), url
                assert SERVED_BY_HEADER not in headers, dict(headers)

        # A listing asked of either worker holds every partition's contexts: its own, and
        # the other owner's, asked by it (a forwarded listing answers for its own only).
        every = sorted(names.values())
        hop = {FORWARDED_HEADER: "http://127.0.0.1:9"}
        for url in (a.url, b.url):
            status, _, listed = await _http(f"{url}/v1/contexts?prefix=fwd")
            assert status == 200 and listed["incomplete"] == [], listed
            assert [c["context_id"] for c in listed["contexts"]] == every, listed
            assert listed["partitions"] == list(range(PARTITIONS))
            status, _, own = await _http(f"{url}/v1/contexts?prefix=fwd", hop)
            mine = sorted(p for p, o in table.items() if o == url)
            assert own["partitions"] == mine and own["incomplete"] != [], own
            assert [c["context_id"] for c in own["contexts"]] == sorted(names[p] for p in mine)

        # The owner is gone (SIGKILL): within its session the group still names it, the
        # forward fails, and the worker that does not serve the partition says so.
        gone = sorted(p for p, o in table.items() if o == b.url)
        b.kill9()
        for p in gone:
            status, _, body = await _http(f"{a.url}/v1/contexts/{names[p]}")
            assert (status, body) == (
                421, _misdirected(f"partition {p} is not served by this worker")
            ), body  # fmt: skip
            status, _, body = await _http(
                f"{a.url}/v1/contexts/{names[p]}?min_offset={receipts[p].position}&timeout=30"
            )
            served_by = f"partition {p} is served by {b.url}, not this worker"
            assert (status, body) == (421, _misdirected(served_by)), body
            status, _, body = await _http(f"{a.url}/v1/outcomes/{p}/{receipts[p].offset}")
            assert (status, body) == (421, _misdirected(served_by)), body
        # A listing says which partitions no one answered for, instead of looking complete.
        status, _, listed = await _http(f"{a.url}/v1/contexts?prefix=fwd")
        assert status == 200 and listed["incomplete"] == gone, listed
        assert [c["context_id"] for c in listed["contexts"]] == sorted(
            names[p] for p in range(PARTITIONS) if p not in gone
        )
        # All of this while the table still named the dead worker (no rebalance yet).
        assert {p: o for p, o in (await _owners(a.url)).items() if p in gone} == {
            p: b.url for p in gone
        }
    finally:
        if b.proc is not None and b.proc.poll() is None:
            b.kill9()


# ---- /metrics ----


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition: (name, sorted labels) -> value."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"sample {key} given twice"
            out[key] = s.value
    return out


async def test_metrics_scraped_over_http_count_the_work_done(
    start_worker: Any, make_client: Callable[[str | None], ContextClient], cluster: Any,
    topics: Topics,
) -> None:  # fmt: skip
    worker = await start_worker(expiry_interval_s=None)
    await serving_all(worker)
    puts, conflicts = 30, 3
    per_partition = dict.fromkeys(range(PARTITIONS), 0)
    async with make_client(worker.url) as client:
        for i in range(puts):
            receipt = await client.put(f"m:{i % 10}", {"i": i})
            per_partition[receipt.partition] += 1
        for i in range(conflicts):
            receipt = await client.put(f"m:{i}", {"stale": True}, expected_version=99)
            assert (await receipt.outcome(timeout=30)).status == "conflict"
            per_partition[receipt.partition] += 1
        # One event appended twice (a retry: same bytes, same id), and a record that is not
        # an event at all.
        key, value, _ = client.event("m:retried", Put(b'{"r":1}'), None)
        producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap)
        await producer.start()
        try:
            for _ in range(2):
                sent = await producer.send_and_wait(topics.events, value, key)
                per_partition[sent.partition] += 1
            junk = await producer.send_and_wait(topics.events, b"not an event", b"m:junk")
            per_partition[junk.partition] += 1
        finally:
            await producer.stop()
        assert (await client.outcome(junk.partition, junk.offset, 30)).status == "dead_lettered"
    records = sum(per_partition.values())
    assert records == puts + conflicts + 3

    ends = await wal_ends(cluster.bootstrap, topics.events)
    assert ends == per_partition

    async def folded() -> bool:
        served = (await _http(f"{worker.url}/v1/partitions"))[2]["partitions"]
        return {s["partition"]: s["next_offset"] for s in served} == ends

    await _until(folded, "the worker folded the WAL to its end")
    digests = {
        s["partition"]: int(s["digest"], 16)
        for s in (await _http(f"{worker.url}/v1/partitions"))[2]["partitions"]
    }
    async with aiohttp.ClientSession() as session, session.get(f"{worker.url}/metrics") as r:
        assert r.status == 200
        content_type = r.headers["Content-Type"]
        text = await r.text()
    assert content_type == PROMETHEUS_TEXT, content_type
    samples = _samples(text)

    def total(name: str) -> float:
        return samples[(f"lukhas_{name}_total", ())]

    assert total("records_consumed") == records
    assert total("events_applied") == puts + 1  # the retried event applies once
    assert total("events_conflicted") == conflicts
    assert total("events_duplicate") == 1
    assert total("records_dead_lettered") == 1
    assert total("events_rejected") == 0
    assert total("changes_published") == puts + 1
    # the same counts as one metric with an outcome label (the names above are deprecated)
    outcomes = {labels[0][1]: v for (n, labels), v in samples.items() if n == "lukhas_events_total"}
    assert outcomes == {"applied": puts + 1, "conflict": conflicts, "duplicate": 1,
                        "dead_lettered": 1, "rejected": 0, "fenced": 0}  # fmt: skip
    # the read API's requests, by route (the partitions read above), and no _created series
    route = (("method", "GET"), ("route", "/v1/partitions"), ("status", "200"))
    assert samples[("lukhas_http_requests_total", route)] >= 2
    assert not any(n.endswith("_created") for n, _ in samples)
    assert samples[("lukhas_build_info", (("python", platform.python_version()),
                                         ("version", __version__)))] == 1  # fmt: skip
    for p in range(PARTITIONS):
        label = (("partition", str(p)),)
        assert samples[("lukhas_partition_next_offset", label)] == per_partition[p], p
        assert samples[("lukhas_partition_lag", label)] == 0, p
        low32 = samples[("lukhas_partition_digest_low32", label)]
        assert low32 == digests[p] & 0xFFFFFFFF, p
    opens = "lukhas_partition_opens_total"
    opened = {labels: v for (n, labels), v in samples.items() if n == opens}
    assert opened == {(("source", "replay"),): PARTITIONS}, opened
    rounds = samples[("lukhas_batch_seconds_count", ())]
    assert rounds >= 1 and samples[("lukhas_batch_seconds_bucket", (("le", "+Inf"),))] == rounds


# ---- Expire retries ----

RETRY_S = 1.5
#: How much earlier than its retry delay the next attempt may be stamped by the log: the
#: delay runs from the sweep that planned the attempt, the log stamps it when it arrives. Less
#: than RETRY_S, so a retry every RETRY_S (no doubling) could not pass the bounds below.
STAMP_SLACK_S = RETRY_S / 2
ATTEMPTS = 4
TTL_S = 3.0


async def _expires_of(bootstrap: str, topic: str, context_id: str) -> list[tuple[Any, Any]]:
    """Every Expire event of ``context_id`` in the WAL, read raw (``read_uncommitted``, to
    the high watermark): (record, event), in log order."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    codec = EventCodec()
    found: list[tuple[Any, Any]] = []
    try:
        tp = TopicPartition(topic, partition_for(context_id.encode(), PARTITIONS))
        consumer.assign([tp])
        await consumer.seek_to_beginning(tp)
        end = (await consumer.end_offsets([tp]))[tp]
        deadline = time.monotonic() + 60
        while await consumer.position(tp) < end:
            assert time.monotonic() < deadline, "the WAL was not read to its end"
            for m in (await consumer.getmany(tp, timeout_ms=500)).get(tp, []):
                if m.key == context_id.encode():
                    event = codec.decode(m.value)
                    if type(event.op) is Expire:
                        found.append((m, event))
    finally:
        await consumer.stop()
    return found


def _attempt(key: bytes, version: int, event_id: bytes) -> int:
    """The attempt number an Expire's event id was made with (it carries no other trace)."""
    for attempt in range(64):
        if expire_event(key, version, attempt).event_id == event_id:
            return attempt
    raise AssertionError(f"{event_id.hex()} is no Expire of version {version} of {key!r}")


async def test_an_expire_that_does_not_apply_is_retried_each_time_later(
    start_worker: Any, cluster: Any, topics: Topics
) -> None:
    """An open transaction holds the context's partition, so the worker (``read_committed``)
    never sees its Expire applied: the sweeper appends it again with attempt 1, 2, 3..., the
    n-th retry ``expiry_retry_s * 2**n`` after the one before. Once the transaction ends, the
    first Expire applies and the retries are refused as stale."""
    worker = await start_worker(
        expiry_interval_s=0.1, expiry_retry_s=RETRY_S, expiry_retry_max_s=60.0
    )
    await serving_all(worker)
    partition = 0
    name, blocker = _ids_on(partition, 2, "exp")
    key = name.encode()
    long_tx = ClientConfig(cluster.bootstrap, worker.url, topics, transaction_timeout_s=60)
    async with (
        ContextClient(ClientConfig(cluster.bootstrap, worker.url, topics)) as client,
        ContextClient(long_tx) as writer,
    ):
        async with kafka_transaction(writer) as tx:  # begun; nothing in the log yet
            receipt = await client.put(name, {"short": "lived"}, ttl=TTL_S)
            ctx = await client.get(name, min_offset=receipt, timeout=30)
            assert ctx.version == 1 and ctx.expires_at_ms is not None
            opened = await tx.put(blocker, {"holds": "the partition"})
            assert opened.partition == partition
            assert opened.timestamp < ctx.expires_at_ms, "the transaction began after the expiry"

            expires: list[tuple[Any, Any]] = []

            async def retried() -> bool:
                nonlocal expires
                expires = await _expires_of(cluster.bootstrap, topics.events, name)
                return len(expires) >= ATTEMPTS

            # Within the transaction's timeout (60 s from its first event).
            await _until(retried, f"{ATTEMPTS} Expire attempts appended", timeout=45)
            assert worker.materializer.running
        # Committed: the worker folds the Expires and the blocker.
        assert len(tx.receipts) == 1
        await client.get(blocker, min_offset=tx.receipts[0], timeout=30)
        with pytest.raises(ContextNotFoundError):
            await client.get(name)
        expires = await _expires_of(cluster.bootstrap, topics.events, name)
        outcomes = [await client.outcome(partition, m.offset, 30) for m, _ in expires]

    attempts = [_attempt(key, event.op.version, event.event_id) for _, event in expires]
    assert attempts == list(range(len(expires))), attempts
    assert {event.op.version for _, event in expires} == {1}
    assert all(m.offset > opened.offset for m, _ in expires), "an Expire was not held"
    assert outcomes[0].status == "applied", outcomes
    assert all(
        (o.status, o.reason) == ("rejected", "stale expiry of version 1") for o in outcomes[1:]
    ), outcomes
    # Each retry waited twice as long as the one before (log times, ms; lower bounds only).
    stamps = [m.timestamp for m, _ in expires]
    for n in range(len(stamps) - 1):
        waited = stamps[n + 1] - stamps[n]
        floor = (RETRY_S * 2**n - STAMP_SLACK_S) * 1000
        assert waited >= floor, f"attempt {n + 1} came {waited} ms after attempt {n}: {stamps}"
