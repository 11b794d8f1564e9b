"""Session fixtures on real parts: a Kafka broker and a redis-server started once per session by
the project's own ``LocalCluster`` (or an existing cluster named by ``LUKHAS_BOOTSTRAP``), and
per-test topics, consumer groups and state dirs, so tests never see each other's data."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.ops.cluster import ClusterSpec, LocalCluster
from lukhas_context.processors.api import ReadApi
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.materializer import Materializer
from lukhas_context.state.manifest import Summary
from lukhas_context.streams import fastfetch
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics, partition_for

PARTITIONS = 3

# In-process workers fetch as `lukhas worker` does (records built in C), and so does every
# consumer of the tests: each test reads what a worker's consumer would.
fastfetch.install()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    """A compose test that fails carries the containers' logs since it began in its report
    (CI prints reports; the cluster itself is gone by the time anyone looks)."""
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call" and report.failed and "compose" in getattr(item, "fixturenames", ()):
        from .compose import logs_since

        workers = logs_since(call.start, ("worker-1", "worker-2"), tail=400)
        brokers = logs_since(call.start, ("kafka-1", "kafka-2", "kafka-3"), tail=60)
        report.sections.append(("compose logs since the test began", f"{workers}\n{brokers}"))


async def serving_all(worker: Any, timeout: float = 90) -> None:
    """Until an in-process worker serves all ``PARTITIONS`` partitions (its stores are open)."""
    deadline = time.monotonic() + timeout
    while len(worker.materializer.stores) < PARTITIONS:
        assert worker.materializer.running, "the worker stopped"
        assert time.monotonic() < deadline, f"serves {sorted(worker.materializer.stores)}"
        await asyncio.sleep(0.05)


async def wal_ends(bootstrap: str, topic: str) -> dict[int, int]:
    """The end offset of each of the ``PARTITIONS`` partitions of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: end for tp, end in (await consumer.end_offsets(tps)).items()}
    finally:
        await consumer.stop()


async def assert_equal_to_replay(
    cluster: Any, topics: Topics, scratch: Path, served: list[dict[str, Any]]
) -> None:
    """Each partition of ``served`` (``/v1/partitions`` entries) has the digest a replay of
    the WAL from scratch up to its ``next_offset`` gives."""
    from lukhas_context.processors.config import WorkerConfig
    from lukhas_context.processors.offline import From, restore_offline

    replay = WorkerConfig(cluster.bootstrap, scratch, topics=topics)
    for s in served:
        report = await restore_offline(
            replay, s["partition"], From.SCRATCH, progress=False, until=s["next_offset"]
        )
        assert report.restore.digest == s["digest"], s


def sentinels(prefix: str, partitions: int = PARTITIONS) -> list[str]:
    """One context id per partition, each starting with ``prefix``: written after the data, a
    reader that has seen all of them has seen everything written before them, repeats
    included (a partition is read in order), so "nothing more arrived" needs no idle timer."""
    names = []
    for p in range(partitions):
        names.append(
            next(
                f"{prefix}{n}"
                for n in range(100_000)
                if partition_for(f"{prefix}{n}".encode(), partitions) == p
            )
        )
    return names


async def read_until(
    watcher: Any, done: Callable[[list[Any]], bool], timeout: float = 60, limit: int = 100_000
) -> list[Any]:
    """The items of a started watcher until ``done(items)`` holds; fails after ``timeout``
    seconds or ``limit`` items (so a flood of repeats cannot loop forever)."""
    items: list[Any] = []

    async def take() -> None:
        async for item in watcher:
            items.append(item)
            if done(items):
                return
            assert len(items) < limit, f"{len(items)} items and still not done"
        raise AssertionError(f"the watch ended after {len(items)} items, before it was done")

    try:
        await asyncio.wait_for(take(), timeout)
    except TimeoutError:
        raise AssertionError(f"not done after {timeout} s: {len(items)} items") from None
    return items


def seen_all(names: list[str]) -> Callable[[list[Any]], bool]:
    """For ``read_until``: every context in ``names`` has a change among the items."""
    wanted = set(names)
    return lambda items: wanted <= {getattr(i, "context_id", None) for i in items}


