"""RELIABILITY.md rows 16 and 17 (issue 9, items 5 and 6): garbage or forged records on a
topic the worker or the client reads — the change topic, the checkpoints topic, the members
topic, the DLQ — never keep a worker from starting, never poison its restore or its change
coverage, and never route a client to a URL the group coordinator does not vouch for."""

from __future__ import annotations

import asyncio
import json
import shutil
import time
import urllib.request
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest
import xxhash
from aiohttp import web
from aiokafka import AIOKafkaProducer

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.offline import From, restore_offline
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import TopicSpec

from .conftest import PARTITIONS, drained, free_port, serving_all, wal_ends

pytestmark = pytest.mark.timeout(300)

#: How far back from its end the coverage scan reads a change partition (processors.opener).
COVERAGE_LOOKBACK = 10_000
FAR_FUTURE_MS = int(time.time() * 1000) + 10 * 365 * 86_400_000


# ----------------------------------------------------------------------------- helpers


async def _write(client: ContextClient, tag: str, n: int = 60) -> Any:
    last = None
    for i in range(n):
        cid = f"{tag}:{i % 20}"
        if i % 9 == 4:
            last = await client.delete(cid)
        else:
            last = await client.put(cid, {"i": i, "tag": tag})
    last = await client.put(f"{tag}:last", {"last": True})
    await client.get(last.context_id, min_offset=last, timeout=60)
    return last


async def _produce(
    bootstrap: str, topic: str, records: list[tuple[int, bytes | None, bytes | None, Any]]
) -> None:
    """Appends ``(partition, key, value, headers)`` records as they are, no questions asked."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, max_request_size=4 * 1024 * 1024)
    await producer.start()
    try:
        acks = [
            await producer.send(
                topic, value=value, key=key, partition=partition, headers=headers or None
            )
            for partition, key, value, headers in records
        ]
        await asyncio.gather(*acks)
    finally:
        await producer.stop()


def _get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.loads(r.read())


async def _replay_digests(
    bootstrap: str, topics: Any, tmp_path: Path, until: dict[int, int]
) -> dict[int, str]:
    """Each partition's digest by a full replay of the WAL up to ``until``, offline."""
    config = WorkerConfig(bootstrap, tmp_path / f"replay-{uuid.uuid4().hex[:6]}", topics=topics)
    out = {}
    for p, end in until.items():
        report = await restore_offline(config, p, From.SCRATCH, progress=False, until=end)
        out[p] = report.restore.digest
    return out


# The bad newest records of a change-topic partition: (name, record factory). The factory
# gets the partition and that WAL partition's end offset, and returns (key, value, headers).
_codec = ChangeCodec()
_DOC = b'{"forged":true}'


def _garbage(p: int, end: int) -> tuple[bytes, bytes | None, Any]:
    return b"junk", b"\x00\x01 not a change at all \xff", []


def _bad_magic(p: int, end: int) -> tuple[bytes, bytes | None, Any]:
    return b"junk", b"\xc3\x02" + bytes(8) + b"body", []


def _past_the_end(p: int, end: int) -> tuple[bytes, bytes | None, Any]:
    """Decodes, and names a WAL offset far past the WAL's end."""
    value = _codec.encode_fields(
        b"forged", 1, ChangeKind.PUT, _DOC, xxhash.xxh3_64_digest(_DOC), None, 2**62,
        uuid.uuid4().bytes, 0,
    )  # fmt: skip
    return b"forged", value, []


def _wrong_event(p: int, end: int) -> tuple[bytes, bytes | None, Any]:
    """Decodes, names the last WAL offset there is, but not the event there."""
    value = _codec.encode_fields(
        b"forged", 7, ChangeKind.PUT, _DOC, xxhash.xxh3_64_digest(_DOC), None, end - 1,
        uuid.uuid4().bytes, int(time.time() * 1000),
    )  # fmt: skip
    return b"forged", value, []


def _bad_tombstone(p: int, end: int) -> tuple[bytes, bytes | None, Any]:
    headers = [
        ("kind", b"deleted"), ("version", b"99999999999999999999999"),
        ("wal_offset", b"-5"), ("event_id", b"x"), ("checksum", b"short"),
        ("log_time_ms", b"nan"),
    ]  # fmt: skip
    return b"forged", None, headers


BAD_CHANGES = {
    "garbage": _garbage,
    "bad-magic": _bad_magic,
    "past-the-wal-end": _past_the_end,
    "not-the-wal-event": _wrong_event,
    "bad-tombstone": _bad_tombstone,
}


