"""The Schema Registry mirror's pure parts (``processors.mirror``): re-framing, URLs, and
registration against a small registry of the test's own on loopback that answers as told
(retries, refusals, and answers no registry should give)."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import fastavro
import pytest
from aiohttp import web

from lukhas_context.processors.exceptions import InvalidWorkerConfigError, WorkerStartError
from lukhas_context.processors.mirror import (
    Mirror,
    change_versions,
    check_registry_url,
    redacted,
    register,
)
from lukhas_context.schemas.change import fence_key
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind, ContextChange
from lukhas_context.schemas.registry import SchemaRegistry
from lukhas_context.streams.topics import Topics

CHANGE = SchemaRegistry.shipped().latest("ContextChange")


def _change(context_id: str, version: int) -> bytes:
    change = ContextChange(
        context_id, version, ChangeKind.PUT, b'{"a":1}', b"\x01" * 8, None, 7, b"\x02" * 16, 9
    )
    return ChangeCodec().encode(change)


def test_a_change_is_reframed_and_its_body_kept() -> None:
    mirror = Mirror.of("t.sr", {CHANGE.fingerprint: 258})
    value = _change("ctx:1", 3)
    headers = [("seq", b"5"), ("traceparent", b"00-x")]
    [(key, framed, hdrs)] = mirror.frame([(b"ctx:1", value, headers)])
    assert key == b"ctx:1" and hdrs == headers
    assert framed == b"\x00\x00\x00\x01\x02" + value[10:]
    decoded = fastavro.schemaless_reader(io.BytesIO(framed[5:]), CHANGE.parsed, None)
    assert decoded["context_id"] == "ctx:1" and decoded["version"] == 3


def test_tombstones_stay_and_internal_records_are_left_out() -> None:
    mirror = Mirror.of("t.sr", {CHANGE.fingerprint: 1})
    fence = (fence_key("lock"), b"LKF1" + b"\x00" * 24, [])
    internal = (b"\xfeclock", b"x", [])
    tomb = (b"gone", None, [("kind", b"DELETE")])
    assert mirror.frame([fence, internal, tomb]) == [tomb]


@pytest.mark.parametrize(
    "value", [b"\xc3\x01" + b"\x00" * 8 + b"body", b"\x00\x00\x00\x00\x01body", b"", b"\xc3"]
)
def test_a_value_that_is_no_registered_change_is_refused(value: bytes) -> None:
    mirror = Mirror.of("t.sr", {CHANGE.fingerprint: 1})
    with pytest.raises(ValueError, match="not a registered ContextChange"):
        mirror.frame([(b"k", value, [])])


def test_the_mirror_topic_is_kept_as_the_change_topic_is() -> None:
    topics = Topics("p")
    changes = next(s for s in topics.specs(5) if s.name == topics.changes)
    mirror = topics.registry_spec(5)
    assert mirror.name == "p.context.changes.sr" and mirror.partitions == 5
    assert mirror.configs == changes.configs


def test_urls() -> None:
    assert check_registry_url("https://u:p@sr:8081/apis/ccompat/v7") == (
        "https://u:p@sr:8081/apis/ccompat/v7"
    )
    assert redacted("https://u:p@sr:8081/x") == "https://u:***@sr:8081/x"
    assert redacted("http://sr/x") == "http://sr/x"
    with pytest.raises(InvalidWorkerConfigError, match=r"\*\*\*"):
        check_registry_url("gopher://u:pw@sr")


Handler = Callable[[web.Request], Any]


@pytest.fixture
async def fake_registry() -> AsyncIterator[Callable[[Handler], Any]]:
    """Starts a registry on loopback whose every POST is answered by the handler given."""
    runners: list[web.AppRunner] = []

    async def start(handler: Handler) -> str:
        app = web.Application()
        app.router.add_post("/subjects/{subject}/versions", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        return f"http://127.0.0.1:{port}"

    yield start
    for runner in runners:
        await runner.cleanup()


async def test_registration_retries_a_registry_that_is_starting(fake_registry: Any) -> None:
    seen: list[Any] = []

    async def handler(request: web.Request) -> web.Response:
        seen.append((request.match_info["subject"], request.content_type, await request.json()))
        if len(seen) < 3:
            return web.json_response({"error_code": 50003, "message": "starting"}, status=503)
        return web.json_response({"id": 41})

    url = await fake_registry(handler)
    ids = await register(url + "/", "a b/c-value", change_versions(), timeout_s=10)
    assert ids == {CHANGE.fingerprint: 41}
    subject, ctype, body = seen[-1]
    assert subject == "a b/c-value"  # quoted on the way, whole on arrival
    assert ctype == "application/vnd.schemaregistry.v1+json"
    assert body["schemaType"] == "AVRO"
    schema = fastavro.parse_schema(json.loads(body["schema"]))
    assert fastavro.schema.to_parsing_canonical_form(schema) == CHANGE.canonical


@pytest.mark.parametrize(
    ("status", "answer", "says"),
    [
        (
            409,
            {"error_code": 409, "message": "Schema being registered is incompatible"},
            "HTTP 409: Schema being registered is incompatible",
        ),
        (401, {"message": "Unauthorized"}, "HTTP 401: Unauthorized"),
        (422, "x" * 5000, "HTTP 422: " + "x" * 300),
        (200, {"no": "id"}, "no schema id"),
        (200, "not json", "no schema id"),
        (200, {"id": True}, "not one: True"),
        (200, {"id": -1}, "not one: -1"),
        (200, {"id": 1 << 40}, "not one"),
        (200, {"id": "7"}, "not one: '7'"),
    ],
)
async def test_a_refusal_or_a_strange_answer_stops_at_once(
    fake_registry: Any, status: int, answer: Any, says: str
) -> None:  # fmt: skip
    async def handler(request: web.Request) -> web.Response:
        if isinstance(answer, str):
            return web.Response(text=answer, status=status)
        return web.json_response(answer, status=status)

    url = await fake_registry(handler)
    started = time.monotonic()
    with pytest.raises(WorkerStartError) as raised:
        await register(url.replace("//", "//svc:pw@"), "s-value", change_versions(), 30)
    assert time.monotonic() - started < 5
    message = str(raised.value)
    assert says in message and "pw" not in message and "svc:***@" in message
    assert len(message) < 600


async def test_a_registry_that_never_answers_well_is_given_up_at_the_deadline(
    fake_registry: Any,
) -> None:
    async def handler(_request: web.Request) -> web.Response:
        return web.Response(text="overloaded", status=429)

    url = await fake_registry(handler)
    started = time.monotonic()
    with pytest.raises(WorkerStartError, match="HTTP 429: overloaded"):
        await register(url, "s-value", change_versions(), timeout_s=1.5)
    assert 1.0 < time.monotonic() - started < 6


class _Producer:
    """Records each batch sent (topic, the records' headers) and when its acknowledgement is
    awaited; acknowledges at once."""

    def __init__(self) -> None:
        self.log: list[tuple[str, str]] = []
        self.headers: dict[str, list[list[tuple[str, bytes]]]] = {}

    def create_batch(self) -> Any:
        from aiokafka.producer.message_accumulator import BatchBuilder

        return BatchBuilder(1 << 20, 0)

    async def send_batch(self, batch: Any, topic: str, partition: int) -> Any:
        self.log.append(("sent", topic))
        from aiokafka.record.default_records import DefaultRecordBatch

        data = bytes(batch._builder.build())
        records = list(DefaultRecordBatch(data))
        self.headers.setdefault(topic, []).extend([list(r.headers) for r in records])

        async def ack() -> None:
            self.log.append(("acked", topic))

        return asyncio.ensure_future(ack())


@pytest.mark.parametrize("exactly_once", [False, True])
async def test_the_mirror_is_sent_first_with_the_changes_own_headers(exactly_once: bool) -> None:
    from lukhas_context.processors import publisher as module
    from lukhas_context.processors.publisher import Publisher
    from lukhas_context.processors.round import PartitionRound

    producer = _Producer()
    topics = Topics("p")
    publisher = Publisher(producer, topics)  # type: ignore[arg-type]
    publisher.mirror = Mirror.of(topics.changes_registry, {CHANGE.fingerprint: 7})
    r = PartitionRound(0, first_seq=40)
    r.changes = [(b"a", _change("a", 1), [("traceparent", b"00-t")]),
                 (fence_key("lock"), b"LKF1" + b"\x00" * 24, []),
                 (b"b", None, [("kind", b"DELETE")])]  # fmt: skip
    end = module._TX_END if exactly_once else module._ROUND_END
    await publisher._send_round(producer, r, end)  # type: ignore[arg-type]

    mirror, changes = topics.changes_registry, topics.changes
    assert producer.log.index(("sent", mirror)) < producer.log.index(("sent", changes))
    if not exactly_once:  # acknowledged before a change is sent: never fewer than the topic
        assert producer.log.index(("acked", mirror)) < producer.log.index(("sent", changes))
    assert producer.headers[mirror] == [[("traceparent", b"00-t")], [("kind", b"DELETE")]]
    names = [[n for n, _ in h] for h in producer.headers[changes]]
    assert names == [["traceparent", "seq"], ["seq"], ["kind", end[0], "seq"]]
