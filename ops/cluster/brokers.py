"""The local cluster's Kafka brokers: KRaft combined mode with static voters, their
``server.properties``, log dirs formatted once, the JVMs, and waiting until the metadata shows
them all. With an external ``bootstrap`` there are none to start, only one to wait for."""

from __future__ import annotations

import base64
import secrets
import subprocess
from pathlib import Path

from lukhas_context.ops.cluster.probes import live_brokers
from lukhas_context.ops.cluster.process import (
    LOG_TAIL_LINES,
    START_TIMEOUT_S,
    Part,
    spawn,
    wait_for,
)
from lukhas_context.ops.cluster.spec import HOST, ClusterSpec
from lukhas_context.ops.exceptions import ClusterStartError
from lukhas_context.ops.kafka_dist import KafkaDist, ensure_kafka, log4j_config
from lukhas_context.streams.client import MAX_TRANSACTION_TIMEOUT_S

__all__ = ["BROKER_STOP_S", "TRANSACTION_SWEEP_MS", "Brokers"]

#: How often a broker looks for transactions past their timeout and aborts them: the bound on
#: how long a dead client's transaction holds its partitions is its timeout plus this.
TRANSACTION_SWEEP_MS = 1000
BROKER_STOP_S = 60.0


class Brokers:
    """The brokers of ``spec`` under its ``data_dir``: ``broker-<i>/`` each."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec
        self.root = spec.data_dir

    def parts(self) -> list[Part]:
        """One part per broker to run here; none with an external ``bootstrap``."""
        if self.spec.bootstrap is not None:
            return []
        return [
            Part(f"broker-{i}", self._dir(i), "kafka.log", (str(self._props(i)),))
            for i in range(self.spec.brokers)
        ]

    def formatted(self) -> bool:
        """Whether any of the spec's broker log dirs is formatted (has ``meta.properties``)."""
        return any(self._meta_file(i).exists() for i in range(self.spec.brokers))

    def cluster_id(self) -> str:
        """The cluster id, made once (22 chars of base64url, as Kafka's own) and kept on disk.

        Never starting with "-": a command-line parser reads such an id as an option (Kafka's
        ``Uuid.randomUuid`` redraws those for the same reason); one in 64 ids did."""
        path = self.root / "cluster.id"
        if not path.exists():
            raw = "-"
            while raw.startswith("-"):
                raw = base64.urlsafe_b64encode(secrets.token_bytes(16)).decode().rstrip("=")
            path.write_text(raw + "\n")
        return path.read_text().strip()

    def start(self, cluster_id: str) -> list[Part]:
        """Format and spawn the brokers that are not running; return the parts spawned."""
        todo = [part for part in self.parts() if part.running_pid() is None]
        if not todo:
            return []
        dist = ensure_kafka(self.spec.kafka_version, self.spec.kafka_cache, self.spec.kafka_home)
        log4j = log4j_config(self.root / "log4j2.properties")
        indices = [int(part.name.split("-")[1]) for part in todo]
        for i in indices:
            self.write_props(i)
        self._format(
            dist, log4j, cluster_id, [i for i in indices if not self._meta_file(i).exists()]
        )
        for i, part in zip(indices, todo, strict=True):
            spawn(self._kafka_argv(dist, log4j, i), part)
        return todo

    def write_props(self, i: int) -> None:
        """Write broker ``i``'s ``server.properties``."""
        spec = self.spec
        voters = ",".join(
            f"{n + 1}@{HOST}:{spec.port_base + 2 * n + 1}" for n in range(spec.brokers)
        )
        replicas = min(3, spec.brokers)
        min_isr = 2 if spec.brokers >= 3 else 1
        props = {
            "process.roles": "broker,controller",
            "node.id": i + 1,
            "controller.quorum.voters": voters,
            "listeners": f"PLAINTEXT://{HOST}:{spec.port_base + 2 * i},"
            f"CONTROLLER://{HOST}:{spec.port_base + 2 * i + 1}",
            "advertised.listeners": f"PLAINTEXT://{HOST}:{spec.port_base + 2 * i}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": self._dir(i) / "logs",
            "num.partitions": 1,
            "auto.create.topics.enable": "false",
            "unclean.leader.election.enable": "false",
            "group.initial.rebalance.delay.ms": 0,
            "offsets.topic.num.partitions": 6,  # the default 50 slows the first group join
            "offsets.topic.replication.factor": replicas,
            "transaction.state.log.num.partitions": 6,  # the default 50: a slow first begin
            "transaction.state.log.replication.factor": replicas,
            "transaction.state.log.min.isr": min_isr,
            "min.insync.replicas": min_isr,
            # A node restarted after `down` re-registers under a new incarnation; the controller
            # refuses it until the old session expires (default 9 s, so every resume took 10 s).
            "broker.heartbeat.interval.ms": 1000,
            "broker.session.timeout.ms": 4000,
            # A client may ask for a transaction timeout up to this (Kafka's default is 15 min:
            # a client killed mid-transaction would hold its partitions that long), and expired
            # transactions are aborted within a second of their timeout (default 10 s).
            "transaction.max.timeout.ms": int(MAX_TRANSACTION_TIMEOUT_S * 1000),
            "transaction.abort.timed.out.transaction.cleanup.interval.ms": TRANSACTION_SWEEP_MS,
            # The log cleaner looks for logs to compact every second (default 15 s): a change
            # topic told to compact now (a test, an operator) is compacted within seconds.
            "log.cleaner.backoff.ms": 1000,
        }
        self._dir(i).mkdir(parents=True, exist_ok=True)
        self._props(i).write_text("".join(f"{key}={value}\n" for key, value in props.items()))

    def wait(self, spawned: list[Part]) -> None:
        """Wait until the metadata shows every broker; fail fast if a spawned broker dies."""
        spec = self.spec
        expected = spec.brokers if spec.bootstrap is None else 1

        def late() -> ClusterStartError:
            names = ", ".join(part.name for part in spawned) or spec.kafka_bootstrap
            if not spawned:
                return ClusterStartError(f"Kafka at {names} not reachable in {START_TIMEOUT_S}s")
            return spawned[0].failure(f"not ready after {START_TIMEOUT_S}s (waiting for {names})")

        def ready() -> bool:
            return live_brokers(spec.kafka_bootstrap, security=spec.kafka_security) >= expected

        wait_for(ready, spawned, START_TIMEOUT_S, late, 0.5)

    def _dir(self, i: int) -> Path:
        return self.root / f"broker-{i}"

    def _props(self, i: int) -> Path:
        return self._dir(i) / "server.properties"

    def _meta_file(self, i: int) -> Path:
        return self._dir(i) / "logs" / "meta.properties"

    def _format(self, dist: KafkaDist, log4j: Path, cluster_id: str, indices: list[int]) -> None:
        """Format the log dirs of brokers ``indices`` (in parallel: each is a JVM start)."""
        jobs = {
            i: subprocess.Popen(
                self._format_argv(dist, log4j, cluster_id, i),
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for i in indices
        }
        for i, job in jobs.items():
            output, _ = job.communicate()
            if job.returncode != 0:
                tail = "\n".join(output.splitlines()[-LOG_TAIL_LINES:])
                raise ClusterStartError(f"formatting broker-{i} failed:\n{tail}")

    def _format_argv(self, dist: KafkaDist, log4j: Path, cluster_id: str, i: int) -> list[str]:
        # Static voters (controller.quorum.voters): no --standalone, which is for dynamic quorums.
        return [
            dist.java, "-cp", dist.classpath, f"-Dlog4j2.configurationFile={log4j}",
            "kafka.tools.StorageTool", "format", f"--cluster-id={cluster_id}",
            "-c", str(self._props(i)),
        ]  # fmt: skip

    def _kafka_argv(self, dist: KafkaDist, log4j: Path, i: int) -> list[str]:
        heap = self.spec.heap
        return [
            dist.java, f"-Xmx{heap}", f"-Xms{heap}", "-XX:+ExitOnOutOfMemoryError",
            "-Djava.awt.headless=true", f"-Dlog4j2.configurationFile={log4j}",
            "-cp", dist.classpath, "kafka.Kafka", str(self._props(i)),
        ]  # fmt: skip