def summaries(worker: Any) -> dict[int, Summary]:
    return {p: s.summary() for p, s in sorted(worker.materializer.stores.items())}


async def drained(worker: Any, timeout: float = 90) -> dict[int, Summary]:
    """The partitions' summaries once an in-process worker folded the WAL to its end."""
    m = worker.materializer
    ends = await wal_ends(m.config.bootstrap, m.config.topics.events)
    deadline = time.monotonic() + timeout
    while any(p not in m.stores or m.stores[p].next_offset < end for p, end in ends.items()):
        assert m.running, "the worker stopped"
        assert time.monotonic() < deadline, "the worker did not drain the WAL"
        await asyncio.sleep(0.05)
    return summaries(worker)


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


#: Ports handed out in this session (never twice), below the kernel's ephemeral range: a
#: port picked inside that range can be taken meanwhile by any outgoing connection (a Kafka
#: client's local port), and the server that binds it later fails "address already in use".
_HANDED_OUT: set[int] = set()
_RANDOM = random.Random()


def stop_process(proc: subprocess.Popen[bytes] | None) -> None:
    """Terminates ``proc`` if it runs; killed when it has not ended 30 s later."""
    if proc is not None and proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def free_port() -> int:
    """A free loopback port below the ephemeral range, not handed out before."""
    return free_port_run(1)


def free_port_run(n: int) -> int:
    """The first of ``n`` consecutive free loopback ports, below the ephemeral range."""
    top = min(_ephemeral_range()[0], 65536) - n
    for _ in range(1000):
        base = _RANDOM.randrange(10_000, top)
        run = range(base, base + n)
        if not _HANDED_OUT.intersection(run) and all(_free(port) for port in run):
            _HANDED_OUT.update(run)
            return base
    raise RuntimeError(f"no {n} consecutive free ports below the ephemeral range")


def _free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


@pytest.fixture(scope="session")
def free_ports() -> Callable[[int], int]:
    """``free_ports(n)``: the first of n consecutive free loopback ports."""
    return free_port_run


@pytest.fixture
def read_topic(cluster: Cluster) -> Callable[..., Awaitable[list[Any]]]:
    """``await read_topic(topic, until)``: the committed records from the start of ``topic``
    until ``until(records)`` holds, bounded by ``timeout`` seconds (then it returns what it
    read). Committed: workers publish in Kafka transactions, and an aborted one is not there."""

    async def read(
        topic: str, until: Callable[[list[Any]], bool], timeout: float = 60
    ) -> list[Any]:
        consumer = AIOKafkaConsumer(
            topic, bootstrap_servers=cluster.bootstrap, auto_offset_reset="earliest",
            isolation_level="read_committed",
        )  # fmt: skip
        await consumer.start()
        records: list[Any] = []
        deadline = time.monotonic() + timeout
        try:
            while not until(records) and time.monotonic() < deadline:
                batch = await consumer.getmany(timeout_ms=500, max_records=5000)
                records += [m for messages in batch.values() for m in messages]
        finally:
            await consumer.stop()
        return records

    return read


async def _kill_repeatedly(
    task: asyncio.Task[Any], worker: WorkerProcess, rng: random.Random,
    pause: tuple[float, float], max_kills: int = 1000, deadline_s: float = 120,
) -> int:  # fmt: skip
    """SIGKILLs ``worker`` after random pauses while ``task`` runs, restarting it each time
    and waiting until it serves its partitions again. Bounded in kills and time; returns
    how many kills there were."""
    kills = 0
    deadline = time.monotonic() + deadline_s
    while not task.done() and time.monotonic() < deadline and kills < max_kills:
        await asyncio.sleep(rng.uniform(*pause))
        if task.done():
            break
        worker.kill9()
        kills += 1
        worker.start()
        await asyncio.to_thread(worker.wait_healthy)
    return kills


@pytest.fixture
def kill_repeatedly() -> Callable[..., Awaitable[int]]:
    """See ``_kill_repeatedly``."""
    return _kill_repeatedly


