"""Idempotency keys: a caller that gives its own event id can retry after a crash — the
repeat is journaled a duplicate of the first, whose outcome it reports — within the dedupe
window (a number of records of the partition, configurable); past it, a repeat is new."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from lukhas_context.processors.fold import Limits
from lukhas_context.streams.exceptions import ValidationError

pytestmark = pytest.mark.integration


async def test_a_retry_with_the_same_event_id_is_folded_once(
    start_worker: Any, make_client: Any
) -> None:
    worker = await start_worker()
    async with make_client(worker.url) as client:
        key = uuid.uuid4()
        first = await client.put("idem:1", {"n": 1}, event_id=key)
        again = await client.put("idem:1", {"n": 1}, event_id=str(key))  # its text works too
        assert first.event_id == again.event_id == str(key)
        original = await first.outcome(timeout=30)
        repeat = await again.outcome(timeout=30)
        assert original.status == "applied" and original.duplicate_of is None
        assert (repeat.status, repeat.version, repeat.duplicate_of) == ("applied", 1, first.offset)
        assert (await client.get("idem:1", min_offset=again, timeout=30)).version == 1
        # the same id for another event is refused, never applied
        other = await client.put("idem:1", {"n": 2}, event_id=key)
        refused = await other.outcome(timeout=30)
        assert refused.status == "dead_lettered" and "EventIdConflictError" in refused.reason
        touched = await client.touch("idem:1", 60, event_id=uuid.uuid4())
        patched = await client.patch("idem:1", {"m": 1}, merge=True, event_id=uuid.uuid4())
        deleted = await client.delete("idem:1", event_id=uuid.uuid4())
        for receipt in (touched, patched, deleted):
            assert (await receipt.outcome(timeout=30)).status == "applied"
        for bad in ("nope", "", 42, uuid.UUID(int=0), "0" * 65):
            with pytest.raises(ValidationError):
                await client.put("idem:1", {}, event_id=bad)


async def test_past_the_dedupe_window_a_repeat_is_a_new_event(
    start_worker: Any, make_client: Any
) -> None:
    worker = await start_worker(limits=Limits(dedupe_window=3), journal_offsets=3)
    async with make_client(worker.url) as client:
        key = uuid.uuid4()
        first = await client.put("win:1", {"n": 1}, event_id=key)
        # three more records of the same partition push it out of the window
        for i in range(3):
            await client.put("win:1", {"filler": i})
        late = await client.put("win:1", {"n": 1}, event_id=key)
        assert late.partition == first.partition and late.offset - first.offset > 3
        outcome = await late.outcome(timeout=30)
        assert outcome.status == "applied" and outcome.duplicate_of is None
        assert outcome.version == 5


async def test_concurrent_updates_of_one_context_in_one_client_take_turns(
    start_worker: Any, make_client: Any
) -> None:
    """The seed's keyed local lock: update() calls on one context serialise in the client, so
    each diffs against the one before it instead of conflicting with it."""
    import asyncio

    worker = await start_worker()
    async with make_client(worker.url) as client:
        first = await client.put("turns:1", {"n": 0, "items": list(range(50))})
        await client.get("turns:1", min_offset=first, timeout=30)  # the base update() diffs from
        receipts = await asyncio.gather(
            *(client.update("turns:1", {"n": i, "items": list(range(50))}) for i in range(1, 11))
        )
        outcomes = [await r.outcome(timeout=30) for r in receipts]
        assert [o.status for o in outcomes] == ["applied"] * 10, outcomes
        final = await client.get("turns:1", min_offset=receipts[-1], timeout=30)
        assert final.version == 11 and final.doc["n"] == 10
        assert client._context_locks == {}  # nothing left behind
