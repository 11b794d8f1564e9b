"""The routing table (issue 9, item 6): built from the group coordinator's description of the
group alone — ``read_group`` (which member's URL and which partitions count), the assignor
that carries a worker's URL, and ``Membership`` keeping its last stable table."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.cluster import ClusterMetadata
from aiokafka.coordinator.protocol import (
    ConsumerProtocolMemberAssignment,
    ConsumerProtocolMemberMetadata,
)
from hypothesis import given
from hypothesis import strategies as st

from lukhas_context.processors.members import (
    ASSIGNOR_NAME,
    ApiAssignor,
    Member,
    Membership,
    api_url_problem,
    decode_user_data,
    encode_user_data,
    read_group,
)

TOPIC = "unit.context.events"
NOW = 1_700_000_000_000


def metadata(api: str | None, user_data: bytes | None = None) -> bytes:
    data = encode_user_data(api) if user_data is None and api is not None else user_data
    return bytes(ConsumerProtocolMemberMetadata(0, [TOPIC], data or b"").encode())


def assignment(partitions: list[int], topic: str = TOPIC) -> bytes:
    return bytes(ConsumerProtocolMemberAssignment(0, [(topic, partitions)], b"").encode())


def group(
    members: list[tuple[str, bytes, bytes]], state: str = "Stable",
    protocol: str = ASSIGNOR_NAME, error: int = 0,
) -> tuple[Any, ...]:  # fmt: skip
    described = [(mid, "client", "/127.0.0.1", meta, assign) for mid, meta, assign in members]
    return (error, "g", state, "consumer", protocol, described, 0)


def owners_of(view: Any) -> dict[int, str]:
    return {p: m.api for p, m in view.owners().items()}


# ---- read_group ----


def test_a_stable_group_routes_each_partition_to_its_member() -> None:
    view = read_group(
        group([
            ("a-1", metadata("http://a:8080"), assignment([0, 2])),
            ("b-1", metadata("https://b.example:443/lukhas"), assignment([1])),
        ]),
        TOPIC, 7, NOW,
    )  # fmt: skip
    assert view.stable and view.problems == []
    assert owners_of(view) == {
        0: "http://a:8080",
        1: "https://b.example:443/lukhas",
        2: "http://a:8080",
    }
    assert view.members[0] == Member("a-1", "http://a:8080", (0, 2), 7, NOW)


@pytest.mark.parametrize("state", ["PreparingRebalance", "CompletingRebalance", "Empty", "Dead"])
def test_an_unsettled_group_gives_no_table(state: str) -> None:
    view = read_group(group([("a", metadata("http://a:1"), assignment([0]))], state), TOPIC, 1, NOW)
    assert not view.stable and view.members == []


def test_a_coordinator_error_gives_no_table() -> None:
    view = read_group(group([], error=16), TOPIC, 1, NOW)
    assert not view.stable and view.state == "error 16"


def test_another_protocol_routes_nothing() -> None:
    old = group([("old", metadata(None), assignment([0, 1, 2]))], protocol="roundrobin")
    view = read_group(old, TOPIC, 1, NOW)
    assert view.stable and view.owners() == {}
    assert "roundrobin" in view.problems[0]


@pytest.mark.parametrize(
    ("meta", "assign", "why"),
    [
        (b"", assignment([0]), ""),
        (b"\xff" * 7, assignment([0]), ""),
        (metadata(None, b""), assignment([0]), "no API URL"),
        (metadata(None, b"[1,2]"), assignment([0]), "no API URL"),
        (metadata(None, b'{"api": 5}'), assignment([0]), "no API URL"),
        (metadata("ftp://a:21"), assignment([0]), "not http"),
        (metadata("http://"), assignment([0]), "not http"),
        (metadata("http://a:99999"), assignment([0]), "does not parse"),
        (metadata("http://u:pw@a:1"), assignment([0]), "credentials"),
        (metadata("http://a:1/?x=1"), assignment([0]), "query"),
        (metadata("http://a:1/ x"), assignment([0]), "whitespace"),
        (metadata("http://a:1/\x00"), assignment([0]), "control"),
        (metadata("http://a/" + "x" * 3000), assignment([0]), "over 2048 bytes"),
        (metadata("http://a:1"), b"\x00\x00\xff\xff\xff\xff\xff", ""),
        (metadata("http://a:1"), assignment([-1]), "partitions"),
    ],
)
def test_a_member_without_a_usable_url_or_assignment_is_left_out(
    meta: bytes, assign: bytes, why: str
) -> None:
    good = ("good", metadata("http://good:1"), assignment([1]))
    view = read_group(group([("bad", meta, assign), good]), TOPIC, 1, NOW)
    assert view.stable
    assert owners_of(view) == {1: "http://good:1"}
    assert len(view.problems) == 1 and "'bad'" in view.problems[0] and why in view.problems[0]


def test_a_partition_assigned_twice_has_no_route() -> None:
    view = read_group(
        group([
            ("a", metadata("http://a:1"), assignment([0, 1])),
            ("b", metadata("http://b:1"), assignment([1, 2])),
        ]),
        TOPIC, 1, NOW,
    )  # fmt: skip
    assert owners_of(view) == {0: "http://a:1", 2: "http://b:1"}
    assert "partition 1" in view.problems[0]


def test_other_topics_and_empty_assignments_are_not_routes() -> None:
    view = read_group(
        group([
            ("a", metadata("http://a:1"), assignment([0, 1], topic="other.topic")),
            ("b", metadata("http://b:1"), b""),
        ]),
        TOPIC, 1, NOW,
    )  # fmt: skip
    assert view.stable and view.owners() == {} and view.problems == []


HOSTS = st.sampled_from(["a", "b.example", "127.0.0.1", "[::1]", "w-1.lukhas.svc"])
URLS = st.builds(
    "{}://{}:{}{}".format,
    st.sampled_from(["http", "https"]),
    HOSTS,
    st.integers(1, 65535),
    st.sampled_from(["", "/", "/lukhas", "/a/b"]),
)
PARTITION_SETS = st.sets(st.integers(0, 1000), min_size=1, max_size=8)


def _flip(data: bytes, flips: list[tuple[int, int]]) -> bytes:
    """``data`` with some bytes replaced (index modulo the length)."""
    out = bytearray(data)
    for i, b in flips:
        if out:
            out[i % len(out)] = b
    return bytes(out)


@given(
    URLS, PARTITION_SETS,
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3),
    st.lists(st.tuples(st.integers(0, 1 << 16), st.integers(0, 255)), max_size=3),
)  # fmt: skip
def test_a_member_is_routed_exactly_as_it_said_or_left_out_with_a_reason(
    url: str,
    partitions: set[int],
    meta_flips: list[tuple[int, int]],
    assign_flips: list[tuple[int, int]],
) -> None:
    """Well-formed metadata and assignment are routed as written; after bytes are changed
    (a forged or corrupt member) the member is either routed to a URL that passes the same
    checks, with partitions of this topic, or left out with a problem naming it — never an
    exception, never a half-read member."""
    meta, assign = metadata(url), assignment(sorted(partitions))
    view = read_group(group([("m", meta, assign)]), TOPIC, 1, NOW)
    assert view.stable and view.problems == []
    assert owners_of(view) == dict.fromkeys(partitions, url)

    meta2, assign2 = _flip(meta, meta_flips), _flip(assign, assign_flips)
    view = read_group(group([("m", meta2, assign2)]), TOPIC, 1, NOW)
    assert view.stable
    if (meta2, assign2) == (meta, assign):
        assert owners_of(view) == dict.fromkeys(partitions, url)
    elif view.members:
        (member,) = view.members
        assert api_url_problem(member.api) is None and view.problems == []
        assert all(type(p) is int and 0 <= p < 2**31 for p in member.partitions)
        assert view.owners() == dict.fromkeys(member.partitions, member)
    else:
        assert len(view.problems) == 1 and "'m' left out" in view.problems[0], view.problems


# ---- the assignor ----


def test_the_assignor_carries_the_url_and_assigns_round_robin() -> None:
    assignor = ApiAssignor("http://w1:18080")
    meta = assignor.metadata({TOPIC})
    decoded = ConsumerProtocolMemberMetadata.decode(meta.encode())
    assert decoded.subscription == [TOPIC]
    assert decode_user_data(decoded.user_data) == ("http://w1:18080", None)

    cluster = ClusterMetadata()
    cluster._partitions = {TOPIC: {p: None for p in range(5)}}
    members = {"m1": meta, "m2": ApiAssignor("http://w2:1").metadata({TOPIC})}
    assigned = assignor.assign(cluster, members)
    partitions = {m: a.partitions() for m, a in assigned.items()}
    assert sorted(tp.partition for tps in partitions.values() for tp in tps) == list(range(5))
    assert [tp.partition for tp in partitions["m1"]] == [0, 2, 4]


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:18080", "https://worker.internal", "http://[::1]:8080/api"]
)
def test_api_urls_that_route(url: str) -> None:
    assert api_url_problem(url) is None
    assert decode_user_data(encode_user_data(url)) == (url, None)
    assert decode_user_data(encode_user_data(url, "http://worker-1:18081")) == (
        url,
        "http://worker-1:18081",
    )


def test_a_member_with_a_peer_url_is_forwarded_to_there_and_routed_to_its_api() -> None:
    meta = ApiAssignor("http://127.0.0.1:18081", "http://worker-1:18081").metadata({TOPIC})
    view = read_group(group([("m", bytes(meta.encode()), assignment([0, 1]))]), TOPIC, 3, NOW)
    (member,) = view.members
    assert (member.api, member.peer) == ("http://127.0.0.1:18081", "http://worker-1:18081")
    assert member.forward_url == "http://worker-1:18081"
    assert member.to_dict()["peer"] == "http://worker-1:18081"
    assert Member("m", "http://a:1", (), 1, NOW).forward_url == "http://a:1"


@pytest.mark.parametrize(
    ("user_data", "reason"),
    [
        (b'{"api": "http://a:1", "peer": 5}', "peer URL is not a string"),
        (b'{"api": "http://a:1", "peer": "ftp://b"}', "is not http"),
        (b'{"api": "http://a:1", "peer": "http://b:1/?q=1"}', "a query"),
    ],
)
def test_a_bad_peer_url_leaves_the_member_out(user_data: bytes, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        decode_user_data(user_data)


# ---- Membership ----


@pytest.fixture
async def membership() -> AsyncIterator[Membership]:
    # Inside the running loop (it makes an asyncio.Event); never started: no broker.
    yield Membership("localhost:1", "g", TOPIC, "me", "http://me:8080")


async def test_its_own_assignment_counts_at_once(membership: Membership) -> None:
    other = Member("other", "http://other:1", (0, 1, 2), 4, NOW)
    membership._members, membership._owners = [other], dict.fromkeys((0, 1, 2), other)
    membership.assigned([2, 1], 5)
    assert [membership.owner(p) for p in (0, 1, 2)] == [
        other,
        membership.owner(1),
        membership.owner(1),
    ]
    mine = membership.owner(1)
    assert mine is not None and (mine.api, mine.partitions, mine.generation) == (
        "http://me:8080",
        (1, 2),
        5,
    )
    membership.assigned([0], 6)  # moved: the old entries of this worker go
    assert membership.owner(0) is not None and membership.owner(0).api == "http://me:8080"  # type: ignore[union-attr]
    assert membership.owner(1) is None and membership.owner(2) is None


async def test_refresh_without_a_coordinator_keeps_the_table(membership: Membership) -> None:
    membership.assigned([0, 1], 3)
    before = [membership.owner(p) for p in range(3)]
    assert await membership.refresh() is False
    assert [membership.owner(p) for p in range(3)] == before
