"""Helpers shared by the benchmark scripts (``materialize.py``, ``restore.py``, ``changes.py``).

The scripts run as ``python benchmarks/X.py``, so this folder is on ``sys.path`` and they
import this module as ``_support``. Importing it starts nothing and writes nothing.

- progress lines on stderr (``progress``), free ports, scratch directories;
- the cluster: ``LUKHAS_BOOTSTRAP`` or a one-broker ``LocalCluster`` on free ports, torn down
  and removed on exit (``bootstrap_servers``);
- a ``lukhas worker`` subprocess: started (``spawn_worker``, ``start_worker`` waits for
  ``/healthz``), stopped (``stop_worker``), its ``/metrics`` (``metric``) and its log's
  warnings and errors (``log_problems``);
- appending: encoded puts by partition (``encoded_puts``), full batches (``send_records``,
  ``send_partitions``);
- reading: a bare consumer's rate (``bare_read``), a topic's offsets (``offsets``);
- figures: ``percentile``, ``print_rows``, ``write_result``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from lukhas_context.ops.cluster import ClusterSpec, LocalCluster
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import EMPTY_METADATA, ContextEvent, Put
from lukhas_context.streams.topics import Topics, partition_for

#: Where ``write_result`` writes; ``LUKHAS_BENCH_RESULTS`` moves it (the smoke test's own dir).
RESULTS = Path(os.environ.get("LUKHAS_BENCH_RESULTS") or Path(__file__).parent / "results")
Records = dict[int, list[tuple[bytes, bytes]]]
N = TypeVar("N", int, float)


# ---------------------------------------------------------------- process and files


def progress(tag: str) -> Callable[[str], None]:
    """A ``say(message)`` printing ``[tag  seconds since now] message`` to stderr."""
    started = time.monotonic()

    def say(message: str) -> None:
        print(f"[{tag} {time.monotonic() - started:7.1f}s] {message}", file=sys.stderr)

    return say


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def scratch_dir(prefix: str) -> Iterator[Path]:
    """A fresh temporary directory, removed (with all in it) on exit."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def bootstrap_servers(say: Callable[[str], None] | None = None) -> Iterator[str]:
    """``LUKHAS_BOOTSTRAP`` if set; otherwise a one-broker ``LocalCluster`` on free ports in a
    temporary directory, brought down and removed on exit (also when ``up`` fails)."""
    bootstrap = os.environ.get("LUKHAS_BOOTSTRAP")
    if bootstrap:
        yield bootstrap
        return
    with scratch_dir("lukhas-bench-cluster-") as data_dir:
        spec = ClusterSpec(
            data_dir=data_dir, port_base=free_port(), redis_port=free_port(),
            api_port=free_port(), topic_prefix="benchsetup", partitions=1,
            start_processor=False, kafka_home=os.environ.get("KAFKA_HOME"),
        )  # fmt: skip
        cluster = LocalCluster(spec)
        try:
            bootstrap = cluster.up()["kafka"]["bootstrap"]
            if say is not None:
                say(f"cluster up at {bootstrap}")
            yield bootstrap
        finally:
            cluster.down()


def print_rows(rows: Iterable[tuple[str, str]], width: int) -> None:
    """Prints the figures' table to stdout: each label left-aligned in ``width`` columns."""
    for label, value in rows:
        print(f"{label:<{width}}  {value}")


