"""The standby-aware assignment (``processors.members.plan_assignment``): balanced, each
partition to the member furthest along, standbys on other members; and the subscription and
assignment data it reads, hostile variants included."""

from __future__ import annotations

import orjson
from hypothesis import given
from hypothesis import strategies as st

from lukhas_context.processors.members import (
    MAX_STANDBY_REPLICAS,
    decode_standby,
    decode_user_data,
    encode_user_data,
    plan_assignment,
    standby_partitions,
)


def test_each_partition_goes_where_it_is_furthest_along() -> None:
    members = {
        "a": {0: 100, 1: 100, 2: 90},  # folds 0 and 1; a standby of 2, a little behind
        "b": {2: 100, 3: 100, 0: 95},
        "c": {},  # new: nothing yet
    }
    plan = plan_assignment([0, 1, 2, 3, 4, 5], members, 1)
    assert plan["a"][0][:2] == [0, 1] and 2 not in plan["a"][0]
    assert plan["b"][0][:2] == [2, 3]
    assert sorted(p for m in plan for p in plan[m][0]) == [0, 1, 2, 3, 4, 5]
    assert sorted(len(active) for active, _ in plan.values()) == [2, 2, 2]


def test_the_caught_up_standby_takes_over_when_the_owner_leaves() -> None:
    # b left: a holds standbys of b's partitions 2 and 3, c holds older copies of them.
    members = {"a": {0: 100, 1: 100, 2: 99, 3: 98}, "c": {2: 50, 3: 10, 4: 100, 5: 100}}
    plan = plan_assignment([0, 1, 2, 3, 4, 5], members, 1)
    assert sorted(plan["a"][0]) == [0, 1, 2] or sorted(plan["a"][0]) == [0, 1, 3]
    # the balance allows a three: the partition a is furthest ahead on goes to a
    assert 2 in plan["a"][0]


@given(
    st.integers(0, 24),
    st.dictionaries(
        st.text("abcdef", min_size=1, max_size=3),
        st.dictionaries(st.integers(0, 30), st.integers(0, 1000), max_size=8),
        min_size=1, max_size=6,
    ),
    st.integers(0, 4),
)  # fmt: skip
def test_every_plan_is_balanced_complete_and_never_stands_by_for_itself(
    count: int, members: dict[str, dict[int, int]], replicas: int
) -> None:
    partitions = list(range(count))
    plan = plan_assignment(partitions, members, replicas)
    assert set(plan) == set(members)
    actives = [p for active, _ in plan.values() for p in active]
    assert sorted(actives) == partitions  # each partition once
    loads = [len(active) for active, _ in plan.values()]
    assert max(loads) - min(loads) <= 1
    for active, standby in plan.values():
        assert not set(active) & set(standby)
    for p in partitions:
        holders = sum(p in standby for _, standby in plan.values())
        assert holders == min(replicas, len(members) - 1)
    assert plan == plan_assignment(partitions, dict(reversed(members.items())), replicas)


def test_user_data_round_trips_and_old_members_still_decode() -> None:
    data = encode_user_data("http://a:1", None, 2, {3: 40, 1: 7})
    assert decode_user_data(data) == ("http://a:1", None)
    assert decode_standby(data) == (2, {1: 7, 3: 40})
    assert decode_standby(encode_user_data("http://a:1")) == (0, {})


def test_hostile_subscription_and_assignment_data_count_as_none() -> None:
    for raw in (b"", b"garbage", b"[]", b'{"standby": "2"}', b'{"standby": -1}',
                b'{"standby": true}'):  # fmt: skip
        assert decode_standby(raw) == (0, {})
    huge = orjson.dumps({"api": "http://a:1", "standby": 10**9})
    assert decode_standby(huge)[0] == MAX_STANDBY_REPLICAS
    bad = orjson.dumps({"api": "x", "standby": 1, "positions": {"-1": 5, "x": 1, "2": -3,
                                                               "3": 1.5, "4": 9}})  # fmt: skip
    assert decode_standby(bad) == (1, {4: 9})
    flood = orjson.dumps({"standby": 1, "positions": {str(i): i for i in range(20_000)}})
    assert decode_standby(flood) == (1, {})
    for raw in (b"", b"nope", b'{"standby": 5}', b'{"standby": [1, -2, "3", 2, 2, 4294967296]}'):
        assert standby_partitions(raw) in ([], [1, 2])
