"""The local cluster behind ``lukhas up/down/status``: Kafka brokers, Redis, processors.

Every part is a detached process with a pid file and a log file under ``data_dir``. ``up`` starts
the parts that are not running and resumes from the data on disk; ``down`` stops them by pid and
keeps every byte of data. A pid is signalled only if ``/proc/<pid>/cmdline`` still carries the
part's markers, so a pid recycled by the OS for another program is never killed.

The public methods are synchronous (the CLI is); they must not be called from a running event
loop (use ``asyncio.to_thread``).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Coroutine
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import redis

from lukhas_context.ops.exceptions import (
    ClusterStartError,
    ClusterStateError,
    InvalidClusterSpecError,
    RedisNotInstalledError,
)
from lukhas_context.ops.kafka_dist import KafkaDist, ensure_kafka, log4j_config
from lukhas_context.streams.admin import cluster_brokers, ensure_topics
from lukhas_context.streams.client import MAX_TRANSACTION_TIMEOUT_S
from lukhas_context.streams.exceptions import AdminError
from lukhas_context.streams.topics import Topics

__all__ = ["ClusterSpec", "LocalCluster"]

HOST = "127.0.0.1"
START_TIMEOUT_S = 60.0
#: A processor may have stores to restore before it serves: it gets longer.
PROCESSOR_START_TIMEOUT_S = 600.0
#: How often a broker looks for transactions past their timeout and aborts them: the bound on
#: how long a dead client's transaction holds its partitions is its timeout plus this.
TRANSACTION_SWEEP_MS = 1000
PROCESSOR_STOP_S = 30.0
BROKER_STOP_S = 60.0
REDIS_STOP_S = 30.0
LOG_TAIL_LINES = 20
STATE_FILE = "cluster.json"
# The spec fields that status/down must know after the process that ran `up` has exited.
_RECORDED = (
    "brokers", "port_base", "redis_port", "api_port", "bootstrap", "topic_prefix", "partitions",
)  # fmt: skip

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """What to run. ``bootstrap`` set means: use that existing Kafka cluster, start no brokers.

    Broker ``i`` (0-based, ``node.id`` i+1) listens on ``port_base + 2*i`` and its controller on
    ``port_base + 2*i + 1``.
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


@dataclass(frozen=True, slots=True)
class _Part:
    """One process of the cluster: where its pid and log live, and how to recognise it."""

    name: str
    directory: Path
    log_name: str
    markers: tuple[str, ...]

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"

    @property
    def log_file(self) -> Path:
        return self.directory / self.log_name

    def running_pid(self) -> int | None:
        """The pid from the pid file if that process is alive and is this part, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if _is_ours(pid, self.markers) else None

    def exit_code(self) -> int | str | None:
        """While waiting for a part this process started: its exit code once it has exited,
        else None. The child's own handle decides (exact, and it reaps the child); a part
        started by another invocation is judged by ``running_pid`` instead."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return "no pid file"
        child = _CHILDREN.get(pid)
        if child is not None:
            return child.poll()
        return None if self.running_pid() is not None else "not running"

    def failure(self, what: str) -> ClusterStartError:
        tail = _tail(self.log_file, LOG_TAIL_LINES)
        return ClusterStartError(f"{self.name} {what}; log {self.log_file}, last lines:\n{tail}")