@dataclass(frozen=True)
class Cluster:
    bootstrap: str
    redis_url: str | None


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    existing = os.environ.get("LUKHAS_BOOTSTRAP")
    if existing:
        yield Cluster(existing, os.environ.get("LUKHAS_REDIS_URL"))
        return
    base = free_port_run(4)
    spec = ClusterSpec(
        data_dir=tmp_path_factory.mktemp("session-cluster"),
        port_base=base,
        redis_port=base + 2,
        api_port=base + 3,
        topic_prefix="session",
        partitions=1,
        kafka_home=os.environ.get("KAFKA_HOME"),
        start_processor=False,
    )
    local = LocalCluster(spec)
    try:
        status = local.up()
        yield Cluster(status["kafka"]["bootstrap"], status["redis"]["url"])
    finally:
        local.down()


@pytest.fixture
async def topics(cluster: Cluster) -> Topics:
    """Fresh topics of the design, 3 partitions, under a prefix of this test's own."""
    t = Topics(f"t{uuid.uuid4().hex[:10]}")
    await ensure_topics(cluster.bootstrap, t.specs(PARTITIONS), brokers=None)
    return t


@dataclass
class RunningWorker:
    materializer: Materializer
    api: ReadApi
    task: asyncio.Task[None]
    url: str

    async def stop(self) -> None:
        self.materializer.stop()
        try:
            await self.task
        finally:
            await self.materializer.close()
            await self.api.close()


WorkerFactory = Callable[..., Awaitable[RunningWorker]]


@pytest.fixture
async def start_worker(
    cluster: Cluster, topics: Topics, tmp_path: Path
) -> AsyncIterator[WorkerFactory]:
    """Starts an in-process worker (materialiser + read API); stops every one at the end."""
    started: list[RunningWorker] = []

    async def start(state_dir: Path | None = None, **overrides: object) -> RunningWorker:
        port = free_port()
        config = WorkerConfig(
            bootstrap=cluster.bootstrap,
            state_dir=state_dir or tmp_path / "state",
            topics=topics,
            group_id=f"{topics.prefix}-group",
            api_port=port,
            fetch_timeout_ms=50,
            **overrides,  # type: ignore[arg-type]
        )
        materializer = Materializer(config)
        api = ReadApi(materializer)
        await api.start("127.0.0.1", port)
        await materializer.start()
        worker = RunningWorker(
            materializer, api, asyncio.create_task(materializer.run()), f"http://127.0.0.1:{port}"
        )
        started.append(worker)
        return worker

    yield start
    for worker in started:
        if not worker.task.done() or worker.materializer.running:
            await worker.stop()


def client_for(cluster: Cluster, topics: Topics, url: str | None) -> ContextClient:
    return ContextClient(ClientConfig(cluster.bootstrap, url, topics))


@pytest.fixture
def make_client(cluster: Cluster, topics: Topics) -> Callable[[str | None], ContextClient]:
    """``async with make_client(worker.url) as client:`` writes to this test's topics."""
    return lambda url: client_for(cluster, topics, url)