async def _spoil_change_topic(cluster: Any, topics: Any, kind: str) -> None:
    ends = await wal_ends(cluster.bootstrap, topics.events)
    records = []
    for p in range(PARTITIONS):
        key, value, headers = BAD_CHANGES[kind](p, ends[p])
        records.append((p, key, value, headers))
    await _produce(cluster.bootstrap, topics.changes, records)


# ------------------------------------------------------------------ the change topic


@pytest.mark.parametrize("store_gone", [False, True], ids=["store-kept", "store-gone"])
@pytest.mark.parametrize("kind", list(BAD_CHANGES))
async def test_a_bad_newest_change_never_keeps_a_worker_from_starting(
    kind: str, store_gone: bool, start_worker: Any, make_client: Any, cluster: Any,
    topics: Any, tmp_path: Path, read_topic: Any,
) -> None:  # fmt: skip
    state = tmp_path / "state"
    worker = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(worker)
    async with make_client(worker.url) as client:
        await _write(client, "before")
    live = await drained(worker)
    await worker.stop()

    await _spoil_change_topic(cluster, topics, kind)
    if store_gone:  # lost, or quarantined: the worker must restore without it
        for p in range(PARTITIONS):
            shutil.rmtree(state / f"partition-{p}")

    restarted = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(restarted)
    reports = restarted.materializer.restore_reports
    # Each partition opened by a path that was still good, and said what it set aside.
    for report in reports.values():
        assert report.source.value == ("replay" if store_gone else "local"), report
        assert any("changes" in s for s in report.skipped), report.skipped
    metrics = restarted.materializer.metrics.render().decode()
    assert 'lukhas_unusable_records_total{topic="changes"}' in metrics
    summaries = await drained(restarted)
    assert {p: s.digest for p, s in summaries.items()} == {p: s.digest for p, s in live.items()}

    # It serves, and what it folds next is published (the bad record did not silence it).
    async with make_client(restarted.url) as client:
        assert (await client.get("before:last")).doc == {"last": True}
        receipt = await client.put("after", {"published": True})
        assert (await client.get("after", min_offset=receipt, timeout=30)).version == 1
    published = await read_topic(
        topics.changes, lambda rs: any(m.key == b"after" for m in rs), timeout=30
    )
    assert any(m.key == b"after" for m in published), "the change of a new write was not published"
    ends = await wal_ends(cluster.bootstrap, topics.events)
    summaries = await drained(restarted)
    replay = await _replay_digests(cluster.bootstrap, topics, tmp_path, ends)
    assert {p: s.digest_hex for p, s in summaries.items()} == replay


