"""Topic bootstrap: create the design's topics, or check that the existing ones match.

Kafka never changes a topic's partition count or replication factor by itself, and changing the
partition count of ``events`` would move contexts to other partitions (key hashing) and break
co-partitioning with ``changes``. So a mismatch is an error for a human, never "fixed" here.

Every call retries what a cluster that is starting (or missing brokers) answers — a broker
not ready yet, no leader, no controller, connections refused, requests timed out — until it
succeeds or its ``timeout_s`` passes; only then is it an ``AdminError``, naming the last error.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from collections.abc import Set as AbstractSet
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka import TopicPartition
from aiokafka.admin import NewTopic, RecordsToDelete
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    TopicAlreadyExistsError,
    UnknownTopicOrPartitionError,
)
from aiokafka.errors import for_code as kafka_error_for_code

from lukhas_context.streams import kafka
from lukhas_context.streams.exceptions import AdminError, TopicMismatchError
from lukhas_context.streams.health import unreachable
from lukhas_context.streams.kafka import error_text, kafka_error
from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity
from lukhas_context.streams.topics import TopicSpec

__all__ = [
    "cluster_brokers",
    "delete_records_below",
    "delete_topics",
    "ensure_topics",
    "partition_count",
    "wait_group_coordinator",
]

T = TypeVar("T")
#: First pause between attempts of an admin call; it doubles up to ``MAX_BACKOFF_S``.
BACKOFF_S = 0.1
MAX_BACKOFF_S = 1.0


class _NotYet(AdminError):
    """A step the cluster may complete when tried again (a retriable per-topic error code,
    partitions without a leader yet)."""


@dataclass(frozen=True, slots=True)
class _Shape:
    partitions: int
    replication: int


async def ensure_topics(
    bootstrap: str,
    specs: list[TopicSpec],
    brokers: int | None = None,
    timeout_s: float = 30,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> list[str]:
    """Create the topics of ``specs`` that do not exist; return the names created, in order.

    Replication is ``spec.replication`` or, when None, 3 if the cluster has at least 3 brokers
    else 1; ``min.insync.replicas`` is set to 2 when the replication is 3 or more, else 1.
    ``brokers`` None means: count the brokers in the cluster metadata.

    Idempotent: an existing topic (also one created concurrently by another caller) is only
    checked. Raises ``TopicMismatchError`` if its partition count or replication factor differs,
    and ``AdminError`` if the cluster cannot be reached within ``timeout_s`` or refuses to create.
    On return every partition of every spec'd topic has a leader. Retries while the cluster
    is starting (see the module doc).
    """

    async def step(admin: Any, deadline: float) -> list[str]:
        count = brokers if brokers is not None else await _broker_count(admin)
        wanted = {spec.name: _wanted_shape(spec, count) for spec in specs}
        inferred = {spec.name for spec in specs if spec.replication is None}
        existing = await _describe(admin, list(wanted))
        _check_all(existing, wanted, inferred)
        missing = [spec for spec in specs if spec.name not in existing]
        created = await _create(admin, missing, wanted, deadline)
        # A topic another caller created between our describe and create is checked here.
        _check_all(await _describe(admin, list(wanted)), wanted, inferred)
        await _wait_for_leaders(admin, list(wanted), deadline)
        return created

    # A retry after a create that did land finds the topics and creates nothing: what the
    # first attempt created is remembered so that the answer still names it.
    created: list[str] = []

    async def remembering(admin: Any, deadline: float) -> list[str]:
        created.extend(name for name in await step(admin, deadline) if name not in created)
        return created

    return await _retrying(bootstrap, timeout_s, "creating topics", remembering, security)


async def delete_topics(
    bootstrap: str, names: list[str], timeout_s: float = 30, *, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Delete ``names``; topics that do not exist are ignored. For tests and ``lukhas`` resets."""

    async def step(admin: Any, deadline: float) -> None:
        left_ms = int(max(0.1, deadline - time.monotonic()) * 1000)
        response = await admin.delete_topics(names, timeout_ms=left_ms)
        for name, code, *_ in response.topic_error_codes:
            if code not in (0, UnknownTopicOrPartitionError.errno):
                error = kafka_error_for_code(code)
                kind = _NotYet if error.retriable else AdminError
                raise kind(f"cannot delete topic {name}: {error.__name__}")

    await _retrying(bootstrap, timeout_s, "deleting topics", step, security)


