"""Who serves which partition: every worker publishes its claim, and every worker reads all.

The members topic (``<prefix>.context.members``, compacted) holds one record per worker, keyed
by its member id: ``{"member", "api", "partitions", "generation", "updated_ms"}``, where
``generation`` is the consumer group generation the assignment came with. A worker publishes
it when partitions are assigned or revoked, and a tombstone when it leaves cleanly. A killed
worker's record stays, but the group reassigns its partitions in a later generation, and the
owner of a partition is the member claiming it **in the highest generation**: a stale claim
always loses, whatever the clocks say.

Each worker tails the topic and serves the table at ``GET /v1/members``; its read API forwards
a request for a partition it does not serve to the owner, and ``ContextClient`` routes reads to
owners directly (see ``streams.client``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

#: A claim not re-published for this long loses to any fresher claim of the same partition.
STALE_AFTER_MS = 120_000


@dataclass(frozen=True, slots=True)
class Member:
    member: str
    api: str
    partitions: tuple[int, ...]
    generation: int
    updated_ms: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member, "api": self.api, "partitions": list(self.partitions),
            "generation": self.generation, "updated_ms": self.updated_ms,
        }  # fmt: skip


def owners(members: list[Member], now_ms: int | None = None) -> dict[int, Member]:
    """Partition -> the member claiming it in the highest generation, among the claims
    refreshed within ``STALE_AFTER_MS`` if there are any (workers re-publish their claims
    every 30 s): a dead worker's claim from a group generation that no longer exists (the group
    was deleted and its generations restarted) does not win for ever."""
    now = int(time.time() * 1000) if now_ms is None else now_ms
    out: dict[int, Member] = {}
    for m in members:
        fresh = now - m.updated_ms <= STALE_AFTER_MS
        for p in m.partitions:
            held = out.get(p)
            if held is None:
                out[p] = m
                continue
            held_fresh = now - held.updated_ms <= STALE_AFTER_MS
            if (fresh, m.generation, m.updated_ms) > (held_fresh, held.generation, held.updated_ms):
                out[p] = m
    return out


def _is_int(x: object) -> bool:
    return type(x) is int  # not bool, not float


def _parse_claim(value: bytes) -> Member | None:
    """A member record, or None unless every field has exactly its type."""
    try:
        data = orjson.loads(value)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(data, dict):
        return None
    member, api, parts = data.get("member"), data.get("api"), data.get("partitions")
    generation, updated = data.get("generation"), data.get("updated_ms")
    if not (isinstance(member, str) and isinstance(api, str) and isinstance(parts, list)):
        return None
    if not (all(_is_int(p) and p >= 0 for p in parts) and _is_int(generation)):
        return None
    if not _is_int(updated):
        return None
    assert isinstance(generation, int) and isinstance(updated, int)
    return Member(member, api, tuple(parts), generation, updated)


class Membership:
    """This worker's claim (``announce``) and everyone's (``members``, ``owner``)."""

    def __init__(self, bootstrap: str, topic: str, member: str, api: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.member = member
        self.api = api
        self._members: dict[str, Member] = {}
        self._owners: dict[int, Member] = {}
        self._task: asyncio.Task[None] | None = None
        self._consumer: AIOKafkaConsumer | None = None
        self.changed = asyncio.Event()
        #: False when the members topic does not exist (a deployment made before it did):
        #: the worker then works alone, neither publishing nor forwarding.
        self.enabled = False

    async def start(self) -> None:
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=self.bootstrap, client_id=f"{self.member}-members",
            enable_auto_commit=False, auto_offset_reset="earliest",
        )  # fmt: skip
        await self._consumer.start()
        metadata = await self._consumer._client.fetch_all_metadata()
        if self.topic not in metadata.topics():
            log.warning("no topic %s: membership is not published (`lukhas up` creates it)",
                        self.topic)  # fmt: skip
            return
        self.enabled = True
        parts = metadata.partitions_for_topic(self.topic) or {0}
        self._consumer.assign([TopicPartition(self.topic, p) for p in sorted(parts)])
        self._task = asyncio.create_task(self._tail())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._consumer is not None:
            await self._consumer.stop()
            self._consumer = None

    async def announce(
        self, producer: AIOKafkaProducer, partitions: list[int] | None, generation: int
    ) -> bool:
        """Publishes this worker's claim (``partitions`` None: it leaves, a tombstone);
        False when the broker did not acknowledge it."""
        if not self.enabled:
            return True
        key = self.member.encode()
        value = None
        if partitions is not None:
            claim = Member(self.member, self.api, tuple(sorted(partitions)), generation,
                           int(time.time() * 1000))  # fmt: skip
            value = orjson.dumps(claim.to_dict())
            self._apply(key, value)  # our own claim counts at once
        try:
            await (await producer.send(self.topic, value=value, key=key))
        except KafkaError as exc:
            log.warning("could not publish membership of %s: %s", self.member, exc)
            return False
        return True

    def owner(self, partition: int) -> Member | None:
        return self._owners.get(partition)

    def members(self) -> list[Member]:
        return sorted(self._members.values(), key=lambda m: m.member)

    async def _tail(self) -> None:
        assert self._consumer is not None
        while True:
            try:
                batch = await self._consumer.getmany(timeout_ms=1000)
            except KafkaError as exc:
                log.warning("reading %s: %s", self.topic, exc)
                await asyncio.sleep(1)
                continue
            for records in batch.values():
                for m in records:
                    self._apply(m.key, m.value)

    def _apply(self, key: bytes | None, value: bytes | None) -> None:
        if key is None:
            return
        name = key.decode(errors="replace")
        if value is None:
            self._members.pop(name, None)
        else:
            claim = _parse_claim(value)
            if claim is None:
                log.warning("ignoring a malformed membership record of %r", name)
                return
            # A member's records share a key, hence a partition: the last one read is its
            # latest claim, whatever its generation (a group whose generation was reset
            # starts again from 0).
            self._members[name] = claim
        self._owners = owners(list(self._members.values()))
        self.changed.set()
        self.changed = asyncio.Event()
