"""The worker's side of the scaling advice (``processors.advisor``): its load from its own
samples, its peers' loads from their ``/v1/advice`` (a peer that does not answer, or answers
nonsense, counts as its one worker's share), and the gauges it sets."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiohttp import web

from lukhas_context.processors.advice import WorkerLoad, WorkerSample
from lukhas_context.processors.advisor import Advisor
from lukhas_context.processors.metrics import WorkerMetrics


def gauge(metrics: WorkerMetrics, name: str) -> float | None:
    return metrics.registry.get_sample_value(name)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


@pytest.fixture
async def peers() -> AsyncIterator[str]:
    """A loopback server: ``/busy/v1/advice`` answers a busy peer's load, ``/junk/...``
    answers JSON that is not a load, ``/huge/...`` a body past the limit."""
    busy = WorkerLoad(incoming=2000, folded=2000, busy=0.65, lag=0)

    async def answer(request: web.Request) -> web.StreamResponse:
        kind = request.match_info["kind"]
        if kind == "busy":
            return web.json_response({"load": busy.to_dict()})
        if kind == "junk":
            return web.json_response(["not", "a", "load"])
        return web.Response(body=b" " * (5 * 1024 * 1024))

    app = web.Application()
    app.add_routes([web.get("/{kind}/v1/advice", answer)])
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = closed_port()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    yield f"http://127.0.0.1:{port}"
    await runner.cleanup()


class Samples:
    """A worker's scripted counters: 1000 records/s appended to partition 0, ``folds`` of
    them folded, ``busy`` of each second in rounds."""

    def __init__(self, folds: float, busy: float) -> None:
        self.t = 0.0
        self.folds, self.busy = folds, busy

    async def __call__(self) -> WorkerSample:
        t = self.t
        return WorkerSample(t, {0: int(1000 * t)}, {0: int(self.folds * t)}, self.busy * t, 0.0)


async def test_alone_it_holds_then_follows_its_own_load() -> None:
    metrics = WorkerMetrics()
    samples = Samples(folds=1000, busy=0.1)
    advisor = Advisor(metrics, samples, list, lambda: 4, interval_s=1, cooldown_s=0)
    first = await advisor.step(0.0)
    assert (first.desired, first.unknown) == (1, 1)  # its own load unknown: holds its one
    samples.t = 10.0
    advice = await advisor.step(10.0)
    assert advisor.load is not None and advisor.load.folded == 1000.0
    assert (advice.desired, advice.reason) == (1, "minimum")
    assert gauge(metrics, "lukhas_desired_workers") == 1.0
    assert gauge(metrics, "lukhas_advice_partition_limited") == 0.0
    report = await advisor.report()
    assert report["desired_workers"] == 1 and report["load"]["folded"] == 1000.0
    assert WorkerSample.from_dict(report["sample"]) == await samples()
    await advisor.close()


async def test_falling_behind_it_asks_for_more_capped_by_partitions() -> None:
    metrics = WorkerMetrics()
    samples = Samples(folds=200, busy=1.0)  # folds a fifth of what comes
    advisor = Advisor(metrics, samples, list, lambda: 3, interval_s=1, cooldown_s=60)
    await advisor.step(0.0)
    samples.t = 5.0
    advice = await advisor.step(5.0)
    assert advice.reason == "lag" and advice.needed > 3
    assert gauge(metrics, "lukhas_desired_workers") == 3.0
    assert gauge(metrics, "lukhas_advice_needed_workers") == advice.needed
    assert gauge(metrics, "lukhas_advice_partition_limited") == 1.0
    await advisor.close()


async def test_peers_loads_count_and_silent_or_odd_peers_count_as_their_share(
    peers: str,
) -> None:
    metrics = WorkerMetrics()
    samples = Samples(folds=1000, busy=0.65)
    urls = [f"{peers}/busy", f"{peers}/junk", f"{peers}/huge",
            f"http://127.0.0.1:{closed_port()}"]  # fmt: skip
    advisor = Advisor(metrics, samples, lambda: urls, lambda: 8, interval_s=1, cooldown_s=0)
    await advisor.step(0.0)
    samples.t = 4.0
    advice = await advisor.step(4.0)
    assert advisor.answered == {urls[0]: True, urls[1]: False, urls[2]: False, urls[3]: False}
    assert (advice.workers, advice.unknown) == (5, 3)
    # 0.65 here + 0.65 the busy peer + 3 x 0.7 (unknown) over 0.7 a worker.
    assert advice.needed == 5
    assert advice.demand["fold"] == pytest.approx(0.65 + 0.65 + 3 * 0.7)
    await advisor.close()


async def test_a_failing_sample_is_logged_and_the_figure_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    metrics = WorkerMetrics()
    calls: list[Any] = []
    third = asyncio.Event()

    async def broken() -> WorkerSample:
        calls.append(1)
        if len(calls) == 3:
            third.set()
        raise RuntimeError("no counters")

    advisor = Advisor(metrics, broken, list, lambda: 1, interval_s=0.01, cooldown_s=0)
    task = asyncio.create_task(advisor.run())
    await asyncio.wait_for(third.wait(), 10)
    assert not task.done()
    task.cancel()
    assert "scaling advice not computed" in caplog.text
    await advisor.close()


async def test_the_worker_serves_its_advice_at_v1_advice(tmp_path: Path) -> None:
    from aiohttp.test_utils import make_mocked_request

    from lukhas_context.processors.api import ReadApi
    from lukhas_context.processors.config import WorkerConfig
    from lukhas_context.processors.materializer import Materializer

    config = WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path, advice_cooldown_s=42)
    materializer = Materializer(config)
    api = ReadApi(materializer)
    assert materializer.advisor is not None
    materializer.assignment.partition_count = 2  # no figure is exported before it is known
    await materializer.advisor.step(0.0)
    answer = await api.advice(make_mocked_request("GET", "/v1/advice"))
    body = orjson.loads(answer.body)  # type: ignore[arg-type]
    assert body["desired_workers"] == 1 and body["cooldown_s"] == 42
    assert body["sample"]["ends"] == {} and body["advice"]["workers"] == 1
    off = ReadApi(Materializer(replace(config, advice_interval_s=None)))
    answer = await off.advice(make_mocked_request("GET", "/v1/advice"))
    assert answer.status == 404
    await materializer.advisor.close()


async def test_nothing_is_exported_before_the_partitions_are_known_and_never_zero() -> None:
    """Before the first assignment (no partition count: no cap) the gauge holds the least
    the group runs, not 0 and not an uncapped figure that the cool-down would keep."""
    metrics = WorkerMetrics()
    partitions = [0]
    advisor = Advisor(
        metrics, Samples(folds=1000, busy=0.1), list, lambda: partitions[0], interval_s=20,
        cooldown_s=300,
    )  # fmt: skip
    assert gauge(metrics, "lukhas_desired_workers") == 1.0
    await advisor.step(0.0)
    assert gauge(metrics, "lukhas_desired_workers") == 1.0
    assert advisor.stabilizer.value is None
    partitions[0] = 4
    await advisor.step(1.0)
    assert advisor.stabilizer.value is not None
    await advisor.close()
