"""Who serves which partition: the group coordinator says, and nothing else does.

Every worker joins the consumer group with ``ApiAssignor``: it sends its read API's URL in
the subscription metadata of its JoinGroup request (``user_data``), and, when it leads the
group, assigns the partitions as aiokafka's round-robin assignor does. Only a member of the
group can set its own metadata, and the coordinator keeps, for every member of the current
generation, that metadata and the assignment the leader gave it. So each worker asks the
coordinator (DescribeGroups) for its group — when its own assignment changes, and every
``REFRESH_S`` — and builds the routing table from the answer alone: partition -> the URL of
the member the coordinator says holds it. While the group is rebalancing, or the coordinator
cannot be reached, the last table of a stable group is kept.

Why not records on a topic: anyone who can write to a topic can write a claim, with any URL,
generation and clock; a forged claim once sent every client read to the forger, whose
documents pass the checksum check because the forger computes the checksums too. A URL in
the table now comes from a current member of the group; who may join the group is a Kafka
ACL (see the trust model in docs/architecture.md). The members topic of earlier versions is
neither read nor written.

The table feeds the read API's forwarding, ``GET /v1/members`` (which ``ContextClient``
routes by) and ``Materializer.wait_applied``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import orjson
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.assignors.abstract import AbstractPartitionAssignor
from aiokafka.coordinator.assignors.roundrobin import RoundRobinPartitionAssignor
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from aiokafka.errors import KafkaError

from lukhas_context.streams import kafka

log = logging.getLogger(__name__)

#: The assignment protocol's name: the group uses it when every member offers it.
ASSIGNOR_NAME = "lukhas-api-v1"
#: How often the table is asked for when nothing prompts it.
REFRESH_S = 5.0
#: How soon the coordinator is asked again while the group is not stable.
UNSETTLED_RETRY_S = 0.5
#: Longest API URL a member may advertise.
MAX_URL_BYTES = 2048


@dataclass(frozen=True, slots=True)
class Member:
    """One member of the group as the coordinator describes it."""

    member: str
    api: str
    partitions: tuple[int, ...]
    #: The group generation this worker was in when it read the description.
    generation: int
    #: This worker's wall clock when it read the description (never another party's).
    updated_ms: int
    #: The URL other workers forward to, when it differs from ``api`` (the URL clients use):
    #: in docker compose, ``api`` is the port published on the host and ``peer`` the
    #: container's name on the compose network.
    peer: str | None = None

    @property
    def forward_url(self) -> str:
        """Where another worker sends a request this member serves."""
        return self.peer or self.api

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member, "api": self.api, "partitions": list(self.partitions),
            "generation": self.generation, "updated_ms": self.updated_ms, "peer": self.peer,
        }  # fmt: skip


def api_url_problem(url: str) -> str | None:
    """Why ``url`` cannot be a worker's read API URL, or None when it can: ``http`` or
    ``https``, a host, no credentials, query, fragment, whitespace or control characters,
    at most ``MAX_URL_BYTES``."""
    if len(url.encode()) > MAX_URL_BYTES:
        return f"an API URL of over {MAX_URL_BYTES} bytes"
    if not url.isprintable() or any(c.isspace() for c in url):
        return f"API URL {url[:80]!r} has whitespace or control characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a port out of range
    except ValueError as exc:
        return f"API URL {url[:80]!r} does not parse: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"API URL {url[:80]!r} is not http(s)://HOST[:PORT]"
    if parts.username is not None or parts.query or parts.fragment:
        return f"API URL {url[:80]!r} carries credentials, a query or a fragment"
    return None


def encode_user_data(api: str, peer: str | None = None) -> bytes:
    return orjson.dumps({"api": api} if peer is None else {"api": api, "peer": peer})


def decode_user_data(user_data: bytes | None) -> tuple[str, str | None]:
    """The API URL and the peer URL (None when absent) in a member's subscription
    ``user_data``; ``ValueError`` saying why not."""
    try:
        data = orjson.loads(user_data or b"")
    except orjson.JSONDecodeError:
        raise ValueError("its subscription carries no API URL (not JSON)") from None
    api = data.get("api") if isinstance(data, dict) else None
    if not isinstance(api, str):
        raise ValueError("its subscription carries no API URL")
    peer = data.get("peer")
    if peer is not None and not isinstance(peer, str):
        raise ValueError("its subscription's peer URL is not a string")
    for url in (api, peer):
        problem = None if url is None else api_url_problem(url)
        if problem is not None:
            raise ValueError(problem)
    return api, peer


class ApiAssignor(AbstractPartitionAssignor):  # type: ignore[misc]
    """Round-robin assignment (aiokafka's), with this worker's API URL (and peer URL, when it
    has one) in its subscription."""

    name = ASSIGNOR_NAME
    version = 0

    def __init__(self, api: str, peer: str | None = None) -> None:
        self._user_data = encode_user_data(api, peer)

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), self._user_data)

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        assignments: dict[str, ConsumerProtocolMemberAssignment]
        assignments = RoundRobinPartitionAssignor.assign(cluster, members)
        return assignments

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        pass


@dataclass(slots=True)
class GroupView:
    """What one DescribeGroups answer says about the group, checked."""

    #: True when the group is stable: its members' assignments are those of its generation.
    stable: bool
    state: str
    members: list[Member] = field(default_factory=list)
    #: Members (or partitions) left out of the table, and why.
    problems: list[str] = field(default_factory=list)

    def owners(self) -> dict[int, Member]:
        return {p: m for m in self.members for p in m.partitions}


def read_group(group: Any, topic: str, generation: int, now_ms: int) -> GroupView:
    """The routing view of one group entry of a DescribeGroups response: ``(error_code,
    group, state, protocol_type, protocol, members, ...)``, each member ``(member_id,
    client_id, client_host, metadata, assignment)``.

    Not stable (rebalancing, empty, an error): no members, ``stable`` False — the caller
    keeps its last table. Stable under another assignment protocol (a worker of an earlier
    version is in the group): no members, no routes. A member whose metadata carries no
    valid API URL, or whose assignment does not decode, is left out; so is a partition that
    two members hold (only a broken or hostile leader assigns one twice)."""
    error_code, _, state, protocol_type, protocol, described = group[:6]
    if error_code:
        return GroupView(False, f"error {error_code}")
    if state != "Stable":
        return GroupView(False, str(state))
    view = GroupView(True, state)
    if protocol_type != "consumer" or protocol != ASSIGNOR_NAME:
        view.problems.append(
            f"the group assigns with {protocol_type}/{protocol}, whose metadata carries no "
            "API URLs (a worker of an earlier version in the group?): no routes"
        )
        return view
    holders: dict[int, list[str]] = {}
    found: list[Member] = []
    for member_id, _client, _host, metadata, assignment in (m[:5] for m in described):
        try:
            user_data = ConsumerProtocolMemberMetadata.decode(metadata).user_data
            api, peer = decode_user_data(user_data)
            partitions = sorted(_partitions_of(assignment, topic))
        except Exception as exc:  # undecodable bytes raise anything; only this member is out
            view.problems.append(f"member {member_id!r} left out: {exc}")
            continue
        for p in partitions:
            holders.setdefault(p, []).append(member_id)
        found.append(Member(member_id, api, tuple(partitions), generation, now_ms, peer))
    doubled = {p for p, ids in holders.items() if len(ids) > 1}
    for p in sorted(doubled):
        view.problems.append(f"partition {p} is assigned to {holders[p]}: no route for it")
    view.members = [
        Member(m.member, m.api, tuple(p for p in m.partitions if p not in doubled),
               m.generation, m.updated_ms, m.peer)
        for m in found
    ]  # fmt: skip
    return view


def _partitions_of(assignment: bytes, topic: str) -> set[int]:
    if not assignment:  # a member the leader gave nothing
        return set()
    decoded = ConsumerProtocolMemberAssignment.decode(assignment)
    out: set[int] = set()
    for name, partitions in decoded.assignment:
        if name == topic:
            if not all(type(p) is int and p >= 0 for p in partitions):
                raise ValueError(f"its assignment holds partitions {partitions!r}")
            out.update(partitions)
    return out


class Membership:
    """The routing table of one worker: ``owner(partition)``, ``members()``."""

    def __init__(
        self, bootstrap: str, group_id: str, topic: str, member: str, api: str,
        peer: str | None = None,
    ) -> None:  # fmt: skip
        self.bootstrap = bootstrap
        self.group_id = group_id
        self.topic = topic
        self.member = member
        self.api = api
        self.peer = peer
        self.assignor = ApiAssignor(api, peer)
        self._members: list[Member] = []
        self._owners: dict[int, Member] = {}
        self._generation = 0
        self._admin: AIOKafkaAdminClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()
        self._last_problems: list[str] = []

    async def start(self) -> None:
        self._admin = kafka.admin_client(self.bootstrap, f"{self.member}-members")
        await self._admin.start()
        self._task = asyncio.create_task(self._refresh_loop())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._admin is not None:
            await self._admin.close()
            self._admin = None

    def owner(self, partition: int) -> Member | None:
        return self._owners.get(partition)

    def members(self) -> list[Member]:
        return sorted(self._members, key=lambda m: m.member)

    def assigned(self, partitions: list[int], generation: int) -> None:
        """This worker's own assignment, as the coordinator just gave it: its entries count
        at once, and the rest of the table is asked for again."""
        self._generation = generation
        mine = Member(self.member, self.api, tuple(sorted(partitions)), generation,
                      int(time.time() * 1000), self.peer)  # fmt: skip
        others = [m for m in self._members if m.api != self.api]
        owners = {p: m for p, m in self._owners.items() if m.api != self.api}
        owners.update(dict.fromkeys(mine.partitions, mine))
        self._members, self._owners = [*others, mine], owners
        self._poke.set()

    async def refresh(self) -> bool:
        """Asks the coordinator for the group and, if it is stable, makes its answer the
        table; False (the table kept) when it is not or could not be asked."""
        admin = self._admin
        if admin is None:
            return False
        try:
            responses = await admin.describe_consumer_groups([self.group_id])
        except KafkaError as exc:
            log.warning("cannot describe group %s (routing table kept): %s", self.group_id, exc)
            return False
        groups = [g for r in responses for g in r.groups if g[1] == self.group_id]
        if not groups:
            return False
        view = read_group(groups[0], self.topic, self._generation, int(time.time() * 1000))
        if view.problems != self._last_problems:  # logged when they change, not every poll
            for problem in view.problems:
                log.warning("routing table of group %s: %s", self.group_id, problem)
            self._last_problems = view.problems
        if not view.stable:
            return False
        self._members, self._owners = view.members, view.owners()
        return True

    async def _refresh_loop(self) -> None:
        wait = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._poke.wait(), wait)
            self._poke.clear()
            try:
                settled = await self.refresh()
            except Exception:  # a background task must not die silently: log, ask again
                log.exception("refreshing the routing table of group %s", self.group_id)
                settled = False
            wait = REFRESH_S if settled else UNSETTLED_RETRY_S
