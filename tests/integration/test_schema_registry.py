"""The change stream in Schema Registry wire format (``processors.mirror``), read by Confluent's
own consumer, registry client and Avro deserializer (confluent-kafka), against a real registry
(Apicurio Registry 2.4.2, built by ``registry.py``) and the session's broker."""

from __future__ import annotations

import io
import json
import os
import re
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import fastavro
import pytest
from confluent_kafka import DeserializingConsumer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import StringDeserializer

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import WorkerStartError
from lukhas_context.processors.materializer import Materializer
from lukhas_context.processors.mirror import register
from lukhas_context.schemas.event import Fence
from lukhas_context.schemas.registry import SchemaRegistry

from .conftest import PARTITIONS, free_port, shell_worker
from .registry import Registry

pytestmark = pytest.mark.integration

README = Path(__file__).resolve().parents[2] / "README.md"
CHANGE = SchemaRegistry.shipped().latest("ContextChange")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    running = Registry(tmp_path_factory.mktemp("registry"), free_port())
    running.start()
    try:
        yield running
    finally:
        running.stop()


def _consume(bootstrap: str, registry: Registry, topic: str, want: int) -> list[Any]:
    """The first ``want`` records of ``topic``, read committed, values through the registry's
    deserializer (at most 60 s)."""
    consumer = DeserializingConsumer({
        "bootstrap.servers": bootstrap,
        "group.id": f"sr-{topic}",
        "auto.offset.reset": "earliest",
        "isolation.level": "read_committed",
        "key.deserializer": StringDeserializer("utf_8"),
        "value.deserializer": AvroDeserializer(SchemaRegistryClient({"url": registry.url})),
    })  # fmt: skip
    consumer.subscribe([topic])
    got: list[Any] = []
    deadline = time.monotonic() + 60
    try:
        while len(got) < want and time.monotonic() < deadline:
            message = consumer.poll(1.0)
            if message is None:
                continue
            assert message.error() is None, message.error()
            got.append(message)
    finally:
        consumer.close()
    return got


@pytest.mark.parametrize("exactly_once", [True, False], ids=["exactly-once", "at-least-once"])
async def test_the_mirror_is_the_change_stream_in_the_registrys_format(
    start_worker: Any, make_client: Any, topics: Any, read_topic: Any, cluster: Any,
    registry: Registry, exactly_once: bool,
) -> None:  # fmt: skip
    worker = await start_worker(schema_registry_url=registry.url, exactly_once=exactly_once)
    async with make_client(worker.url) as client:
        receipts = [await client.put(f"sr:{i}", {"turn": i, "text": "é<>"}) for i in range(12)]
        receipts.append(await client.patch("sr:1", [{"op": "add", "path": "/more", "value": 1}]))
        receipts.append(await client.delete("sr:2"))
        receipts.append(await client.put("sr:fenced", {"x": 1}, fence=Fence("lock-a", 3)))
        for receipt in receipts:
            assert (await receipt.outcome(timeout=30)).status == "applied"

    changes = await read_topic(topics.changes, lambda records: len(records) >= 16)
    context_changes = [m for m in changes if m.key[:1] != b"\xff"]
    assert len(changes) > len(context_changes) == 15  # the fence record is not mirrored
    mirrored = _consume(cluster.bootstrap, registry, topics.changes_registry, 15)
    assert len(mirrored) == 15

    # One subject, the registry's default name for the topic's values; its schema is the
    # change schema (the same fingerprint once parsed).
    sr = SchemaRegistryClient({"url": registry.url})
    subject = f"{topics.changes_registry}-value"
    assert subject in sr.get_subjects()
    latest = sr.get_latest_version(subject)
    registered = fastavro.parse_schema(json.loads(latest.schema.schema_str))
    assert fastavro.schema.to_parsing_canonical_form(registered) == CHANGE.canonical

    # Record for record, partition for partition, in order: the same key, the same change.
    def by_partition(records: list[Any], key: Any, value: Any) -> dict[int, list[Any]]:
        out: dict[int, list[Any]] = {}
        for m in records:
            out.setdefault(_call(m, "partition"), []).append((key(m), value(m)))
        return out

    expected = by_partition(context_changes, lambda m: m.key.decode(), _decode)
    actual = by_partition(mirrored, lambda m: m.key(), lambda m: m.value())
    assert actual == expected
    assert set(actual) <= set(range(PARTITIONS))
    flat = {k: v for records in actual.values() for k, v in records}
    assert flat["sr:2"] is None  # the delete's tombstone is a tombstone here too
    assert json.loads(flat["sr:1"]["doc"]) == {"turn": 1, "text": "é<>", "more": 1}
    assert flat["sr:1"]["kind"] == "PATCH" and flat["sr:1"]["version"] == 2
    # The wire format: magic byte 0 and the registered schema's id.
    raw = next(m.value for m in context_changes if m.key == b"sr:3")
    framed = await read_topic(topics.changes_registry, lambda records: len(records) >= 15)
    mirror_raw = next(m.value for m in framed if m.key == b"sr:3")
    # Each change's own headers, not the change topic's numbering and round markers.
    assert not {name for m in framed for name, _ in m.headers} & {"seq", "txend", "rend"}
    tombstone = next(m for m in framed if m.key == b"sr:2" and m.value is None)
    assert ("kind", b"deleted") in list(tombstone.headers)
    assert mirror_raw[:5] == b"\x00" + latest.schema_id.to_bytes(4, "big")
    assert mirror_raw[5:] == raw[10:]


