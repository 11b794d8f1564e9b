"""Issue 9, item 10: a worker whose wall clock is an hour ahead of the brokers' (RELIABILITY.md
row 12). libfaketime skews the real ``lukhas worker`` process; the brokers and the test keep
the true time. Reads, the sweeper's "due" and the skew report all follow the log's clock."""

from __future__ import annotations

import asyncio
import glob
import itertools
import json
import os
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.processors.clock import LogClock
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import Expire
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError

from .conftest import PARTITIONS, WorkerProcess, free_port

pytestmark = pytest.mark.timeout(300)

HOUR_MS = 3_600_000
CONTEXTS = 50
#: A window longer than the sweeper's retry interval (5 s) and many sweeps (0.2 s).
WINDOW_S = 12.0


def _libfaketime() -> str:
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    assert found, "libfaketime is not installed (Debian: apt-get install faketime)"
    return found[0]


class SkewedWorker(WorkerProcess):
    """``lukhas worker`` under libfaketime, its wall clock ``offset`` ahead (monotonic real)."""

    env: dict[str, str] = {}

    def start(self) -> None:
        import subprocess

        self.proc = subprocess.Popen(
            self.argv, stdout=self.log.open("ab"), stderr=subprocess.STDOUT,
            start_new_session=True, env=self.env,
        )  # fmt: skip


def _skewed_worker(cluster: Any, topics: Any, tmp_path: Path, offset: str) -> SkewedWorker:
    port = free_port()
    argv = [
        sys.executable, "-m", "lukhas_context.ops", "worker",
        "--bootstrap", cluster.bootstrap, "--state-dir", str(tmp_path / "state"),
        "--topic-prefix", topics.prefix, "--group", f"{topics.prefix}-group",
        "--api-port", str(port), "--expiry-interval", "0.2",
    ]  # fmt: skip
    worker = SkewedWorker(argv, tmp_path / "worker.log", f"http://127.0.0.1:{port}")
    worker.env = {
        **os.environ,
        "LD_PRELOAD": _libfaketime(),
        "FAKETIME": offset,
        "FAKETIME_DONT_FAKE_MONOTONIC": "1",
        "FAKETIME_NO_CACHE": "1",
    }
    return worker


async def _expires_when_due(client: ContextClient, cluster: Any, topics: Any) -> None:
    """A context with a 3 s TTL is hidden and expired (one Expire, applied) soon after."""
    due = await client.put("due-soon", {"x": 1}, ttl=3.0)
    assert (await client.get("due-soon", min_offset=due, timeout=30)).version == 1
    deadline = time.monotonic() + 60
    while True:
        try:
            await client.get("due-soon")
        except ContextNotFoundError:
            break
        assert time.monotonic() < deadline, "a due context was never hidden"
        await asyncio.sleep(0.1)
    while not (
        expires := [
            e for e in await _expires_in_wal(cluster.bootstrap, topics.events)
            if e[0] == "due-soon"
        ]
    ):  # fmt: skip
        assert time.monotonic() < deadline, "no Expire appended for a due context"
        await asyncio.sleep(0.5)
    outcomes = [await client.outcome(p, o, 30) for _, _, p, o, _ in expires]
    assert outcomes[0].status == "applied", outcomes  # the first was not early
    assert len(expires) <= 2, expires  # a retry only if the first was slow to apply


