"""``--evict-dead-peers``: kill -9 one of two workers; the survivor sees its read API refuse
connections, evicts it from the group, and serves its partitions long before the dead
member's session would have timed out (45 s here), with every acknowledged write readable.
Without the flag (the default) nothing is evicted: the partitions wait for the session."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lukhas_context.streams.client import ClientConfig, ContextClient

from .conftest import PARTITIONS, WorkerProcess, free_port, sentinels

pytestmark = pytest.mark.timeout(300)

SESSION_S = 45  # far past the move the eviction makes: a move within it is the eviction's


def _worker(cluster: Any, topics: Any, tmp_path: Path, name: str, *flags: str) -> WorkerProcess:
    port = free_port()
    argv = [
        sys.executable, "-m", "lukhas_context.ops", "worker",
        "--bootstrap", cluster.bootstrap, "--state-dir", str(tmp_path / name),
        "--topic-prefix", topics.prefix, "--group", f"{topics.prefix}-group",
        "--api-port", str(port), "--session-timeout", str(SESSION_S), "--exactly-once", *flags,
    ]  # fmt: skip
    return WorkerProcess(argv, tmp_path / f"{name}.log", f"http://127.0.0.1:{port}")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _serves(w: WorkerProcess) -> set[int]:
    return set(_get(f"{w.url}/healthz")["partitions"])


def _evictions(w: WorkerProcess) -> float:
    with urllib.request.urlopen(f"{w.url}/metrics", timeout=10) as r:
        for line in r.read().decode().splitlines():
            if line.startswith("lukhas_peer_evictions_total "):
                return float(line.split()[1])
    raise AssertionError("no lukhas_peer_evictions_total in /metrics")


async def _until(check: Any, what: str, timeout: float) -> float:
    started = time.monotonic()
    while True:
        try:
            if await asyncio.to_thread(check):
                return time.monotonic() - started
        except OSError:
            pass
        assert time.monotonic() - started < timeout, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


@pytest.mark.parametrize("evict", [True, False], ids=["evict", "default"])
async def test_a_killed_worker_is_evicted_and_its_partitions_move_at_once(
    cluster: Any, topics: Any, tmp_path: Path, evict: bool
) -> None:
    flags = ("--evict-dead-peers",) if evict else ()
    w1 = _worker(cluster, topics, tmp_path, "w1", *flags)
    w2 = _worker(cluster, topics, tmp_path, "w2", *flags)
    w1.start()
    w1.wait_healthy()
    w2.start()
    try:
        w2.wait_healthy()
        await _until(lambda: len(_serves(w1)) + len(_serves(w2)) == PARTITIONS
                     and _serves(w1) and _serves(w2), "the partitions split", 90)  # fmt: skip
        moved = _serves(w1)
        ids = sentinels("ev-")
        config = ClientConfig(cluster.bootstrap, f"{w2.url}", topics=topics)
        async with ContextClient(config) as client:
            receipts = [await client.put(cid, {"n": i}) for i, cid in enumerate(ids)]
            for cid, receipt in zip(ids, receipts, strict=True):  # folded before the kill
                await client.get(cid, min_offset=receipt, timeout=30)
            w1.kill9()
            if not evict:  # nothing evicts it: its partitions stay with the dead member
                await asyncio.sleep(5)
                assert _serves(w2).isdisjoint(moved)
                assert _evictions(w2) == 0
                return
            took = await _until(lambda: moved <= _serves(w2), "w2 serves w1's partitions", 30)
            assert _evictions(w2) == 1
            for i, cid in enumerate(ids):
                assert (await client.get(cid, timeout=30)).doc == {"n": i}
        print(f"w1's partitions {sorted(moved)} served by w2 {took:.2f} s after kill -9")
        assert "refuses connections: evicted it from group" in w2.log.read_text()
    finally:
        for w in (w1, w2):
            if w.proc is not None and w.proc.poll() is None:
                w.terminate()
