"""When a peer is dead enough to evict (``processors.peers``): only refusals count, only
after it was seen alive, over a span, once per member; and the probe tells a refusal from
anything else."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.processors.members import Member, Membership
from lukhas_context.processors.peers import PeerLiveness, Probe, probe

ALIVE, REFUSED, UNKNOWN = Probe.ALIVE, Probe.REFUSED, Probe.UNKNOWN


def test_refusals_in_a_row_over_the_span_evict_once() -> None:
    live = PeerLiveness(refusals=3, min_span_s=0.2)
    assert not live.observe("m1", ALIVE, 0.0)
    assert not live.observe("m1", REFUSED, 1.0)
    assert not live.observe("m1", REFUSED, 1.1)
    assert live.observe("m1", REFUSED, 1.25)  # third, over 0.2 s after the first
    assert not live.observe("m1", REFUSED, 1.5)  # never twice
    assert live.evicted == {"m1"}


def test_refusals_too_close_together_wait_for_the_span() -> None:
    live = PeerLiveness(refusals=3, min_span_s=0.2)
    live.observe("m1", ALIVE, 0.0)
    for t in (1.0, 1.01, 1.02, 1.1):
        assert not live.observe("m1", REFUSED, t)
    assert live.observe("m1", REFUSED, 1.25)


def test_a_member_never_seen_alive_is_not_evicted() -> None:
    """A worker still starting has joined the group before its listener is up."""
    live = PeerLiveness(refusals=2, min_span_s=0.0)
    for t in range(10):
        assert not live.observe("m1", REFUSED, float(t))


def test_a_timeout_or_an_answer_resets_the_count() -> None:
    """A timeout is a host down or cut off, or a stalled process: the session timeout's to
    judge (the member may still be folding); an answer is life."""
    live = PeerLiveness(refusals=3, min_span_s=0.0)
    live.observe("m1", ALIVE, 0.0)
    for reset in (UNKNOWN, ALIVE):
        assert not live.observe("m1", REFUSED, 1.0)
        assert not live.observe("m1", REFUSED, 1.1)
        assert not live.observe("m1", reset, 1.2)
    assert not live.observe("m1", REFUSED, 2.0)
    assert not live.observe("m1", REFUSED, 2.1)
    assert live.observe("m1", REFUSED, 2.2)


def test_members_gone_from_the_group_are_forgotten() -> None:
    live = PeerLiveness(refusals=2, min_span_s=0.0)
    live.observe("m1", ALIVE, 0.0)
    live.keep_only({"m2"})
    assert not live.observe("m1", REFUSED, 1.0)  # seen alive forgotten: starts over
    assert not live.observe("m1", REFUSED, 2.0)


@given(st.lists(st.tuples(st.text("ab", min_size=1, max_size=1),
                          st.sampled_from([ALIVE, REFUSED, UNKNOWN]),
                          st.floats(0, 1)), max_size=300))  # fmt: skip
@settings(max_examples=200, deadline=None)
def test_any_sequence_evicts_each_member_at_most_once_and_only_after_refusals(
    seq: list[tuple[str, Probe, float]],
) -> None:
    live = PeerLiveness(refusals=3, min_span_s=0.1)
    now = 0.0
    evicted: list[str] = []
    history: dict[str, list[Probe]] = {}
    for member, outcome, step in seq:
        now += step
        history.setdefault(member, []).append(outcome)
        if live.observe(member, outcome, now):
            evicted.append(member)
            assert history[member][-3:] == [REFUSED] * 3
            assert ALIVE in history[member]
    assert len(evicted) == len(set(evicted))


async def test_the_probe_tells_a_refusal_from_a_listener() -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    try:
        assert await probe(f"http://127.0.0.1:{port}") is ALIVE
        assert await probe(f"http://127.0.0.1:{closed}") is REFUSED
        assert await probe("not a url") is UNKNOWN
        assert await probe("http://[::1") is UNKNOWN
    finally:
        server.close()


async def test_a_name_with_several_addresses_is_refused_only_when_all_refuse() -> None:
    """``localhost`` may resolve to ::1 and 127.0.0.1: asyncio's own connect then raises a
    bare OSError for the two refusals, which would have hidden the refusal."""
    from lukhas_context.processors import peers

    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        closed = free.getsockname()[1]
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    alive = server.sockets[0].getsockname()[1]
    loop = asyncio.get_running_loop()
    try:
        for port, expected in ((closed, REFUSED), (alive, ALIVE)):
            both = [(socket.AF_INET, ("127.0.0.1", port)), (socket.AF_INET, ("127.0.0.1", port))]
            peers._resolved[("twice.invalid", port)] = (loop.time(), both)
            assert await probe(f"http://twice.invalid:{port}") is expected
        assert await probe("http://no-such-host.invalid:80") is UNKNOWN
    finally:
        server.close()
        peers._resolved.clear()


def test_an_eviction_that_failed_is_tried_again_after_the_next_refusals() -> None:
    live = PeerLiveness(refusals=2, min_span_s=0.0)
    live.observe("m1", ALIVE, 0.0)
    live.observe("m1", REFUSED, 1.0)
    assert live.observe("m1", REFUSED, 1.1)
    live.forgive("m1")  # the LeaveGroup failed (the coordinator moved)
    assert not live.observe("m1", REFUSED, 1.2)
    assert live.observe("m1", REFUSED, 1.3)


async def _watch_until(membership: Any, done: Any, timeout: float = 5.0) -> None:
    task = asyncio.create_task(membership._watch_peers())
    try:
        deadline = asyncio.get_running_loop().time() + timeout
        while not done():
            assert asyncio.get_running_loop().time() < deadline, "the watch did not get there"
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


@pytest.mark.parametrize(
    ("answers", "expected"),
    [
        ([None], [True]),
        (["UnknownMemberIdError"], [False]),
        (["NotCoordinatorError", None], [True]),
    ],
    ids=["evicted", "evicted-by-another", "tried-again"],
)
async def test_the_watch_evicts_a_dead_peer_once_and_rejoins_when_another_evicted_it(
    answers: list[str | None], expected: list[bool]
) -> None:
    """``Membership._watch_peers`` with the LeaveGroup stood in for: a peer seen alive, then
    gone, is evicted once (``on_evict(member, True)``); when the coordinator says it is no
    member any more (another worker evicted it first; Kafka 4.0 answers a second LeaveGroup
    for the same member with UNKNOWN_MEMBER_ID) the worker rejoins all the same
    (``on_evict(member, False)``); a failure of another kind is tried again."""
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    peer = Member("m-dead", f"http://127.0.0.1:{port}", (1,), 1, 0)
    calls: list[bool] = []
    membership = Membership("unused:9092", "g", "t", "me", "http://127.0.0.1:1",
                            evict_dead_peers=True,
                            on_evict=lambda m, by_us: calls.append(by_us))  # fmt: skip
    membership._members = [peer]
    left = list(answers)
    tried: list[str] = []

    async def evict(member: Member) -> str | None:
        tried.append(member.member)
        return left.pop(0)

    membership.evict = evict  # type: ignore[method-assign]
    liveness = membership.liveness
    assert liveness is not None
    await _watch_until(membership, lambda: "m-dead" in liveness._peers
                       and liveness._peers["m-dead"].seen_alive)  # fmt: skip
    server.close()
    await server.wait_closed()
    await _watch_until(membership, lambda: calls == expected)
    assert tried == ["m-dead"] * len(answers)
