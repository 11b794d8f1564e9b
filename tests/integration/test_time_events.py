"""Issue 4 against the real broker: TTL expiry as events, aligned checkpoints, digests, and
every restore path (checkpoint + WAL tail, change topic, full replay, quarantine)."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.offline import From, restore_offline
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import ContextEvent, Expire, Put, Touch
from lukhas_context.state.checkpoints import CheckpointDir
from lukhas_context.state.manifest import Manifest, Summary
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams.exceptions import ContextNotFoundError

from .conftest import PARTITIONS, drained, serving_all, summaries

pytestmark = pytest.mark.timeout(300)


async def _caught_up(worker: Any, live: dict[int, Summary], timeout: float = 60) -> None:
    """Until every partition has folded as far as ``live`` had."""
    deadline = time.monotonic() + timeout
    stores = worker.materializer.stores
    while any(stores[p].next_offset < s.next_offset for p, s in live.items()):
        assert time.monotonic() < deadline, {p: stores[p].next_offset for p in live}
        await asyncio.sleep(0.05)


async def _write_history(client: Any, n: int, tag: str) -> Any:
    """Puts, patches, deletes and touches over ``n`` contexts; returns the last receipt."""
    last = None
    for i in range(n):
        cid = f"{tag}:{i % (n // 4 or 1)}"
        if i % 11 == 5:  # a merge patch (rejected, and journaled so, if not created yet)
            last = await client.patch(cid, {"patched": i}, merge=True)
        elif i % 13 == 7:
            last = await client.delete(cid)
        else:
            last = await client.put(cid, {"n": i, "tag": tag, "pad": "x" * (i % 50)})
    last = await client.put(f"{tag}:final", {"last": True})  # the log ends with an applied event
    return last


async def _wait_folded(client: Any, receipt: Any) -> None:
    await client.get(receipt.context_id, min_offset=receipt, timeout=60)


# ------------------------------------------------------------------------------- expiry


async def test_contexts_expire_as_events_and_a_later_ttl_wins(
    start_worker: Any, make_client: Any, topics: Any, read_topic: Any
) -> None:
    worker = await start_worker(expiry_interval_s=0.2)
    await serving_all(worker)
    async with make_client(worker.url) as client:
        for i in range(60):
            await client.put(f"short:{i}", {"i": i}, ttl=1.0)
        await client.put("extended", {"keep": True}, ttl=1.0)
        touched = await client.touch("extended", ttl=120)  # before the sweep: it must win
        await client.put("forever", {"ttl": None})
        await _wait_folded(client, touched)

        tombstones = await read_topic(
            topics.changes,
            lambda rs: sum(m.value is None for m in rs) >= 60,
            timeout=60,
        )
        expired = [m for m in tombstones if m.value is None]
        headers = [dict(m.headers) for m in expired]
        assert sorted(m.key for m in expired) == sorted(f"short:{i}".encode() for i in range(60))
        assert {h["kind"] for h in headers} == {b"expired"}
        assert {int(h["version"]) for h in headers} == {2}  # put = 1, expire = 2
        lateness = sorted(int(h["log_time_ms"]) - int(h["expires_at_ms"]) for h in headers)
        assert lateness[0] >= 0, "an Expire applied before its context expired"
        # How late is a speed, not a property: `make bench` (benchmarks/restore.py's expiry
        # burst and steady runs) reports its p50 and p99; here it only has to happen.

        with pytest.raises(ContextNotFoundError):
            await client.get("short:0")
        kept = await client.get("extended")
        assert (kept.version, kept.doc) == (2, {"keep": True})
        assert (await client.get("forever")).version == 1
    # The stores commit each round once its changes are published: the last rounds' commits
    # may follow the tombstones read above by a moment.
    store = worker.materializer.stores
    deadline = time.monotonic() + 30
    while True:
        index = [entry for s in store.values() for entry in s.expiry_index()]
        if [key for key, _, _ in index] == [b"extended"] or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert [key for key, _, _ in index] == [b"extended"], "expired entries left in the index"
    lat = worker.materializer.metrics.expiry_lateness
    assert sum(b.get() for b in lat._buckets) == 60  # one lateness sample per applied Expire


async def test_a_stale_expire_is_refused(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any
) -> None:
    """An Expire of a version that a later write replaced, or of a context not yet expired
    at the Expire's log time, changes nothing (and the fold says why)."""
    worker = await start_worker(expiry_interval_s=None)
    await serving_all(worker)
    codec = EventCodec()
    # linger: the put and the touch go in one batch, so they get the same log time (the
    # broker's LogAppendTime is per batch) however slow this machine is: the touch always
    # finds version 1 alive, with no race against its 300 ms TTL.
    producer = AIOKafkaProducer(
        bootstrap_servers=cluster.bootstrap, enable_idempotence=True, linger_ms=200
    )
    await producer.start()
    try:
        async with make_client(worker.url) as client:
            put = ContextEvent(uuid.uuid4().bytes, "ctx", Put(b'{"v":1}', 300))
            touch = ContextEvent(uuid.uuid4().bytes, "ctx", Touch(120_000))  # far expiry
            sent = [
                await producer.send(topics.events, codec.encode(e), b"ctx") for e in (put, touch)
            ]
            put_meta, touch_meta = [await ack for ack in sent]
            assert put_meta.timestamp == touch_meta.timestamp  # one batch, one log time
            touched = await client.outcome(touch_meta.partition, touch_meta.offset, 30)
            assert (touched.status, touched.version) == ("applied", 2)
            # The Expires below must be logged after version 1's expiry time (the broker
            # stamps log time from this machine's clock): wait for that instant, no longer.
            await asyncio.sleep(max(0.0, (put_meta.timestamp + 301) / 1000 - time.time()))
            outcomes = []
            for version in (1, 2):  # 1: replaced; 2: current but not expired
                event = ContextEvent(uuid.uuid4().bytes, "ctx", Expire(version))
                meta = await (await producer.send(topics.events, codec.encode(event), b"ctx"))
                outcomes.append(await client.outcome(meta.partition, meta.offset, 30))
            assert [o.status for o in outcomes] == ["rejected", "rejected"]
            assert all("stale expiry" in (o.reason or "") for o in outcomes)
            assert (await client.get("ctx")).version == 2
    finally:
        await producer.stop()


