"""RELIABILITY.md rows 7 and 20: two of three brokers down, on a 3-broker cluster of our own
(``LocalCluster``, RF 3, ``min.insync.replicas=2``).

Every client call — a put on a client that wrote before, on a fresh client and on the sync
client, a checkpoint, a transaction's commit, ``close()``, and ``lukhas put`` — returns or
raises within its configured deadline, and the error says why (the brokers' reason). After
the brokers come back, ``lukhas up`` and ``ensure_topics`` succeed the first time (while the
brokers are still starting), and nothing that was acknowledged is lost.

The tests of this module run in order on one module-scoped cluster. The bounds are the
configured deadlines plus generous room (``SLACK_S``): they check that calls end, not how fast.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.ops.cluster import ClusterSpec, LocalCluster
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.txrecord import is_tx_key
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.client import (
    ClientConfig,
    ContextClient,
    Receipt,
    SyncContextClient,
)
from lukhas_context.streams.exceptions import PublishTimeoutError
from lukhas_context.streams.topics import Topics, partition_for

pytestmark = pytest.mark.integration

T = TypeVar("T")
PREFIX = "degraded"
PARTITIONS = 3
TIMEOUT_S = 8.0
CLOSE_TIMEOUT_S = 2.0
#: Room on top of a configured deadline before a call counts as hanging.
SLACK_S = 15.0
#: What a reason names: a partition refused for want of replicas, or a leader that is gone.
REASON = (
    rf"partition \d+ of {PREFIX}\.context\.events: "
    r"(NOT_ENOUGH_REPLICAS: .*min\.insync\.replicas=2|its leader, broker \d, does not answer)"
)

#: Receipts of acknowledged writes, filled by the tests in order.
ACKED: list[Receipt] = []


@pytest.fixture(scope="module")
def cluster3(
    tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[[int], int]
) -> Iterator[LocalCluster]:
    base = free_ports(8)
    spec = ClusterSpec(
        data_dir=tmp_path_factory.mktemp("three-brokers"),
        brokers=3,
        port_base=base,
        redis_port=base + 6,
        api_port=base + 7,
        topic_prefix=PREFIX,
        partitions=PARTITIONS,
        kafka_home=os.environ.get("KAFKA_HOME"),
        heap="320m",
        start_processor=False,
    )
    local = LocalCluster(spec)
    try:
        local.up()
        yield local
    finally:
        local.down()


def _config(local: LocalCluster, **overrides: Any) -> ClientConfig:
    settings = {"timeout_s": TIMEOUT_S, "close_timeout_s": CLOSE_TIMEOUT_S, **overrides}
    return ClientConfig(local.spec.kafka_bootstrap, topics=Topics(PREFIX), **settings)


def _one_id_per_partition() -> list[str]:
    ids: dict[int, str] = {}
    for n in range(1000):
        ids.setdefault(partition_for(f"deg-{n}".encode(), PARTITIONS), f"deg-{n}")
    return [ids[p] for p in range(PARTITIONS)]


async def _within(seconds: float, call: Coroutine[Any, Any, T]) -> T:
    """``call``'s result or error; fails the test if it is still running after ``seconds``."""
    try:
        return await asyncio.wait_for(call, seconds)
    except TimeoutError:
        pytest.fail(f"still running after {seconds:g} s")


