"""Scaling advice against real load on the real broker: one worker whose fold is throttled
falls behind and the advice (``lukhas_desired_workers``, ``/v1/advice``, ``lukhas advise``)
says it needs more than one; then a second worker joins, the two keep up, and the exported
figure holds (the cool-down) without ever flapping. No assertion is on speed: every wait is
for a state, with a deadline only so that a failure does not hang."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from lukhas_context.processors.materializer import MIN_ROUND_RECORDS
from lukhas_context.streams.client import ContextClient

from .conftest import PARTITIONS, RunningWorker, WorkerFactory, serving_all

pytestmark = pytest.mark.timeout(300)

README = Path(__file__).resolve().parents[2] / "README.md"
#: The advice options of both workers: a figure every second (several of the throttled
#: worker's rounds), a cool-down longer than the test (so the figure may only rise while it
#: runs: any fall would be a flap).
ADVICE = {"advice_interval_s": 1.0, "advice_cooldown_s": 600.0}


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def gauge(worker: RunningWorker) -> float | None:
    return worker.materializer.metrics.registry.get_sample_value("lukhas_desired_workers")


def throttle(worker: RunningWorker, per_record_s: float) -> Callable[[], None]:
    """Makes the worker's fold cost ``per_record_s`` more a record, slower than the writes;
    the round counts it, as a slow fold's would. Returns what lifts it."""
    m = worker.materializer
    fold_round = m.fold_round
    # Rounds of at most MIN_ROUND_RECORDS (the round budget halves any larger one, and a
    # round this slow never doubles): no round holds more than 2 s of the throttled fold.
    m.round_limit = MIN_ROUND_RECORDS

    async def slow(batch: Any) -> float:
        pause = per_record_s * sum(len(records) for records in batch.values())
        await asyncio.sleep(pause)
        return pause + await fold_round(batch)

    m.fold_round = slow  # type: ignore[method-assign]
    return lambda: setattr(m, "fold_round", fold_round)


async def write_steadily(client: ContextClient, stop: asyncio.Event, burst: int = 50) -> int:
    """Puts ``burst`` contexts at a time, every 0.1 s, until ``stop``; returns how many."""
    n = 0
    while not stop.is_set():
        await asyncio.gather(*(client.put(f"load:{n + i}", {"i": n + i}) for i in range(burst)))
        n += burst
        await asyncio.sleep(0.1)
    return n


async def until(
    check: Callable[[], Awaitable[Any]], what: str, timeout: float = 120, seen: Any = None
) -> Any:
    """``check()`` once it is true; ``seen``: a list ``check`` appends what it saw to (the
    last is in the failure's message)."""
    deadline = time.monotonic() + timeout
    while True:
        found = await check()
        if found:
            return found
        assert time.monotonic() < deadline, (
            f"not in {timeout} s: {what}; last: {(seen or [None])[-1]}"
        )
        await asyncio.sleep(0.25)


def readme_advise(api: str) -> list[str]:
    """The README's ``lukhas advise`` line, as argument lists, with ``--api`` added."""
    text = README.read_text()
    found = re.search(r"^\.venv/bin/lukhas (advise[^#\n]*)", text, re.MULTILINE)
    assert found is not None, "README has no `lukhas advise` line"
    return [*shlex.split(found.group(1)), "--api", api]


def lukhas(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "lukhas_context.ops", *args], cwd=cwd, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


async def test_advice_asks_for_more_workers_when_one_falls_behind_and_holds_with_two(
    start_worker: WorkerFactory,
    make_client: Callable[[str | None], ContextClient],
    tmp_path: Path,
) -> None:
    a = await start_worker(tmp_path / "a", **ADVICE)
    await serving_all(a)
    lift = throttle(a, 0.01)  # at most 100 records a second
    stop = asyncio.Event()
    async with make_client(a.url) as client:
        writing = asyncio.create_task(write_steadily(client, stop))
        try:
            await _phases(a, lift, start_worker, tmp_path, stop, writing)
        finally:  # never left writing into the next tests (a failure here once did)
            stop.set()
            if not writing.done():
                writing.cancel()
            with contextlib.suppress(BaseException):
                await writing


