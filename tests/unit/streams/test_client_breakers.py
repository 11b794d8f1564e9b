"""The client's circuit breakers in its read path (``streams.routing`` with
``streams.breaker``): a worker that the routing table names but that fails every call is
passed over once its breaker opens, probed again now and then, and shown by
``client.breakers()`` and ``client.breaker_metrics()``. A fake read API and a server that
drops every connection stand in for the workers: this tests the client, not Kafka."""

from __future__ import annotations

import asyncio
import socket
import time

import orjson
import pytest
import xxhash
from aiohttp import web
from aiokafka.errors import (
    KafkaConnectionError,
    MessageSizeTooLargeError,
    NotEnoughReplicasError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
    UnknownProducerId,
)
from prometheus_client.parser import text_string_to_metric_families

from lukhas_context.streams.breaker import BreakerPolicy, Breakers, CircuitOpenError
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import (
    PublishCircuitOpenError,
    PublishError,
    PublishTimeoutError,
    ReadError,
    ValidationError,
)
from lukhas_context.streams.writer import _kafka_failed

DOC = {"k": 1}
CHECKSUM = xxhash.xxh3_64_hexdigest(orjson.dumps(DOC, option=orjson.OPT_SORT_KEYS))


async def _dropping_server() -> tuple[asyncio.Server, str, list[int]]:
    """A server that accepts each connection and closes it at once: every call fails."""
    accepted: list[int] = []

    async def drop(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(1)
        writer.close()

    server = await asyncio.start_server(drop, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}", accepted


async def _live_worker(owner: str) -> tuple[web.AppRunner, str, list[str]]:
    """A read API that answers reads, and whose routing table names ``owner`` as the
    worker serving the only partition."""
    served: list[str] = []

    async def members(request: web.Request) -> web.Response:
        return web.json_response({"owners": {"0": owner}, "partition_count": 1, "members": []})

    async def context(request: web.Request) -> web.Response:
        served.append(request.path)
        return web.json_response({
            "context_id": "c", "version": 3, "doc": DOC, "checksum": CHECKSUM, "offset": 7,
            "partition": 0, "expires_at_ms": None,
        })  # fmt: skip

    app = web.Application()
    app.router.add_get("/v1/members", members)
    app.router.add_get("/v1/contexts/{id}", context)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, f"http://127.0.0.1:{port}", served


async def test_without_routing_every_read_goes_to_the_configured_worker() -> None:
    """``route_reads=False``: the owner the routing table names (one that drops every
    connection: unreachable from here) is never asked; the configured worker answers
    every read (a real one forwards it to the owner)."""
    server, unreachable, accepted = await _dropping_server()
    runner, configured, served = await _live_worker(unreachable)
    try:
        config = ClientConfig("unused:9092", configured, route_reads=False)
        async with ContextClient(config) as client:
            for _ in range(5):
                assert (await client.get("c", timeout=5)).doc == DOC
            assert client.router.partition_count == 1  # the table was read all the same
    finally:
        await runner.cleanup()
        server.close()
    assert accepted == [] and len(served) == 5


async def test_a_failing_owner_is_passed_over_once_its_breaker_opens() -> None:
    server, broken, accepted = await _dropping_server()
    runner, live, served = await _live_worker(broken)
    try:
        async with ContextClient(ClientConfig("unused:9092", live)) as client:
            started = time.monotonic()
            for _ in range(30):
                assert (await client.get("c", timeout=5)).doc == DOC
            elapsed = time.monotonic() - started
            shown = {b["endpoint"]: b for b in client.breakers()}
            metrics = client.breaker_metrics()
    finally:
        await runner.cleanup()
        server.close()
    # Three failures in a row opened it; then a probe every open period at most (0.25 s,
    # doubling): 30 reads did not each try the broken owner first.
    assert shown[broken]["state"] in ("open", "half_open")
    assert shown[broken]["transitions"]["open"] >= 1
    assert len(accepted) <= 3 + 2 * int(elapsed / 0.25 + 1)
    assert len(accepted) < 30
    assert shown[live]["state"] == "closed"
    assert len(served) == 30
    families = {f.name: f for f in text_string_to_metric_families(metrics)}
    states = {
        (s.labels["endpoint"], s.labels["state"]): s.value
        for s in families["lukhas_client_breaker_state"].samples
    }
    assert states[(live, "closed")] == 1
    assert states[(broken, "closed")] == 0


async def test_every_breaker_open_past_the_deadline_fails_fast_with_a_typed_error() -> None:
    """The only worker's breaker is open for longer than the call may take: the call fails
    at once with ``CircuitOpenError`` (and when it lets a probe through), not after its
    whole timeout."""
    server, broken, _ = await _dropping_server()
    try:
        async with ContextClient(ClientConfig("unused:9092", broken)) as client:
            client.router.breakers = Breakers(
                BreakerPolicy(consecutive_failures=1, open_s=30, max_open_s=30)
            )
            with pytest.raises(ReadError):  # the first call fails on the wire
                await client.get("c", timeout=2)
            started = time.monotonic()
            with pytest.raises(CircuitOpenError) as caught:
                await client.get("c", timeout=2)
            assert time.monotonic() - started < 1.0
            assert caught.value.retry_after_s > 2
            assert "circuit breaker" in str(caught.value)
    finally:
        server.close()


async def test_a_dead_worker_fails_reads_at_once_and_is_read_again_when_it_is_back() -> None:
    """Reads with no time to wait fail at once, every time, saying why (before breakers: at
    once, by the refusal); once the worker is back a read finds it within the longest open
    period (2 s), not after a stall."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}"
    async with ContextClient(ClientConfig("unused:9092", url)) as client:
        for _ in range(8):
            started = time.monotonic()
            with pytest.raises(ReadError) as caught:
                await client.get("c", timeout=0)
            assert time.monotonic() - started < 1.0
            assert "connection refused" in str(caught.value)
        app = web.Application()

        async def context(request: web.Request) -> web.Response:
            return web.json_response({
                "context_id": "c", "version": 3, "doc": DOC, "checksum": CHECKSUM,
                "offset": 7, "partition": 0, "expires_at_ms": None,
            })  # fmt: skip

        app.router.add_get("/v1/contexts/{id}", context)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            started = time.monotonic()
            assert (await client.get("c", timeout=10)).doc == DOC
            assert time.monotonic() - started < 3.0
        finally:
            await runner.cleanup()


async def test_writes_fail_fast_once_the_wal_breaker_opens_and_say_nothing_was_sent() -> None:
    """No Kafka at the bootstrap address: three writes fail after trying (each within its
    deadline), the producer path's breaker opens, and the next write fails at once with
    ``PublishCircuitOpenError`` (nothing sent: safe to send again); the breaker is shown
    with the read endpoints'."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClientConfig(f"127.0.0.1:{port}", timeout_s=1.0, request_timeout_s=0.5)
    async with ContextClient(config) as client:
        assert client.breakers() == []  # nothing written yet
        failures = []
        for _ in range(3):
            with pytest.raises(PublishError) as caught:
                await client.put("c", DOC)
            failures.append(caught.value)
        assert not any(isinstance(f, PublishCircuitOpenError) for f in failures)
        started = time.monotonic()
        with pytest.raises(PublishCircuitOpenError) as refused:
            await client.put("c", DOC)
        assert time.monotonic() - started < 0.5
        assert "Nothing was sent" in str(refused.value)
        assert 0 < refused.value.retry_after_s <= 0.25
        shown = {b["endpoint"]: b for b in client.breakers()}
        assert shown["kafka"]["state"] == "open"
        assert shown["kafka"]["last_error"]
        assert 'endpoint="kafka"' in client.breaker_metrics()


async def test_a_write_the_client_refuses_before_sending_touches_no_breaker() -> None:
    """Writes the client refuses before sending (a document too large) are the caller's
    fault: no breaker of the producer path is touched."""
    config = ClientConfig("127.0.0.1:9", max_document_bytes=64)
    async with ContextClient(config) as client:
        for _ in range(5):
            with pytest.raises(ValidationError):
                await client.put("c", {"big": "x" * 200})
        assert client.breakers() == []  # validation before sending: no breaker judged it


@pytest.mark.parametrize(
    "cause, failed",
    [(KafkaConnectionError("down"), True), (RequestTimedOutError(), True),
     (NotEnoughReplicasError(), True), (UnknownProducerId(), True),
     (MessageSizeTooLargeError(), False), (TopicAuthorizationFailedError(), False),
     (None, True)],
)  # fmt: skip
def test_what_counts_as_kafka_failing(cause: Exception | None, failed: bool) -> None:
    """A write refused for what it is (too large, not authorized: not retriable) says
    nothing of Kafka; no connection, a retriable error to the end or a broken producer
    does. The cause may be a step or two down the chain."""
    error = PublishError("the WAL did not acknowledge")
    if cause is not None:
        middle = PublishError("cannot reach Kafka")
        middle.__cause__ = cause
        error.__cause__ = middle
    assert _kafka_failed(error) is failed
    assert _kafka_failed(PublishTimeoutError("late")) is True


def test_each_wal_partition_has_its_own_breaker() -> None:
    from lukhas_context.streams.writer import WalWriter

    writer = WalWriter(ClientConfig("127.0.0.1:9"))
    assert writer.breaker_of(b"k").name == "kafka"  # no producer yet: the partitions unknown
    assert writer.breaker_of(b"k", 3).name == "kafka:3"
    assert writer.breaker_of(b"k", 3) is writer.breaker_of(b"j", 3)


async def test_writes_failing_together_count_as_one_failure() -> None:
    """Three writes in flight when Kafka fails saw one outage: the breaker counts one
    failure and stays closed; three failing one after another open it (above)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = ClientConfig(f"127.0.0.1:{port}", timeout_s=1.0, request_timeout_s=0.5)
    async with ContextClient(config) as client:
        errors = await asyncio.gather(
            *(client.put("c", DOC) for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(e, PublishError) for e in errors), errors
        (shown,) = client.breakers()
        assert (shown["endpoint"], shown["samples"], shown["state"]) == ("kafka", 1, "closed")
