"""What the client does when the WAL does not acknowledge a write: ``ClientConfig.send_attempts``
and ``timeout_s`` on real brokers.

- A send that a retriable error failed is sent again, the very same bytes (event id
  included), at most ``send_attempts`` times; then ``PublishError`` naming the attempts. The
  real retriable failure is a WAL topic the brokers do not know (yet): aiokafka's metadata
  wait gives up with ``UnknownTopicOrPartitionError``. (aiokafka's idempotent producer retries
  every retriable error of a batch already sent by itself, for ever, so no other retriable
  error reaches the client: a repeat never follows bytes that left the process.) Each send is
  recorded by a pass-through wrapper of the real producer's ``send``.
- A send that only waits is never repeated: against a broker stopped with SIGSTOP (a
  one-broker cluster of this module's own), every put ends with ``PublishTimeoutError`` and
  the brokers' reason, including a put (or a transaction's send) that waited for room in
  the producer's buffer, which used to fail early with ``PublishError: KafkaTimeoutError``
  and no reason; once the broker runs again, each event the producer held lands once (its
  own retries of the timed-out request are deduplicated by the broker) and the fold applies
  it once.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import UnknownTopicOrPartitionError

from lukhas_context.ops.cluster import ClusterSpec, LocalCluster
from lukhas_context.processors.api import ReadApi
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.materializer import Materializer
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.client import ClientConfig, ContextClient, Receipt
from lukhas_context.streams.exceptions import PublishError, PublishTimeoutError
from lukhas_context.streams.producer import WalProducer
from lukhas_context.streams.topics import Topics

from .conftest import PARTITIONS, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

EVENT_ID = re.compile(r"event ([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})")


@contextlib.asynccontextmanager
async def _worker(bootstrap: str, topics: Topics, state_dir: Path) -> AsyncIterator[str]:
    """An in-process worker (materialiser + read API) on ``topics``; yields its URL."""
    port = free_port()
    config = WorkerConfig(
        bootstrap=bootstrap, state_dir=state_dir, topics=topics,
        group_id=f"{topics.prefix}-group", api_port=port, fetch_timeout_ms=50,
    )  # fmt: skip
    materializer = Materializer(config)
    api = ReadApi(materializer)
    await api.start("127.0.0.1", port)
    await materializer.start()
    task = asyncio.create_task(materializer.run())
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        materializer.stop()
        try:
            await task
        finally:
            await materializer.close()
            await api.close()


async def _wal(bootstrap: str, topics: Topics, partition: int, end: int) -> list[Any]:
    """The WAL partition's records ``[0, end)``."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tp = TopicPartition(topics.events, partition)
        consumer.assign([tp])
        consumer.seek(tp, 0)
        records: list[Any] = []
        deadline = time.monotonic() + 60
        while await consumer.position(tp) < end:
            assert time.monotonic() < deadline, f"read {len(records)} of {end} records"
            batch = await consumer.getmany(tp, timeout_ms=500)
            records += [m for m in batch.get(tp, ()) if m.offset < end]
        return records
    finally:
        await consumer.stop()


def _event_id(value: bytes) -> str:
    return str(uuid.UUID(bytes=EventCodec().decode(value).event_id))


def _named_event(error: BaseException) -> str:
    found = EVENT_ID.search(str(error))
    assert found is not None, error
    return found.group(1)


# ------------------------------------------------------- repeats after a retriable error


@pytest.fixture
def sends(monkeypatch: pytest.MonkeyPatch) -> list[tuple[tuple[Any, ...], BaseException | None]]:
    """Every ``WalProducer.send`` (the client's producer) as ``((topic, value, key), error)``;
    the real ``send`` runs. (The worker's producer is a plain ``AIOKafkaProducer``.)"""
    calls: list[tuple[tuple[Any, ...], BaseException | None]] = []
    real = WalProducer.send

    async def send(self: WalProducer, *args: Any, **kw: Any) -> Any:
        named = dict(zip(("topic", "value", "key"), args, strict=False)) | kw
        sent = (named["topic"], named.get("value"), named.get("key"))
        try:
            future = await real(self, *args, **kw)
        except BaseException as exc:
            calls.append((sent, exc))
            raise
        calls.append((sent, None))
        return future

    monkeypatch.setattr(WalProducer, "send", send)
    return calls


