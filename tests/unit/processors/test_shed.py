"""Load shedding (``processors.shed``): the decisions alone (how long to wait, how long to
pause), the read queue's answers, the read API shedding reads over its budget and never
its probes, and the fold's fetch pause against a stand-in consumer (rebalance included)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from aiokafka import TopicPartition

from lukhas_context.processors.api import ReadApi
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import InvalidWorkerConfigError
from lukhas_context.processors.materializer import Materializer
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.shed import (
    FOLD_PAUSE_MAX_S,
    FOLD_PAUSE_MIN_S,
    RETRY_IDLE_S,
    RETRY_MAX_S,
    FetchPause,
    ReadQueue,
    fold_pause_s,
    retry_after_s,
    sheds,
)

# ---- the decisions ----


def test_retry_after_spreads_the_turned_away_over_the_drain_rate() -> None:
    assert retry_after_s(turned_away=21, drain_per_s=7.0) == 3
    assert retry_after_s(turned_away=1, drain_per_s=2.0) == 1
    assert retry_after_s(turned_away=1, drain_per_s=0.5) == 2
    waits = [retry_after_s(n, 10.0) for n in range(1, 101)]
    assert waits == sorted(waits) and waits[0] == 1 and waits[-1] == 10


def test_retry_after_is_at_least_one_and_at_most_the_cap() -> None:
    assert retry_after_s(turned_away=1, drain_per_s=10_000.0) == 1
    assert retry_after_s(turned_away=0, drain_per_s=10_000.0) == 1
    assert retry_after_s(turned_away=100_000, drain_per_s=1.0) == RETRY_MAX_S


def test_retry_after_when_nothing_drained_lately_is_a_reads_default_wait() -> None:
    assert retry_after_s(turned_away=50, drain_per_s=0.0) == RETRY_IDLE_S


def test_the_fold_pauses_only_after_a_round_over_its_budget_and_for_a_bounded_time() -> None:
    assert fold_pause_s(0.9, 1.0) == 0.0
    assert fold_pause_s(1.0, 1.0) == 0.0
    assert fold_pause_s(1.001, 1.0) == FOLD_PAUSE_MIN_S
    assert fold_pause_s(1.2, 1.0) == pytest.approx(0.2)
    assert fold_pause_s(30.0, 1.0) == FOLD_PAUSE_MAX_S


def test_probes_members_and_streams_are_never_shed() -> None:
    never = ("/healthz", "/livez", "/readyz", "/metrics", "/v1/members", "/v1/openapi.json",
             "/v1/changes", "/v1/partitions", "/v1/partitions/{partition}/verify")  # fmt: skip
    for route in never:
        assert not sheds("GET", route) and not sheds("POST", route), route
    reads = ("/v1/contexts/{context_id}", "/v1/contexts", "/v1/outcomes/{partition}/{offset}",
             "/v1/contexts/{context_id}/history")  # fmt: skip
    for route in reads:
        assert sheds("GET", route), route
    assert sheds("POST", "/v1/dry-run")
    assert not sheds("OPTIONS", "/v1/contexts/{context_id}")  # a CORS preflight


def test_a_budget_below_one_is_refused_and_none_never_sheds() -> None:
    with pytest.raises(InvalidWorkerConfigError, match="read_queue_budget"):
        WorkerConfig("unused", Path("unused"), read_queue_budget=0)
    with pytest.raises(InvalidWorkerConfigError, match="round_budget_s"):
        WorkerConfig("unused", Path("unused"), round_budget_s=0.0)
    queue = ReadQueue(None, WorkerMetrics())
    for _ in range(10_000):
        queue.enter()
    assert queue.in_flight < queue.limit


# ---- the read queue ----


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_drain_rate_is_the_queue_over_the_time_a_read_spends_in_it() -> None:
    clock = Clock()
    queue = ReadQueue(4, WorkerMetrics(), clock)
    assert queue.drain_per_s() == 0.0  # nothing to tell from yet
    for _ in range(10):  # reads that spent 50 ms each
        started = queue.enter()
        clock.now += 0.05
        queue.leave(started)
    held = [queue.enter() for _ in range(4)]  # the queue at its budget, just now
    assert queue.drain_per_s() == pytest.approx(4 / 0.05)
    # 200 reads shed in one second come back spread out at 80 a second: 1 s, 2 s, 3 s.
    waits = [queue.retry_after() for _ in range(200)]
    assert waits == [1] * 80 + [2] * 80 + [3] * 40
    # The 4 stay stuck (waiting for an offset) for 10 s: the queue drains slowly now,
    # however fast the reads before them were.
    clock.now += 10
    assert queue.drain_per_s() == pytest.approx(4 / 10)
    assert queue.retry_after() == 3  # a new window: the first shed in it
    for started in held:
        queue.leave(started)
    assert queue.in_flight == 0 and queue.drain_per_s() == 0.0


def test_a_refusal_is_a_503_problem_with_retry_after_and_is_counted() -> None:
    metrics = WorkerMetrics()
    queue = ReadQueue(2, metrics, Clock())
    queue.enter()
    queue.enter()
    answer = queue.refusal("/v1/contexts/{context_id}")
    assert answer.status == 503
    assert answer.headers["Retry-After"] == str(RETRY_IDLE_S)
    assert answer.content_type == "application/problem+json"
    assert isinstance(answer.body, bytes)
    body = orjson.loads(answer.body)
    assert body["type"] == "urn:lukhas:problem:overloaded" and body["status"] == 503
    assert body["retry_after"] == RETRY_IDLE_S and "2 reads in progress" in body["detail"]
    text = metrics.render().decode()
    assert 'lukhas_reads_shed_total{route="/v1/contexts/{context_id}"} 1.0' in text
    assert "lukhas_read_queue 2.0" in text and "lukhas_read_queue_budget 2.0" in text


def test_the_fast_refusal_is_a_whole_keep_alive_answer_made_once_per_value() -> None:
    queue = ReadQueue(1, WorkerMetrics(), Clock())
    queue.enter()
    answer = queue.fast_refusal()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    assert lines[0] == b"HTTP/1.1 503 Service Unavailable"
    fields = dict(line.split(b": ", 1) for line in lines[1:])
    assert int(fields[b"Content-Length"]) == len(body)
    assert fields[b"Retry-After"] == str(RETRY_IDLE_S).encode()
    assert b"Connection" not in fields  # the connection stays open: its length is given
    assert orjson.loads(body)["type"] == "urn:lukhas:problem:overloaded"
    assert queue.fast_refusal() is answer  # the same value: the same bytes, not made again


# ---- the read API ----


@pytest.fixture
async def held(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Any]:
    """A read API with a budget of 3 reads, whose waits for an offset hold until
    ``release`` is set (no broker: offsets are taken to exist, waits never end alone)."""
    release = asyncio.Event()

    async def wait_applied(self: Any, partition: int, offset: int, timeout_s: float) -> bool:
        await release.wait()
        return False

    async def exists(self: Any, partition: int, offset: int) -> None:
        return None

    monkeypatch.setattr(Materializer, "wait_applied", wait_applied)
    monkeypatch.setattr(ReadApi, "_check_offset", exists)
    config = WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path, read_queue_budget=3)
    materializer = Materializer(config)
    materializer.assignment.partition_count = 6
    materializer.running = True  # /healthz: 200
    api = ReadApi(materializer)
    await api.start("127.0.0.1", 0)
    session = aiohttp.ClientSession(base_url=f"http://127.0.0.1:{api.port}")
    yield api, session, release
    release.set()
    await session.close()
    await api.close()


async def _get(session: aiohttp.ClientSession, path: str) -> tuple[int, Any, Any]:
    async with session.get(path, timeout=aiohttp.ClientTimeout(total=30)) as answer:
        return answer.status, answer.headers, await answer.read()


async def _until(condition: Any) -> None:
    for _ in range(500):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("not reached")


async def test_reads_over_the_budget_are_shed_and_the_probes_never_are(held: Any) -> None:
    api, session, release = held
    waits = [
        asyncio.create_task(_get(session, f"/v1/contexts/c{i}?min_offset=0:5&timeout=30"))
        for i in range(3)
    ]
    await _until(lambda: api.read_queue.in_flight == 3)
    for path in ("/v1/contexts/x?timeout=1", "/v1/outcomes/0/1", "/v1/contexts/x",
                 "/v1/contexts?prefix=a"):  # fmt: skip
        status, headers, body = await _get(session, path)
        assert status == 503, (path, body)
        assert int(headers["Retry-After"]) >= 1
        assert orjson.loads(body)["type"] == "urn:lukhas:problem:overloaded"
    # A plain point read on a fresh connection: the listener's fast path answers it, shed too.
    reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
    writer.write(b"GET /v1/contexts/y HTTP/1.1\r\nHost: t\r\n\r\n")
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    writer.close()
    assert head.startswith(b"HTTP/1.1 503") and b"Retry-After: " in head, head
    for path in ("/healthz", "/livez", "/metrics", "/v1/members", "/v1/openapi.json"):
        status, _, body = await _get(session, path)
        assert status == 200, (path, body)
    _, _, metrics = await _get(session, "/metrics")
    text = metrics.decode()
    assert 'lukhas_reads_shed_total{route="/v1/contexts/{context_id}"} 3.0' in text  # fast too
    assert 'lukhas_http_requests_total{method="GET",route="/v1/contexts/{context_id}",' \
           'status="503"} 3.0' in text  # fmt: skip
    assert "lukhas_read_queue 3.0" in text
    release.set()
    for status, _, _ in await asyncio.gather(*waits):
        assert status == 504  # the stand-in wait says "not applied": not shed
    assert api.read_queue.in_flight == 0
    status, _, body = await _get(session, "/v1/contexts/x")
    assert status == 421, body  # served as usual again: this worker serves no partition


# ---- the fold's fetch pause ----


class Consumer:
    """The part of aiokafka's consumer the pause uses: assignment, pause, resume."""

    def __init__(self, partitions: list[int]) -> None:
        self.assigned = {TopicPartition("wal", p) for p in partitions}
        self.held: set[TopicPartition] = set()

    def assignment(self) -> set[TopicPartition]:
        return set(self.assigned)

    def paused(self) -> set[TopicPartition]:
        return set(self.held)

    def pause(self, *tps: TopicPartition) -> None:
        assert set(tps) <= self.assigned
        self.held.update(tps)

    def resume(self, *tps: TopicPartition) -> None:
        assert set(tps) <= self.assigned, "aiokafka refuses to resume a partition not assigned"
        self.held.difference_update(tps)


