"""faust-streaming on real parts: a real faust worker (``examples/faust_changes.py`` in a child
process) follows the change topic while a LUKHAS processor folds puts, patches, touches and
deletes; the agent must get every change exactly as published, tombstones included."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.streams.client import ContextClient
from lukhas_context.streams.topics import Topics, partition_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MakeClient = Callable[[str | None], ContextClient]
ReadTopic = Callable[..., Awaitable[list[Any]]]
TOMBSTONE_KINDS = {b"deleted": "delete", b"expired": "expire"}


def _start_faust(
    cluster: Any, topics: Topics, tmp_path: Path
) -> tuple[subprocess.Popen[bytes], Path]:
    env = dict(
        os.environ,
        LUKHAS_BOOTSTRAP=cluster.bootstrap,
        LUKHAS_TOPIC_PREFIX=topics.prefix,
        LUKHAS_PARTITIONS="3",
        LUKHAS_FAUST_APP_ID=f"{topics.prefix}-faust",
        LUKHAS_FAUST_OUT=str(tmp_path / "faust-changes.jsonl"),
    )
    argv = [
        sys.executable, "-m", "faust", "-A", "examples.faust_changes",
        "--datadir", str(tmp_path / "faust-data"),
        "worker", "-l", "info", "--without-web",
    ]  # fmt: skip
    log = tmp_path / "faust-worker.log"
    with log.open("wb") as sink:
        proc = subprocess.Popen(
            argv, cwd=ROOT, env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    return proc, log


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # faust shuts down cleanly on TERM
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _lines(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [orjson.loads(line) for line in path.read_bytes().splitlines(keepends=True)
            if line.endswith(b"\n")]  # fmt: skip


def _tail_all(log: Path) -> str:
    return log.read_text(errors="replace")


def _tail(log: Path) -> str:
    return _tail_all(log)[-4000:]


async def _wait_for_lines(
    path: Path,
    last: set[tuple[str, int]],
    proc: subprocess.Popen[bytes],
    log: Path,
    timeout_s: float,
) -> list[dict[str, Any]]:
    """The agent's lines once it has written the last change of every partition that has
    changes (``last``: their context id and version). The agent handles each partition in
    order, so a repeat of an earlier change (a bug under test) would be written before them:
    nothing more can arrive for those partitions, and no fixed wait is needed."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        lines = _lines(path)
        if last <= {(line["context_id"], line["version"]) for line in lines}:
            return lines
        if proc.poll() is not None:
            raise AssertionError(f"faust worker exited {proc.returncode}:\n{_tail(log)}")
        await asyncio.sleep(0.25)
    raise AssertionError(
        f"faust agent wrote {len(_lines(path))} changes, not {sorted(last)} in {timeout_s} s:\n"
        + _tail(log)
    )


def _as_published(record: Any, codec: ChangeCodec) -> dict[str, Any]:
    """A change-topic record in the JSON shape the example writes, from the raw record."""
    if record.value is None:
        h = dict(record.headers)
        expires = h.get("expires_at_ms")
        fields = {
            "context_id": record.key.decode(), "version": int(h["version"]),
            "kind": TOMBSTONE_KINDS[h["kind"]], "doc": None, "checksum": h["checksum"].hex(),
            "expires_at_ms": None if expires is None else int(expires),
            "wal_offset": int(h["wal_offset"]), "event_id": h["event_id"].hex(),
            "log_time_ms": int(h["log_time_ms"]),
        }  # fmt: skip
    else:
        c = codec.decode(record.value)
        assert c.context_id.encode() == record.key
        fields = {
            "context_id": c.context_id, "version": c.version, "kind": c.kind.name.lower(),
            "doc": orjson.loads(c.doc), "checksum": c.checksum.hex(),
            "expires_at_ms": c.expires_at_ms, "wal_offset": c.wal_offset,
            "event_id": c.event_id.hex(), "log_time_ms": c.log_time_ms,
        }  # fmt: skip
    return fields | {"partition": record.partition, "offset": record.offset}