async def _topic_exists(bootstrap: str, topic: str) -> bool:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        return topic in await admin.list_topics()
    finally:
        await admin.close()


@pytest.mark.parametrize("attempts", [1, 3])
async def test_a_retriable_failure_is_sent_again_with_the_same_bytes_up_to_send_attempts(
    cluster: Any, sends: list[tuple[tuple[Any, ...], BaseException | None]], attempts: int
) -> None:
    topics = Topics(f"t{uuid.uuid4().hex[:10]}")  # never created: the brokers do not know it
    config = ClientConfig(
        cluster.bootstrap, None, topics, send_attempts=attempts, request_timeout_s=1.0,
        timeout_s=30,
    )  # fmt: skip
    async with ContextClient(config) as client:
        with pytest.raises(PublishError) as failed:
            await client.put("r", {"doc": 1})
    assert len(sends) == attempts, sends
    assert not isinstance(failed.value, PublishTimeoutError), failed.value
    assert f"after {attempts} attempt(s)" in str(failed.value)
    assert isinstance(failed.value.__cause__, UnknownTopicOrPartitionError)
    assert {args for args, _ in sends} == {sends[0][0]}, "a repeat with other bytes"
    assert all(isinstance(error, UnknownTopicOrPartitionError) for _, error in sends)
    topic, value, _ = sends[0][0]
    assert topic == topics.events and _event_id(value) == _named_event(failed.value)
    assert not await _topic_exists(cluster.bootstrap, topics.events)  # nothing could land


async def test_a_repeat_that_lands_is_the_same_event_and_applies_once(
    cluster: Any, sends: list[tuple[tuple[Any, ...], BaseException | None]], tmp_path: Path
) -> None:
    """The WAL topic appears after the first send failed: a later send, with the same bytes,
    lands, once, and the fold applies it once."""
    topics = Topics(f"t{uuid.uuid4().hex[:10]}")
    config = ClientConfig(
        cluster.bootstrap, None, topics, send_attempts=5, request_timeout_s=3.0, timeout_s=60
    )
    async with ContextClient(config) as client:
        put = asyncio.create_task(client.put("r", {"doc": 1}))
        deadline = time.monotonic() + 60
        while not sends:  # until the first send has failed
            assert not put.done(), put
            assert time.monotonic() < deadline, "no send within 60 s"
            await asyncio.sleep(0.05)
        await ensure_topics(cluster.bootstrap, topics.specs(PARTITIONS), brokers=None)
        receipt: Receipt = await put
    assert isinstance(sends[0][1], UnknownTopicOrPartitionError), sends[0]
    assert 2 <= len(sends) <= 5, sends
    assert sends[-1][1] is None and all(error is not None for _, error in sends[:-1])
    assert {args for args, _ in sends} == {sends[0][0]}, "a repeat with other bytes"
    _, value, key = sends[0][0]
    assert _event_id(value) == receipt.event_id

    records = await _wal(cluster.bootstrap, topics, receipt.partition, receipt.offset + 1)
    assert [(m.key, m.value) for m in records] == [(key, value)]  # landed once, as sent
    async with (
        _worker(cluster.bootstrap, topics, tmp_path / "state") as url,
        ContextClient(ClientConfig(cluster.bootstrap, url, topics)) as reader,
    ):
        outcome = await reader.outcome(receipt.partition, receipt.offset, timeout=60)
        assert (outcome.status, outcome.version, outcome.duplicate_of) == ("applied", 1, None)
        assert (await reader.get("r")).version == 1


