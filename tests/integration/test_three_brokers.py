"""``lukhas up --brokers 3`` as local processes (replication 3, min.insync.replicas 2): the
leader of most WAL partitions is killed (SIGKILL) under a steady load of acknowledged writes,
the load goes on, and ``up`` starts it again. Every acknowledged write is folded exactly once,
the change stream misses nothing, and each partition's digest equals an offline replay (the
checks of ``replication``; issue 11, the same scenario as the compose cluster's)."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lukhas_context.ops.cluster import ClusterSpec, LocalCluster
from lukhas_context.ops.cluster.brokers import Brokers
from lukhas_context.ops.cluster.probes import live_brokers
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics

from .replication import busiest_leader, fault_under_load

pytestmark = pytest.mark.timeout(600)

PARTITIONS = 6
PREFIX = "lk3"


@pytest.fixture(scope="module")
def three(
    tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[[int], int]
) -> Iterator[LocalCluster]:
    base = free_ports(8)
    spec = ClusterSpec(
        data_dir=tmp_path_factory.mktemp("three"), brokers=3, port_base=base,
        redis_port=base + 6, api_port=base + 7, topic_prefix=PREFIX, partitions=PARTITIONS,
        kafka_home=os.environ.get("KAFKA_HOME"), heap="384m",
    )  # fmt: skip
    local = LocalCluster(spec)
    try:
        local.up()
        yield local
    finally:
        local.down()


async def test_the_busiest_leader_killed_under_load_loses_no_acknowledged_write(
    three: LocalCluster, tmp_path: Path
) -> None:
    spec = three.spec
    topics = Topics(PREFIX)
    assert await asyncio.to_thread(live_brokers, spec.kafka_bootstrap) == 3
    config = ClientConfig(spec.kafka_bootstrap, spec.api_url, topics, timeout_s=20)

    async def fault() -> None:
        leader = await busiest_leader(spec.kafka_bootstrap, topics.events)
        part = Brokers(spec).parts()[leader - 1]  # node.id i+1 is broker-i
        pid = part.running_pid()
        assert pid is not None, part.name
        os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(10)  # writing while it is down
        started = await asyncio.to_thread(three.up)  # starts the parts that are not running
        assert part.name in started.get("started", []), started

    async with ContextClient(config) as client:
        await fault_under_load(client, "k3", fault, spec.kafka_bootstrap, topics,
                               [spec.api_url], PARTITIONS, tmp_path / "replay")  # fmt: skip