async def test_faust_agent_gets_every_change_as_published(
    cluster: Any,
    topics: Topics,
    start_worker: Any,
    make_client: MakeClient,
    read_topic: ReadTopic,
    tmp_path: Path,
) -> None:
    worker = await start_worker()
    proc, log = _start_faust(cluster, topics, tmp_path)
    try:
        # context id -> [(version, kind, doc)] as the fold reports them, in order
        expected: dict[str, list[tuple[int, str, Any]]] = {}
        docs: dict[str, Any] = {}
        ids = ["alpha", "beta", "gamma", "delta", "épsilon/ü", "zeta:1"]
        async with make_client(worker.url) as client:

            async def do(context_id: str, kind: str, call: Awaitable[Any], doc: Any) -> None:
                outcome = await (await call).outcome(timeout=30)
                assert outcome.applied, (context_id, kind, outcome)
                docs[context_id] = doc
                expected.setdefault(context_id, []).append((outcome.version, kind, doc))

            for i, cid in enumerate(ids):  # interleaved, so every partition sees several ids
                await do(
                    cid, "put", client.put(cid, {"n": i, "tags": ["a"]}), {"n": i, "tags": ["a"]}
                )
            for i, cid in enumerate(ids):
                doc = {"n": i + 10, "tags": ["a"]}
                await do(cid, "patch", client.patch(cid, {"n": i + 10}, merge=True), doc)
            for cid in ids[::2]:
                await do(cid, "delete", client.delete(cid), None)
            for cid in ids[1::2]:
                ops = [{"op": "add", "path": "/tags/-", "value": "b"}]
                doc = dict(docs[cid], tags=["a", "b"])
                await do(cid, "patch", client.patch(cid, ops), doc)
            await do("beta", "touch", client.touch("beta", 3600), docs["beta"])
            await do("alpha", "put", client.put("alpha", {"again": True}), {"again": True})
            await do("beta", "delete", client.delete("beta"), None)
            ghost = await (await client.delete("ghost")).outcome(timeout=30)
            assert ghost.status == "rejected"  # no change for it
            # A last change in every partition: once the agent wrote these, it has written
            # everything before them, repeats included.
            last: set[tuple[str, int]] = set()
            for p in range(3):
                end = next(
                    f"end:{n}" for n in range(1000) if partition_for(f"end:{n}".encode(), 3) == p
                )
                await do(end, "put", client.put(end, {"end": p}), {"end": p})
                last.add((end, 1))

        total = sum(len(v) for v in expected.values())
        lines = await _wait_for_lines(tmp_path / "faust-changes.jsonl", last, proc, log, 180)
        records = await read_topic(topics.changes, lambda rs: len(rs) >= total, timeout=60)
    finally:
        _stop(proc)

    # Exactly what was published: every record once, every field, tombstones included.
    codec = ChangeCodec()
    published = sorted((_as_published(r, codec) for r in records),
                       key=lambda c: (c["partition"], c["offset"]))  # fmt: skip
    assert len(published) == total
    assert sorted(lines, key=lambda c: (c["partition"], c["offset"])) == published

    # Per context: the versions, kinds and documents the fold reported, in version order.
    seen: dict[str, list[tuple[int, str, Any]]] = {}
    for line in lines:  # file order = the order the agent handled them
        seen.setdefault(line["context_id"], []).append((line["version"], line["kind"], line["doc"]))
    assert seen == expected
    for cid, changes in seen.items():
        assert [v for v, _, _ in changes] == list(range(1, len(changes) + 1)), cid
    assert sum(kind == "delete" for c in seen.values() for _, kind, _ in c) == 4
    touch = next(line for line in lines if line["kind"] == "touch")
    assert touch["expires_at_ms"] is not None


async def test_faust_agent_skips_undecodable_records_loudly_and_goes_on(
    cluster: Any, topics: Topics, start_worker: Any, make_client: MakeClient, tmp_path: Path
) -> None:
    """A record that is not a change (bad bytes, a tombstone without its headers): faust acks
    it, raises ``ValueDecodeError`` in the agent, whose supervisor restarts it; the changes
    after it still arrive, in order."""
    worker = await start_worker()
    proc, log = _start_faust(cluster, topics, tmp_path)
    try:
        async with make_client(worker.url) as client:
            first = await client.put("a", {"v": 1})
            assert (await first.outcome(timeout=30)).applied
            producer = AIOKafkaProducer(bootstrap_servers=cluster.bootstrap)
            await producer.start()
            try:
                for value, headers in [
                    (b"\xc3\x01 not a change", []),
                    (None, [("kind", b"deleted")]),
                ]:
                    await producer.send_and_wait(
                        topics.changes, value, key=b"a", partition=first.partition, headers=headers
                    )
            finally:
                await producer.stop()
            for n in (2, 3):
                receipt = await client.put("a", {"v": n})
                assert (await receipt.outcome(timeout=30)).applied
        # Every record is in the one partition of "a": its version 3 is the last.
        lines = await _wait_for_lines(tmp_path / "faust-changes.jsonl", {("a", 3)}, proc, log, 180)
    finally:
        _stop(proc)
    assert [(c["context_id"], c["version"], c["doc"]) for c in lines] == [
        ("a", 1, {"v": 1}), ("a", 2, {"v": 2}), ("a", 3, {"v": 3}),
    ]  # fmt: skip
    text = _tail_all(log)
    assert text.count("ValueDecodeError") >= 2, text[-4000:]