class Group:
    def __init__(self, folding: set[int]) -> None:
        self.generation = 5
        self.folding = folding


def _pause(group: Group, metrics: WorkerMetrics) -> FetchPause:
    return FetchPause(metrics, lambda: group.generation, lambda p: p in group.folding)


async def test_a_pause_pauses_the_folding_partitions_and_resumes_them(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lukhas_context.processors.shed")
    metrics = WorkerMetrics()
    consumer, group = Consumer([0, 1, 2]), Group({0, 1})  # 2 is still opening: paused
    consumer.held.add(TopicPartition("wal", 2))
    pause = _pause(group, metrics)
    seen: list[set[int]] = []

    async def watch() -> None:
        await asyncio.sleep(0.02)
        seen.append({tp.partition for tp in consumer.paused()})

    watching = asyncio.create_task(watch())
    await pause.breathe(consumer, 0.1, "round", "a round over budget", asyncio.Event())
    await watching
    assert seen == [{0, 1, 2}]
    assert consumer.paused() == {TopicPartition("wal", 2)}  # the opening one stays paused
    await pause.breathe(consumer, 0.01, "round", "a round over budget", asyncio.Event())
    pause.calm("round")
    text = metrics.render().decode()
    assert "lukhas_fetch_paused 0.0" in text
    paused_s = metrics.registry.get_sample_value(
        "lukhas_fetch_paused_seconds_total", {"reason": "round"}
    )
    assert paused_s is not None and paused_s >= 0.09
    begun = [r for r in caplog.records if "fetching paused" in r.getMessage()]
    ended = [r for r in caplog.records if "no longer paused" in r.getMessage()]
    assert len(begun) == 1 and len(ended) == 1  # once per episode
    assert "2 pauses" in ended[0].getMessage()


async def test_after_a_rebalance_the_pause_resumes_nothing() -> None:
    consumer, group = Consumer([0, 1]), Group({0, 1})
    pause = _pause(group, WorkerMetrics())

    async def rebalance() -> None:
        await asyncio.sleep(0.02)
        # Eager: 0 revoked, 1 given back with a fresh fetch state, 3 new and still opening.
        group.generation += 1
        consumer.assigned = {TopicPartition("wal", 1), TopicPartition("wal", 3)}
        consumer.held = {TopicPartition("wal", 3)}
        group.folding = {1}

    task = asyncio.create_task(rebalance())
    await pause.breathe(consumer, 0.1, "round", "over", asyncio.Event())
    await task
    assert consumer.paused() == {TopicPartition("wal", 3)}  # still opening: left paused


async def test_a_revoked_partition_is_not_resumed_and_stopping_ends_the_pause() -> None:
    consumer, group = Consumer([0, 1]), Group({0, 1})
    pause = _pause(group, WorkerMetrics())
    stopping = asyncio.Event()

    async def revoke_then_stop() -> None:
        await asyncio.sleep(0.02)
        group.folding = {1}  # revoked, no new generation yet
        stopping.set()

    task = asyncio.create_task(revoke_then_stop())
    await asyncio.wait_for(pause.breathe(consumer, 30.0, "memory", None, stopping), 5)
    await task
    assert consumer.paused() == {TopicPartition("wal", 0)}


async def test_a_forwarded_read_the_owner_shed_keeps_its_retry_after(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker forwarding a read to the partition's owner passes the owner's 503 on with
    its Retry-After (the owner here: a stand-in server that sheds everything)."""

    async def shedding(request: web.Request) -> web.Response:
        return ReadQueue(1, WorkerMetrics()).refusal("/v1/contexts/{context_id}")

    owner_app = web.Application()
    owner_app.add_routes([web.get("/v1/contexts/{context_id}", shedding)])
    runner = web.AppRunner(owner_app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    owner = SimpleNamespace(api="http://owner", forward_url=f"http://127.0.0.1:{port}")
    materializer = Materializer(WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path))
    materializer.assignment.partition_count = 6
    monkeypatch.setattr(materializer.membership, "owner", lambda partition: owner)
    api = ReadApi(materializer)
    await api.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(f"http://127.0.0.1:{api.port}") as session:
            status, headers, body = await _get(session, "/v1/contexts/x?timeout=1")
        assert status == 503 and headers["Retry-After"] == str(RETRY_IDLE_S), body
        assert headers["X-Lukhas-Served-By"] == "http://owner"
        assert orjson.loads(body)["type"] == "urn:lukhas:problem:overloaded"
    finally:
        await api.close()
        await runner.cleanup()


async def test_the_materializer_pauses_fetching_for_a_long_round_and_for_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``Materializer.mind_round`` and ``mind_memory`` pause fetching through ``FetchPause``:
    the folding partitions are paused meanwhile and resumed after, counted by reason."""
    from lukhas_context.processors import materializer as module

    budget = 256 * 1024 * 1024
    config = WorkerConfig("unused", tmp_path, round_budget_s=0.1, memory_budget_bytes=budget)
    m = Materializer(config)
    consumer = Consumer([0, 1])
    m.assignment.consumer = consumer  # type: ignore[assignment]
    folding: Any = object()  # what the pause asks of a folder: that there is one
    m.assignment.folders.update({0: folding, 1: folding})
    seen: list[set[TopicPartition]] = []

    async def watch() -> None:
        await asyncio.sleep(0.01)
        seen.append(consumer.paused())

    watching = asyncio.create_task(watch())
    await m.mind_round(0.05)  # within the budget: no pause
    await m.mind_round(0.13)  # 30 ms over: a pause of about that
    await watching
    assert seen == [consumer.assignment()] and consumer.paused() == set()
    resident = [budget + 1]
    monkeypatch.setattr(module, "resident_bytes", lambda: resident[0])
    await m.mind_memory()  # over the budget and rising
    assert consumer.paused() == set()
    registry = m.metrics.registry
    for reason, least in (("round", 0.02), ("memory", module.MEMORY_PAUSE_S)):
        paused = registry.get_sample_value("lukhas_fetch_paused_seconds_total", {"reason": reason})
        assert paused is not None and paused >= least, reason
