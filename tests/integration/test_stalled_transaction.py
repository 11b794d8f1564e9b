"""RELIABILITY.md row 18: a transactional producer dies mid-transaction.

A process begins a Kafka transaction (with the client's transactional producer, the one a
transaction across partitions commits with), sends an event into a WAL partition and is
SIGKILLed. (The client's own ``transaction()`` no longer leaves one open while its block runs:
it sends everything at the commit; any other transactional producer still can.)
Its transaction stays open, and the worker (``read_committed``) folds nothing after the
transaction's first offset: another client's acknowledged write there is not readable. The
tests check that this is bounded by the transaction timeout a client may ask for, that a
read-your-write that times out meanwhile names the open transaction and where it began, and
that an operator can list the transaction and abort it (``lukhas transactions``).

Bounds are deadlines with room (no timings are asserted): the brokers abort a transaction at
its timeout plus their sweep interval (1 s on clusters of ``lukhas up``).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError, NotAppliedYetError
from lukhas_context.streams.topics import Topics, partition_for

pytestmark = pytest.mark.integration

#: The default transaction timeout (10 s) plus the brokers' sweep (1 s), with room; the most a
#: read may wait at the read API, too.
RELEASED_WITHIN_S = 30.0
#: A wait that ends before any transaction of these tests could have timed out.
SHORT_WAIT_S = 1.0

# A writer that opens a Kafka transaction, sends one event, and waits to be killed.
_WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from lukhas_context.schemas.event import Put
    from lukhas_context.streams.client import ClientConfig, ContextClient
    from lukhas_context.streams.topics import Topics

    async def main(bootstrap, prefix, context_id, tx_timeout):
        config = ClientConfig(bootstrap, topics=Topics(prefix), client_id="killed-writer")
        if tx_timeout != "default":
            config = ClientConfig(bootstrap, topics=Topics(prefix), client_id="killed-writer",
                                  transaction_timeout_s=float(tx_timeout))
        writer = ContextClient(config).writer
        producer = await writer.transactional_producer()
        await producer.begin_transaction()
        doc = b'{"from":"a transaction that never ends"}'
        key, value, _ = writer.event(context_id, Put(doc, None), None)
        await producer.send_and_wait(config.topics.events, value, key=key)
        print("sent", flush=True)
        await asyncio.sleep(3600)

    asyncio.run(main(*sys.argv[1:]))
    """
)


def _ids_on_one_partition(partitions: int) -> tuple[int, str, str]:
    """A partition and two context ids that live on it."""
    ids = [f"held-{n}" for n in range(1000) if partition_for(f"held-{n}".encode(), partitions) == 0]
    return 0, ids[0], ids[1]


async def _high_watermark(bootstrap: str, topic: str, partition: int) -> int:
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        tp = TopicPartition(topic, partition)
        return int((await consumer.end_offsets([tp]))[tp])
    finally:
        await consumer.stop()


async def _kill_writer_mid_transaction(
    bootstrap: str, topics: Topics, partition: int, context_id: str, tx_timeout: str
) -> int:
    """Runs the writer until its event is in the log (the high watermark moved), SIGKILLs
    it, and returns the offset where its transaction began."""
    topic = topics.events
    before = await _high_watermark(bootstrap, topic, partition)
    argv = [sys.executable, "-c", _WRITER, bootstrap, topics.prefix, context_id, tx_timeout]
    writer = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while await _high_watermark(bootstrap, topic, partition) <= before:
            if writer.returncode is not None:
                raise AssertionError(f"the writer exited: {await writer.stderr.read()!r}")  # type: ignore[union-attr]
            assert time.monotonic() < deadline, "the writer's event never reached the log"
            await asyncio.sleep(0.2)
    finally:
        if writer.returncode is None:
            writer.send_signal(signal.SIGKILL)
        await writer.wait()
    return before


async def test_a_killed_transaction_holds_its_partition_only_until_its_timeout(
    start_worker: Any, cluster: Any, topics: Topics
) -> None:
    worker = await start_worker()
    partition, held_id, other_id = _ids_on_one_partition(3)
    begun = await _kill_writer_mid_transaction(
        cluster.bootstrap, topics, partition, held_id, "default"
    )
    async with ContextClient(ClientConfig(cluster.bootstrap, worker.url, topics)) as client:
        receipt = await client.put(other_id, {"written": "after the killed transaction"})
        assert receipt.partition == partition and receipt.offset > begun

        # Before the brokers abort it, the wait times out and says what holds the partition.
        with pytest.raises(NotAppliedYetError) as caught:
            await client.get(other_id, min_offset=receipt, timeout=SHORT_WAIT_S)
        message = str(caught.value)
        assert f"open transaction holds partition {partition} from offset {begun}" in message
        assert caught.value.open_transaction == {
            "partition": partition, "first_offset": begun,
            "high_watermark": caught.value.open_transaction["high_watermark"],  # type: ignore[index]
        }  # fmt: skip

        # The default transaction timeout bounds the stall: the write becomes readable.
        ctx = await client.get(other_id, min_offset=receipt, timeout=RELEASED_WITHIN_S)
        assert ctx.doc == {"written": "after the killed transaction"}
        # The killed transaction's own event was aborted: it never becomes a context.
        with pytest.raises(ContextNotFoundError):
            await client.get(held_id)


class _Lukhas:
    """``lukhas`` in a subprocess, on this test's topics and the session's Kafka."""

    def __init__(self, bootstrap: str, topics: Topics, data_dir: Path) -> None:
        self.base = ["--data-dir", str(data_dir), "--bootstrap", bootstrap]
        self.env = {**os.environ, "LUKHAS_TOPIC_PREFIX": topics.prefix}

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        argv = [sys.executable, "-m", "lukhas_context.ops", "transactions", *args, *self.base]
        return subprocess.run(argv, env=self.env, capture_output=True, text=True, timeout=300)


async def test_an_operator_lists_the_open_transaction_and_aborts_it(
    start_worker: Any, cluster: Any, topics: Topics, tmp_path: Path
) -> None:
    worker = await start_worker()
    partition, held_id, other_id = _ids_on_one_partition(3)
    # The longest transaction a client may ask for: only the operator's abort ends it early.
    begun = await _kill_writer_mid_transaction(cluster.bootstrap, topics, partition, held_id, "60")
    lukhas = _Lukhas(cluster.bootstrap, topics, tmp_path)
    async with ContextClient(ClientConfig(cluster.bootstrap, worker.url, topics)) as client:
        receipt = await client.put(other_id, {"written": "behind a transaction"})

        listed = await asyncio.to_thread(lukhas, "list", "--json")
        assert listed.returncode == 0, listed.stderr
        assert any(
            row["transactional_id"].startswith("killed-writer-tx-") and row["transaction_state"]
            == "Ongoing" for row in json.loads(listed.stdout)
        ), listed.stdout  # fmt: skip

        found = await asyncio.to_thread(lukhas, "open", "--json")
        assert found.returncode == 0, found.stderr
        rows = json.loads(found.stdout)
        assert [(r["partition"], r["start_offset"]) for r in rows] == [(partition, begun)]

        aborted = await asyncio.to_thread(
            lukhas, "abort", "--partition", str(partition), "--start-offset", str(begun)
        )
        assert aborted.returncode == 0, aborted.stderr
        # Well before the transaction's own timeout (60 s) could have ended it.
        ctx = await client.get(other_id, min_offset=receipt, timeout=30)
        assert ctx.doc == {"written": "behind a transaction"}

        after = await asyncio.to_thread(lukhas, "open", "--json")
        assert after.returncode == 0 and json.loads(after.stdout) == [], after.stdout