def _healthz(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/healthz", timeout=10) as r:
        return dict(json.loads(r.read()))


async def _expires_in_wal(bootstrap: str, topic: str) -> list[tuple[str, int, int, int, int]]:
    """Every Expire event in the WAL: (context id, version, partition, offset, log time)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
    )
    await consumer.start()
    codec = EventCodec()
    found: list[tuple[str, int, int, int, int]] = []
    try:
        tps = [TopicPartition(topic, p) for p in range(PARTITIONS)]
        consumer.assign(tps)
        ends = await consumer.end_offsets(tps)
        deadline = time.monotonic() + 60
        while [tp for tp, end in ends.items() if await consumer.position(tp) < end]:
            assert time.monotonic() < deadline, "the WAL was not read to its end"
            for records in (await consumer.getmany(timeout_ms=500)).values():
                for m in records:
                    event = codec.decode(m.value)
                    if type(event.op) is Expire:
                        found.append(
                            (event.context_id, event.op.version, m.partition, m.offset,
                             m.timestamp)
                        )  # fmt: skip
    finally:
        await consumer.stop()
    return found


async def test_a_worker_an_hour_ahead_reads_and_expires_by_the_log_clock(
    cluster: Any, topics: Any, tmp_path: Path
) -> None:
    worker = _skewed_worker(cluster, topics, tmp_path, "+1h")
    worker.start()
    try:
        await asyncio.to_thread(worker.wait_healthy)
        config = ClientConfig(cluster.bootstrap, worker.url, topics)
        async with ContextClient(config) as client:
            # Ten minutes left by the brokers' clock (50 minutes past, by the worker's).
            receipts = [
                await client.put(f"ten-min:{i}", {"i": i}, ttl=600) for i in range(CONTEXTS)
            ]
            for i, receipt in enumerate(receipts):
                got = await client.get(f"ten-min:{i}", min_offset=receipt, timeout=30)
                assert got.doc == {"i": i}, "a live context read as gone"

            # The skew is measured and reported: the faked clock really is an hour ahead.
            clock = _healthz(worker.url)["clock"]
            assert clock["measured"], clock
            assert abs(clock["skew_ms"] - HOUR_MS) < 60_000, clock
            assert clock["error_ms"] is not None and clock["error_ms"] < 5_000, clock

            # Over a window of many sweeps and retry intervals, no Expire for them.
            before = await _expires_in_wal(cluster.bootstrap, topics.events)
            await asyncio.sleep(WINDOW_S)
            after = await _expires_in_wal(cluster.bootstrap, topics.events)
            appended = [e for e in after if e not in before and e[0].startswith("ten-min:")]
            assert len(appended) <= 2, f"{len(appended)} refused Expires appended: {appended}"
            for i in range(CONTEXTS):
                assert (await client.get(f"ten-min:{i}")).doc == {"i": i}

            # An expiry that is really due (by the brokers' clock) is still applied.
            await _expires_when_due(client, cluster, topics)
        assert "off the log's (the brokers') clock" in worker.log.read_text()
        assert worker.terminate() == 0
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.kill9()


async def test_a_worker_an_hour_behind_hides_and_expires_by_the_log_clock(
    cluster: Any, topics: Any, tmp_path: Path
) -> None:
    """The other way round: by the worker's clock nothing is due for an hour."""
    worker = _skewed_worker(cluster, topics, tmp_path, "-1h")
    worker.start()
    try:
        await asyncio.to_thread(worker.wait_healthy)
        config = ClientConfig(cluster.bootstrap, worker.url, topics)
        async with ContextClient(config) as client:
            await _expires_when_due(client, cluster, topics)
        clock = _healthz(worker.url)["clock"]
        assert abs(clock["skew_ms"] + HOUR_MS) < 60_000, clock
        assert worker.terminate() == 0
    finally:
        if worker.proc is not None and worker.proc.poll() is None:
            worker.kill9()


class _AheadForTheSweeper(LogClock):
    """A wrong estimate that acknowledgements do not correct (as if the brokers' clock kept
    stepping back): every context is "due" an hour early."""

    @property
    def measured(self) -> bool:
        return True

    def earliest_ms(self) -> int:
        return super().now_ms() + HOUR_MS


async def test_refused_expires_back_off_exponentially(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any
) -> None:
    """Whatever makes the fold refuse an Expire as early, the sweeper does not re-append it
    every ``expiry_retry_s``: each retry of the version waits twice as long (capped)."""
    worker = await start_worker(expiry_interval_s=0.05, expiry_retry_s=0.2, expiry_retry_max_s=30)
    async with make_client(worker.url) as client:
        receipt = await client.put("early", {"x": 1}, ttl=600)
        await client.get("early", min_offset=receipt, timeout=30)
        worker.materializer.clock = _AheadForTheSweeper()
        # Four appends of the same Expire (retries 1-3 after 0.2, 0.4 and 0.8 s): waited
        # for, then their log times show each retry waited twice as long as the one before.
        deadline = time.monotonic() + 60
        while True:
            expires = [
                e for e in await _expires_in_wal(cluster.bootstrap, topics.events)
                if e[0] == "early"
            ]  # fmt: skip
            if len(expires) >= 4:
                break
            assert time.monotonic() < deadline, expires
            await asyncio.sleep(0.2)
        times = [e[4] for e in expires]
        gaps = [b - a for a, b in itertools.pairwise(times)]
        # Lower bounds only (a slow machine waits longer), less a quarter for the jitter of
        # an append's round trip: a constant 200 ms would fail the second and third.
        for n, gap in enumerate(gaps[:3]):
            assert gap >= 150 * 2**n, (n, gaps)
        outcomes = [await client.outcome(p, o, 30) for _, _, p, o, _ in expires]
        assert {o.status for o in outcomes} == {"rejected"}, outcomes  # early: the log decides
        record = worker.materializer.store_for(receipt.partition).get(b"early")
        assert record is not None and record.version == 1 and record.doc is not None
