"""``LocalCluster`` against real processes: Kafka 4 KRaft brokers and redis-server.

The tests of this module run in order on one module-scoped cluster (up, up again, topics, down,
resume); the fixture's finalizer calls ``down()`` so no process outlives the session.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lukhas_context.ops.cluster import ClusterSpec, LocalCluster
from lukhas_context.ops.exceptions import ClusterStartError
from lukhas_context.ops.kafka_dist import ensure_kafka
from lukhas_context.streams.admin import delete_topics, ensure_topics
from lukhas_context.streams.exceptions import TopicMismatchError
from lukhas_context.streams.topics import Topics, TopicSpec

pytestmark = pytest.mark.integration

PREFIX = "lktest"


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[[int], int]
) -> Iterator[LocalCluster]:
    base = free_ports(4)
    spec = ClusterSpec(
        data_dir=tmp_path_factory.mktemp("cluster"),
        brokers=1,
        port_base=base,
        redis_port=base + 2,
        api_port=base + 3,
        topic_prefix=PREFIX,
        partitions=3,
        kafka_home=os.environ.get("KAFKA_HOME"),
        start_processor=False,
    )
    local = LocalCluster(spec)
    try:
        yield local
    finally:
        local.down()


def _pids(local: LocalCluster) -> dict[str, int | None]:
    state = json.loads((local.root / "cluster.json").read_text())
    return {"brokers": state["broker_pids"][0], "redis": state["redis_pid"]}


def test_up_starts_kafka_and_redis(cluster: LocalCluster) -> None:
    result = cluster.up()
    assert result["started"] == ["broker-0", "redis"]
    assert result["kafka"]["ready"] and result["kafka"]["brokers"] == 1
    assert result["redis"]["ready"]
    assert sorted(result["created_topics"]) == sorted(t.name for t in Topics(PREFIX).specs())
    assert result["processors"] == []
    assert cluster.status() == {k: result[k] for k in ("kafka", "redis", "processors")}


def test_up_again_is_a_noop(cluster: LocalCluster) -> None:
    before = _pids(cluster)
    result = cluster.up()
    assert result["started"] == [] and result["created_topics"] == []
    assert _pids(cluster) == before


def test_existing_topics_are_checked_not_changed(cluster: LocalCluster) -> None:
    bootstrap = cluster.spec.kafka_bootstrap
    specs = Topics(PREFIX).specs(partitions=3)
    assert asyncio.run(ensure_topics(bootstrap, specs)) == []
    wrong = Topics(PREFIX).specs(partitions=4)
    with pytest.raises(TopicMismatchError, match=r"lktest\.context\.events has partitions=3"):
        asyncio.run(ensure_topics(bootstrap, wrong))
    with pytest.raises(TopicMismatchError, match=r"replication=1, expected .* replication=3"):
        asyncio.run(ensure_topics(bootstrap, [TopicSpec(specs[0].name, 3, replication=3)]))


def test_ensure_and_delete_a_scratch_topic(cluster: LocalCluster) -> None:
    bootstrap = cluster.spec.kafka_bootstrap
    scratch = [TopicSpec("lktest.scratch", 2, {"cleanup.policy": "compact"})]
    assert asyncio.run(ensure_topics(bootstrap, scratch, brokers=1)) == ["lktest.scratch"]
    asyncio.run(delete_topics(bootstrap, ["lktest.scratch", "lktest.never-existed"]))


def test_a_port_in_use_is_a_clear_error(
    cluster: LocalCluster, tmp_path: Path, free_ports: Callable[[int], int]
) -> None:
    taken = cluster.spec.redis_port  # our running redis holds it
    spec = ClusterSpec(tmp_path, port_base=free_ports(2), redis_port=taken,
                       start_processor=False)  # fmt: skip
    with pytest.raises(ClusterStartError, match=f"port {taken} for redis"):
        LocalCluster(spec).up()
    LocalCluster(spec).down()


def test_down_stops_everything_and_keeps_data(cluster: LocalCluster) -> None:
    result = cluster.down()
    assert sorted(result["stopped"]) == ["broker-0", "redis"]
    assert result["killed"] == []
    status = cluster.status()
    assert not status["kafka"]["ready"] and not status["redis"]["ready"]
    assert (cluster.root / "broker-0" / "logs" / "meta.properties").exists()
    assert not (cluster.root / "broker-0" / "pid").exists()


def test_up_resumes_the_same_cluster(cluster: LocalCluster) -> None:
    cluster_id = (cluster.root / "cluster.id").read_text().strip()
    result = cluster.up()
    assert result["cluster_id"] == cluster_id
    assert result["started"] == ["broker-0", "redis"]
    assert result["created_topics"] == []  # the topics survived on disk
    assert result["kafka"]["ready"] and result["redis"]["ready"]
    meta = (cluster.root / "broker-0" / "logs" / "meta.properties").read_text()
    assert f"cluster.id={cluster_id}" in meta


@pytest.mark.registry
def test_kafka_fetch_from_maven_central(tmp_path: Path) -> None:
    """The real Maven path: 44 jars including the log4j2 SLF4J binding. It needs Maven
    Central (or a ~/.m2 that holds them): marked ``registry``, so an offline run can leave it
    out with ``-m "not registry"`` instead of failing for want of a network."""
    dist = ensure_kafka("4.0.2", cache_dir=tmp_path / "kafka")
    assert dist.source == "maven"
    jars = {p.name for p in (tmp_path / "kafka" / "libs").glob("*.jar")}
    assert {"kafka_2.13-4.0.2.jar", "log4j-slf4j-impl-2.24.3.jar", "log4j-core-2.24.3.jar"} <= jars
