"""The cluster overview (``processors.overview``): each partition's owner and copies, and
whether their digests agree, from the members' views; a member that did not answer is listed
with what the routing table says it serves."""

from __future__ import annotations

from typing import Any

from lukhas_context.processors.members import Member
from lukhas_context.processors.overview import replicas, unreachable, verdict

A, B = "http://a:1", "http://b:1"


def copy(partition: int, next_offset: int, digest: str) -> dict[str, Any]:
    return {"partition": partition, "next_offset": next_offset, "digest": digest}


def owned(partition: int, next_offset: int, digest: str, end: int) -> dict[str, Any]:
    lag = end - next_offset
    return {**copy(partition, next_offset, digest), "end": end, "lag": lag}


def worker(api: str, partitions: list[Any], standbys: list[Any], restoring: list[int]) -> Any:
    return {"api": api, "partitions": partitions, "standbys": standbys, "restoring": restoring}


def test_digests_are_compared_at_the_owners_position_only() -> None:
    own = copy(0, 10, "aa")
    assert verdict(own, []) == "single"
    assert verdict(own, [copy(0, 10, "aa")]) == "equal"
    assert verdict(own, [copy(0, 10, "bb")]) == "differ"
    assert verdict(own, [copy(0, 9, "bb")]) == "behind"  # another position: not comparable
    assert verdict(own, [copy(0, 9, "bb"), copy(0, 10, "aa")]) == "equal"
    assert verdict(None, [copy(0, 10, "aa")]) == "unknown"


def test_each_partition_has_its_owner_copies_lag_and_restores() -> None:
    workers = [
        worker(A, [owned(0, 10, "aa", 12)], [copy(1, 5, "cc")], [2]),
        worker(B, [owned(1, 5, "cc", 5)], [copy(0, 10, "ab")], []),
    ]
    got = replicas(3, {0: A, 1: B, 2: A}, workers)
    assert [(p["partition"], p["owner"], p["lag"], p["digests"]) for p in got] == [
        (0, A, 2, "differ"),
        (1, B, 0, "equal"),
        (2, A, None, "unknown"),
    ]
    assert got[2]["restoring"] == [A]
    assert [s["api"] for s in got[0]["standbys"]] == [B]


def test_an_unreachable_member_is_listed_with_the_tables_partitions() -> None:
    member = Member("m-b", B, (1,), 3, 0, standbys=(0,))
    entry = unreachable(member, "no answer within 3 s")
    assert (entry["reachable"], entry["status"], entry["error"]) == (
        False, "unreachable", "no answer within 3 s",
    )  # fmt: skip
    got = replicas(2, {0: A, 1: B}, [worker(A, [owned(0, 4, "aa", 4)], [], []), entry])
    # Its partition has no position (nobody answered for it), and its copy is not compared.
    assert (got[1]["owner"], got[1]["next_offset"], got[1]["digests"]) == (B, None, "unknown")
    assert got[0]["digests"] == "single"


def test_checkpoints_merge_by_id_newest_first_with_their_holders() -> None:
    from lukhas_context.processors.checkpoint_list import merged

    def manifest(ck: str, p: int, digest: str, at: int) -> dict[str, Any]:
        return {"checkpoint_id": ck, "partition": p, "next_offset": 5, "records": 3,
                "documents": 2, "digest": digest, "created_at_ms": at}  # fmt: skip

    got = merged(
        [
            (A, [manifest("old", 0, "aa", 1), manifest("new", 0, "bb", 9)]),
            (B, [manifest("new", 0, "bb", 8), manifest("new", 1, "cc", 9)]),
            ("http://c:1", [manifest("new", 1, "cd", 9)]),
        ]
    )
    assert [c["checkpoint_id"] for c in got] == ["new", "old"]
    new = got[0]["partitions"]
    assert [(r["partition"], r["held_by"], r["digests"]) for r in new] == [
        (0, [A, B], "equal"),
        (1, [B, "http://c:1"], "differ"),
    ]


def test_a_peer_answer_of_another_shape_loses_its_odd_entries_not_the_whole_answer() -> None:
    """Entries a peer sends of another shape (an older or newer worker, garbage) are left
    out: the cluster view and the checkpoint list still answer (a review found 500s)."""
    from lukhas_context.processors.checkpoint_list import merged
    from lukhas_context.processors.overview import replicas

    workers = [
        {"api": "http://a", "partitions": [{"partition": 0, "next_offset": 5, "end": 5,
                                            "lag": 0, "digest": "d"}],
         "standbys": [], "restoring": []},
        {"api": "http://b", "partitions": [5, {"partition": "1"}, {"partition": 1}],
         "standbys": "x", "restoring": [[1], 1]},
        {"partitions": None},
    ]  # fmt: skip
    rows = replicas(2, {0: "http://a"}, workers)  # type: ignore[arg-type]
    assert rows[0]["next_offset"] == 5 and rows[0]["digests"] == "single"
    assert rows[1]["next_offset"] is None and rows[1]["restoring"] == ["http://b"]
    good = {"checkpoint_id": "c", "partition": 0, "next_offset": 1, "records": 1,
            "documents": 1, "digest": "d", "created_at_ms": 7}  # fmt: skip
    bad = [{**good, "created_at_ms": None}, {**good, "digest": 3}, {"checkpoint_id": "c"}, 5]
    listed = merged([("http://a", [good, *bad])])  # type: ignore[list-item]
    assert [c["checkpoint_id"] for c in listed] == ["c"]
    assert listed[0]["partitions"][0]["held_by"] == ["http://a"]


def test_a_peers_view_is_its_own_or_unreachable_saying_why() -> None:
    from lukhas_context.processors.fanout import Answer
    from lukhas_context.processors.overview import peer_view

    member = Member("m-b", B, (1,), 3, 0)
    own = worker(B, [owned(1, 5, "cc", 5)], [], [])
    assert peer_view(Answer(member, {"workers": [own]})) == own
    assert peer_view(Answer(member, None, "no answer within 3 s")) == unreachable(
        member, "no answer within 3 s"
    )
    odd = peer_view(Answer(member, {"workers": [{"partitions": "x"}]}))
    assert (odd["reachable"], odd["error"]) == (False, "its answer is not a cluster view")


def test_checkpoint_lists_are_gathered_and_members_without_one_named() -> None:
    from lukhas_context.processors.checkpoint_list import gathered
    from lukhas_context.processors.fanout import Answer

    b, c, d = (Member(n, f"http://{n}:1", (), 3, 0) for n in ("b", "c", "d"))
    mine: list[dict[str, Any]] = [{"checkpoint_id": "x"}]
    answers = [
        Answer(b, {"held": []}),
        Answer(c, None, "no answer within 3 s"),
        Answer(d, {"held": "x"}),
    ]
    holders, missing = gathered((A, mine), answers)
    assert holders == [(A, mine), (b.api, [])]
    assert missing == [
        {"api": c.api, "error": "no answer within 3 s"},
        {"api": d.api, "error": "no held list"},
    ]