async def delete_records_below(
    bootstrap: str,
    topic: str,
    below: Mapping[int, int],
    client_id: str,
    timeout_s: float = 30,
    *,
    security: KafkaSecurity = PLAINTEXT,
) -> dict[int, int]:
    """Kafka's DeleteRecords: the records of each partition of ``topic`` below its offset in
    ``below`` go (the partition's start moves there); returns each partition's new start.
    Kafka's errors come out as they are (the callers say what failed)."""
    if not below:
        return {}
    todo = {TopicPartition(topic, p): RecordsToDelete(o) for p, o in below.items()}
    admin = kafka.admin_client(bootstrap, client_id, request_timeout_s=timeout_s, security=security)
    try:
        await admin.start()
        done = await admin.delete_records(todo, timeout_ms=int(timeout_s * 1000))
    finally:
        await admin.close()
    return {tp.partition: start for tp, start in done.items()}


async def cluster_brokers(
    bootstrap: str, timeout_s: float = 5, *, security: KafkaSecurity = PLAINTEXT
) -> int:
    """The number of live brokers in the cluster's metadata, as seen from ``bootstrap``.

    Raises ``AdminError`` if no broker answers within ``timeout_s``.
    """

    async def step(admin: Any, deadline: float) -> int:
        return await _broker_count(admin)

    return await _retrying(bootstrap, timeout_s, "listing brokers", step, security)


async def wait_group_coordinator(
    bootstrap: str, group: str, timeout_s: float = 60, *, security: KafkaSecurity = PLAINTEXT
) -> None:
    """Until ``group``'s coordinator answers a DescribeGroups without an error. On a fresh
    cluster the first lookup creates the offsets topic, and its leaders move while it settles;
    consumers that join the group meanwhile lose the coordinator, which aiokafka answers by
    forgetting its member id (see docs/architecture.md, Docker compose). Raises
    ``AdminError`` when it does not answer within ``timeout_s``."""

    async def step(admin: Any, deadline: float) -> None:
        for response in await admin.describe_consumer_groups([group]):
            for described in response.groups:
                error = described[0]
                if error:
                    raise _NotYet(f"group {group}: {kafka_error_for_code(error).__name__}")

    await _retrying(
        bootstrap, timeout_s, f"finding the coordinator of group {group}", step, security
    )


async def partition_count(
    bootstrap: str, topic: str, timeout_s: float = 10, *, security: KafkaSecurity = PLAINTEXT
) -> int:
    """How many partitions ``topic`` has; ``AdminError`` if it does not exist."""

    async def step(admin: Any, deadline: float) -> int:
        shape = (await _describe(admin, [topic])).get(topic)
        if shape is None:
            raise AdminError(f"topic {topic} does not exist at {bootstrap}")
        return shape.partitions

    return await _retrying(bootstrap, timeout_s, f"describing {topic}", step, security)


async def _retrying(
    bootstrap: str,
    timeout_s: float,
    what: str,
    step: Callable[[Any, float], Awaitable[T]],
    security: KafkaSecurity,
) -> T:
    """``step(admin, deadline)`` on a fresh admin client until it returns, retrying the
    errors of a cluster that is starting, all within ``timeout_s``. Raises ``AdminError``
    (its own, a ``TopicMismatchError``, or one naming the last retriable error)."""
    deadline = time.monotonic() + timeout_s
    backoff = BACKOFF_S
    attempts = 0
    diagnosed = False
    while True:
        attempts += 1
        left = deadline - time.monotonic()
        try:
            async with (
                asyncio.timeout(max(0.001, left)),
                _admin(bootstrap, left, security) as admin,
            ):
                return await step(admin, deadline)
        except _NotYet as exc:
            last: BaseException = exc
        except AdminError:
            raise
        except (KafkaError, OSError) as exc:  # TimeoutError is an OSError
            if isinstance(exc, KafkaError) and not exc.retriable:
                raise kafka_error(AdminError, f"{what} at {bootstrap} failed", exc) from exc
            if isinstance(exc, KafkaConnectionError) and not diagnosed:
                # Once: brokers that refuse this client's TLS or SASL will go on refusing.
                diagnosed = True
                found = await unreachable(bootstrap, security, min(3.0, timeout_s * 0.2))
                if found is not None and found.refused:
                    raise AdminError(f"{what} at {bootstrap} failed: {found.reason}") from exc
            last = exc
        if time.monotonic() + backoff >= deadline:
            why = _text(last)
            if isinstance(last, KafkaConnectionError):
                found = await unreachable(bootstrap, security, min(3.0, timeout_s * 0.2))
                why = found.reason if found is not None else why
            raise AdminError(
                f"{what} at {bootstrap} did not succeed within {timeout_s:g} s "
                f"({attempts} attempt(s)); last error: {why}"
            ) from last
        await asyncio.sleep(backoff)
        backoff = min(MAX_BACKOFF_S, backoff * 2)


def _text(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError) and not str(exc):
        return "no answer in time (TimeoutError)"
    return error_text(exc)