def _call(m: Any, name: str) -> Any:
    attr = getattr(m, name)
    return attr() if callable(attr) else attr


def _decode(m: Any) -> Any:
    if m.value is None:
        return None
    return fastavro.schemaless_reader(io.BytesIO(m.value[10:]), CHANGE.parsed, None)


async def test_a_registry_that_refuses_stops_the_worker_at_once_with_its_reason(
    cluster: Any, topics: Any, registry: Registry, tmp_path: Path
) -> None:
    # Another schema already holds the subject, and the subject accepts only compatible ones.
    subject_url = f"{registry.url}/subjects/{{}}-value"
    other = {"type": "record", "name": "Other", "fields": [{"name": "n", "type": "int"}]}

    def post(url: str, body: Any, method: str = "POST") -> Any:
        data = json.dumps(body).encode()
        ctype = {"Content-Type": "application/vnd.schemaregistry.v1+json"}
        with urllib.request.urlopen(urllib.request.Request(url, data, ctype, method=method)) as r:
            return json.load(r)

    wrong = registry.url.replace("/ccompat/v7", "/nope")
    config = WorkerConfig(cluster.bootstrap, tmp_path / "state", topics=topics,
                          group_id=f"{topics.prefix}-group", schema_registry_url=wrong)  # fmt: skip
    materializer = Materializer(config)
    started = time.monotonic()
    try:
        says = r"at http://127\.0\.0\.1:\d+/apis/nope: HTTP 404"
        with pytest.raises(WorkerStartError, match=says):
            await materializer.start()
    finally:
        await materializer.close()
    assert time.monotonic() - started < 20

    taken = f"t{os.urandom(4).hex()}.context.changes.sr"
    post(subject_url.format(taken) + "/versions", {"schema": json.dumps(other)})
    post(f"{registry.url}/config/{taken}-value", {"compatibility": "FULL"}, "PUT")
    from lukhas_context.processors.mirror import change_versions

    with pytest.raises(WorkerStartError, match=r"cannot register .* HTTP 409"):
        await register(registry.url, f"{taken}-value", change_versions(), timeout_s=5)


async def test_an_unreachable_registry_is_named_without_its_password() -> None:
    from lukhas_context.processors.mirror import change_versions

    url = f"http://svc:s3cret@127.0.0.1:{free_port()}/apis/ccompat/v7"
    started = time.monotonic()
    with pytest.raises(WorkerStartError) as raised:
        await register(url, "x-value", change_versions(), timeout_s=2)
    assert time.monotonic() - started < 10
    assert "s3cret" not in str(raised.value) and "svc:***@127.0.0.1" in str(raised.value)


def test_the_readmes_schema_registry_lines_run_as_written(
    cluster: Any, registry: Registry, tmp_path: Path
) -> None:
    """The section's worker line and its consumer, against this session's broker and this
    module's registry (their addresses for the README's), under a prefix of the test's own."""
    text = README.read_text()
    section = text[text.index("## Schema Registry format") : text.index("## Docker compose")]
    command = re.search(r"```sh\n(.*?)```", section, re.DOTALL)
    code = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert command is not None and code is not None
    prefix = f"t{os.urandom(5).hex()}"

    def ours(s: str) -> str:
        return (s.replace("127.0.0.1:19092", cluster.bootstrap)
                 .replace("http://127.0.0.1:8081", registry.url)
                 .replace("lukhas.context.", f"{prefix}.context."))  # fmt: skip

    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "LUKHAS_TOPIC_PREFIX": prefix}  # fmt: skip
    lukhas = [sys.executable, "-m", "lukhas_context.ops"]
    subprocess.run([*lukhas, "topics", "create", "--bootstrap", cluster.bootstrap,
                    "--partitions", "3"], env=env, check=True, capture_output=True,
                   timeout=120)  # fmt: skip
    line = ours(command.group(1).strip())
    worker = shell_worker(line, env, tmp_path)
    try:
        worker.wait_healthy(timeout_s=90)
        done = subprocess.run(
            [*lukhas, "put", "agent:7", '{"turn": 1}', "--bootstrap", cluster.bootstrap,
             "--api", worker.url, "--wait", "--timeout", "90"],
            env=env, capture_output=True, text=True, timeout=150,
        )  # fmt: skip
        assert done.returncode == 0, done.stderr + (tmp_path / "worker.log").read_text()
        read = subprocess.run([sys.executable, "-c", ours(code.group(1))], env=env,
                              capture_output=True, text=True, timeout=120)  # fmt: skip
        assert read.returncode == 0, read.stderr
        assert read.stdout.splitlines() == ['agent:7 1 {"turn":1}'], read.stdout
    finally:
        worker.terminate()