async def _phases(
    a: Any, lift: Callable[[], None], start_worker: WorkerFactory, tmp_path: Path,
    stop: asyncio.Event, writing: asyncio.Task[int],
) -> None:  # fmt: skip
    """The test's two phases: one worker behind, then two keeping up."""

    async def behind() -> Any:
        body = await asyncio.to_thread(_get, f"{a.url}/v1/advice")
        advice, load = body["advice"], body["load"]
        growing = load is not None and load["lag_growth"] > 0 and load["folded"] > 0
        return body if growing and advice["reason"] == "lag" else None

    body = await until(behind, "the advice says the lone worker falls behind")
    assert body["advice"]["needed_workers"] > 1 and body["desired_workers"] >= 2
    assert body["advice"]["desired_workers"] <= PARTITIONS
    assert gauge(a) is not None and gauge(a) >= 2  # type: ignore[operator]
    metrics = await asyncio.to_thread(urllib.request.urlopen, f"{a.url}/metrics")
    text = metrics.read().decode()
    assert re.search(r"^lukhas_desired_workers [2-9]", text, re.MULTILINE), text[-2000:]

    # The command, as the README shows it, from another directory, samples the same.
    done = await asyncio.to_thread(lukhas, *readme_advise(a.url), "--json", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    said = json.loads(done.stdout)
    assert said["advice"]["needed_workers"] > 1 and said["advice"]["reason"] == "lag"
    assert said["workers"][0]["load"]["lag_growth"] > 0
    human = await asyncio.to_thread(
        lukhas, "advise", "--api", a.url, "--interval", "1", cwd=tmp_path
    )
    assert human.returncode == 0 and human.stdout.startswith("Run "), human
    assert "decided by the lag" in human.stdout or "a backlog of" in human.stdout

    # A second worker joins and the first folds at full speed again: the two keep up.
    peak_a = gauge(a)
    lift()
    b = await start_worker(tmp_path / "b", **ADVICE)

    async def split() -> bool:
        ms = (a.materializer, b.materializer)
        return all(m.stores for m in ms) and sum(len(m.stores) for m in ms) == PARTITIONS

    await until(split, "the partitions split between the two workers")

    seen: list[Any] = []

    async def kept_up() -> Any:
        body = await asyncio.to_thread(_get, f"{b.url}/v1/advice")
        seen.append(body)
        advice = body["advice"]
        caught_up = advice and advice["workers"] == 2 and advice["workers_unmeasured"] == 0
        return body if caught_up and advice["reason"] != "lag" else None

    body = await until(kept_up, "both workers keep up", seen=seen)
    assert body["advice"]["needed_workers"] <= 2
    # The figures while the two keep up: they hold, and never fall (no flap).
    series_a, series_b = [], []
    for _ in range(16):
        series_a.append(gauge(a))
        series_b.append(gauge(b))
        await asyncio.sleep(0.25)
    assert series_a == sorted(series_a) and series_b == sorted(series_b), (series_a, series_b)  # type: ignore[type-var]
    assert min(series_a) >= peak_a >= 2  # type: ignore[operator]
    assert all(v is not None and 1 <= v <= PARTITIONS for v in series_a + series_b)
    fresh = await asyncio.to_thread(
        lukhas, "advise", "--api", b.url, "--json", "--interval", "1", cwd=tmp_path
    )
    assert fresh.returncode == 0, fresh.stderr
    now = json.loads(fresh.stdout)
    assert {w["api"] for w in now["workers"]} == {a.url, b.url}
    assert now["advice"]["workers"] == 2 and now["advice"]["needed_workers"] <= 2
    # Held: the group's figure, as an autoscaler reads it (the max over the workers). b
    # exports nothing before it has partitions, so it may never have seen the peak.
    gauges = [w["desired_workers_gauge"] for w in now["workers"]]
    assert max(gauges) >= 2 and min(gauges) >= 1, gauges
    stop.set()
    assert await writing > 0
