"""A member whose revocation is slower than its session timeout stays in the group.

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
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from .conftest import PARTITIONS, RunningWorker, WorkerFactory

pytestmark = pytest.mark.timeout(240)

SESSION_MS = 6_000
#: How long the first worker's round is held while the second joins: twice its session.
HOLD_S = 12.0


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
) -> tuple[tuple[str, int], tuple[str, int], tuple[str, int]]:
    """Worker a serves everything; its round is held for ``HOLD_S`` while b joins. Returns
    a's (member id, generation) before, and a's and b's once both serve."""
    a = await start_worker(tmp_path / "a", session_timeout_ms=SESSION_MS, **timeouts)
    deadline = time.monotonic() + 60
    while len(a.materializer.stores) < PARTITIONS:
        assert time.monotonic() < deadline, "worker a never served every partition"
        await asyncio.sleep(0.1)
    before = _group(a)
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
    return before, *settled


async def test_with_the_session_as_rebalance_timeout_the_slow_member_is_dropped(
    start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """The fault, as aiokafka's default makes it: a's revocation outlasts the rebalance
    timeout, the generation completes with b alone, and a comes back as a new member."""
    (member, generation), (member_after, gen_a), (_, gen_b) = await _slow_revocation(
        start_worker, tmp_path, rebalance_timeout_ms=SESSION_MS
    )
    assert member_after != member, "a kept its member id: it was never dropped"
    assert gen_a == gen_b >= generation + 2, (generation, gen_a, gen_b)


async def test_a_revocation_slower_than_the_session_keeps_the_member(
    start_worker: WorkerFactory, tmp_path: Path
) -> None:
    """With the worker's rebalance timeout the coordinator waits for a: same member id, a
    generation holding both workers, and it stays."""
    (member, generation), (member_after, gen_a), (_, gen_b) = await _slow_revocation(
        start_worker, tmp_path
    )
    assert member_after == member, "a was dropped from the group while it revoked"
    assert gen_a == gen_b > generation, (generation, gen_a, gen_b)
