"""No change published twice: after kill -9 under load, and after every restore path.

The processor publishes a round's changes before it commits the round, so a crash between
the two folds those events again after the restart; the partition's change-topic coverage
(``processors.opener.changes_coverage``) makes it fold them without publishing again. A
restore that rewinds a store (a checkpoint, a replay, ``lukhas restore``) goes through the
same coverage. So the change topic itself, read whole with ``read_committed`` once the worker
has stopped, must hold each change exactly once: the identities ``(context_id, wal_offset)``
and ``(context_id, version)`` are compared as multisets (``Counter``) with the receipts of
the acknowledged writes, so a repeat, a loss and a change nobody wrote all fail.

(DESIGN.md allows a crash to publish a change twice and has subscribers drop repeats; the
materialiser promises more, "folded without publishing again", and that is what is checked
here. A zombie worker can still publish a repeat: that known limit is ``test_rebalance``'s.)
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.processors.change_record import check_change_record
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.streams.client import ContextClient, Receipt

from .conftest import PARTITIONS, WorkerProcess, wal_ends

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

#: Contexts written; each round writes each of them once (so a round's writes never race).
CONTEXTS = 60
#: Identity of a change: (context id, WAL offset of its event) or (context id, version).
Identity = tuple[str, int]


def _write(client: ContextClient, k: int, c: int, rng: random.Random) -> Awaitable[Receipt]:
    """Round ``k``'s write to context ``c``, chosen so that every write applies: a merge patch
    only after a put (rounds ≡ 2 follow rounds ≡ 1), a delete only after a put or a patch
    (rounds ≡ 4, one context in three), and a put after it (rounds ≡ 0)."""
    name = f"nd-{c}"
    if k % 5 == 4 and c % 3 == 0:
        return client.delete(name)
    if k % 5 == 2:
        return client.patch(name, {"k": k}, merge=True)
    return client.put(name, {"k": k, "c": c, "pad": "x" * rng.randrange(300)})


async def _load(
    client: ContextClient, rounds: range, acked: list[Receipt], rng: random.Random
) -> None:
    for k in rounds:  # bounded: len(rounds) * CONTEXTS writes
        acked.extend(await asyncio.gather(*(_write(client, k, c, rng) for c in range(CONTEXTS))))
        await asyncio.sleep(0.1)  # spread the load over the kills (not a synchronisation)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


async def _folded_to_the_end(worker: WorkerProcess, bootstrap: str, wal: str) -> list[Any]:
    """The worker's ``/v1/partitions`` once it folded every WAL partition to its end (every
    round up to there committed, so its changes were acknowledged)."""
    ends = await wal_ends(bootstrap, wal)
    deadline = time.monotonic() + 120
    while True:
        served = (await asyncio.to_thread(_get, f"{worker.url}/v1/partitions"))["partitions"]
        at = {s["partition"]: s["next_offset"] for s in served}
        if len(at) == PARTITIONS and all(at[p] >= end for p, end in ends.items()):
            return sorted(served, key=lambda s: s["partition"])
        assert time.monotonic() < deadline, f"folded {at}, WAL ends {ends}"
        await asyncio.sleep(0.2)


async def _whole_topic(bootstrap: str, topic: str) -> list[Any]:
    """Every record of ``topic``, read ``read_committed`` from the start of each partition up
    to the end it had when the read began (call it once nothing writes any more)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, isolation_level="read_committed", enable_auto_commit=False
    )
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        records: list[Any] = []
        deadline = time.monotonic() + 120
        while [tp for tp in tps if await consumer.position(tp) < ends[tp]]:
            assert time.monotonic() < deadline, f"read {len(records)} records of {ends}"
            batch = await consumer.getmany(timeout_ms=500, max_records=5000)
            records += [m for messages in batch.values() for m in messages]
        return records
    finally:
        await consumer.stop()


def _identities(records: list[Any]) -> tuple[Counter[Identity], Counter[Identity]]:
    """The change records' identities as multisets: by WAL offset and by version. A record
    that is not a change of the processor's (tombstones included) fails the test."""
    codec = ChangeCodec()
    by_offset: Counter[Identity] = Counter()
    by_version: Counter[Identity] = Counter()
    for m in records:
        change = check_change_record(m.key, m.value, m.headers, codec, position=m.offset)
        context_id = change.key.decode()
        by_offset[(context_id, change.record.offset)] += 1
        by_version[(context_id, change.record.version)] += 1
    return by_offset, by_version


