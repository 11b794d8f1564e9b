"""The group's rebalances as a worker lives them: a member whose revocation is slower than
its session timeout stays in the group, and partitions given back fold on unopened.

Once a rebalance begins, the group coordinator waits the JoinGroup's rebalance timeout for
every member to rejoin, and a member rejoins only once its revocation is done (the round in
flight committed, its openings finished). aiokafka's default rebalance timeout is the session
timeout: a worker slower than that was dropped from the generation, rejoined as a new member
and so started another rebalance, and with two such workers in turn the group never settled
(the compose broker-cut test's "rebalance storm"). The worker now asks for
``rebalance_timeout_ms`` (30 s unless the session is longer). Both runs below hold one
worker's round for 12 s while a second joins, with a 6 s session: with 6 s as the rebalance
timeout (aiokafka's default) the slow worker is dropped, which shows the test makes the
fault; with the worker's default it is not, and the group settles with both.

A worker offers one assignor: aiokafka 0.14 sends a JoinGroup per assignor, each with other
protocols, and each one after the first started another rebalance (two generations per
rebalance alone, an endless alternation of single-member generations for two workers that
start together). Two workers started at once settle in generation 1 or 2 here.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from .conftest import PARTITIONS, RunningWorker, WorkerFactory, assert_equal_to_replay

pytestmark = pytest.mark.timeout(240)

SESSION_MS = 6_000
#: How long the first worker's round is held while the second joins: twice its session.
HOLD_S = 12.0


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


def _group(worker: RunningWorker) -> tuple[str, int]:
    """(member id, generation) of the worker's consumer in its group."""
    consumer = worker.materializer.assignment.consumer
    assert consumer is not None
    coordinator: Any = consumer._coordinator  # aiokafka's; the group's view of this member
    return coordinator.member_id, coordinator.generation


async def _both_serve(a: RunningWorker, b: RunningWorker, timeout: float = 90) -> None:
    """Until the two workers serve every partition between them, each at least one."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mine, theirs = set(a.materializer.stores), set(b.materializer.stores)
        if mine and theirs and not mine & theirs and mine | theirs == set(range(PARTITIONS)):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(
        f"not split in {timeout} s: {sorted(a.materializer.stores)} / "
        f"{sorted(b.materializer.stores)}"
    )


async def _slow_revocation(
    start_worker: WorkerFactory, tmp_path: Path, **timeouts: int
) -> tuple[tuple[str, int], tuple[str, int], tuple[str, int], int]:
    """Worker a serves everything; its round is held for ``HOLD_S`` while b joins. Returns
    a's (member id, generation) before, a's and b's once both serve, and how many of a's
    partitions then are the very stores it had before (kept, not reopened)."""
    a = await start_worker(tmp_path / "a", session_timeout_ms=SESSION_MS, **timeouts)
    deadline = time.monotonic() + 60
    while len(a.materializer.stores) < PARTITIONS:
        assert time.monotonic() < deadline, "worker a never served every partition"
        await asyncio.sleep(0.1)
    before = _group(a)
    stores = dict(a.materializer.stores)
    lock = a.materializer.assignment._lock
    await lock.acquire()  # a's revocation waits for the round in progress: this one
    try:
        b = await start_worker(tmp_path / "b", session_timeout_ms=SESSION_MS, **timeouts)
        await asyncio.sleep(HOLD_S)
    finally:
        lock.release()
    await _both_serve(a, b)
    settled = _group(a), _group(b)
    await asyncio.sleep(2 * SESSION_MS / 1000)  # a storm would go on: it would show by now
    await _both_serve(a, b)
    assert (_group(a), _group(b)) == settled, "the group rebalanced again once both served"
    same = sum(1 for p, store in a.materializer.stores.items() if stores.get(p) is store)
    return before, *settled, same


async def test_with_the_session_as_rebalance_timeout_the_slow_member_is_dropped(
    start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The fault, as aiokafka's default makes it: a's revocation outlasts the rebalance
    timeout, the generation completes with b alone, and a comes back as a new member."""
    (member, generation), (member_after, gen_a), (_, gen_b), same = await _slow_revocation(
        start_worker, tmp_path, rebalance_timeout_ms=SESSION_MS
    )
    assert member_after != member, "a kept its member id: it was never dropped"
    assert gen_a == gen_b >= generation + 2, (generation, gen_a, gen_b)
    assert same == 0, "a dropped worker folded on from a store it parked"


