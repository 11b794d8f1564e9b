"""``LocalCluster``: ``up``, ``down`` and ``status`` of one ``ClusterSpec`` over its parts
(brokers, redis-server, the processor), each started, found and stopped by its pid file.

The public methods are synchronous (the CLI is); they must not be called from a running event
loop (use ``asyncio.to_thread``).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from lukhas_context.ops.cluster.brokers import BROKER_STOP_S, Brokers
from lukhas_context.ops.cluster.probes import live_brokers, redis_ping, run_private
from lukhas_context.ops.cluster.process import (
    START_TIMEOUT_S,
    Part,
    check_port_free,
    stop_all,
)
from lukhas_context.ops.cluster.processor import PROCESSOR_STOP_S, Processor
from lukhas_context.ops.cluster.redis_server import REDIS_STOP_S, RedisServer
from lukhas_context.ops.cluster.spec import ClusterSpec
from lukhas_context.ops.cluster.state import recorded_spec, write_state
from lukhas_context.ops.exceptions import ClusterStateError, InvalidClusterSpecError
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.security import PLAINTEXT
from lukhas_context.streams.topics import Topics

__all__ = ["LocalCluster"]


class LocalCluster:
    """Starts, stops and reports on the processes of one ``ClusterSpec``."""

    def __init__(self, spec: ClusterSpec) -> None:
        # Absolute paths: they are markers in the processes' command lines and must not depend
        # on the directory the next `lukhas` command runs from.
        self.spec = replace(spec, data_dir=spec.data_dir.resolve())
        self.root = self.spec.data_dir

    @property
    def brokers(self) -> Brokers:
        """The brokers of this spec (none to run with an external ``bootstrap``)."""
        return Brokers(self.spec)

    def up(self) -> dict[str, Any]:
        """Start every part that is not running, wait until each is ready, return the status.

        Idempotent: running parts are left alone. Broker log dirs are formatted only when they
        have no ``meta.properties``, so an existing cluster resumes with its data. The result is
        :meth:`status` plus ``started`` (part names started now), ``created_topics`` and
        ``cluster_id`` (None with an external ``bootstrap``). Raises ``ClusterStartError`` naming
        the log of the part that failed, ``ClusterStateError`` if ``data_dir`` holds a cluster
        with another broker count, ``RedisNotInstalledError``, or a ``KafkaFetchError``.
        """
        spec = self.spec
        if spec.bootstrap is None and spec.kafka_security != PLAINTEXT:
            raise InvalidClusterSpecError(
                f"Kafka security settings are given ({spec.kafka_security.describe()}, from "
                "LUKHAS_KAFKA_CONFIG or LUKHAS_KAFKA_*) but `up` starts its own brokers, "
                "plaintext on 127.0.0.1: unset them, or pass --bootstrap of the secured Kafka"
            )
        self._check_recorded_shape()
        self.root.mkdir(parents=True, exist_ok=True)
        self._record(spec)
        self._check_ports_free()
        started: list[str] = []
        cluster_id = None
        broker_parts: list[Part] = []
        if spec.bootstrap is None:
            cluster_id = self.brokers.cluster_id()
            broker_parts = self.brokers.start(cluster_id)
        redis = RedisServer(spec)
        redis_part = redis.start()
        started += [part.name for part in broker_parts]
        self.brokers.wait(broker_parts)
        if redis_part is not None:
            redis.wait(redis_part)
            started.append(redis_part.name)
        created = self._ensure_topics()
        processor = Processor(spec)
        if spec.start_processor and processor.start():
            started.append(processor.part().name)
        self._record(spec)
        return {**self.status(), "started": started, "created_topics": created,
                "cluster_id": cluster_id}  # fmt: skip

    def down(self, processors_only: bool = False) -> dict[str, Any]:
        """Stop what ``up`` started: processors, then brokers, then Redis (only the
        processors with ``processors_only``, e.g. to ``lukhas restore``). Keep all data.

        Each part gets SIGTERM (Kafka then shuts down in a controlled way, Redis flushes its
        append-only file) and SIGKILL only after its grace period (30 s; 60 s for brokers).
        Only pid files are removed. Returns ``stopped``, ``killed`` and ``not_running`` names.
        """
        spec = recorded_spec(self.spec)
        result: dict[str, list[str]] = {"stopped": [], "killed": [], "not_running": []}
        groups = [
            ([Processor(self.spec).part()], PROCESSOR_STOP_S),
            (Brokers(spec).parts(), BROKER_STOP_S),
            ([RedisServer(spec).part()], REDIS_STOP_S),
        ]
        if processors_only:
            groups = groups[:1]
        for parts, grace in groups:
            # Brokers stop together: a KRaft quorum that loses voters one by one would make the
            # last ones wait for a controller that is gone.
            for part, outcome in stop_all(parts, grace).items():
                result[outcome].append(part)
        return {**result}

    def status(self) -> dict[str, Any]:
        """Live readiness of every part, in the shape ``lukhas status`` prints.

        ``kafka.brokers`` is the configured broker count (for an external ``bootstrap``, the live
        count); ``kafka.ready`` means that many brokers are in the metadata. ``processors`` lists
        the processors recorded by ``up``, with ``alive`` (the pid is ours and running) and
        ``ready`` (``/healthz`` answered 200 within 1 s).
        """
        spec = recorded_spec(self.spec)
        live = live_brokers(spec.kafka_bootstrap, security=spec.kafka_security)
        expected = spec.brokers if spec.bootstrap is None else live
        return {
            "kafka": {
                "bootstrap": spec.kafka_bootstrap,
                "brokers": expected,
                "ready": live >= expected > 0,
            },
            "redis": {"url": spec.redis_url, "ready": redis_ping(spec.redis_port)},
            "processors": Processor(self.spec).status(),
        }

    def _record(self, spec: ClusterSpec) -> None:
        """Write ``cluster.json`` with the pids of the parts running now."""
        write_state(
            spec,
            broker_pids=[part.running_pid() for part in Brokers(spec).parts()],
            redis_pid=RedisServer(spec).part().running_pid(),
            processor_pid=Processor(self.spec).part().running_pid(),
        )

    def _check_recorded_shape(self) -> None:
        # The broker count is baked into the formatted log dirs (static quorum voters).
        recorded = recorded_spec(self.spec)
        formatted = Brokers(recorded).formatted()
        if formatted and self.spec.bootstrap is None and recorded.brokers != self.spec.brokers:
            raise ClusterStateError(
                f"{self.root} holds a {recorded.brokers}-broker cluster, asked for "
                f"{self.spec.brokers}; use another data dir or the same broker count"
            )

    def _ensure_topics(self) -> list[str]:
        spec = self.spec
        brokers = spec.brokers if spec.bootstrap is None else None  # None: count them
        topics = Topics(spec.topic_prefix).specs(spec.partitions)
        # Brokers just started (or restarted) may not take requests yet: ensure_topics retries
        # within the same time the brokers got to start.
        return run_private(
            ensure_topics(
                spec.kafka_bootstrap,
                topics,
                brokers=brokers,
                timeout_s=START_TIMEOUT_S,
                security=spec.kafka_security,
            )
        )

    def _check_ports_free(self) -> None:
        """Fail before starting anything if a part that must start finds its port taken."""
        spec = self.spec
        wanted: list[tuple[int, str]] = []
        for i, part in enumerate(Brokers(spec).parts()):
            if part.running_pid() is None:
                wanted += [(spec.port_base + 2 * i, part.name)]
                wanted += [(spec.port_base + 2 * i + 1, f"{part.name} controller")]
        if RedisServer(spec).part().running_pid() is None:
            wanted.append((spec.redis_port, "redis"))
        if spec.start_processor and Processor(spec).part().running_pid() is None:
            wanted.append((spec.api_port, "processor-0 API"))
        for port, what in wanted:
            check_port_free(port, what)