def _assert_each_change_once(records: list[Any], acked: list[Receipt], seed: int) -> None:
    by_offset, by_version = _identities(records)
    repeated = {i: n for i, n in by_offset.items() if n != 1}
    assert not repeated, f"changes published more than once (seed {seed}): {repeated}"
    repeated = {i: n for i, n in by_version.items() if n != 1}
    assert not repeated, f"versions published more than once (seed {seed}): {repeated}"
    want = Counter((r.context_id, r.offset) for r in acked)
    assert len(want) == len(acked)  # receipts name distinct WAL positions
    assert by_offset - want == Counter(), f"changes of no acknowledged write (seed {seed})"
    assert want - by_offset == Counter(), f"acknowledged writes without a change (seed {seed})"
    # Versions continue across a delete: each context's are 1..n, one per acknowledged write.
    writes = Counter(r.context_id for r in acked)
    versions = Counter((cid, v) for cid, n in writes.items() for v in range(1, n + 1))
    assert by_version == versions, f"seed {seed}"


def _seed() -> tuple[int, random.Random]:
    seed = int(os.environ.get("LUKHAS_SEED", random.randrange(1 << 30)))
    print(f"LUKHAS_SEED={seed}")
    return seed, random.Random(seed)


async def test_kill_9_under_load_publishes_every_change_exactly_once(
    worker_process, make_client, cluster, topics, kill_repeatedly
) -> None:
    seed, rng = _seed()
    worker_process.start()
    worker_process.wait_healthy()
    acked: list[Receipt] = []
    pids: set[int] = set()

    async def load() -> None:
        """At least 40 rounds, and on until the fourth restarted worker process has seen
        writes (or 400 rounds)."""
        async with make_client(None) as client:
            for k in range(400):
                assert worker_process.proc is not None
                pids.add(worker_process.proc.pid)
                if k >= 40 and len(pids) >= 5:
                    return
                await _load(client, range(k, k + 1), acked, rng)

    loader = asyncio.create_task(load())
    kills = await kill_repeatedly(loader, worker_process, rng, (0.3, 1.2))
    await loader
    assert kills >= 4, "the load ended before the processor was killed four times"
    await _folded_to_the_end(worker_process, cluster.bootstrap, topics.events)
    assert worker_process.terminate() == 0

    records = await _whole_topic(cluster.bootstrap, topics.changes)
    _assert_each_change_once(records, acked, seed)
    print(f"kills={kills} writes={len(acked)} change_records={len(records)}")