def _kill_brokers(local: LocalCluster, indices: list[int]) -> None:
    state = json.loads((local.root / "cluster.json").read_text())
    for i in indices:
        os.kill(state["broker_pids"][i], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while any(_alive(state["broker_pids"][i]) for i in indices):
        assert time.monotonic() < deadline
        time.sleep(0.1)


def _alive(pid: int) -> bool:
    """Running (a killed child of this process stays a zombie until it is reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _lukhas(local: LocalCluster, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "LUKHAS_TIMEOUT": str(TIMEOUT_S), "LUKHAS_TOPIC_PREFIX": PREFIX}
    env.pop("LUKHAS_BOOTSTRAP", None)
    argv = [sys.executable, "-m", "lukhas_context.ops", *args, "--data-dir", str(local.root)]
    try:
        return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"lukhas {' '.join(args)} still running after {timeout:g} s")


async def test_every_call_ends_within_its_deadline_with_the_brokers_reason(
    cluster3: LocalCluster,
) -> None:
    ids = _one_id_per_partition()
    # The first transaction of a cluster creates the transaction log: not part of the test.
    async with ContextClient(_config(cluster3, timeout_s=120)) as warm, warm.transaction() as tx:
        await tx.put("warm-up", {})
    before = asyncio.all_tasks()
    client = ContextClient(_config(cluster3))
    for context_id in ids:
        ACKED.append(await client.put(context_id, {"healthy": True}))
    tx = client.transaction()
    await tx.__aenter__()  # begun while every broker runs: its commit meets the degraded cluster

    _kill_brokers(cluster3, [1, 2])

    bound = TIMEOUT_S + SLACK_S
    for context_id in ids:  # a client whose producer is running
        with pytest.raises(PublishTimeoutError, match=REASON):
            await _within(bound, client.put(context_id, {"degraded": True}))
    async with ContextClient(_config(cluster3)) as fresh:  # one that must start a producer
        with pytest.raises(PublishTimeoutError, match=r"1 of [23] brokers answer") as caught:
            await _within(bound, fresh.put(ids[0], {"fresh": True}))
        assert "refuses connections" in str(caught.value)
        with pytest.raises(PublishTimeoutError, match="checkpoint"):
            await _within(bound, fresh.checkpoint("degraded-ck"))

    await tx.put(ids[0], {"in": "a transaction"})
    await tx.put(ids[2], {"in": "a transaction"})
    with pytest.raises(PublishTimeoutError, match="the transaction did not commit within"):
        await _within(bound, tx.__aexit__(None, None, None))

    # Sends that no broker acknowledged are still in the producer: close gives them up.
    await _within(CLOSE_TIMEOUT_S + SLACK_S, client.close())
    await asyncio.sleep(0.5)  # sockets closing end their reader tasks
    assert [t for t in asyncio.all_tasks() - before if t is not asyncio.current_task()] == []

    sync = await asyncio.to_thread(SyncContextClient, _config(cluster3))
    try:
        with pytest.raises(PublishTimeoutError, match="brokers answer"):
            await _within(bound, asyncio.to_thread(sync.put, ids[1], {"sync": True}))
    finally:
        await _within(CLOSE_TIMEOUT_S + SLACK_S, asyncio.to_thread(sync.close))

    done = await asyncio.to_thread(
        _lukhas, cluster3, "put", ids[1], '{"cli": true}', "--bootstrap",
        cluster3.spec.kafka_bootstrap, timeout=bound + CLOSE_TIMEOUT_S + 30,
    )  # fmt: skip
    assert done.returncode == 1, done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr
    assert lines[0].startswith("lukhas: error: PublishTimeoutError: ")
    assert "brokers answer" in lines[0]


async def test_after_the_brokers_return_up_and_ensure_topics_succeed_the_first_time(
    cluster3: LocalCluster,
) -> None:
    bootstrap = cluster3.spec.kafka_bootstrap
    specs = Topics(PREFIX).specs(PARTITIONS)
    # `lukhas up` starts the two brokers and checks the topics while they come up; the admin
    # calls run alongside, from the moment the processes start.
    up = asyncio.create_task(
        asyncio.to_thread(_lukhas, cluster3, "up", "--no-processor", "--json", timeout=300)
    )
    while not up.done() and not _ports_listening(cluster3):  # noqa: ASYNC110 (a process, no event)
        await asyncio.sleep(0.05)
    assert await ensure_topics(bootstrap, specs, timeout_s=120) == []
    done = await up
    assert done.returncode == 0, done.stderr
    assert sorted(json.loads(done.stdout)["started"]) == ["broker-1", "broker-2"]
    assert await ensure_topics(bootstrap, specs, timeout_s=60) == []


def _ports_listening(local: LocalCluster) -> bool:
    """Whether the restarted brokers' JVMs have opened their listeners (they are not ready
    to serve yet at that point)."""
    import socket

    for i in (1, 2):
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", local.spec.port_base + 2 * i)) == 0:
                return True
    return False


async def test_nothing_acknowledged_is_lost_and_writes_work_again(cluster3: LocalCluster) -> None:
    config = _config(cluster3, timeout_s=60)
    async with ContextClient(config) as client:
        ACKED.append(await client.put("deg-after", {"recovered": True}))
    assert len(ACKED) == PARTITIONS + 1
    found = await _read_events(config.bootstrap, config.topics.events)
    for receipt in ACKED:
        assert found.get((receipt.partition, receipt.offset)) == receipt.event_id, receipt


async def _read_events(bootstrap: str, topic: str) -> dict[tuple[int, int], str]:
    """(partition, offset) -> event id of every event in ``topic``'s log (an acknowledged
    write is in the log; the fold's view of transactions is not what is checked here)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    codec = EventCodec()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        ends = await consumer.end_offsets(tps)
        found: dict[tuple[int, int], str] = {}
        deadline = time.monotonic() + 60
        while any([await consumer.position(tp) < ends[tp] for tp in tps]):
            assert time.monotonic() < deadline
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for m in records:
                    if is_tx_key(m.key):  # a transaction's record: not one event
                        continue
                    event = codec.decode(m.value)
                    found[(m.partition, m.offset)] = str(_uuid(event.event_id))
        return found
    finally:
        await consumer.stop()


def _uuid(raw: bytes) -> Any:
    import uuid

    return uuid.UUID(bytes=raw)
