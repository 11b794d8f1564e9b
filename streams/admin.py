"""Topic bootstrap: create the design's topics, or check that the existing ones match.

Kafka never changes a topic's partition count or replication factor by itself, and changing the
partition count of ``events`` would move contexts to other partitions (key hashing) and break
co-partitioning with ``changes``. So a mismatch is an error for a human, never "fixed" here.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError, TopicAlreadyExistsError, UnknownTopicOrPartitionError
from aiokafka.errors import for_code as kafka_error_for_code

from lukhas_context.schemas.exceptions import LukhasError
from lukhas_context.streams.topics import TopicSpec

__all__ = [
    "AdminError",
    "TopicMismatchError",
    "cluster_brokers",
    "delete_topics",
    "ensure_topics",
]


class AdminError(LukhasError):
    """The cluster could not be reached or refused a topic operation (the cause is chained)."""


class TopicMismatchError(AdminError):
    """An existing topic has another partition count or replication factor than its spec."""


@dataclass(frozen=True, slots=True)
class _Shape:
    partitions: int
    replication: int


async def ensure_topics(
    bootstrap: str,
    specs: list[TopicSpec],
    brokers: int | None = None,
    timeout_s: float = 30,
) -> list[str]:
    """Create the topics of ``specs`` that do not exist; return the names created, in order.

    Replication is ``spec.replication`` or, when None, 3 if the cluster has at least 3 brokers
    else 1; ``min.insync.replicas`` is set to 2 when the replication is 3 or more, else 1.
    ``brokers`` None means: count the brokers in the cluster metadata.

    Idempotent: an existing topic (also one created concurrently by another caller) is only
    checked. Raises ``TopicMismatchError`` if its partition count or replication factor differs,
    and ``AdminError`` if the cluster cannot be reached within ``timeout_s`` or refuses to create.
    On return every partition of every spec'd topic has a leader.
    """
    async with _admin(bootstrap, timeout_s) as admin:
        count = brokers if brokers is not None else await _broker_count(admin)
        wanted = {spec.name: _wanted_shape(spec, count) for spec in specs}
        existing = await _describe(admin, list(wanted))
        _check_all(existing, wanted)
        missing = [spec for spec in specs if spec.name not in existing]
        created = await _create(admin, missing, wanted, timeout_s)
        # A topic another caller created between our describe and create is checked here.
        _check_all(await _describe(admin, list(wanted)), wanted)
        await _wait_for_leaders(admin, list(wanted), timeout_s)
        return created


async def delete_topics(bootstrap: str, names: list[str], timeout_s: float = 30) -> None:
    """Delete ``names``; topics that do not exist are ignored. For tests and ``lukhas`` resets."""
    async with _admin(bootstrap, timeout_s) as admin:
        response = await admin.delete_topics(names, timeout_ms=int(timeout_s * 1000))
        for name, code, *_ in response.topic_error_codes:
            if code not in (0, UnknownTopicOrPartitionError.errno):
                raise AdminError(
                    f"cannot delete topic {name}: {kafka_error_for_code(code).__name__}"
                )


async def cluster_brokers(bootstrap: str, timeout_s: float = 5) -> int:
    """The number of live brokers in the cluster's metadata, as seen from ``bootstrap``.

    Raises ``AdminError`` if no broker answers within ``timeout_s``.
    """
    async with _admin(bootstrap, timeout_s) as admin:
        return await asyncio.wait_for(_broker_count(admin), timeout_s)


@asynccontextmanager
async def _admin(bootstrap: str, timeout_s: float) -> AsyncIterator[Any]:
    admin = AIOKafkaAdminClient(
        bootstrap_servers=bootstrap, request_timeout_ms=int(timeout_s * 1000)
    )
    try:
        await asyncio.wait_for(admin.start(), timeout_s)
    except (KafkaError, OSError, TimeoutError) as exc:
        await admin.close()
        raise AdminError(f"cannot reach Kafka at {bootstrap}: {exc!r}") from exc
    try:
        yield admin
    except (KafkaError, TimeoutError) as exc:
        raise AdminError(f"admin request to {bootstrap} failed: {exc!r}") from exc
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
        replication = len(partitions[0]["replicas"]) if partitions else 0
        shapes[topic["topic"]] = _Shape(len(partitions), replication)
    return shapes


def _check_all(existing: dict[str, _Shape], wanted: dict[str, _Shape]) -> None:
    """Raise ``TopicMismatchError`` listing every existing topic, in spec order, that differs."""
    problems = [
        f"{name} has partitions={actual.partitions} replication={actual.replication}, "
        f"expected partitions={expected.partitions} replication={expected.replication}"
        for name, expected in wanted.items()
        if (actual := existing.get(name)) is not None and actual != expected
    ]
    if problems:
        raise TopicMismatchError(
            "existing topics differ from their spec (Kafka cannot change this in place: use "
            "another topic prefix or delete the topics): " + "; ".join(problems)
        )


async def _create(
    admin: Any, specs: list[TopicSpec], wanted: dict[str, _Shape], timeout_s: float
) -> list[str]:
    if not specs:
        return []
    new = [_new_topic(spec, wanted[spec.name]) for spec in specs]
    response = await admin.create_topics(new, timeout_ms=int(timeout_s * 1000))
    errors = {name: (code, rest) for name, code, *rest in response.topic_errors}
    created: list[str] = []
    for spec in specs:
        code, detail = errors.get(spec.name, (0, []))
        if code == 0:
            created.append(spec.name)
        elif code != TopicAlreadyExistsError.errno:
            error = kafka_error_for_code(code).__name__
            raise AdminError(f"cannot create topic {spec.name}: {error} {detail}")
    return created


def _new_topic(spec: TopicSpec, shape: _Shape) -> Any:
    configs = dict(spec.configs)
    configs["min.insync.replicas"] = "2" if shape.replication >= 3 else "1"
    return NewTopic(spec.name, shape.partitions, shape.replication, topic_configs=configs)


async def _wait_for_leaders(admin: Any, names: list[str], timeout_s: float) -> None:
    # CreateTopics returns once the controller has the topic; brokers learn it a moment later,
    # and a producer started in that moment gets UNKNOWN_TOPIC_OR_PARTITION or LEADER_NOT_AVAILABLE.
    deadline = time.monotonic() + timeout_s
    while not await _all_led(admin, names):
        if time.monotonic() > deadline:
            raise AdminError(f"topics {names} have partitions without a leader after {timeout_s}s")
        await asyncio.sleep(0.1)


async def _all_led(admin: Any, names: list[str]) -> bool:
    topics = await admin.describe_topics(names)
    return all(
        topic["error_code"] == 0 and all(p["leader"] >= 0 for p in topic["partitions"])
        for topic in topics
    )