async def _start_and_kill_once_publishing(
    worker: WorkerProcess, bootstrap: str, topic: str, timeout: float = 120
) -> None:
    """Starts ``worker`` and kills it (-9) as soon as the change topic grows: a round's
    changes are being appended (the first of its batches acknowledged, perhaps all), so the
    round is not committed yet, or only just. The window a crash must not repeat anything
    from."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        before = sum((await consumer.end_offsets(tps)).values())
        worker.start()
        deadline = time.monotonic() + timeout
        while sum((await consumer.end_offsets(tps)).values()) == before:
            assert worker.proc is not None and worker.proc.poll() is None, "the worker exited"
            assert time.monotonic() < deadline, "the worker published nothing"
        worker.kill9()
    finally:
        await consumer.stop()


async def test_kill_9_while_changes_are_published_repeats_none(
    worker_process, make_client, cluster, topics
) -> None:
    """Six times: a backlog written while the worker is down, the worker started, and killed
    the moment its first changes land on the change topic; then it catches up."""
    seed, rng = _seed()
    acked: list[Receipt] = []
    async with make_client(None) as client:
        for cycle in range(6):
            await _load(client, range(cycle * 20, cycle * 20 + 20), acked, rng)
            await _start_and_kill_once_publishing(worker_process, cluster.bootstrap, topics.changes)
    worker_process.start()
    worker_process.wait_healthy()
    await _folded_to_the_end(worker_process, cluster.bootstrap, topics.events)
    assert worker_process.terminate() == 0

    records = await _whole_topic(cluster.bootstrap, topics.changes)
    _assert_each_change_once(records, acked, seed)
    print(f"writes={len(acked)} change_records={len(records)}")


def _lukhas_restore(cluster: Any, topics: Any, state: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "LUKHAS_TOPIC_PREFIX": topics.prefix}
    argv = [sys.executable, "-m", "lukhas_context.ops", "restore", "--bootstrap",
            cluster.bootstrap, "--state-dir", str(state), "--json", "--no-progress",
            *args]  # fmt: skip
    done = subprocess.run(argv, env=env, capture_output=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr.decode()
    report: dict[str, Any] = json.loads(done.stdout)
    return report


async def test_restores_never_publish_a_change_again(
    worker_process, make_client, cluster, topics, kill_repeatedly, tmp_path
) -> None:
    """Each restore path rewinds a store below what the change topic covers, so the worker
    (or ``lukhas restore``) folds published events again: ``lukhas restore`` from a checkpoint
    and from scratch, the worker's own restore from a checkpoint (store lost), and from the
    change topic (stores and checkpoints lost); kill -9 in between."""
    seed, rng = _seed()
    state = tmp_path / "proc-state"  # the worker_process fixture's state dir
    acked: list[Receipt] = []

    async def run(rounds: range, kills: int) -> list[Any]:
        """Starts the worker, writes ``rounds`` while killing it up to ``kills`` times, waits
        until it folded everything and stops it; returns its ``/v1/partitions`` at start."""
        worker_process.start()
        worker_process.wait_healthy()
        opened = await _folded_to_the_end(worker_process, cluster.bootstrap, topics.events)
        async with make_client(None) as client:
            loader = asyncio.create_task(_load(client, rounds, acked, rng))
            if kills:
                await kill_repeatedly(loader, worker_process, rng, (0.3, 1.0), max_kills=kills)
            await loader
        await _folded_to_the_end(worker_process, cluster.bootstrap, topics.events)
        assert worker_process.terminate() == 0
        return opened

    worker_process.start()
    worker_process.wait_healthy()
    async with make_client(None) as client:
        await _load(client, range(0, 15), acked, rng)
        request = await client.checkpoint("ck-nodup")
        manifests = await client.wait_checkpoint(request, timeout=120)
        await _load(client, range(15, 30), acked, rng)  # all published after the checkpoint
    covered = await _folded_to_the_end(worker_process, cluster.bootstrap, topics.events)
    assert worker_process.terminate() == 0
    for m, s in zip(manifests, covered, strict=True):  # every checkpoint is behind the tail
        assert m["next_offset"] < s["next_offset"], (m, s)

    # Partition 0 from the checkpoint and partition 2 from scratch, offline; partition 1's
    # store is lost, so the worker restores it from the checkpoint.
    from_checkpoint = _lukhas_restore(cluster, topics, state, "-p", "0", "--checkpoint", "ck-nodup")
    assert from_checkpoint["source"] == "checkpoint", from_checkpoint
    assert from_checkpoint["events_folded"] > 0  # published events folded again
    from_scratch = _lukhas_restore(cluster, topics, state, "-p", "2", "--from-scratch")
    assert from_scratch["source"] == "replay" and from_scratch["events_folded"] > 0, from_scratch
    shutil.rmtree(state / "partition-1")
    opened = await run(range(30, 45), kills=2)
    assert [s["opened_from"] for s in opened] == ["local", "checkpoint", "local"], opened
    assert opened[1]["checkpoint_id"] == "ck-nodup"

    # Every store and checkpoint lost: the worker restores each partition from the change
    # topic, and goes on writing with kills.
    shutil.rmtree(state)
    opened = await run(range(45, 55), kills=2)
    assert [s["opened_from"] for s in opened] == ["changes"] * PARTITIONS, opened

    records = await _whole_topic(cluster.bootstrap, topics.changes)
    _assert_each_change_once(records, acked, seed)
    print(f"writes={len(acked)} change_records={len(records)}")
