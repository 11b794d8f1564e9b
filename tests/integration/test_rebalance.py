"""RELIABILITY.md row 9: rebalances while writes go on — workers 1 -> 2 -> 3 -> 2 -> 1, one
of them paused (SIGSTOP) past its session timeout and woken as a zombie. Nothing is applied
twice, no acknowledged write is lost, every context expires exactly once, the change stream
delivers each change once, and the survivor's state is a replay of the log."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from lukhas_context.schemas.change import ChangeRecord, read_change_record
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind
from lukhas_context.streams import kafka
from lukhas_context.streams.changes import Change
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError
from lukhas_context.streams.security import PLAINTEXT

from .conftest import (
    PARTITIONS,
    WorkerProcess,
    assert_equal_to_replay,
    free_port,
    read_until,
    seen_all,
    sentinels,
)

pytestmark = pytest.mark.timeout(420)

SESSION_S = 6  # the broker's smallest session timeout


def _worker(
    cluster: Any, topics: Any, tmp_path: Path, name: str, standbys: int = 0
) -> WorkerProcess:
    port = free_port()
    argv = [
        sys.executable, "-m", "lukhas_context.ops", "worker",
        "--bootstrap", cluster.bootstrap, "--state-dir", str(tmp_path / name),
        "--topic-prefix", topics.prefix, "--group", f"{topics.prefix}-group",
        "--api-port", str(port), "--session-timeout", str(SESSION_S),
        "--expiry-interval", "0.2", "--exactly-once", "--standby-replicas", str(standbys),
    ]  # fmt: skip
    return WorkerProcess(argv, tmp_path / f"{name}.log", f"http://127.0.0.1:{port}")


async def _last_records(bootstrap: str, topic: str) -> tuple[dict[str, ChangeRecord], int]:
    """The last committed change of every context on the change topic, and how many
    committed records of contexts the topic holds."""
    consumer = kafka.consumer(
        bootstrap, "lukhas-test-last", isolation="read_committed", security=PLAINTEXT
    )
    await consumer.start()
    last: dict[str, ChangeRecord] = {}
    count = 0
    codec = ChangeCodec()
    try:
        for p in range(PARTITIONS):
            tp = TopicPartition(topic, p)
            consumer.assign([tp])
            end = (await consumer.end_offsets([tp]))[tp]
            consumer.seek(tp, (await consumer.beginning_offsets([tp]))[tp])
            while await consumer.position(tp) < end:
                batch = await consumer.getmany(tp, timeout_ms=1000)
                for m in batch.get(tp, []):
                    if m.key[:1] in (b"\xfe", b"\xff"):
                        continue  # transaction states and fence records: no context's
                    count += 1
                    last[m.key.decode()] = read_change_record(m.key, m.value, m.headers, codec)
    finally:
        await consumer.stop()
    return last, count


async def _stale_last_records(
    bootstrap: str, topic: str, final: dict[str, int], expired: list[str]
) -> dict[str, str]:
    """The contexts whose last change is not their newest: ``final`` (name -> version) and
    ``expired`` (an expiry)."""
    last, _ = await _last_records(bootstrap, topic)
    stale = {n: repr(last.get(n)) for n, v in final.items()
             if n not in last or last[n].version != v}  # fmt: skip
    stale.update({n: repr(last.get(n)) for n in expired
                  if n not in last or last[n].kind is not ChangeKind.EXPIRE})  # fmt: skip
    return stale


async def _compact(bootstrap: str, topic: str) -> None:
    """Tells the broker to compact ``topic`` as soon as it may: short segments, any dirt."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        config = {"cleanup.policy": "compact", "segment.ms": "100",
                  "min.cleanable.dirty.ratio": "0.001", "min.compaction.lag.ms": "0"}  # fmt: skip
        await admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic, config)])
    finally:
        await admin.close()


async def _until_compacted(bootstrap: str, topic: str, made: int) -> None:
    """Until the log cleaner has run: fewer records than the ``made`` changes (at most 90 s)."""
    deadline = time.monotonic() + 90
    while True:
        _, count = await _last_records(bootstrap, topic)
        if count < made:
            return
        assert time.monotonic() < deadline, f"not compacted in 90 s: {count} records"
        await asyncio.sleep(2)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


def _owners(w: WorkerProcess) -> dict[int, str]:
    """The routing table a worker serves (partition -> URL), from the group coordinator."""
    return {int(p): url for p, url in _get(f"{w.url}/v1/members")["owners"].items()}


def _serves(w: WorkerProcess) -> set[int]:
    return set(_get(f"{w.url}/healthz")["partitions"])