@asynccontextmanager
async def _admin(bootstrap: str, timeout_s: float, security: KafkaSecurity) -> AsyncIterator[Any]:
    """A started admin client; its errors come out as they are (``_retrying`` sorts them)."""
    admin = kafka.admin_client(bootstrap, request_timeout_s=max(0.1, timeout_s), security=security)
    try:
        await admin.start()
        yield admin
    finally:
        await admin.close()


async def _broker_count(admin: Any) -> int:
    cluster = await admin.describe_cluster()
    return len(cluster["brokers"])


def _wanted_shape(spec: TopicSpec, brokers: int) -> _Shape:
    replication = spec.replication or (3 if brokers >= 3 else 1)
    return _Shape(spec.partitions, replication)


async def _describe(admin: Any, names: list[str]) -> dict[str, _Shape]:
    """The shape of each topic of ``names`` that exists (missing topics are left out)."""
    present = set(await admin.list_topics()) & set(names)
    if not present:
        return {}
    shapes: dict[str, _Shape] = {}
    for topic in await admin.describe_topics(sorted(present)):
        partitions = topic["partitions"]
        if topic["error_code"] or not partitions:
            # Just created, or its brokers starting: the metadata has no partitions for it
            # yet (LEADER_NOT_AVAILABLE), which is no shape to compare with its spec.
            error = kafka_error_for_code(topic["error_code"]) if topic["error_code"] else None
            if error is not None and not error.retriable:
                raise AdminError(f"cannot describe topic {topic['topic']}: {error.__name__}")
            raise _NotYet(f"topic {topic['topic']} has no partitions in the metadata yet"
                          + (f" ({error.__name__})" if error is not None else ""))  # fmt: skip
        replication = len(partitions[0]["replicas"])
        shapes[topic["topic"]] = _Shape(len(partitions), replication)
    return shapes


def _check_all(
    existing: dict[str, _Shape], wanted: dict[str, _Shape], inferred: AbstractSet[str] = frozenset()
) -> None:
    """Raise ``TopicMismatchError`` listing every existing topic, in spec order, that differs.

    For the topics in ``inferred`` (a spec without a replication: it follows the broker count)
    a replication *above* the one inferred now is no mismatch: brokers that are down or still
    starting are missing from the metadata the count came from."""
    problems = [
        f"{name} has partitions={actual.partitions} replication={actual.replication}, "
        f"expected partitions={expected.partitions} replication={expected.replication}"
        for name, expected in wanted.items()
        if (actual := existing.get(name)) is not None
        and actual != expected
        and not (
            name in inferred
            and actual.partitions == expected.partitions
            and actual.replication > expected.replication
        )
    ]
    if problems:
        raise TopicMismatchError(
            "existing topics differ from their spec (Kafka cannot change this in place: use "
            "another topic prefix or delete the topics): " + "; ".join(problems)
        )


async def _create(
    admin: Any, specs: list[TopicSpec], wanted: dict[str, _Shape], deadline: float
) -> list[str]:
    if not specs:
        return []
    new = [_new_topic(spec, wanted[spec.name]) for spec in specs]
    left_ms = int(max(0.1, deadline - time.monotonic()) * 1000)
    response = await admin.create_topics(new, timeout_ms=left_ms)
    errors = {name: (code, rest) for name, code, *rest in response.topic_errors}
    created: list[str] = []
    for spec in specs:
        code, detail = errors.get(spec.name, (0, []))
        if code == 0:
            created.append(spec.name)
        elif code != TopicAlreadyExistsError.errno:
            error = kafka_error_for_code(code)
            kind = _NotYet if error.retriable else AdminError
            raise kind(f"cannot create topic {spec.name}: {error.__name__} {detail}")
    return created


def _new_topic(spec: TopicSpec, shape: _Shape) -> Any:
    configs = dict(spec.configs)
    configs["min.insync.replicas"] = "2" if shape.replication >= 3 else "1"
    return NewTopic(spec.name, shape.partitions, shape.replication, topic_configs=configs)


async def _wait_for_leaders(admin: Any, names: list[str], deadline: float) -> None:
    # CreateTopics returns once the controller has the topic; brokers learn it a moment later,
    # and a producer started in that moment gets UNKNOWN_TOPIC_OR_PARTITION or LEADER_NOT_AVAILABLE.
    while not await _all_led(admin, names):
        if time.monotonic() > deadline:
            raise _NotYet(f"topics {names} have partitions without a leader")
        await asyncio.sleep(0.1)


async def _all_led(admin: Any, names: list[str]) -> bool:
    topics = await admin.describe_topics(names)
    return all(
        topic["error_code"] == 0 and all(p["leader"] >= 0 for p in topic["partitions"])
        for topic in topics
    )