# -------------------------------------------------------------------------- checkpoints


async def test_restore_from_checkpoint_and_tail_equals_live_and_full_replay(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    worker = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(worker)
    codec = EventCodec()
    retried = ContextEvent(uuid.uuid4().bytes, "retried", Put(b'{"once":true}'))
    raw = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap, enable_idempotence=True)
    await raw.start()
    try:
        async with make_client(worker.url) as client:
            await _write_history(client, 400, "before")
            await raw.send_and_wait(topics.events, codec.encode(retried), b"retried")
            request = await client.checkpoint("ck-test-1")
            manifests = await client.wait_checkpoint(request, timeout=60)
            assert [m["partition"] for m in manifests] == list(range(PARTITIONS))
            for m in manifests:  # each at exactly the offset after its barrier
                assert m["next_offset"] == request.offsets[m["partition"]] + 1
            await _write_history(client, 300, "after")
        live = await drained(worker)
        await worker.stop()

        # The state dir's stores are lost; the checkpoints (their own dir) survive.
        for p in range(PARTITIONS):
            shutil.rmtree(state / f"partition-{p}")
        restored = await start_worker(state_dir=state, expiry_interval_s=None)
        await serving_all(restored)
        reports = restored.materializer.restore_reports
        assert {r.source.value for r in reports.values()} == {"checkpoint"}
        assert {r.checkpoint_id for r in reports.values()} == {"ck-test-1"}
        async with make_client(restored.url) as client:
            await _caught_up(restored, live)
            assert summaries(restored) == live
            # The dedupe window came back with the checkpoint: a retry is still a retry.
            meta = await raw.send_and_wait(topics.events, codec.encode(retried), b"retried")
            outcome = await client.outcome(meta.partition, meta.offset, 30)
            assert outcome.duplicate_of is not None
            assert (await client.get("retried")).version == 1
        await restored.stop()
    finally:
        await raw.stop()

    # A full replay of the same WAL, offline, reaches the same digests.
    replay = WorkerConfig(bootstrap=cluster.bootstrap, state_dir=tmp_path / "replay", topics=topics)
    for p in range(PARTITIONS):
        report = await restore_offline(replay, p, From.SCRATCH, progress=False)
        assert report.restore.next_offset == live[p].next_offset
        assert report.restore.digest == live[p].digest_hex, f"partition {p}"
    # And so does a restore from the compacted change topic (a fresh worker, no checkpoint).
    fresh = await start_worker(state_dir=tmp_path / "fresh", expiry_interval_s=None)
    await serving_all(fresh)
    await _caught_up(fresh, live)
    assert {r.source.value for r in fresh.materializer.restore_reports.values()} == {"changes"}
    assert {p: s.digest for p, s in summaries(fresh).items()} == {
        p: s.digest for p, s in live.items()
    }


