"""The end offset of a partition, from its current leader only.

A broker that was cut off from the cluster still believes it leads the partitions it led,
until it has caught up with the controller's metadata. Asked in that window, it answers with
its old high watermark, which can be below writes the new leader has acknowledged since. For
a reader that only wants to know how far to fetch, that is harmless (it fetches a little
later). For a reader that concludes "this offset does not exist", it is wrong: an
acknowledged write would be reported missing.

``leader_end`` makes that negative answer safe, as Kafka's own clients do with leader epochs
(KIP-320), which aiokafka's Metadata (up to v5) and ListOffsets (up to v3) do not carry:

1. Metadata v7 is asked of every broker the client knows, and a majority of them must
   answer. The leader is the one with the highest leader epoch among the answers: the
   controller raises the epoch at every election, so a stale view has a lower one.
2. ListOffsets v4 goes to that leader with that epoch as ``current_leader_epoch``. A broker
   that is not the leader of that epoch refuses (``NOT_LEADER_OR_FOLLOWER``,
   ``FENCED_LEADER_EPOCH``, ``UNKNOWN_LEADER_EPOCH``) instead of answering.

Anything less (no majority, an error, a timeout, a broker without these versions) is None:
the caller cannot tell, and must not treat the offset as missing.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError
from aiokafka.protocol.api import Request, RequestStruct, Response
from aiokafka.protocol.types import Array, Boolean, Int8, Int16, Int32, Int64, Schema, String

__all__ = ["LeaderView", "choose_leader", "leader_end"]

#: ListOffsets' timestamp that asks for the end (the next offset to be written).
_LATEST = -1
_READ_UNCOMMITTED = 0


class _MetadataResponseV7(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 3
    API_VERSION = 7
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("brokers", Array(
            ("node_id", Int32), ("host", String("utf-8")), ("port", Int32),
            ("rack", String("utf-8")),
        )),
        ("cluster_id", String("utf-8")),
        ("controller_id", Int32),
        ("topics", Array(
            ("error_code", Int16),
            ("topic", String("utf-8")),
            ("is_internal", Boolean),
            ("partitions", Array(
                ("error_code", Int16),
                ("partition", Int32),
                ("leader", Int32),
                ("leader_epoch", Int32),
                ("replicas", Array(Int32)),
                ("isr", Array(Int32)),
                ("offline_replicas", Array(Int32)),
            )),
        )),
    )  # fmt: skip


class _MetadataRequestV7(RequestStruct):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 3
    API_VERSION = 7
    RESPONSE_TYPE = _MetadataResponseV7
    SCHEMA = Schema(("topics", Array(String("utf-8"))), ("allow_auto_topic_creation", Boolean))


class _EpochMetadata(Request[_MetadataRequestV7]):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 3

    def __init__(self, topic: str) -> None:
        self._topic = topic

    def build(self, request_struct_class: type[_MetadataRequestV7]) -> _MetadataRequestV7:
        return request_struct_class([self._topic], False)


class _ListOffsetsResponseV4(Response):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 2
    API_VERSION = 4
    SCHEMA = Schema(
        ("throttle_time_ms", Int32),
        ("topics", Array(
            ("topic", String("utf-8")),
            ("partitions", Array(
                ("partition", Int32),
                ("error_code", Int16),
                ("timestamp", Int64),
                ("offset", Int64),
                ("leader_epoch", Int32),
            )),
        )),
    )  # fmt: skip


class _ListOffsetsRequestV4(RequestStruct):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 2
    API_VERSION = 4
    RESPONSE_TYPE = _ListOffsetsResponseV4
    SCHEMA = Schema(
        ("replica_id", Int32),
        ("isolation_level", Int8),
        ("topics", Array(
            ("topic", String("utf-8")),
            ("partitions", Array(
                ("partition", Int32), ("current_leader_epoch", Int32), ("timestamp", Int64),
            )),
        )),
    )  # fmt: skip


class _EpochListOffsets(Request[_ListOffsetsRequestV4]):  # type: ignore[misc]  # aiokafka is untyped
    API_KEY = 2

    def __init__(self, topic: str, partition: int, epoch: int) -> None:
        self._topics = [(topic, [(partition, epoch, _LATEST)])]

    def build(self, request_struct_class: type[_ListOffsetsRequestV4]) -> _ListOffsetsRequestV4:
        return request_struct_class(-1, _READ_UNCOMMITTED, self._topics)


@dataclass(frozen=True)
class LeaderView:
    """One broker's metadata of a partition: its leader (-1: none) and leader epoch."""

    leader: int
    epoch: int


def choose_leader(views: list[LeaderView | None], known: int) -> LeaderView | None:
    """The leader to ask: the view with the highest epoch, when more than half of the
    ``known`` brokers answered (``views`` has one entry per broker asked, None when it did
    not answer). None when there is no majority or the newest view names no leader."""
    answered = [v for v in views if v is not None]
    if not answered or 2 * len(answered) <= known:
        return None
    newest = max(answered, key=lambda v: v.epoch)
    return newest if newest.leader >= 0 and newest.epoch >= 0 else None


def _view(response: Any, topic: str, partition: int) -> LeaderView | None:
    for t in response.to_object()["topics"]:
        if t["topic"] != topic or t["error_code"]:
            continue
        for p in t["partitions"]:
            if p["partition"] == partition and not p["error_code"]:
                return LeaderView(p["leader"], p["leader_epoch"])
    return None


async def _ask(client: AIOKafkaClient, node: int, request: Request[Any], timeout: float) -> Any:
    try:
        return await asyncio.wait_for(client.send(node, request), timeout)
    except (KafkaError, OSError, TimeoutError, NotImplementedError):
        return None  # NotImplementedError: the broker does not have this version


async def leader_end(
    client: AIOKafkaClient, topic: str, partition: int, timeout: float
) -> int | None:
    """The end offset of ``topic[partition]`` as its current leader says (see the module
    doc), or None when that cannot be established within about ``2 * timeout`` seconds."""
    nodes = sorted(b.nodeId for b in client.cluster.brokers())
    if not nodes:
        return None
    answers = await asyncio.gather(
        *(_ask(client, n, _EpochMetadata(topic), timeout) for n in nodes)
    )
    views = [None if a is None else _view(a, topic, partition) for a in answers]
    leader = choose_leader(views, len(nodes))
    if leader is None:
        return None
    response = await _ask(client, leader.leader, _EpochListOffsets(topic, partition, leader.epoch),
                          timeout)  # fmt: skip
    if response is None:
        return None
    for t in response.to_object()["topics"]:
        for p in t["partitions"]:
            if t["topic"] == topic and p["partition"] == partition and not p["error_code"]:
                return int(p["offset"])
    return None
