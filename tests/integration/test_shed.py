"""Issue 17: a worker on a real broker sheds load (``processors.shed``).

Reads: the read queue of a worker with a budget of 4 reads is filled by reads waiting for an
offset an open Kafka transaction holds (they cannot finish until it commits), then flooded
with more reads, on the fast path and off it: each is answered 503 with ``Retry-After`` and
an ``overloaded`` problem, nothing else, while ``/healthz``, ``/metrics`` and ``/v1/members``
answer 200; once the transaction commits, the waiting reads answer 200 and so do new ones.

Fold: a worker whose round budget is 1 µs folds a WAL written before it started; every round
takes longer, so it pauses fetching between rounds (``lukhas_fetch_paused_seconds_total``
rises), and it still folds everything, to the state a replay of the WAL gives.

Bounded in count (4 held reads, 120 flooding ones) and time; nothing is timed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from .conftest import (
    PARTITIONS,
    assert_equal_to_replay,
    drained,
    kafka_transaction,
    serving_all,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BUDGET = 4
FLOOD = 120
APPENDS = 300
PUTS = 300


async def _get(session: aiohttp.ClientSession, path: str) -> tuple[int, Any, bytes]:
    async with session.get(path, timeout=aiohttp.ClientTimeout(total=60)) as answer:
        return answer.status, answer.headers, await answer.read()


async def _until(condition: Any, what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)


async def test_reads_over_the_budget_are_shed_with_retry_after_and_probes_still_answer(
    start_worker: Any, make_client: Any
) -> None:
    worker = await start_worker(read_queue_budget=BUDGET)
    await serving_all(worker)
    queue = worker.api.read_queue
    connector = aiohttp.TCPConnector(limit=FLOOD + BUDGET + 8)
    async with (
        make_client(worker.url) as client,
        aiohttp.ClientSession(worker.url, connector=connector) as http,
    ):
        receipt = await client.put("shed:ok", {"ok": True})
        assert (await client.get("shed:ok", min_offset=receipt, timeout=30)).doc == {"ok": True}
        async with kafka_transaction(client) as tx:
            held = await tx.put("shed:held", {"held": True})
            waiting = f"/v1/contexts/shed:held?min_offset={held.partition}:{held.offset}&timeout=30"
            holders = [asyncio.create_task(_get(http, waiting)) for _ in range(BUDGET)]
            await _until(lambda: queue.in_flight == BUDGET, "the held reads are not waiting")

            # The flood: plain reads (the fast path), reads with a query (aiohttp's
            # handler), outcomes; all while the queue is at its budget.
            paths = ["/v1/contexts/shed:ok", "/v1/contexts/shed:ok?timeout=1",
                     f"/v1/outcomes/{receipt.partition}/{receipt.offset}"]  # fmt: skip
            answers = await asyncio.gather(
                *(_get(http, paths[i % len(paths)]) for i in range(FLOOD))
            )
            statuses = [status for status, _, _ in answers]
            shed = [(headers, body) for status, headers, body in answers if status == 503]
            print(f"flood of {FLOOD} reads over a full queue: {len(shed)} answered 503")
            assert not [s for s in statuses if s >= 500 and s != 503], statuses
            assert len(shed) == FLOOD  # the queue stayed full: not one read was done
            for headers, body in shed:
                assert int(headers["Retry-After"]) >= 1
                assert headers["Content-Type"].startswith("application/problem+json")
                problem = orjson.loads(body)
                assert problem["type"] == "urn:lukhas:problem:overloaded", problem
                assert problem["status"] == 503 and problem["retry_after"] >= 1

            for probe in ("/healthz", "/livez", "/metrics", "/v1/members"):
                status, _, body = await _get(http, probe)
                assert status == 200, (probe, body)
            _, _, text = await _get(http, "/metrics")
            assert f"lukhas_read_queue {float(BUDGET)}" in text.decode()
            assert "lukhas_reads_shed_total" in text.decode()
            assert not any(task.done() for task in holders)  # still waiting, never shed
        # Committed: the waiting reads are answered, and new reads are done again.
        for status, _, body in await asyncio.gather(*holders):
            assert status == 200, body
            assert orjson.loads(body)["doc"] == {"held": True}
        await _until(lambda: queue.in_flight == 0, "the queue did not drain")
        for path in paths:
            status, _, body = await _get(http, path)
            assert status == 200, (path, body)
    metrics = worker.materializer.metrics.registry
    counted = sum(
        metrics.get_sample_value("lukhas_reads_shed_total", {"route": route}) or 0.0
        for route in ("/v1/contexts/{context_id}", "/v1/outcomes/{partition}/{offset}")
    )
    assert counted == FLOOD


async def test_rounds_over_their_budget_pause_fetching_and_the_fold_completes(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    # Written before the worker runs: it folds them in rounds, each over its budget.
    async with make_client(None) as client:
        await client.put("conv:1", {"messages": []})
        for start in range(0, PUTS, 50):
            await asyncio.gather(
                *(client.put(f"ctx:{i}", {"i": i}) for i in range(start, start + 50))
            )
        for i in range(APPENDS):
            await client.patch("conv:1", [{"op": "add", "path": "/messages/-", "value": i}])
    # 1 µs: any round of one record or more takes longer, however fast this machine is.
    worker = await start_worker(round_budget_s=0.000_001)
    await drained(worker, timeout=180)
    registry = worker.materializer.metrics.registry

    def paused_s() -> float:
        labels = {"reason": "round"}
        return registry.get_sample_value("lukhas_fetch_paused_seconds_total", labels) or 0.0

    # Counted as each pause ends, and the last may end after the fold reached the WAL's end.
    await _until(lambda: paused_s() > 0, "fetching never paused")
    print(f"fetching paused {paused_s():.2f} s in all while folding {PUTS + APPENDS + 1} events")
    await _until(
        lambda: registry.get_sample_value("lukhas_fetch_paused") == 0, "fetching stays paused"
    )
    async with make_client(worker.url) as client:
        conv = await client.get("conv:1")
        assert conv.version == APPENDS + 1 and conv.doc["messages"] == list(range(APPENDS))
        for i in (0, PUTS // 2, PUTS - 1):
            assert (await client.get(f"ctx:{i}")).doc == {"i": i}
    async with aiohttp.ClientSession() as http, http.get(f"{worker.url}/v1/partitions") as answer:
        served = (await answer.json())["partitions"]
    await assert_equal_to_replay(cluster, topics, tmp_path / "replay", served)


async def test_rebalances_while_fetching_pauses_apply_every_write_once(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    """Two workers whose every round is over budget (they pause fetching after each) share
    the partitions and one leaves, while writes go on: every rebalance lands in or next to a
    pause. Each acknowledged put is applied exactly once (each context's version is the
    number of puts to it), and the state is the fold of the WAL."""
    tiny = {"round_budget_s": 0.000_001}
    a = await start_worker(tmp_path / "a", **tiny)
    writes: dict[str, int] = {}
    stop = asyncio.Event()

    async def write(client: Any) -> None:
        n = 0
        while not stop.is_set():
            context_id = f"rb:{n % 40}"
            await client.put(context_id, {"n": n})
            writes[context_id] = writes.get(context_id, 0) + 1
            n += 1

    async with make_client(None) as client:
        writer = asyncio.create_task(write(client))
        await serving_all(a)
        b = await start_worker(tmp_path / "b", **tiny)
        await _until(
            lambda: a.materializer.stores and b.materializer.stores
            and len(a.materializer.stores) + len(b.materializer.stores) == PARTITIONS,
            "the two workers never shared the partitions", timeout=90,
        )  # fmt: skip

        def b_paused() -> bool:
            return bool(b.materializer.metrics.registry.get_sample_value(
                "lukhas_fetch_paused_seconds_total", {"reason": "round"}
            ))  # fmt: skip

        # Its partitions appear before they fold: wait for a round of b's to have paused.
        await _until(b_paused, "b never paused fetching", timeout=90)
        await b.stop()
        await serving_all(a)
        stop.set()
        await writer
    await drained(a, timeout=120)
    for worker in (a, b):
        paused = worker.materializer.metrics.registry.get_sample_value(
            "lukhas_fetch_paused_seconds_total", {"reason": "round"}
        )
        assert paused, "a worker never paused fetching"
    print(f"{sum(writes.values())} puts to {len(writes)} contexts across two rebalances")
    async with make_client(a.url) as client:
        for context_id, count in writes.items():
            assert (await client.get(context_id)).version == count, context_id
    async with aiohttp.ClientSession() as http, http.get(f"{a.url}/v1/partitions") as answer:
        served = (await answer.json())["partitions"]
    await assert_equal_to_replay(cluster, topics, tmp_path / "replay", served)