class LocalCluster:
    """Starts, stops and reports on the processes of one ``ClusterSpec``."""

    def __init__(self, spec: ClusterSpec) -> None:
        # Absolute paths: they are markers in the processes' command lines and must not depend
        # on the directory the next `lukhas` command runs from.
        self.spec = replace(spec, data_dir=spec.data_dir.resolve())
        self.root = self.spec.data_dir

    # ----------------------------------------------------------------------------- public
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
        self._check_recorded_shape()
        self.root.mkdir(parents=True, exist_ok=True)
        self._record(spec)
        self._check_ports_free()
        started: list[str] = []
        cluster_id = None
        broker_parts: list[_Part] = []
        if spec.bootstrap is None:
            cluster_id = self._cluster_id()
            broker_parts = self._start_brokers(cluster_id)
        redis_part = self._start_redis()
        started += [part.name for part in broker_parts]
        self._wait_kafka(spec, broker_parts)
        if redis_part is not None:
            self._wait_redis(redis_part)
            started.append(redis_part.name)
        created = self._ensure_topics()
        if spec.start_processor and self._start_processor():
            started.append(self._processor_part().name)
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
        spec = self._recorded_spec()
        result: dict[str, list[str]] = {"stopped": [], "killed": [], "not_running": []}
        groups = [
            ([self._processor_part()], PROCESSOR_STOP_S),
            (self._broker_parts(spec), BROKER_STOP_S),
            ([self._redis_part(spec)], REDIS_STOP_S),
        ]
        if processors_only:
            groups = groups[:1]
        for parts, grace in groups:
            # Brokers stop together: a KRaft quorum that loses voters one by one would make the
            # last ones wait for a controller that is gone.
            for part, outcome in _stop_all(parts, grace).items():
                result[outcome].append(part)
        return {**result}

    def status(self) -> dict[str, Any]:
        """Live readiness of every part, in the shape ``lukhas status`` prints.

        ``kafka.brokers`` is the configured broker count (for an external ``bootstrap``, the live
        count); ``kafka.ready`` means that many brokers are in the metadata. ``processors`` lists
        the processors recorded by ``up``, with ``alive`` (the pid is ours and running) and
        ``ready`` (``/healthz`` answered 200 within 1 s).
        """
        spec = self._recorded_spec()
        live = _live_brokers(spec.kafka_bootstrap)
        expected = spec.brokers if spec.bootstrap is None else live
        return {
            "kafka": {
                "bootstrap": spec.kafka_bootstrap,
                "brokers": expected,
                "ready": live >= expected > 0,
            },
            "redis": {"url": spec.redis_url, "ready": _redis_ping(spec.redis_port)},
            "processors": self._processor_status(),
        }

    # ---------------------------------------------------------------------- state file
    def _record(self, spec: ClusterSpec) -> None:
        """Write ``cluster.json``: the spec values and pids that ``status``/``down`` need."""
        processor = self._processor_part()
        state = {
            "spec": {key: asdict(spec)[key] for key in _RECORDED},
            "bootstrap": spec.kafka_bootstrap,
            "redis_url": spec.redis_url,
            "broker_pids": [part.running_pid() for part in self._broker_parts(spec)],
            "redis_pid": self._redis_part(spec).running_pid(),
            "processors": [{"pid": processor.running_pid(), "api": spec.api_url}],
        }
        tmp = self.root / (STATE_FILE + ".tmp")
        tmp.write_text(json.dumps(state, indent=2) + "\n")
        tmp.replace(self.root / STATE_FILE)

    def _read_state(self) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((self.root / STATE_FILE).read_text())
        except (OSError, ValueError):
            return {}
        return state

    def _recorded_spec(self) -> ClusterSpec:
        """The spec ``up`` last ran with (it may differ from the caller's defaults)."""
        recorded = self._read_state().get("spec", {})
        return replace(self.spec, **{k: v for k, v in recorded.items() if k in _RECORDED})

    def _check_recorded_shape(self) -> None:
        # The broker count is baked into the formatted log dirs (static quorum voters).
        recorded = self._recorded_spec()
        formatted = any(self._meta_file(i).exists() for i in range(recorded.brokers))
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
        return _run(
            ensure_topics(spec.kafka_bootstrap, topics, brokers=brokers, timeout_s=START_TIMEOUT_S)
        )

    def _check_ports_free(self) -> None:
        """Fail before starting anything if a part that must start finds its port taken."""
        spec = self.spec
        wanted: list[tuple[int, str]] = []
        for i, part in enumerate(self._broker_parts(spec)):
            if part.running_pid() is None:
                wanted += [(spec.port_base + 2 * i, part.name)]
                wanted += [(spec.port_base + 2 * i + 1, f"{part.name} controller")]
        if self._redis_part(spec).running_pid() is None:
            wanted.append((spec.redis_port, "redis"))
        if spec.start_processor and self._processor_part().running_pid() is None:
            wanted.append((spec.api_port, "processor-0 API"))
        for port, what in wanted:
            _check_port_free(port, what)

    # --------------------------------------------------------------------------- brokers
    def _broker_parts(self, spec: ClusterSpec) -> list[_Part]:
        if spec.bootstrap is not None:
            return []
        return [
            _Part(f"broker-{i}", self._broker_dir(i), "kafka.log", (str(self._props(i)),))
            for i in range(spec.brokers)
        ]

    def _broker_dir(self, i: int) -> Path:
        return self.root / f"broker-{i}"

    def _props(self, i: int) -> Path:
        return self._broker_dir(i) / "server.properties"

    def _meta_file(self, i: int) -> Path:
        return self._broker_dir(i) / "logs" / "meta.properties"

    def _cluster_id(self) -> str:
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

    def _start_brokers(self, cluster_id: str) -> list[_Part]:
        """Format and spawn the brokers that are not running; return the parts spawned."""
        todo = [part for part in self._broker_parts(self.spec) if part.running_pid() is None]
        if not todo:
            return []
        dist = ensure_kafka(self.spec.kafka_version, self.spec.kafka_cache, self.spec.kafka_home)
        log4j = log4j_config(self.root / "log4j2.properties")
        indices = [int(part.name.split("-")[1]) for part in todo]
        for i in indices:
            self._write_props(i)
        self._format(
            dist, log4j, cluster_id, [i for i in indices if not self._meta_file(i).exists()]
        )
        for i, part in zip(indices, todo, strict=True):
            _spawn(self._kafka_argv(dist, log4j, i), part)
        return todo

    def _write_props(self, i: int) -> None:
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
            "log.dirs": self._broker_dir(i) / "logs",
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
        }
        self._broker_dir(i).mkdir(parents=True, exist_ok=True)
        self._props(i).write_text("".join(f"{key}={value}\n" for key, value in props.items()))

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

    def _wait_kafka(self, spec: ClusterSpec, spawned: list[_Part]) -> None:
        """Wait until the metadata shows every broker; fail fast if a spawned broker dies."""
        deadline = time.monotonic() + START_TIMEOUT_S
        expected = spec.brokers if spec.bootstrap is None else 1
        while _live_brokers(spec.kafka_bootstrap) < expected:
            for part in spawned:
                if (code := part.exit_code()) is not None:
                    raise part.failure(f"exited during startup (code {code})")
            if time.monotonic() > deadline:
                names = ", ".join(part.name for part in spawned) or spec.kafka_bootstrap
                failing = spawned[0] if spawned else None
                if failing is None:
                    raise ClusterStartError(f"Kafka at {names} not reachable in {START_TIMEOUT_S}s")
                raise failing.failure(f"not ready after {START_TIMEOUT_S}s (waiting for {names})")
            time.sleep(0.5)

    # ----------------------------------------------------------------------------- redis
    def _redis_part(self, spec: ClusterSpec) -> _Part:
        markers = ("redis-server", str(spec.redis_port))
        return _Part("redis", self.root / "redis", "redis.log", markers)

    def _start_redis(self) -> _Part | None:
        """Spawn redis-server unless it runs; return the part spawned, or None."""
        part = self._redis_part(self.spec)
        if part.running_pid() is not None:
            return None
        binary = _redis_server_binary()
        part.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "--bind", HOST, "--port", str(self.spec.redis_port),
            "--dir", str(part.directory), "--appendonly", "yes", "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        _spawn(argv, part)
        return part

    def _wait_redis(self, part: _Part) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _redis_ping(self.spec.redis_port):
            if (code := part.exit_code()) is not None:
                raise part.failure(f"exited during startup (code {code})")
            if time.monotonic() > deadline:
                raise part.failure(f"does not answer PING after {START_TIMEOUT_S}s")
            time.sleep(0.2)

    # ------------------------------------------------------------------------- processor
    def _processor_part(self) -> _Part:
        directory = self.root / "processor-0"
        markers = ("lukhas_context.ops", str(directory / "state"))
        return _Part("processor-0", directory, "worker.log", markers)

    def _start_processor(self) -> bool:
        """Spawn the worker unless it runs and wait for its /healthz; True if spawned."""
        part = self._processor_part()
        if part.running_pid() is not None:
            return False
        spec = self.spec
        argv = [
            sys.executable, "-m", "lukhas_context.ops", "worker",
            "--bootstrap", spec.kafka_bootstrap, "--topic-prefix", spec.topic_prefix,
            "--state-dir", str(part.directory / "state"),
            "--api-host", HOST, "--api-port", str(spec.api_port), "--redis-url", spec.redis_url,
            "--instance-id", f"{spec.topic_prefix}-processor-0",
        ]  # fmt: skip
        part.directory.mkdir(parents=True, exist_ok=True)
        _spawn(argv, part)
        deadline = time.monotonic() + PROCESSOR_START_TIMEOUT_S
        while not _serving(f"{spec.api_url}/healthz"):
            if (code := part.exit_code()) is not None:
                raise part.failure(f"exited during startup (code {code})")
            if time.monotonic() > deadline:
                raise part.failure(f"not serving after {PROCESSOR_START_TIMEOUT_S:g}s")
            time.sleep(0.3)
        return True

    def _processor_status(self) -> list[dict[str, Any]]:
        part = self._processor_part()
        out: list[dict[str, Any]] = []
        for entry in self._read_state().get("processors", []):
            pid = entry.get("pid")
            if pid is None:
                continue
            alive = _is_ours(int(pid), part.markers)
            ready = alive and _healthz(f"{entry['api']}/healthz")
            status: dict[str, Any] = {
                "pid": int(pid), "api": entry["api"], "alive": alive, "ready": ready,
            }  # fmt: skip
            served = _get_json(f"{entry['api']}/v1/partitions") if ready else None
            if served is not None:
                status["digest"] = served.get("digest")
                status["partitions"] = served.get("partitions", [])
            out.append(status)
        return out