def write_result(name: str, result: Mapping[str, Any]) -> None:
    """Writes ``result`` as ``benchmarks/results/<name>.json``."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")


# ---------------------------------------------------------------- the worker


def http_get(url: str, timeout: float = 10) -> tuple[int, bytes]:
    """Status and body of a GET; an HTTP error status is returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def metric(url: str, name: str, default: float = 0.0, timeout: float = 10) -> float:
    """The value of ``name`` (or ``name_total``) on the worker's ``/metrics``; ``default`` when
    it is not there."""
    text = http_get(f"{url}/metrics", timeout)[1].decode()
    match = re.search(rf"^{name}(?:_total)? (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else default


def spawn_worker(
    bootstrap: str, topics: Topics, state: Path, log: Path, extra: Sequence[str] = ()
) -> tuple[subprocess.Popen[bytes], str]:
    """Starts ``lukhas worker`` on ``topics`` with ``state`` as its state dir, its output to
    ``log``, its API on a free port; returns the process and the API's URL at once."""
    port = free_port()
    argv = [
        sys.executable, "-m", "lukhas_context.ops", "worker", "--bootstrap", bootstrap,
        "--topic-prefix", topics.prefix, "--group", f"{topics.prefix}-bench",
        "--state-dir", str(state), "--api-port", str(port), *extra,
    ]  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    return proc, f"http://127.0.0.1:{port}"


def start_worker(
    bootstrap: str,
    topics: Topics,
    state: Path,
    partitions: int,
    timeout_s: float,
    extra: Sequence[str] = (),
) -> tuple[subprocess.Popen[bytes], str]:
    """``spawn_worker`` (its log: ``state.parent / "worker.log"``), then waits until its
    ``/healthz`` lists ``partitions`` partitions. Stops it and raises if it exits first or
    ``timeout_s`` passes."""
    state.mkdir(parents=True, exist_ok=True)
    log = state.parent / "worker.log"
    proc, url = spawn_worker(bootstrap, topics, state, log, extra)
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_worker(proc)
            raise RuntimeError(f"worker not healthy: {log.read_text()[-2000:]}")
        with contextlib.suppress(OSError, ValueError):
            status, body = http_get(f"{url}/healthz")
            if status == 200 and len(json.loads(body).get("partitions", ())) == partitions:
                return proc, url
        time.sleep(0.1)


def stop_worker(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM, up to 60 s to exit, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)


def log_problems(log: Path) -> list[str]:
    """The ERROR and WARNING lines of a worker's log (none if there is no log)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line for line in text.splitlines() if " ERROR " in line or " WARNING " in line]


# ---------------------------------------------------------------- appending


def doc_for(i: int) -> bytes:
    """A small document, canonical as ``client.put`` writes it (sorted keys, no spaces)."""
    return b'{"text":"hello","turn":%d,"user":"u-%d"}' % (i, i % 97)


def encoded_puts(n: int, parts: int, cid_of: Callable[[int], str]) -> Records:
    """``n`` encoded puts (``doc_for(i)`` on ``cid_of(i)``), by the partition of their key."""
    codec = EventCodec()
    by_partition: Records = {p: [] for p in range(parts)}
    for i in range(n):
        cid = cid_of(i)
        key = cid.encode()
        event = ContextEvent(uuid.uuid4().bytes, cid, Put(doc_for(i)), None, None, EMPTY_METADATA)
        by_partition[partition_for(key, parts)].append((key, codec.encode(event)))
    return by_partition


def new_producer(bootstrap: str, linger_ms: int = 0) -> AIOKafkaProducer:
    return AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        enable_idempotence=True,
        acks="all",
        max_batch_size=512 * 1024,
        linger_ms=linger_ms,
    )


async def _enqueue(
    producer: AIOKafkaProducer, topic: str, partition: int, records: Iterable[tuple[bytes, bytes]]
) -> list[Any]:
    """Hands ``records`` to the producer in full batches; returns the batches' ack futures."""
    acks = []
    batch = producer.create_batch()
    for key, value in records:
        if batch.append(key=key, value=value, timestamp=None) is None:
            acks.append(await producer.send_batch(batch, topic, partition=partition))
            batch = producer.create_batch()
            batch.append(key=key, value=value, timestamp=None)
    if batch.record_count():
        acks.append(await producer.send_batch(batch, topic, partition=partition))
    return acks


async def send_records(
    producer: AIOKafkaProducer, topic: str, partition: int, records: Iterable[tuple[bytes, bytes]]
) -> None:
    """Sends ``records`` to one partition in full batches; returns once all are acknowledged."""
    await asyncio.gather(*await _enqueue(producer, topic, partition, records))


async def send_partitions(bootstrap: str, topic: str, by_partition: Records) -> None:
    """Sends ``by_partition`` with a producer of its own, partition after partition in full
    batches; returns once all are acknowledged."""
    producer = new_producer(bootstrap)
    await producer.start()
    try:
        acks = []
        for p, records in by_partition.items():
            acks += await _enqueue(producer, topic, p, records)
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


# ---------------------------------------------------------------- reading


async def bare_read(
    consumer: AIOKafkaConsumer,
    n: int,
    timeout_s: float,
    *,
    timeout_ms: int,
    max_records: int,
    assign: Sequence[TopicPartition] = (),
    samples: list[tuple[float, float]] | None = None,
) -> tuple[int, float, float]:
    """Starts ``consumer`` (assigned ``assign`` from the beginning, if given), reads ``n``
    records touching key, value and offset, stops it. Returns the records seen, the rate
    (records after the first batch over the time from that batch to the last record; when the
    first batch held them all, all of them over the time from the start) and that time.
    ``samples``: gets ``(time, records seen)`` from the start and after every batch.
    Raises if fewer than ``n`` arrive in ``timeout_s``."""
    if samples is not None:
        samples.append((time.perf_counter(), 0.0))
    t_start = time.perf_counter()
    await consumer.start()
    seen = first_count = 0
    t_first = t_last = 0.0
    deadline = time.monotonic() + timeout_s
    try:
        if assign:
            consumer.assign(list(assign))
            await consumer.seek_to_beginning(*assign)
        while seen < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=timeout_ms, max_records=max_records)
            for records in batch.values():
                for m in records:
                    _ = (m.key, m.value, m.offset)
                seen += len(records)
            if samples is not None and batch:
                samples.append((time.perf_counter(), float(seen)))
            if seen and not t_first:
                t_first, first_count = time.perf_counter(), seen
        t_last = time.perf_counter()
    finally:
        await consumer.stop()
    if seen < n:
        raise RuntimeError(f"bare consumer read {seen} of {n} in {timeout_s} s")
    if first_count >= n or t_last <= t_first:  # one batch held them all (a small n)
        return seen, n / max(t_last - t_start, 1e-9), t_last - t_start
    return seen, (n - first_count) / (t_last - t_first), t_last - t_first


async def offsets(
    bootstrap: str, topic: str, partitions: int
) -> tuple[dict[int, int], dict[int, int]]:
    """The beginning and end offsets of each partition of ``topic``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        low = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        return {tp.partition: low[tp] for tp in tps}, {tp.partition: end[tp] for tp in tps}
    finally:
        await consumer.stop()


# ---------------------------------------------------------------- figures


def percentile(values: Sequence[N], q: float) -> N:
    """Nearest-rank percentile of sorted ``values``."""
    return values[min(len(values) - 1, max(0, math.ceil(q * len(values)) - 1))]