async def _until(check: Any, what: str, timeout: float = 90) -> None:
    """Until ``check()`` (run in a thread: it does blocking HTTP) is true, within ``timeout``
    seconds: the conditions the fixed sleeps of this test used to hope for."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if await asyncio.to_thread(check):
                return
        except OSError:
            pass  # a worker between states: ask again
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.2)


@pytest.mark.parametrize(
    ("standbys", "w3_leaves"), [(0, "terminate"), (1, "kill -9")], ids=["plain", "standbys"]
)
async def test_rebalances_with_a_zombie_apply_everything_once(
    cluster: Any, topics: Any, tmp_path: Path, standbys: int, w3_leaves: str
) -> None:
    """``standbys``: the workers keep a standby copy of each partition (``--standby-
    replicas 1``), and w3 is killed (-9) instead of stopped: its partitions move once its
    session times out, to the copies."""
    workers = {n: _worker(cluster, topics, tmp_path, n, standbys) for n in ("w1", "w2", "w3")}
    config = ClientConfig(cluster.bootstrap, ",".join(w.url for w in workers.values()), topics)
    acked: Counter[str] = Counter()
    last: dict[str, Any] = {}
    try:
        w1, w2, w3 = workers["w1"], workers["w2"], workers["w3"]
        w1.start()
        await asyncio.to_thread(w1.wait_healthy)
        async with ContextClient(config) as client:
            for i in range(20):  # each must expire exactly once, whoever sweeps
                await client.put(f"exp:{i}", {"i": i}, ttl=2.0)

            async def write() -> None:
                for n in range(900):  # bounded: ~45 s at 20/s
                    name = f"r:{n % 30}"
                    last[name] = await client.put(name, {"n": n})
                    acked[name] += 1
                    await asyncio.sleep(0.05)

            writer = asyncio.create_task(write())
            w2.start()
            await asyncio.to_thread(w2.wait_healthy)
            w3.start()
            await asyncio.to_thread(w3.wait_healthy)
            everything = set(range(PARTITIONS))
            # The group settled over three workers, w2 with partitions of its own.
            await _until(
                lambda: set(_owners(w1)) == everything and len(set(_owners(w1).values())) == 3
                and _serves(w2),
                "the three workers share the partitions",
            )  # fmt: skip
            assert w2.proc is not None
            os.kill(w2.proc.pid, signal.SIGSTOP)  # w2 stops heartbeating
            # Past its session timeout the group moves its partitions to w1 and w3.
            await _until(
                lambda: _serves(w1) | _serves(w3) == everything
                and w2.url not in _owners(w1).values(),
                "w2's partitions moved to w1 and w3",
            )  # fmt: skip
            await client.wait_checkpoint(await client.checkpoint("ck-rebalance"), timeout=60)
            os.kill(w2.proc.pid, signal.SIGCONT)  # a zombie until it learns it was evicted
            # Awake, it rejoins the group and is given partitions again.
            await _until(lambda: bool(_serves(w2)), "the zombie rejoined with partitions")
            if w3_leaves == "kill -9":
                w3.kill9()
            else:
                assert w3.terminate() == 0
            await _until(
                lambda: w3.url not in _owners(w1).values() and set(_owners(w1)) == everything,
                "w3's partitions moved after it left",
            )
            assert w2.terminate() == 0
            await asyncio.wait_for(writer, 120)

            # Read-your-writes for every context: each version counts its acked writes.
            for name, receipt in last.items():
                ctx = await client.get(name, min_offset=receipt, timeout=60)
                assert ctx.version == acked[name], (name, ctx.version, acked[name])
                assert ctx.doc == {"n": max(n for n in range(900) if f"r:{n % 30}" == name)}
            deadline = time.monotonic() + 60
            for i in range(20):
                while True:
                    try:
                        await client.get(f"exp:{i}")
                    except ContextNotFoundError:
                        break
                    assert time.monotonic() < deadline, f"exp:{i} never expired"
                    await asyncio.sleep(0.2)

            # The change stream: every change once, in order, each expiry exactly once. A last
            # change in every partition marks the end of what was written.
            ends = sentinels("end:")
            for name in ends:
                await client.put(name, {"end": True})
            async with client.watch(start="earliest") as stream:
                changes = await read_until(stream, seen_all(ends), timeout=120)
            changes = [c for c in changes if getattr(c, "context_id", None) not in ends]
        by_context: dict[str, list[Any]] = {}
        for c in changes:
            # No gap: nothing was compacted away, and the offsets the zombie's aborted rounds
            # and the transaction markers take are passed over by the changes' numbers.
            assert isinstance(c, Change), c
            by_context.setdefault(c.context_id, []).append(c)
        for name, count in acked.items():
            assert [c.version for c in by_context[name]] == list(range(1, count + 1)), name
        for i in range(20):
            assert [c.kind for c in by_context[f"exp:{i}"]] == ["put", "expire"], i

        # The compacted change topic keeps each context's newest change as its last record
        # (a zombie's round, published after the partition moved, could have outlived it:
        # exactly once, the broker aborts it). Checked as read, then after a compaction.
        final = dict(acked)
        expired = [f"exp:{i}" for i in range(20)]
        stale = await _stale_last_records(cluster.bootstrap, topics.changes, final, expired)
        assert stale == {}, stale
        await _compact(cluster.bootstrap, topics.changes)
        await asyncio.sleep(0.5)  # past segment.ms: the next record starts a new segment
        async with ContextClient(config) as client:  # rolls each partition's segment
            for name in sentinels("roll:"):
                await client.put(name, {"roll": True})
        await _until_compacted(cluster.bootstrap, topics.changes, sum(final.values()))
        stale = await _stale_last_records(cluster.bootstrap, topics.changes, final, expired)
        assert stale == {}, stale

        # The survivor's state is the fold of the log, partition by partition.
        deadline = time.monotonic() + 60
        while len(served := _get(f"{w1.url}/v1/partitions")["partitions"]) < PARTITIONS:
            assert time.monotonic() < deadline, served
            await asyncio.sleep(0.2)
        await assert_equal_to_replay(cluster, topics, tmp_path / "replay", served)
        if standbys:  # w2's partitions moved to w1 last, where it kept copies of them
            assert any(s["opened_from"] == "standby" for s in served), served
        assert w1.terminate() == 0
    finally:
        for w in workers.values():
            if w.proc is not None and w.proc.poll() is None:
                os.kill(w.proc.pid, signal.SIGCONT)
                w.proc.kill()
                w.proc.wait()
