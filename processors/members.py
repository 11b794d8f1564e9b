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
from collections.abc import Callable, Iterable, Mapping
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
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.group import LeaveGroupRequest

from lukhas_context.processors.peers import PROBE_S, PeerLiveness, probe
from lukhas_context.streams import kafka
from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity

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
    #: Partitions this member keeps a standby copy of (``--standby-replicas``).
    standbys: tuple[int, ...] = ()

    @property
    def forward_url(self) -> str:
        """Where another worker sends a request this member serves."""
        return self.peer or self.api

    def to_dict(self) -> dict[str, Any]:
        return {
            "member": self.member, "api": self.api, "partitions": list(self.partitions),
            "generation": self.generation, "updated_ms": self.updated_ms, "peer": self.peer,
            "standbys": list(self.standbys),
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


def encode_user_data(
    api: str, peer: str | None = None, standby: int = 0, positions: Mapping[int, int] | None = None
) -> bytes:
    """A member's subscription ``user_data``: its API URL, peer URL and, with standby
    replicas, how many it asks for and the ``next_offset`` of every store it keeps open
    (active or standby): the leader gives each partition to the member furthest along."""
    data: dict[str, Any] = {"api": api}
    if peer is not None:
        data["peer"] = peer
    if standby:
        data["standby"] = standby
        data["positions"] = {str(p): o for p, o in sorted((positions or {}).items())}
    return orjson.dumps(data)


#: Standby replicas a member may ask for, at most (more is refused by the CLI; a larger
#: number in a subscription counts as this).
MAX_STANDBY_REPLICAS = 8
#: Positions read from one member's subscription, at most (a flood counts as none).
MAX_POSITIONS = 10_000


def decode_standby(user_data: bytes | None) -> tuple[int, dict[int, int]]:
    """The standby replicas a member asks for and its stores' positions, from its
    subscription ``user_data``; ``(0, {})`` for anything else (an earlier version, garbage):
    such a member gets no standby and no preference, never an error."""
    try:
        data = orjson.loads(user_data or b"")
    except orjson.JSONDecodeError:
        return 0, {}
    if not isinstance(data, dict):
        return 0, {}
    standby = data.get("standby")
    if type(standby) is not int or standby <= 0:
        return 0, {}
    raw = data.get("positions")
    positions: dict[int, int] = {}
    if isinstance(raw, dict) and len(raw) <= MAX_POSITIONS:
        for p, o in raw.items():
            if isinstance(p, str) and p.isdigit() and len(p) < 10 and type(o) is int and o >= 0:
                positions[int(p)] = o
    return min(standby, MAX_STANDBY_REPLICAS), positions


def plan_assignment(
    partitions: list[int], members: Mapping[str, dict[int, int]], replicas: int
) -> dict[str, tuple[list[int], list[int]]]:
    """Active and standby partitions for each member: balanced (every member gets the floor
    or the ceiling of partitions/members), each partition to the member whose store is
    furthest along (``members``: member -> partition -> next_offset), so a partition stays
    where it is folded and moves to its caught-up standby when its owner leaves; then up to
    ``replicas`` standbys per partition on other members, again furthest along first, then
    the least loaded. Deterministic: ties go by member id."""
    ids = sorted(members)
    out: dict[str, tuple[list[int], list[int]]] = {m: ([], []) for m in ids}
    if not ids:
        return out
    floor, extra = divmod(len(partitions), len(ids))
    load = dict.fromkeys(ids, 0)

    # The partitions whose best store is furthest ahead of the rest choose first.
    def best(p: int) -> tuple[int, int]:
        return (-max(members[m].get(p, -1) for m in ids), p)

    owner: dict[int, str] = {}
    for p in sorted(partitions, key=best):
        ranked = sorted(ids, key=lambda m: (-members[m].get(p, -1), load[m], m))
        for m in ranked:
            if load[m] < floor or (load[m] == floor and extra > 0):
                if load[m] == floor:
                    extra -= 1
                load[m] += 1
                owner[p] = m
                out[m][0].append(p)
                break
    n = min(replicas, len(ids) - 1)
    standbys = dict.fromkeys(ids, 0)
    for p in sorted(partitions):
        others = [m for m in ids if m != owner.get(p)]
        ranked = sorted(others, key=lambda m: (-members[m].get(p, -1), standbys[m], m))
        for m in ranked[:n]:
            standbys[m] += 1
            out[m][1].append(p)
    for active, standby in out.values():
        active.sort()
        standby.sort()
    return out


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
    """This worker's API URL (and peer URL, when it has one) in its subscription, and, as
    the group's leader, the assignment: aiokafka's round robin while no member asks for
    standby replicas; otherwise ``plan_assignment`` (each partition to the member furthest
    along, standbys in the assignment's ``user_data``). ``standbys``: the standby
    partitions of this worker's last assignment."""

    name = ASSIGNOR_NAME
    version = 0

    def __init__(
        self, api: str, peer: str | None = None, standby: int = 0,
        positions: Callable[[], Mapping[int, int]] | None = None,
    ) -> None:  # fmt: skip
        self._api, self._peer = api, peer
        self._standby = standby
        self._positions = positions
        self.standbys: list[int] = []

    def metadata(self, topics: Iterable[str]) -> ConsumerProtocolMemberMetadata:
        positions = self._positions() if self._standby and self._positions else None
        user_data = encode_user_data(self._api, self._peer, self._standby, positions)
        return ConsumerProtocolMemberMetadata(self.version, sorted(topics), user_data)

    def assign(
        self, cluster: ClusterMetadata, members: Mapping[str, ConsumerProtocolMemberMetadata]
    ) -> dict[str, ConsumerProtocolMemberAssignment]:
        asked = {m: decode_standby(meta.user_data) for m, meta in members.items()}
        replicas = max((n for n, _ in asked.values()), default=0)
        if not replicas:
            assignments: dict[str, ConsumerProtocolMemberAssignment]
            assignments = RoundRobinPartitionAssignor.assign(cluster, members)
            return assignments
        topics = sorted({t for meta in members.values() for t in meta.subscription})
        plans: dict[str, list[tuple[str, list[int]]]] = {m: [] for m in members}
        standby: dict[str, list[int]] = {m: [] for m in members}
        for topic in topics:  # one in practice: the WAL
            partitions = sorted(cluster.partitions_for_topic(topic) or ())
            subscribed = {
                m: asked[m][1] for m, meta in members.items() if topic in meta.subscription
            }
            for m, (active, standbys) in plan_assignment(partitions, subscribed, replicas).items():
                plans[m].append((topic, active))
                standby[m] += standbys
        return {
            m: ConsumerProtocolMemberAssignment(
                self.version, plans[m], orjson.dumps({"standby": standby[m]})
            )
            for m in members
        }

    def on_assignment(self, assignment: ConsumerProtocolMemberAssignment) -> None:
        self.standbys = standby_partitions(assignment.user_data)


def standby_partitions(user_data: bytes | None) -> list[int]:
    """The standby partitions an assignment's ``user_data`` names (none for anything else)."""
    try:
        data = orjson.loads(user_data or b"")
    except orjson.JSONDecodeError:
        return []
    raw = data.get("standby") if isinstance(data, dict) else None
    if not isinstance(raw, list) or len(raw) > MAX_POSITIONS:
        return []
    return sorted({p for p in raw if type(p) is int and 0 <= p < 2**31})


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
            standbys = tuple(standby_partitions(
                ConsumerProtocolMemberAssignment.decode(assignment).user_data
            )) if assignment else ()  # fmt: skip
        except Exception as exc:  # undecodable bytes raise anything; only this member is out
            view.problems.append(f"member {member_id!r} left out: {exc}")
            continue
        for p in partitions:
            holders.setdefault(p, []).append(member_id)
        found.append(Member(member_id, api, tuple(partitions), generation, now_ms, peer, standbys))
    doubled = {p for p, ids in holders.items() if len(ids) > 1}
    for p in sorted(doubled):
        view.problems.append(f"partition {p} is assigned to {holders[p]}: no route for it")
    view.members = [
        Member(m.member, m.api, tuple(p for p in m.partitions if p not in doubled),
               m.generation, m.updated_ms, m.peer, m.standbys)
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
        peer: str | None = None, standby: int = 0,
        positions: Callable[[], Mapping[int, int]] | None = None,
        security: KafkaSecurity = PLAINTEXT,
        evict_dead_peers: bool = False,
        on_evict: Callable[[Member, bool], None] | None = None,
    ) -> None:  # fmt: skip
        self.bootstrap = bootstrap
        self.security = security
        self.group_id = group_id
        self.topic = topic
        self.member = member
        self.api = api
        self.peer = peer
        self.assignor = ApiAssignor(api, peer, standby, positions)
        self._members: list[Member] = []
        self._owners: dict[int, Member] = {}
        self._generation = 0
        self._admin: AIOKafkaAdminClient | None = None
        self._task: asyncio.Task[None] | None = None
        self._poke = asyncio.Event()
        self._last_problems: list[str] = []
        #: ``--evict-dead-peers`` (``processors.peers``): the probes' verdicts, the task
        #: that probes, and what to do once a peer was evicted (the worker rejoins at once).
        self.liveness = PeerLiveness() if evict_dead_peers else None
        self._watch: asyncio.Task[None] | None = None
        self._on_evict = on_evict

    async def start(self) -> None:
        self._admin = kafka.admin_client(
            self.bootstrap, f"{self.member}-members", security=self.security
        )
        await self._admin.start()
        self._task = asyncio.create_task(self._refresh_loop())
        if self.liveness is not None:
            self._watch = asyncio.create_task(self._watch_peers())

    async def close(self) -> None:
        for task in (self._task, self._watch):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._watch = None
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
                      int(time.time() * 1000), self.peer,
                      tuple(self.assignor.standbys))  # fmt: skip
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

    async def evict(self, member: Member) -> str | None:
        """Asks the group's coordinator to remove ``member`` (a LeaveGroup request on its
        behalf, by its member id); None when it did, ``UnknownMemberIdError`` when it is
        not a member (any more: another worker evicted it first), else why not."""
        admin = self._admin
        if admin is None:
            return "not started"
        try:
            node = await admin.find_coordinator(self.group_id)
            response = await admin._send_request(
                LeaveGroupRequest(self.group_id, member.member), node
            )
        except KafkaError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.error_code:
            return f"{for_code(response.error_code).__name__}"
        return None

    async def _watch_peers(self) -> None:
        """Probes every other member's read API every ``PROBE_S`` and evicts a dead one
        (``processors.peers``)."""
        liveness = self.liveness
        assert liveness is not None
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(PROBE_S)
            peers = [m for m in self._members if m.api != self.api]
            liveness.keep_only({m.member for m in peers})
            if not peers:
                continue
            try:
                outcomes = await asyncio.gather(*(probe(m.forward_url) for m in peers))
                for member, outcome in zip(peers, outcomes, strict=True):
                    if not liveness.observe(member.member, outcome, loop.time()):
                        continue
                    why = await self.evict(member)
                    if why == "UnknownMemberIdError":  # evicted by another worker first
                        log.info("dead peer %s (member %s) is out of group %s already",
                                 member.forward_url, member.member, self.group_id)  # fmt: skip
                        if self._on_evict is not None:
                            self._on_evict(member, False)  # rejoin all the same
                        continue
                    if why is not None:
                        log.warning(
                            "could not evict dead peer %s (member %s) from group %s: %s "
                            "(tried again after its next probes)",
                            member.forward_url, member.member, self.group_id, why,
                        )  # fmt: skip
                        liveness.forgive(member.member)
                        continue
                    log.warning(
                        "peer %s (member %s) refuses connections: evicted it from group %s, "
                        "so its partitions %s move now, not after its session timeout",
                        member.forward_url, member.member, self.group_id, list(member.partitions),
                    )  # fmt: skip
                    if self._on_evict is not None:
                        self._on_evict(member, True)
                    self._poke.set()
            except Exception:  # a background task must not die silently: log, go on
                log.exception("watching the peers of group %s", self.group_id)

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
