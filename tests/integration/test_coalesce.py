"""A worker with ``coalesce_changes`` on a real broker: a conversation written faster than
rounds publishes fewer changes than versions, its last change is its latest version, a
subscriber sees that version, and a store restored from the change topic (and a replay of
the WAL) has the worker's digest."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.offline import From, restore_offline
from lukhas_context.schemas.change import seq_of
from lukhas_context.schemas.codec import ChangeCodec

from .conftest import PARTITIONS, assert_equal_to_replay, drained, summaries

pytestmark = pytest.mark.integration

APPENDS = 300


async def test_a_coalesced_change_stream_keeps_the_latest_of_each_round(
    start_worker: Any, make_client: Any, topics: Any, read_topic: Any, cluster: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    # Written before any worker runs: the worker folds them in a few large rounds.
    async with make_client(None) as client:
        await client.put("conv:1", {"messages": []})
        await client.put("other:1", {"n": 0})
        for i in range(APPENDS):
            await client.patch("conv:1", [{"op": "add", "path": "/messages/-", "value": i}])
        await client.put("other:1", {"n": 1})
    worker = await start_worker(coalesce_changes=True)
    await drained(worker)

    def latest(records: list[Any]) -> bool:
        seen = {(m.key, ChangeCodec().decode(m.value).version) for m in records}
        return {(b"conv:1", APPENDS + 1), (b"other:1", 2)} <= seen

    changes = await read_topic(topics.changes, latest)
    conv = [ChangeCodec().decode(m.value) for m in changes if m.key == b"conv:1"]
    assert 1 <= len(conv) < APPENDS + 1  # some versions were superseded within a round
    versions = [c.version for c in conv]
    assert versions == sorted(versions) and versions[-1] == APPENDS + 1
    assert json.loads(conv[-1].doc)["messages"] == list(range(APPENDS))
    metrics = worker.materializer.metrics
    published, coalesced = metrics.changes._value.get(), metrics.changes_coalesced._value.get()
    assert published == len(changes) and published + coalesced == APPENDS + 3

    async with make_client(worker.url) as client:
        assert (await client.get("conv:1")).version == APPENDS + 1
        async with client.watch(start="earliest", idle_timeout=3) as w:
            seen = {c.context_id: c for c in [c async for c in w]}
    assert seen["conv:1"].version == APPENDS + 1 and seen["other:1"].version == 2

    url = f"{worker.url}/v1/partitions"
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        served = (await answer.json())["partitions"]
    assert len(served) == PARTITIONS
    assert sum(s["next_offset"] > 0 for s in served) >= 1
    await assert_equal_to_replay(cluster, topics, tmp_path / "replay", served)
    # A store restored from the coalesced change topic is the fold's.
    restore = WorkerConfig(cluster.bootstrap, tmp_path / "restored", topics=topics)
    for s in served:
        if s["next_offset"] == 0:
            continue  # nothing written there: nothing to restore
        report = await restore_offline(restore, s["partition"], From.CHANGES, progress=False)
        assert report.restore.digest == s["digest"], s


async def test_a_re_fold_of_coalesced_rounds_numbers_on_from_the_change_topic(
    start_worker: Any, make_client: Any, topics: Any, read_topic: Any, cluster: Any,
    tmp_path: Path,
) -> None:  # fmt: skip
    """A store behind its change topic (a crash after a round's Kafka transaction, before its
    WriteBatch; here an older copy of the state put back) re-folds those rounds without
    publishing them, cut otherwise than the first time: in one round here, where the worker
    first folded each append alone. A coalesced round's count of changes depends on its cut,
    so the numbering goes on from the topic's highest number: every change of the partition
    numbered once, 0, 1, 2, ... with none used twice (which subscribers and standbys would
    take for repeats) and none skipped."""
    state, early = tmp_path / "state", tmp_path / "early"
    appends, after = 12, 3
    async with make_client(None) as client:
        worker = await start_worker(state, coalesce_changes=True)
        await client.put("conv:1", {"messages": []})
        await drained(worker)
        await worker.stop()
        shutil.copytree(state, early)
        worker = await start_worker(state, coalesce_changes=True)
        for i in range(appends):
            await client.patch("conv:1", [{"op": "add", "path": "/messages/-", "value": i}])
            await drained(worker)  # a round each
        await worker.stop()
        shutil.rmtree(state)
        shutil.copytree(early, state)
        worker = await start_worker(state, coalesce_changes=True)
        await drained(worker)  # the appends again, without publishing
        for i in range(appends, appends + after):
            await client.patch("conv:1", [{"op": "add", "path": "/messages/-", "value": i}])
            await drained(worker)
    last = appends + after + 1

    def complete(records: list[Any]) -> bool:
        return any(m.key == b"conv:1" and ChangeCodec().decode(m.value).version == last
                   for m in records)  # fmt: skip

    records = await read_topic(topics.changes, complete)
    conv = [m for m in records if m.key == b"conv:1"]
    assert [ChangeCodec().decode(m.value).version for m in conv] == list(range(1, last + 1))
    partition = conv[0].partition
    numbers = [seq_of(m.headers) for m in records if m.partition == partition]
    assert numbers == list(range(last))
    served = summaries(worker)
    assert served[partition].next_offset == last
    await assert_equal_to_replay(
        cluster, topics, tmp_path / "replay",
        [{"partition": p, "next_offset": s.next_offset, "digest": f"{s.digest:016x}"}
         for p, s in served.items()],
    )  # fmt: skip