# ----------------------------------------------------------------------- process helpers
# Popen objects of the processes this Python process spawned, kept so that they can be reaped
# (no zombies while a test session runs) and so that Popen.__del__ does not warn.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _spawn(argv: list[str], part: _Part) -> int:
    """Start ``argv`` detached (own session: a Ctrl-C of the CLI does not reach it)."""
    part.directory.mkdir(parents=True, exist_ok=True)
    with part.log_file.open("ab") as log:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    _CHILDREN[child.pid] = child
    part.pid_file.write_text(f"{child.pid}\n")
    return child.pid


def _is_ours(pid: int, markers: tuple[str, ...]) -> bool:
    """True if ``pid`` runs and its command line holds every marker (zombies have none)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return False
    return all(marker in cmdline for marker in markers)


def _stop_all(parts: list[_Part], grace_s: float) -> dict[str, str]:
    """SIGTERM every running part, SIGKILL those still up after ``grace_s``; remove pid files.

    Returns part name -> ``"stopped"``, ``"killed"`` or ``"not_running"``.
    """
    outcome: dict[str, str] = {}
    running: dict[str, tuple[_Part, int]] = {}
    for part in parts:
        pid = part.running_pid()
        if pid is None:
            outcome[part.name] = "not_running"
        else:
            _signal(pid, signal.SIGTERM)
            running[part.name] = (part, pid)
    deadline = time.monotonic() + grace_s
    while running and time.monotonic() < deadline:
        for name, (part, pid) in list(running.items()):
            if not _is_ours(pid, part.markers):
                outcome[name] = "stopped"
                del running[name]
        time.sleep(0.2)
    for name, (_part, pid) in running.items():
        _signal(pid, signal.SIGKILL)
        outcome[name] = "killed"
    for part in parts:
        part.pid_file.unlink(missing_ok=True)
    return outcome


def _signal(pid: int, signum: signal.Signals) -> None:
    # It may exit between the check and the signal: that is the outcome we wanted.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def _port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _check_port_free(port: int, what: str) -> None:
    # A port held by someone else makes the JVM die with a BindException deep in its log.
    if _port_open(HOST, port):
        raise ClusterStartError(f"port {port} for {what} is in use by another process")


# --------------------------------------------------------------------- readiness probes
def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a private loop, leaving the thread's current event loop untouched."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def _live_brokers(bootstrap: str, timeout_s: float = 2.0) -> int:
    """Brokers in the metadata, 0 if none answers (checked by TCP first: aiokafka logs every
    refused connection as an error)."""
    hosts = [entry.rsplit(":", 1) for entry in bootstrap.split(",")]
    if not any(_port_open(host, int(port)) for host, port in hosts):
        return 0
    try:
        return _run(cluster_brokers(bootstrap, timeout_s))
    except AdminError:
        return 0


def _redis_ping(port: int) -> bool:
    client = redis.Redis(host=HOST, port=port, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _get_json(url: str) -> dict[str, Any] | None:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            data = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _serving(healthz_url: str) -> bool:
    """The worker folds (a 503 reads as None) and has opened every partition it was
    assigned."""
    health = _get_json(healthz_url)
    return health is not None and bool(health.get("partitions")) and not health.get("restoring")


def _healthz(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False


def _redis_server_binary() -> str:
    """``redis-server``'s path; installs it with apt-get when missing and running as root."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise RedisNotInstalledError(
            "redis-server not found on PATH: install it (apt-get install redis-server, "
            "brew install redis) and run `lukhas up` again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["sh", "-c", "apt-get update -qq && apt-get install -y -qq redis-server"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = shutil.which("redis-server")
    if found is None:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-LOG_TAIL_LINES:])
        raise RedisNotInstalledError(f"apt-get install redis-server failed:\n{tail}")
    return found