async def test_kill9_during_a_checkpoint_leaves_nothing_usable(
    worker_process: Any, make_client: Any, tmp_path: Path, topics: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    checkpoints = CheckpointDir(tmp_path / "proc-state" / "checkpoints", topics.events)
    monkeypatch.setenv("LUKHAS_TEST_CHECKPOINT_PAUSE_S", "30")
    worker_process.start()
    await asyncio.to_thread(worker_process.wait_healthy)
    async with make_client(worker_process.url) as client:
        last = await _write_history(client, 200, "k")
        await client.get(last.context_id, min_offset=last, timeout=60)
        killed = await client.checkpoint("ck-killed")
        deadline = time.monotonic() + 60
        while not (partial := _partial_dirs(checkpoints)):
            assert time.monotonic() < deadline, "no checkpoint was started"
            await asyncio.sleep(0.05)
        worker_process.kill9()
        killed_in = int(partial[0].parent.name.removeprefix("partition-"))
        assert "ck-killed" not in [m.checkpoint_id for m in checkpoints.valid(killed_in)]

        # Restarted on its stores (without the pause), the worker takes the checkpoints the
        # kill interrupted: each store says a barrier was committed without its checkpoint.
        monkeypatch.delenv("LUKHAS_TEST_CHECKPOINT_PAUSE_S")
        worker_process.start()
        await asyncio.to_thread(worker_process.wait_healthy)
        resumed = await client.wait_checkpoint(killed, timeout=60)
        assert [m["partition"] for m in resumed] == list(range(PARTITIONS))
        assert "ck-killed" in [m.checkpoint_id for m in checkpoints.valid(killed_in)]
        worker_process.kill9()

        # And when the stores are lost too, the partial checkpoint is never used.
        for p in range(PARTITIONS):
            shutil.rmtree(tmp_path / "proc-state" / f"partition-{p}", ignore_errors=True)
        worker_process.start()
        await asyncio.to_thread(worker_process.wait_healthy)
        await client.get(last.context_id, min_offset=last, timeout=60)
        served = await _partitions(worker_process.url, PARTITIONS)
        assert {s["opened_from"] for s in served} <= {"checkpoint", "changes", "replay"}
        # The next checkpoint clears what the killed one left. Every checkpoint listed (the
        # restarted fold passes the killed barrier again and may take it anew) is whole:
        # installed, it holds exactly what its manifest says.
        request = await client.checkpoint("ck-after")
        manifests = await client.wait_checkpoint(request, timeout=60)
        assert _partial_dirs(checkpoints) == []
        for p in range(PARTITIONS):
            listed = checkpoints.valid(p)
            assert "ck-after" in [m.checkpoint_id for m in listed]
            for m in listed:
                assert await asyncio.to_thread(_installs_intact, checkpoints, m, tmp_path)
        assert {m["digest"] for m in manifests} == {
            s["digest"] for s in await _partitions(worker_process.url, PARTITIONS)
        }
    assert worker_process.terminate() == 0


def _partial_dirs(checkpoints: CheckpointDir) -> list[Path]:
    return [
        d
        for p in range(PARTITIONS)
        if checkpoints.partition_dir(p).is_dir()
        for d in checkpoints.partition_dir(p).iterdir()
        if d.name.startswith(".")
    ]


def _installs_intact(checkpoints: CheckpointDir, manifest: Manifest, tmp: Path) -> bool:
    dest = tmp / f"installed-{manifest.partition}-{manifest.checkpoint_id}"
    checkpoints.install(manifest, dest)
    with PartitionStore(dest) as store:
        return manifest.matches(store.verify()) and store.verify() == store.summary()


async def _partitions(url: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """``/v1/partitions`` once the worker serves ``count`` partitions."""
    deadline = time.monotonic() + timeout
    while True:
        served = await asyncio.to_thread(_get_partitions, url)
        if len(served) == count or time.monotonic() > deadline:
            return served
        await asyncio.sleep(0.1)


def _get_partitions(url: str) -> list[dict[str, Any]]:
    with urllib.request.urlopen(url + "/v1/partitions", timeout=5) as r:
        served: list[dict[str, Any]] = json.loads(r.read())["partitions"]
    return served


def _nonempty_dir(path: Path) -> bool:
    return path.is_dir() and any(path.iterdir())


def _run(argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(argv, env=env, capture_output=True, timeout=120, check=False)


# --------------------------------------------------------------------------- corruption


def _empty_manifest(path: Path) -> None:
    for f in path.glob("MANIFEST-*"):
        f.write_bytes(b"")


def _missing_current(path: Path) -> None:
    (path / "CURRENT").unlink()


def _flip(sst: Path) -> bytes:
    data = bytearray(sst.read_bytes())
    for i in range(0, int(len(data) * 0.8), 97):  # data blocks sit at the front
        data[i] ^= 0x5A
    return bytes(data)


def _largest_sst(path: Path) -> Path:
    ssts = sorted(path.glob("*.sst"), key=lambda f: f.stat().st_size)
    assert ssts, "no SST file to corrupt"
    return ssts[-1]


def _flipped_sst(path: Path) -> None:
    """A corrupted copy of an SST file (its own inode, as after a bad copy or restore)."""
    sst = _largest_sst(path)
    corrupted = _flip(sst)
    sst.unlink()
    sst.write_bytes(corrupted)


def _flipped_shared_sst(path: Path) -> None:
    """Bytes flipped in place: checkpoints on the same file system hard-link the store's SST
    files, so this corrupts the checkpoint too, and the restore must notice that as well."""
    sst = _largest_sst(path)
    sst.write_bytes(_flip(sst))


@pytest.mark.parametrize(
    ("corrupt", "source"),
    [
        (_empty_manifest, "checkpoint"),
        (_missing_current, "checkpoint"),
        (_flipped_sst, "checkpoint"),
        (_flipped_shared_sst, "changes"),
    ],
)
async def test_a_corrupted_store_is_quarantined_and_rebuilt(
    corrupt: Any, source: str, start_worker: Any, make_client: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    worker = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(worker)
    async with make_client(worker.url) as client:
        await _write_history(client, 300, "c")
        await client.wait_checkpoint(await client.checkpoint("ck-c"), timeout=60)
        await _write_history(client, 100, "d")
    live = await drained(worker)
    await worker.stop()  # closes (and flushes) the stores: their data is in SST files

    victim = state / "partition-0"
    corrupt(victim)
    restarted = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(restarted)
    report = restarted.materializer.restore_reports[0]
    assert report.source.value == source
    if source == "checkpoint":
        assert report.checkpoint_id == "ck-c"
    else:  # the checkpoint shared the corrupted file: verified, found bad, skipped
        assert report.skipped and "ck-c" in report.skipped[0]
    assert len(report.quarantined) == 1
    moved = Path(report.quarantined[0])
    assert moved.parent == state / "quarantine"
    assert _nonempty_dir(moved)  # moved aside, not deleted
    assert {r.source.value for p, r in restarted.materializer.restore_reports.items() if p} == {
        "local"
    }
    await _caught_up(restarted, live)
    assert summaries(restarted) == live


# ----------------------------------------------------------------------------- the CLI


async def test_lukhas_restore_rebuilds_a_partition_from_a_checkpoint(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    worker = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(worker)
    async with make_client(worker.url) as client:
        await _write_history(client, 200, "r")
        await client.wait_checkpoint(await client.checkpoint("ck-cli"), timeout=60)
        await _write_history(client, 100, "s")
    live = await drained(worker)
    await worker.stop()

    env = {**os.environ, "LUKHAS_TOPIC_PREFIX": topics.prefix}
    argv = [sys.executable, "-m", "lukhas_context.ops", "restore", "--bootstrap",
            cluster.bootstrap, "--state-dir", str(state), "--json", "--no-progress"]  # fmt: skip
    done = await asyncio.to_thread(_run, [*argv, "-p", "1", "--checkpoint", "ck-cli"], env)
    assert done.returncode == 0, done.stderr.decode()
    report = json.loads(done.stdout)
    assert report["source"] == "checkpoint" and report["checkpoint_id"] == "ck-cli"
    assert report["digest"] == live[1].digest_hex
    assert report["next_offset"] == live[1].next_offset
    assert report["events_folded"] > 0
    assert _nonempty_dir(Path(report["moved_aside"]))

    scratch = await asyncio.to_thread(_run, [*argv, "-p", "2", "--from-scratch"], env)
    assert scratch.returncode == 0, scratch.stderr.decode()
    assert json.loads(scratch.stdout)["digest"] == live[2].digest_hex

    missing = await asyncio.to_thread(_run, [*argv, "-p", "0", "--checkpoint", "no-such"], env)
    assert missing.returncode == 1
    assert b"InvalidCheckpointError" in missing.stderr
    assert _nonempty_dir(state / "partition-0"), "a failed restore must not move the store"

    # While a worker serves the partition, restore refuses and moves nothing.
    running = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(running)
    busy = await asyncio.to_thread(_run, [*argv, "-p", "0"], env)
    assert busy.returncode == 1 and b"StoreInUseError" in busy.stderr
    assert summaries(running)[1] == live[1]


async def test_the_worker_checkpoints_once_per_interval(start_worker: Any, tmp_path: Path) -> None:
    worker = await start_worker(
        state_dir=tmp_path / "state", checkpoint_interval_s=1.0, checkpoint_keep=2,
        expiry_interval_s=None,
    )  # fmt: skip
    await serving_all(worker)
    checkpoints = worker.materializer.checkpoints
    deadline = time.monotonic() + 60
    while True:
        ids = [[m.checkpoint_id for m in checkpoints.valid(p)] for p in range(PARTITIONS)]
        if all(len(found) == 2 for found in ids) and len({tuple(i) for i in ids}) == 1:
            break
        assert time.monotonic() < deadline, ids
        await asyncio.sleep(0.1)
    # One id per interval, the same in every partition, the newest kept.
    first, second = ids[0]
    assert first.startswith("auto-") and second.startswith("auto-")
    assert int(first.removeprefix("auto-")) > int(second.removeprefix("auto-"))