async def test_a_revocation_slower_than_the_session_keeps_the_member(
    start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """With the worker's rebalance timeout the coordinator waits for a: same member id, the
    next generation holds both workers, and it stays; what a gets back folds on unopened."""
    (member, generation), (member_after, gen_a), (_, gen_b), same = await _slow_revocation(
        start_worker, tmp_path
    )
    assert member_after == member, "a was dropped from the group while it revoked"
    assert gen_a == gen_b == generation + 1, (generation, gen_a, gen_b)
    assert same == PARTITIONS - PARTITIONS // 2 or same == PARTITIONS // 2, same


async def test_partitions_given_back_in_the_next_generation_fold_on_unopened(
    start_worker: WorkerFactory, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    """Every rebalance revokes every partition (aiokafka's eager protocol). When b leaves,
    a gets its own partitions back in the very next generation: they fold on from the same
    open stores (no reopening) while b's are opened, and the state is the fold of the WAL.
    (A worker dropped from the group resets its generation: what it gets back then is
    reopened, which the first test of this module shows.)"""
    a = await start_worker(tmp_path / "a")
    b = await start_worker(tmp_path / "b")
    await _both_serve(a, b)
    async with make_client(f"{a.url},{b.url}") as client:
        receipts = [await client.put(f"kept:{i}", {"i": i}) for i in range(30)]
        for r in receipts:
            await client.get(r.context_id, min_offset=r, timeout=30)
        stores = dict(a.materializer.stores)
        (_, generation) = _group(a)
        kept_before = a.materializer.metrics.kept._value.get()  # b's join may have kept some
        await b.stop()
        deadline = time.monotonic() + 60
        while len(a.materializer.stores) < PARTITIONS:
            assert time.monotonic() < deadline, "a never took b's partitions"
            await asyncio.sleep(0.1)
        (_, now) = _group(a)
        assert now == generation + 1, (generation, now)  # one rebalance: b left
        kept = a.materializer.metrics.kept._value.get() - kept_before
        assert kept == len(stores), (kept, sorted(stores))
        assert all(a.materializer.stores[p] is store for p, store in stores.items())
        assert a.materializer.assignment.parked == {}
        receipts = [await client.put(f"kept:{i}", {"i": -i}) for i in range(30)]
        for r in receipts:
            ctx = await client.get(r.context_id, min_offset=r, timeout=30)
            assert ctx.version == 2 and ctx.doc == {"i": -int(r.context_id.split(":")[1])}
    served = (await asyncio.to_thread(_get_json, f"{a.url}/v1/partitions"))["partitions"]
    assert sorted(s["partition"] for s in served) == list(range(PARTITIONS))
    await assert_equal_to_replay(cluster, topics, tmp_path / "replay", served)


async def test_two_workers_started_together_settle_at_once(
    start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """One JoinGroup per rebalance: two workers started at the same moment share the
    partitions by the second generation at the latest (one that completes before the other
    joined, then one with both), and stay there."""
    a, b = await asyncio.gather(
        start_worker(tmp_path / "a"), start_worker(tmp_path / "b")
    )  # fmt: skip
    await _both_serve(a, b, timeout=60)
    settled = _group(a), _group(b)
    assert settled[0][1] == settled[1][1] <= 2, settled
    await asyncio.sleep(5)
    assert (_group(a), _group(b)) == settled, "the group rebalanced again once both served"
