"""``ClusterSpec``: what a local cluster runs, and where each of its parts listens."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lukhas_context.ops.exceptions import InvalidClusterSpecError
from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity

__all__ = ["HOST", "ClusterSpec"]

#: Every part listens on loopback only.
HOST = "127.0.0.1"


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What to run. ``bootstrap`` set means: use that existing Kafka cluster, start no brokers.

    Broker ``i`` (0-based, ``node.id`` i+1) listens on ``port_base + 2*i`` and its controller on
    ``port_base + 2*i + 1``. Raises ``InvalidClusterSpecError`` (a ``ValueError``) for fewer
    than one broker or partition.
    """

    data_dir: Path
    brokers: int = 1
    port_base: int = 19092
    redis_port: int = 16379
    api_port: int = 18080
    bootstrap: str | None = None
    topic_prefix: str = "lukhas"
    partitions: int = 6
    kafka_version: str = "4.0.2"
    kafka_home: str | None = None
    kafka_cache: Path | None = None
    heap: str = "512m"
    start_processor: bool = True
    #: How to reach the existing Kafka of ``bootstrap`` (the environment's
    #: ``LUKHAS_KAFKA_*``); never recorded in ``cluster.json``. The brokers ``up`` starts
    #: itself are plaintext on loopback.
    kafka_security: KafkaSecurity = PLAINTEXT

    def __post_init__(self) -> None:
        if self.brokers < 1 or self.partitions < 1:
            raise InvalidClusterSpecError("brokers and partitions must be at least 1")

    @property
    def kafka_bootstrap(self) -> str:
        """The given ``bootstrap``, or every local broker's listener, comma-separated."""
        if self.bootstrap is not None:
            return self.bootstrap
        return ",".join(f"{HOST}:{self.port_base + 2 * i}" for i in range(self.brokers))

    @property
    def redis_url(self) -> str:
        return f"redis://{HOST}:{self.redis_port}/0"

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.api_port}"