# ------------------------------------------------------------- no repeat after a wait


@pytest.fixture(scope="module")
def one_broker(
    tmp_path_factory: pytest.TempPathFactory, free_ports: Callable[[int], int]
) -> Iterator[LocalCluster]:
    """A one-broker cluster of this module's own: its broker is stopped with SIGSTOP."""
    base = free_ports(4)
    spec = ClusterSpec(
        data_dir=tmp_path_factory.mktemp("stalled-broker"),
        port_base=base,
        redis_port=base + 2,
        api_port=base + 3,
        topic_prefix="stalled",
        partitions=PARTITIONS,
        kafka_home=os.environ.get("KAFKA_HOME"),
        heap="320m",
        start_processor=False,
    )
    local = LocalCluster(spec)
    try:
        local.up()
        yield local
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(_broker_pid(local), signal.SIGCONT)  # never leave it stopped
        local.down()


def _broker_pid(local: LocalCluster) -> int:
    pid: int = json.loads((local.root / "cluster.json").read_text())["broker_pids"][0]
    return pid


def _state(pid: int) -> str:
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


async def _signal(pid: int, sig: signal.Signals, stopped: bool) -> None:
    """Sends ``sig`` and waits until the process is (or is no longer) stopped."""
    os.kill(pid, sig)
    deadline = time.monotonic() + 30
    while (_state(pid) == "T") != stopped:
        assert time.monotonic() < deadline, f"process {pid} is in state {_state(pid)}"
        await asyncio.sleep(0.02)


async def test_a_producer_the_broker_lost_track_of_is_replaced_and_the_put_lands_once(
    cluster: Any, tmp_path: Path
) -> None:
    """A batch that timed out on the client leaves the broker expecting a sequence number the
    producer has moved past: the broker answers OUT_OF_ORDER_SEQUENCE_NUMBER and aiokafka's
    sender stops for good. Made here by moving the producer's sequence on by hand; the put
    must still land, once, through a new producer, and later puts too."""
    topics = Topics(f"o{uuid.uuid4().hex[:10]}")
    await ensure_topics(cluster.bootstrap, topics.specs(PARTITIONS), brokers=None)
    config = ClientConfig(cluster.bootstrap, None, topics, timeout_s=30)
    async with ContextClient(config) as client:
        first = await client.put("o", {"n": 0})
        broken = client.writer._producer
        assert broken is not None
        tp = TopicPartition(topics.events, first.partition)
        broken._txn_manager._sequence_numbers[tp] += 5  # a gap the broker refuses
        # with writes to the other partitions in flight meanwhile: each lands, once
        others = [f"other:{i}" for i in range(12)]
        second, *rest = await asyncio.gather(
            client.put("o", {"n": 1}), *(client.put(o, {"o": o}) for o in others)
        )
        assert client.writer._producer is not broken  # replaced
        third = await client.put("o", {"n": 2})
    assert (first.partition, second.partition, third.partition) == (tp.partition,) * 3
    records = await _wal(cluster.bootstrap, topics, tp.partition, third.offset + 1)
    ids = [_event_id(m.value) for m in records if m.key == b"o"]
    assert ids == [first.event_id, second.event_id, third.event_id]  # each once, in order
    for receipt in rest:
        landed = await _wal(cluster.bootstrap, topics, receipt.partition, receipt.offset + 1)
        assert [_event_id(m.value) for m in landed].count(receipt.event_id) == 1


@contextlib.asynccontextmanager
async def _stalled(local: LocalCluster) -> AsyncIterator[None]:
    """The broker stopped (SIGSTOP) inside the block, and running again on every way out."""
    pid = _broker_pid(local)
    try:
        await _signal(pid, signal.SIGSTOP, stopped=True)
        yield
    finally:
        await _signal(pid, signal.SIGCONT, stopped=False)