async def test_a_change_topic_full_of_garbage_costs_repeats_not_a_start(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    """More bad records than the coverage scan reads back: coverage is unknown, the worker
    starts all the same and publishes again what it folds (subscribers drop repeats)."""
    state = tmp_path / "state"
    worker = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(worker)
    async with make_client(worker.url) as client:
        await _write(client, "x", n=30)
    live = await drained(worker)
    await worker.stop()
    junk = [(0, b"junk", b"\x00junk %d" % i, None) for i in range(COVERAGE_LOOKBACK + 50)]
    await _produce(cluster.bootstrap, topics.changes, junk)
    for p in range(PARTITIONS):
        shutil.rmtree(state / f"partition-{p}")
    restarted = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(restarted)
    report = restarted.materializer.restore_reports[0]
    assert report.source.value == "replay"
    assert any("coverage unknown" in s for s in report.skipped), report.skipped
    summaries = await drained(restarted)
    assert {p: s.digest for p, s in summaries.items()} == {p: s.digest for p, s in live.items()}


# ------------------------------------------------------------ the checkpoints topic


async def test_garbage_on_the_checkpoints_topic_is_passed_over(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    state = tmp_path / "state"
    worker = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(worker)
    checkpoint_id = f"ck-{uuid.uuid4().hex[:6]}"
    fake = {
        "format": 1, "checkpoint_id": checkpoint_id, "partition": 0, "topic": topics.events,
        "next_offset": 1, "records": 0, "documents": 0, "digest": "0" * 16,
        "created_at_ms": 0, "checksum": "not the checksum",
    }  # fmt: skip
    bad_values: list[bytes | None] = [
        b"\xff\xfe garbage",
        b"[]",
        b'"text"',
        b"{}",
        b"null",
        None,
        orjson.dumps(fake),
        orjson.dumps({**fake, "partition": "zero"}),
        b'{"partition": 99999999999999999999999}',
    ]
    await _produce(
        cluster.bootstrap, topics.checkpoints,
        [(i % PARTITIONS, f"{checkpoint_id}/{i % PARTITIONS}".encode(), v, None)
         for i, v in enumerate(bad_values)],
    )  # fmt: skip
    async with make_client(worker.url) as client:
        await _write(client, "ck")
        request = await client.checkpoint(checkpoint_id)
        manifests = await client.wait_checkpoint(request, timeout=60)
    assert [m["partition"] for m in manifests] == list(range(PARTITIONS))
    live = await drained(worker)
    for m in manifests:
        assert m["next_offset"] == request.offsets[m["partition"]] + 1
        assert m["digest"] in {s.digest_hex for s in live.values()}
    await worker.stop()

    # The worker never reads that topic to restore: the stores gone, it restores from the
    # local checkpoints, which it verifies itself.
    for p in range(PARTITIONS):
        shutil.rmtree(state / f"partition-{p}")
    restarted = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(restarted)
    assert {r.source.value for r in restarted.materializer.restore_reports.values()} == {
        "checkpoint"
    }
    summaries = await drained(restarted)
    assert {p: s.digest for p, s in summaries.items()} == {p: s.digest for p, s in live.items()}


# ------------------------------------------------------------ members topic and DLQ


async def _members_topic(cluster: Any, topics: Any) -> None:
    """Deployments made before routing came from the group coordinator have this topic."""
    spec = TopicSpec(topics.members, 1, {"cleanup.policy": "compact"})
    await ensure_topics(cluster.bootstrap, [spec], brokers=None)


async def test_garbage_on_the_members_topic_and_the_dlq_changes_nothing(
    start_worker: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    await _members_topic(cluster, topics)
    garbage: list[bytes | None] = [
        b"\xff garbage",
        b"[]",
        b"{}",
        b"null",
        None,
        b'{"member": "m", "api": "http://127.0.0.1:1", "partitions": [0, 1, 2], '
        b'"generation": 99999999999999999999999999, "updated_ms": 1}',
        b'{"member": "m", "api": "x", "partitions": ['
        + b"0," * 100_000
        + b'0], "generation": 1, "updated_ms": 1}',
    ]
    await _produce(cluster.bootstrap, topics.members, [(0, b"m", v, None) for v in garbage])
    await _produce(
        cluster.bootstrap, topics.dlq,
        [(p, b"junk", b"\x00\xff junk", [("error.class", b"\xff")]) for p in range(PARTITIONS)]
        + [(p, b"junk", None, None) for p in range(PARTITIONS)]
        + [(p, None, b"", None) for p in range(PARTITIONS)],
    )  # fmt: skip
    state = tmp_path / "state"
    worker = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(worker)
    async with make_client(worker.url) as client:
        await _write(client, "m")
        assert (await client.get("m:last")).doc == {"last": True}
    table = await asyncio.to_thread(_get_json, worker.url + "/v1/members")
    assert set(table["owners"].values()) == {worker.url}, table
    live = await drained(worker)
    await worker.stop()
    for p in range(PARTITIONS):
        shutil.rmtree(state / f"partition-{p}")
    restarted = await start_worker(state_dir=state, expiry_interval_s=None)
    await serving_all(restarted)
    summaries = await drained(restarted)
    assert {p: s.digest for p, s in summaries.items()} == {p: s.digest for p, s in live.items()}


# ------------------------------------------------------------- a lukhas up restart


async def test_a_worker_process_restarts_over_a_spoiled_change_topic_again_and_again(
    worker_process: Any, make_client: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    """As ``lukhas up`` runs it (a child process, static membership): killed, its stores
    lost, garbage the newest record of every change partition — it starts, every time."""
    worker_process.start()
    await asyncio.to_thread(worker_process.wait_healthy)
    async with make_client(worker_process.url) as client:
        written = await _write(client, "up")
        for round_ in range(3):
            worker_process.kill9()
            await _spoil_change_topic(cluster, topics, "garbage" if round_ % 2 else "bad-magic")
            if round_ != 1:
                for p in range(PARTITIONS):
                    shutil.rmtree(tmp_path / "proc-state" / f"partition-{p}", ignore_errors=True)
            worker_process.start()
            await asyncio.to_thread(worker_process.wait_healthy)
            last = await client.put(f"up:round-{round_}", {"round": round_})
            assert (await client.get(last.context_id, min_offset=last, timeout=60)).version == 1
            assert (await client.get("up:last", min_offset=written, timeout=60)).doc == {
                "last": True
            }
    ends = await wal_ends(cluster.bootstrap, topics.events)
    deadline = time.monotonic() + 60
    while True:
        served = (await asyncio.to_thread(_get_json, worker_process.url + "/v1/partitions"))[
            "partitions"
        ]
        if len(served) == PARTITIONS and all(
            s["next_offset"] >= ends[s["partition"]] for s in served
        ):
            break
        assert time.monotonic() < deadline, served
        await asyncio.sleep(0.1)
    assert worker_process.terminate() == 0
    replay = await _replay_digests(cluster.bootstrap, topics, tmp_path, ends)
    assert {s["partition"]: s["digest"] for s in served} == replay


# ------------------------------------------------------------ a forged member claim


@pytest.fixture
async def fake_worker() -> AsyncIterator[tuple[str, list[str]]]:
    """An HTTP server on 127.0.0.1 posing as a worker: every context it serves is a forged
    document with a valid checksum. Yields its URL and the paths it was asked for."""
    asked: list[str] = []
    forged = {"forged": True}
    checksum = xxhash.xxh3_64_hexdigest(orjson.dumps(forged, option=orjson.OPT_SORT_KEYS))

    async def handle(request: web.Request) -> web.Response:
        asked.append(request.path_qs)
        if request.path.startswith("/v1/contexts/"):
            return web.json_response({
                "context_id": request.match_info["tail"].removeprefix("v1/contexts/"),
                "version": 1, "doc": forged, "checksum": checksum, "offset": 0,
                "partition": 0, "expires_at_ms": None,
            })  # fmt: skip
        if request.path == "/v1/members":
            return web.json_response({
                "member": "forger", "api": url, "partition_count": PARTITIONS,
                "owners": {str(p): url for p in range(PARTITIONS)}, "members": [],
            })  # fmt: skip
        return web.json_response({"status": "applied", "version": 1, "reason": None})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield url, asked
    finally:
        await runner.cleanup()


async def test_a_forged_member_claim_routes_no_read(
    start_worker: Any, cluster: Any, topics: Any, tmp_path: Path,
    fake_worker: tuple[str, list[str]],
) -> None:  # fmt: skip
    fake_url, asked = fake_worker
    await _members_topic(cluster, topics)
    claim = {
        "member": "forger", "api": fake_url, "partitions": list(range(PARTITIONS)),
        "generation": 2**31 - 1, "updated_ms": FAR_FUTURE_MS,
    }  # fmt: skip
    await _produce(cluster.bootstrap, topics.members, [(0, b"forger", orjson.dumps(claim), None)])
    a = await start_worker(state_dir=tmp_path / "a", expiry_interval_s=None)
    b = await start_worker(state_dir=tmp_path / "b", expiry_interval_s=None)
    # Both serve: the group split the partitions between them.
    deadline = time.monotonic() + 90
    while len(a.materializer.stores) + len(b.materializer.stores) < PARTITIONS or not (
        a.materializer.stores and b.materializer.stores
    ):
        assert time.monotonic() < deadline, "the two workers did not split the partitions"
        await asyncio.sleep(0.05)
    # The forger claims again once the workers run (a claim read later is no better).
    await _produce(cluster.bootstrap, topics.members, [(0, b"forger", orjson.dumps(claim), None)])

    names = [f"real:{i}" for i in range(12)]
    config = ClientConfig(cluster.bootstrap, f"{a.url},{b.url}", topics)
    async with ContextClient(config) as client:
        receipts = {name: await client.put(name, {"name": name}) for name in names}
        for name in names:
            # A receipt only orders reads of its own partition: wait on each name's own.
            ctx = await client.get(name, min_offset=receipts[name], timeout=30)
            assert ctx.doc == {"name": name}, ctx
    # Every worker answers for every context (forwarding to the owner, never the forger).
    for worker in (a, b):
        deadline = time.monotonic() + 30
        while True:
            table = await asyncio.to_thread(_get_json, worker.url + "/v1/members")
            assert fake_url not in json.dumps(table), table
            if len(table["owners"]) == PARTITIONS:
                break
            assert time.monotonic() < deadline, table
            await asyncio.sleep(0.1)
        assert set(table["owners"].values()) == {a.url, b.url}, table
        for name in names:
            body = await asyncio.to_thread(_get_json, f"{worker.url}/v1/contexts/{name}")
            assert body["doc"] == {"name": name}, body
    assert asked == [], f"requests reached the forger: {asked}"