@dataclass
class WorkerProcess:
    """A worker in a child process (for kill -9), running ``lukhas worker``."""

    argv: list[str]
    log: Path
    url: str
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen(
            self.argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT, start_new_session=True
        )

    def wait_healthy(self, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"worker exited {self.proc.returncode}: {self.log.read_text()}"
                )
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as r:
                    if r.status == 200 and json.loads(r.read())["partitions"]:
                        return  # folding, with its partitions assigned
            except OSError:
                pass
            time.sleep(0.1)
        raise AssertionError(f"worker not healthy in {timeout_s} s: {self.log.read_text()[-3000:]}")

    def kill9(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(timeout=60)


def shell_worker(line: str, env: dict[str, str], cwd: Path) -> WorkerProcess:
    """Starts a README's ``lukhas worker`` line as a shell runs it, in ``cwd``, its read API on
    a free port (``--api-port`` added), its output in ``cwd/worker.log``."""
    port = free_port()
    argv = ["sh", "-c", f"exec {line} --api-port {port}"]
    worker = WorkerProcess(argv, cwd / "worker.log", f"http://127.0.0.1:{port}")
    worker.proc = subprocess.Popen(argv, stdout=worker.log.open("ab"), stderr=subprocess.STDOUT,
                                   env=env, cwd=cwd, start_new_session=True)  # fmt: skip
    return worker


@pytest.fixture
def worker_process(cluster: Cluster, topics: Topics, tmp_path: Path) -> Iterator[WorkerProcess]:
    port = free_port()
    argv = [
        sys.executable, "-m", "lukhas_context.ops", "worker",
        "--bootstrap", cluster.bootstrap, "--state-dir", str(tmp_path / "proc-state"),
        "--topic-prefix", topics.prefix, "--group", f"{topics.prefix}-group",
        "--api-port", str(port), "--instance-id", "worker-under-test",
    ]  # fmt: skip
    worker = WorkerProcess(argv, tmp_path / "worker.log", f"http://127.0.0.1:{port}")
    yield worker
    if worker.proc is not None and worker.proc.poll() is None:
        worker.proc.kill()
        worker.proc.wait()


class OpenTransaction:
    """A Kafka transaction of the client's transactional producer, begun and left open while
    the block runs (``kafka_transaction``): what any transactional producer can do to a WAL
    partition. ``put`` sends one event into it and returns its record metadata once the
    broker has it (uncommitted); ``receipts`` are the puts'."""

    def __init__(self, client: ContextClient, producer: Any) -> None:
        self.client = client
        self.producer = producer
        self.receipts: list[Any] = []

    async def put(self, context_id: str, doc: dict[str, Any]) -> Any:
        from lukhas_context.schemas.event import Put
        from lukhas_context.streams.results import Receipt
        from lukhas_context.streams.validation import canonical_json

        writer = self.client.writer
        key, value, event_id = writer.event(
            context_id, Put(canonical_json(doc, 1 << 20), None), None
        )
        meta = await (await self.producer.send(writer.config.topics.events, value, key=key))
        self.receipts.append(Receipt(context_id, meta.partition, meta.offset, str(event_id),
                                     self.client))  # fmt: skip
        return meta


@contextlib.asynccontextmanager
async def kafka_transaction(client: ContextClient) -> AsyncIterator[OpenTransaction]:
    """Begins a Kafka transaction with ``client``'s transactional producer; commits it when
    the block ends, aborts it when the block raises. (The client's own ``transaction()``
    sends everything at its commit, so it never holds a partition while a block runs.)"""
    producer = await client.writer.transactional_producer()
    await producer.begin_transaction()
    try:
        yield OpenTransaction(client, producer)
    except BaseException:
        await producer.abort_transaction()
        raise
    await producer.commit_transaction()


def v2_writer_schema(folder: Path) -> Any:
    """A newer writer schema of events: the shipped one plus a field its reader does not
    know, as a producer upgraded before the workers would write it."""
    from importlib import resources

    from lukhas_context.schemas.registry import schema_version

    shipped = resources.files("lukhas_context.schemas").joinpath("avro/ContextEvent.v1.avsc")
    schema = json.loads(shipped.read_text())
    schema["fields"].append({"name": "priority", "type": "int", "default": 0})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ContextEvent.v2.avsc").write_text(json.dumps(schema))
    return schema_version("ContextEvent", 2, schema)


def v2_event(v2: Any, context_id: str, doc: str) -> bytes:
    """A Put of ``doc`` to ``context_id`` written with the newer writer schema ``v2``."""
    import io

    from fastavro import schemaless_writer

    from lukhas_context.schemas.codec import event_to_avro
    from lukhas_context.schemas.event import ContextEvent, Put

    event = ContextEvent(uuid.uuid4().bytes, context_id, Put(doc.encode(), None))
    out = io.BytesIO()
    out.write(v2.header)
    schemaless_writer(out, v2.parsed, {**event_to_avro(event), "priority": 5})
    return out.getvalue()
