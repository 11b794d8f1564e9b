"""Partition ownership: ``owners`` (highest generation wins) and ``Membership._apply``."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lukhas_context.processors.members import STALE_AFTER_MS, Member, Membership, owners


def member(
    name: str, partitions: tuple[int, ...], generation: int, updated_ms: int, api: str = ""
) -> Member:
    return Member(name, api or f"http://{name}:8080", partitions, generation, updated_ms)


def record(m: Member) -> bytes:
    return orjson.dumps(m.to_dict())


# ---- owners ----


def test_owners_empty() -> None:
    assert owners([]) == {}
    assert owners([member("a", (), 3, 1)]) == {}


def test_owners_highest_generation_wins() -> None:
    stale = member("old", (0, 1, 2), generation=4, updated_ms=9_999_999)  # later clock
    fresh = member("new", (1, 2), generation=5, updated_ms=1)
    other = member("other", (3,), generation=1, updated_ms=0)
    for order in ([stale, fresh, other], [other, fresh, stale]):
        table = owners(order)
        assert table == {0: stale, 1: fresh, 2: fresh, 3: other}


def test_owners_tie_broken_by_updated_ms() -> None:
    early = member("early", (0, 1), generation=7, updated_ms=100)
    late = member("late", (1,), generation=7, updated_ms=200)
    assert owners([early, late]) == {0: early, 1: late}
    assert owners([late, early]) == {0: early, 1: late}


members_strategy = st.lists(
    st.builds(
        member,
        st.text(min_size=1, max_size=5),
        st.lists(st.integers(0, 7), max_size=4, unique=True).map(tuple),
        st.integers(0, 5),
        st.integers(0, 5),
    ),
    max_size=8,
)


@given(members_strategy)
def test_owners_property(members: list[Member]) -> None:
    table = owners(members)
    claimed = {p for m in members for p in m.partitions}
    assert set(table) == claimed
    for p, owner in table.items():
        assert p in owner.partitions
        best = max((m.generation, m.updated_ms) for m in members if p in m.partitions)
        assert (owner.generation, owner.updated_ms) == best
    assert owners(list(reversed(members))).keys() == table.keys()


# ---- Membership._apply ----


@pytest.fixture
async def membership() -> AsyncIterator[Membership]:
    # Inside the running loop (it makes an asyncio.Event); never started: no broker.
    yield Membership("localhost:1", "unit.context.members", "me", "http://me:8080")


async def test_apply_claims_and_owners(membership: Membership) -> None:
    a = member("a", (0, 1), 3, 10)
    b = member("b", (2,), 3, 11)
    event = membership.changed
    membership._apply(b"a", record(a))
    assert event.is_set() and not membership.changed.is_set()  # a fresh event for the next
    membership._apply(b"b", record(b))
    assert membership.members() == [a, b]
    assert [membership.owner(p) for p in range(4)] == [a, a, b, None]
    # A later generation takes partition 1 over from a.
    b2 = member("b", (1, 2), 4, 5)
    membership._apply(b"b", record(b2))
    assert membership.members() == [a, b2]
    assert (membership.owner(0), membership.owner(1), membership.owner(2)) == (a, b2, b2)


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"\xff\xfe",
        b"[]",
        b'"a string"',
        b"null",
        b"42",
        b"{}",
        b'{"member": "a", "api": "x", "partitions": [0], "generation": 1}',
        b'{"member": "a", "api": "x", "partitions": 5, "generation": 1, "updated_ms": 1}',
        b'{"member": "a", "api": "x", "partitions": ["x"], "generation": 1, "updated_ms": 1}',
        b'{"member": "a", "api": "x", "partitions": [null], "generation": 1, "updated_ms": 1}',
        b'{"member": "a", "api": "x", "partitions": [0], "generation": "g", "updated_ms": 1}',
        b'{"member": "a", "api": "x", "partitions": [0], "generation": 1, "updated_ms": null}',
    ],
)
async def test_apply_ignores_malformed(membership: Membership, value: bytes) -> None:
    good = member("a", (0,), 2, 50)
    membership._apply(b"a", record(good))
    event = membership.changed
    membership._apply(b"a", value)
    assert membership.members() == [good]
    assert membership.owner(0) == good
    assert membership.changed is event and not event.is_set()


async def test_apply_ignores_keyless_records(membership: Membership) -> None:
    event = membership.changed
    membership._apply(None, record(member("a", (0,), 1, 1)))
    membership._apply(None, None)
    assert membership.members() == [] and membership.owner(0) is None
    assert membership.changed is event and not event.is_set()


async def test_apply_tombstone_removes_member(membership: Membership) -> None:
    a = member("a", (0, 1), 5, 10)
    stale = member("z", (1, 2), 4, 99)
    membership._apply(b"a", record(a))
    membership._apply(b"z", record(stale))
    assert membership.owner(1) == a
    event = membership.changed
    membership._apply(b"a", None)
    assert event.is_set()
    assert membership.members() == [stale]
    # The stale claim is all that is left: it owns partition 1 again; 0 has no owner.
    assert (membership.owner(0), membership.owner(1), membership.owner(2)) == (None, stale, stale)
    membership._apply(b"nobody", None)  # a tombstone of an unknown member changes nothing
    assert membership.members() == [stale]


async def test_the_last_record_of_a_member_is_its_claim(membership: Membership) -> None:
    # A member's records share a key and a partition: read in the order it wrote them. A lower
    # generation read later is a group whose generation restarted, not a stale record.
    membership._apply(b"a", record(member("a", (0, 1), 6, 100)))
    reset = member("a", (2,), 0, 101)
    membership._apply(b"a", record(reset))
    assert membership.members() == [reset]
    assert (membership.owner(0), membership.owner(2)) == (None, reset)


def test_a_stale_claim_loses_to_a_fresh_one_whatever_the_generation() -> None:
    now = 10_000_000
    dead = member("dead", (0, 1), generation=57, updated_ms=now - STALE_AFTER_MS - 1)
    alive = member("alive", (1,), generation=1, updated_ms=now - 1_000)
    assert owners([dead, alive], now_ms=now) == {0: dead, 1: alive}  # no fresh claim of 0
    assert owners([alive, dead], now_ms=now) == {0: dead, 1: alive}


async def test_apply_keys_by_record_key(membership: Membership) -> None:
    claim = member("a", (0,), 1, 1)
    membership._apply(b"a", record(claim))
    membership._apply(b"b", record(member("b", (1,), 1, 1)))
    membership._apply(b"a", None)
    assert [m.member for m in membership.members()] == ["b"]


async def test_apply_ignores_string_partitions(membership: Membership) -> None:
    value = b'{"member": "a", "api": "x", "partitions": "12", "generation": 1, "updated_ms": 1}'
    membership._apply(b"a", value)
    assert membership.members() == []
    assert membership.owner(1) is None and membership.owner(2) is None
