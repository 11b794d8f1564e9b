"""Several processors share the partitions of one consumer group: each publishes what it
serves, reads reach the owner (routed by the client, or forwarded by any worker), and when one
worker stops the survivor restores the moved partitions and every read stays right."""

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

from .conftest import PARTITIONS, WorkerProcess, assert_equal_to_replay, free_port

pytestmark = pytest.mark.timeout(300)


def _worker(cluster: Any, topics: Any, tmp_path: Path, name: str) -> WorkerProcess:
    port = free_port()
    argv = [
        sys.executable,
        "-m",
        "lukhas_context.ops",
        "worker",
        "--bootstrap",
        cluster.bootstrap,
        "--state-dir",
        str(tmp_path / name),
        "--topic-prefix",
        topics.prefix,
        "--group",
        f"{topics.prefix}-group",
        "--api-port",
        str(port),
    ]  # fmt: skip  (no --instance-id: a stopped worker leaves the group at once)
    return WorkerProcess(argv, tmp_path / f"{name}.log", f"http://127.0.0.1:{port}")


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


async def _routing_settles(urls: list[str], serving: dict[str, int], timeout: float = 90) -> Any:
    """Until every worker's table names owners for all partitions, as ``serving`` expects
    (URL -> how many partitions it serves), and every owner has its stores open."""
    deadline = time.monotonic() + timeout
    while True:
        tables = [await asyncio.to_thread(_get, f"{u}/v1/members") for u in urls]
        counts: dict[str, int] = {}
        for owner in tables[0]["owners"].values():
            counts[owner] = counts.get(owner, 0) + 1
        same = all(t["owners"] == tables[0]["owners"] for t in tables)
        opened = True
        for u, n in serving.items():
            served = await asyncio.to_thread(_get, f"{u}/v1/partitions")
            opened = opened and len(served["partitions"]) == n and not served["restoring"]
        if same and counts == serving and opened:
            return tables[0]
        assert time.monotonic() < deadline, (tables, serving)
        await asyncio.sleep(0.2)


async def test_two_workers_share_partitions_and_survive_one_stopping(
    cluster: Any, topics: Any, tmp_path: Path
) -> None:
    a = _worker(cluster, topics, tmp_path, "a")
    b = _worker(cluster, topics, tmp_path, "b")
    await _scenario(cluster, topics, tmp_path, a, b)


async def _scenario(
    cluster: Any, topics: Any, tmp_path: Path, a: WorkerProcess, b: WorkerProcess
) -> None:
    try:
        # B first, alone with every partition; then A joins and takes some. The partitions
        # B keeps are ones A never had: when B stops, A has no store of them to start from.
        b.start()
        await asyncio.to_thread(b.wait_healthy)
        a.start()
        await asyncio.to_thread(a.wait_healthy)
        # Both serve: the partitions are split between them (which gets two is the group's
        # choice), and both tables agree.
        deadline = time.monotonic() + 90
        while True:
            owners = (await asyncio.to_thread(_get, f"{a.url}/v1/members"))["owners"]
            if set(owners.values()) == {a.url, b.url} and len(owners) == PARTITIONS:
                break
            assert time.monotonic() < deadline, owners
            await asyncio.sleep(0.2)
        split = {u: sum(1 for o in owners.values() if o == u) for u in (a.url, b.url)}
        await _routing_settles([a.url, b.url], split)
        moved = sorted(int(p) for p, o in owners.items() if o == b.url)

        config = ClientConfig(cluster.bootstrap, f"{a.url},{b.url}", topics)
        names = [f"ctx-{i}" for i in range(24)]
        async with ContextClient(config) as client:
            receipts = {}
            for round_ in range(5):
                for name in names:
                    receipts[name] = await client.put(name, {"round": round_, "name": name})
            for name in names:  # routed by the client to the owner, after its own last write
                ctx = await client.get(name, min_offset=receipts[name], timeout=30)
                assert ctx.doc == {"round": 4, "name": name} and ctx.version == 5
        # Any worker answers for any context: it forwards to the owner.
        for url in (a.url, b.url):
            for name in names:
                body = await asyncio.to_thread(_get, f"{url}/v1/contexts/{name}")
                assert body["version"] == 5, (url, body)

        # B stops; A takes its partitions over, restoring them (it never had them).
        assert b.terminate() == 0
        await _routing_settles([a.url], {a.url: PARTITIONS})
        served = (await asyncio.to_thread(_get, f"{a.url}/v1/partitions"))["partitions"]
        assert {s["partition"] for s in served} == set(range(PARTITIONS))
        for s in served:
            if s["partition"] in moved:
                assert s["opened_from"] == "changes", s  # restored from the change topic

        # The client still has B first in its table: it fails over, and read-your-writes
        # holds across the rebalance. Nothing was applied twice: versions count the writes.
        async with ContextClient(ClientConfig(cluster.bootstrap, f"{b.url},{a.url}", topics)) as c:
            for name in names:
                receipt = await c.put(name, {"round": 5, "name": name})
                assert (await receipt.outcome(timeout=30)).status == "applied"
                ctx = await c.get(name, min_offset=receipt, timeout=30)
                assert (ctx.version, ctx.doc["round"]) == (6, 5), name

        # The survivor's state equals a full replay of the WAL, partition by partition.
        served = (await asyncio.to_thread(_get, f"{a.url}/v1/partitions"))["partitions"]
        await assert_equal_to_replay(cluster, topics, tmp_path / "replay", served)
        assert a.terminate() == 0
    finally:
        for w in (a, b):
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