async def test_puts_to_a_stalled_broker_time_out_and_each_event_lands_at_most_once(
    one_broker: LocalCluster, tmp_path: Path
) -> None:
    bootstrap = one_broker.spec.kafka_bootstrap
    topics = Topics(f"s{uuid.uuid4().hex[:10]}")
    await ensure_topics(bootstrap, topics.specs(PARTITIONS), brokers=None)
    # request_timeout_s well inside timeout_s: aiokafka times the stalled request out and
    # sends the batch again (on a new connection) before the call's deadline.
    config = ClientConfig(bootstrap, None, topics, timeout_s=10, request_timeout_s=1.5)
    pad = "x" * 10_000  # three of these fill the producer's two 16 KiB batches and more
    async with ContextClient(config) as client:
        warm = await client.put("s", {"warm": True})  # producer started, metadata known
        async with _stalled(one_broker):
            puts = [client.put("s", {"n": n, "pad": pad}) for n in range(3)]
            errors = await asyncio.gather(*puts, return_exceptions=True)
        # Each ends at its deadline with the typed error and the reason, including the put
        # that found no room in the producer's buffer (it appended nothing).
        for error in errors:
            assert isinstance(error, PublishTimeoutError), repr(error)
            assert "within 10 s" in str(error) and "does not answer" in str(error), error
        timed_out = [_named_event(error) for error in errors]  # type: ignore[arg-type]
        # The producer delivers what it held before the next put to the partition (one
        # producer, in order): after this acknowledgement, nothing more can land.
        last = await client.put("s", {"last": True})
    assert last.partition == warm.partition

    records = await _wal(bootstrap, topics, last.partition, last.offset + 1)
    ids = Counter(_event_id(m.value) for m in records)
    repeated = {event: n for event, n in ids.items() if n != 1}
    assert not repeated, f"events appended more than once: {repeated}"
    landed = [event for event in timed_out if ids[event]]
    assert landed, "no timed-out event landed after the stall"
    assert set(ids) == {warm.event_id, last.event_id, *landed}, ids

    async with (
        _worker(bootstrap, topics, tmp_path / "state") as url,
        ContextClient(ClientConfig(bootstrap, url, topics)) as reader,
    ):
        offsets = {_event_id(m.value): m.offset for m in records}
        versions = []
        for event in landed:
            outcome = await reader.outcome(last.partition, offsets[event], timeout=60)
            assert outcome.applied and outcome.duplicate_of is None, outcome
            versions.append(outcome.version)
        assert sorted(versions) == list(range(2, 2 + len(landed)))
        ctx = await reader.get("s", min_offset=last, timeout=60)
        assert ctx.version == 2 + len(landed) and ctx.doc == {"last": True}


async def test_a_transaction_committed_to_a_stalled_broker_ends_with_the_typed_timeout(
    one_broker: LocalCluster,
) -> None:
    """A transaction's commit (where its record is sent) against a stalled broker ends at
    the call's deadline with ``PublishTimeoutError`` and the reason, not with aiokafka's
    ``KafkaTimeoutError`` after its request timeout."""
    bootstrap = one_broker.spec.kafka_bootstrap
    topics = Topics(f"s{uuid.uuid4().hex[:10]}")
    await ensure_topics(bootstrap, topics.specs(PARTITIONS), brokers=None)
    config = ClientConfig(bootstrap, None, topics, timeout_s=10, request_timeout_s=1.5)
    pad = "x" * 10_000
    async with ContextClient(config) as client:
        async with client.transaction() as tx:  # the transaction log exists, metadata known
            await tx.put("tx", {"warm": True})
        with pytest.raises(PublishTimeoutError) as failed:
            async with _stalled(one_broker), client.transaction() as tx:
                for n in range(3):  # bounded: the second or third finds no room
                    await tx.put("tx", {"n": n, "pad": pad})
    assert "did not acknowledge transaction" in str(failed.value), failed.value
    assert "within 10 s" in str(failed.value) and "does not answer" in str(failed.value)
