"""Standby replicas (issue 14) on the real broker, with workers in child processes: each
worker keeps a warm copy of the partitions the other folds, following the change topic; a
stale read may be answered from the copy, with its position; when a worker is killed (-9),
the survivor's caught-up copies become its stores (opened from ``standby``: only the WAL
after them is folded), nothing acknowledged is lost or applied twice, and the digests equal
a replay."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import ValidationError
from lukhas_context.streams.topics import partition_for

from .conftest import PARTITIONS, WorkerProcess, assert_equal_to_replay, free_port

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]


def _worker(cluster: Any, topics: Any, tmp_path: Path, name: str) -> WorkerProcess:
    port = free_port()
    argv = [
        sys.executable, "-m", "lukhas_context.ops", "worker",
        "--bootstrap", cluster.bootstrap, "--state-dir", str(tmp_path / name),
        "--topic-prefix", topics.prefix, "--group", f"{topics.prefix}-group",
        "--api-port", str(port), "--standby-replicas", "1", "--session-timeout", "6",
        "--expiry-interval", "0.5",
    ]  # fmt: skip
    return WorkerProcess(argv, tmp_path / f"{name}.log", f"http://127.0.0.1:{port}")


async def _start(*workers: WorkerProcess) -> None:
    """Starts the workers one after the other, each once it folds."""
    for w in workers:
        w.start()
        await asyncio.to_thread(w.wait_healthy)


def _get(url: str) -> tuple[int, dict[str, str], Any]:
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return r.status, dict(r.headers), json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), json.loads(e.read())


async def _until(what: str, check: Any, timeout: float = 90) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        found = await asyncio.to_thread(check)
        if found:
            return found
        assert time.monotonic() < deadline, f"{what}: not within {timeout} s"
        await asyncio.sleep(0.25)


def _served(url: str) -> dict[str, Any]:
    return _get(f"{url}/v1/partitions")[2]


def _caught_up(urls: list[str]) -> bool:
    """Every partition has a copy, none behind, each with its owner's digest."""
    served = [_served(u) for u in urls]
    owners = {s["partition"]: s["digest"] for x in served for s in x["partitions"]}
    copies = [c for x in served for c in x["standbys"]]
    return len(copies) == PARTITIONS and all(
        c.get("lag_records") == 0 and c.get("digest") == owners.get(c["partition"]) for c in copies
    )


async def test_standbys_follow_serve_stale_reads_and_take_over_after_kill_9(
    cluster: Any, topics: Any, tmp_path: Path
) -> None:
    a = _worker(cluster, topics, tmp_path, "a")
    b = _worker(cluster, topics, tmp_path, "b")
    try:
        await _start(a, b)

        def split() -> Any:
            sa, sb = _served(a.url), _served(b.url)
            mine_a = {s["partition"] for s in sa["partitions"]}
            mine_b = {s["partition"] for s in sb["partitions"]}
            copies_a = {c["partition"] for c in sa["standbys"] if "error" not in c}
            copies_b = {c["partition"] for c in sb["standbys"] if "error" not in c}
            everything = set(range(PARTITIONS))
            if (mine_a and mine_b and mine_a | mine_b == everything and not mine_a & mine_b
                    and copies_a == mine_b and copies_b == mine_a
                    and not sa["restoring"] and not sb["restoring"]):  # fmt: skip
                return mine_a, mine_b
            return None

        # Each worker folds some partitions and keeps a copy of each of the other's.
        _, mine_b = await _until("partitions split, with standbys", split)

        config = ClientConfig(cluster.bootstrap, f"{a.url},{b.url}", topics)
        names = [f"sb-{i}" for i in range(60)]
        acked: dict[str, int] = {}
        async with ContextClient(config) as client:
            for round_ in range(3):
                receipts = {n: await client.put(n, {"round": round_, "n": n}) for n in names}
                for n in names:
                    acked[n] = acked.get(n, 0) + 1
            for n in names:
                await client.get(n, min_offset=receipts[n], timeout=30)
            ttl = await client.put("sb-expiring", {"short": True}, ttl=1)
            await client.get("sb-expiring", min_offset=ttl, timeout=30)

        # The copies catch up: lag 0, and the owner's digest (the same records, fences and
        # transactions).
        await _until("standbys caught up", lambda: _caught_up([a.url, b.url]))

        # A stale read answered by the copy: A holds a copy of B's partitions.
        count = PARTITIONS
        on_b = [n for n in names if partition_for(n.encode(), count) in mine_b]
        assert on_b
        for n in on_b[:5]:
            status, headers, body = await asyncio.to_thread(
                _get, f"{a.url}/v1/contexts/{n}?allow_stale=1"
            )
            assert status == 200 and body["doc"] == {"round": 2, "n": n}, body
            assert body["standby_position"] == headers["X-Lukhas-Standby-Position"]
            assert body["version"] == 3
            p, offset = headers["X-Lukhas-Standby-Position"].split(":")
            assert int(p) == partition_for(n.encode(), count) and int(offset) > 0
            assert headers["X-Lukhas-Standby-Lag"] == "0"
            status, headers, body = await asyncio.to_thread(
                _get, f"{a.url}/v1/contexts/{n}?max_lag=0"
            )
            assert status == 200 and "standby_position" in body
            # Without allow_stale, the owner answers (forwarded), not the copy.
            status, headers, body = await asyncio.to_thread(_get, f"{a.url}/v1/contexts/{n}")
            assert status == 200 and "standby_position" not in body
        for bad in ("allow_stale=yes", "max_lag=-1", "allow_stale=0&max_lag=3",
                    "allow_stale=1&min_offset=0:0"):  # fmt: skip
            status, _, body = await asyncio.to_thread(_get, f"{a.url}/v1/contexts/{on_b[0]}?{bad}")
            assert status == 400, (bad, body)
        # The client sends a stale read to a worker with a copy (from the members table).
        async with ContextClient(config) as client:
            for n in on_b[:5]:
                ctx = await client.get(n, allow_stale=True)
                assert ctx.doc == {"round": 2, "n": n} and ctx.standby_position is not None
                assert ctx.standby_position.startswith(f"{partition_for(n.encode(), count)}:")
                assert (await client.get(n, max_lag=0)).standby_position is not None
                assert (await client.get(n)).standby_position is None  # the owner's answer
            with pytest.raises(ValidationError, match="cannot wait for a receipt"):
                await client.get(on_b[0], min_offset=receipts[on_b[0]], allow_stale=True)
            with pytest.raises(ValidationError, match="max_lag"):
                await client.get(on_b[0], max_lag=-1)
        metrics = await asyncio.to_thread(
            lambda: urllib.request.urlopen(f"{a.url}/metrics", timeout=10).read().decode()
        )
        assert "lukhas_standby_lag_records{partition=" in metrics

        # kill -9 B: A takes B's partitions over from its copies.
        b.kill9()

        def took_over() -> Any:
            s = _served(a.url)
            if {x["partition"] for x in s["partitions"]} == set(range(PARTITIONS)) and not s[
                "restoring"
            ]:
                return s
            return None

        served = await _until("A serves every partition", took_over, timeout=120)
        for s in served["partitions"]:
            if s["partition"] in mine_b:
                assert s["opened_from"] == "standby", s
        assert served["standbys"] == []  # no other worker: nothing to stand by for

        # Nothing lost, nothing twice; writes go on.
        async with ContextClient(ClientConfig(cluster.bootstrap, a.url, topics)) as client:
            for n in names:
                receipt = await client.put(n, {"round": 3, "n": n})
                ctx = await client.get(n, min_offset=receipt, timeout=30)
                assert (ctx.version, ctx.doc["round"]) == (acked[n] + 1, 3), n

        served = _served(a.url)["partitions"]
        await assert_equal_to_replay(cluster, topics, tmp_path / "replay", served)
        assert a.terminate() == 0
    finally:
        for w in (a, b):
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()


async def test_a_copy_that_fails_verification_is_rebuilt_never_promoted(
    cluster: Any, topics: Any, tmp_path: Path
) -> None:
    """A's copies of B's partitions are damaged while A is down (their kept digest no longer
    matches their records). When A comes back, each is quarantined on opening, whether the
    group gives it to A to fold or to keep a copy of, and built again from the change topic:
    the copies end with the owner's digests, and the folded partitions equal a replay."""
    from rocksdict import Options, Rdict

    from lukhas_context.state.store import FAMILIES, SUMMARY_KEY

    a = _worker(cluster, topics, tmp_path, "a")
    b = _worker(cluster, topics, tmp_path, "b")
    try:
        await _start(a, b)
        config = ClientConfig(cluster.bootstrap, f"{a.url},{b.url}", topics)
        names = [f"vf-{i}" for i in range(40)]
        async with ContextClient(config) as client:
            receipts = {n: await client.put(n, {"n": n}) for n in names}
            for n in names:
                await client.get(n, min_offset=receipts[n], timeout=30)
        await _until("standbys caught up", lambda: _caught_up([a.url, b.url]))
        copies = [c["partition"] for c in _served(a.url)["standbys"]]
        assert copies
        assert a.terminate() == 0
        for p in copies:
            path = tmp_path / "a" / f"partition-{p}"
            families = {name: Options(raw_mode=True) for name in FAMILIES}
            db = Rdict(str(path), Options(raw_mode=True), column_families=families)
            try:
                kept = bytearray(db[SUMMARY_KEY])
                kept[0] ^= 0xFF  # the digest no longer matches the records
                db[SUMMARY_KEY] = bytes(kept)
            finally:
                db.close()
        a.start()
        await asyncio.to_thread(a.wait_healthy)
        await _until("standbys caught up again", lambda: _caught_up([a.url, b.url]), 120)
        quarantined = sorted((tmp_path / "a" / "quarantine").iterdir())
        assert len(quarantined) == len(copies), quarantined
        for s in _served(a.url)["partitions"]:
            assert s["opened_from"] != "standby", s  # a damaged copy is never promoted
        served = [s for url in (a.url, b.url) for s in _served(url)["partitions"]]
        await assert_equal_to_replay(cluster, topics, tmp_path / "replay", served)
    finally:
        for w in (a, b):
            if w.proc is not None and w.proc.poll() is None:
                w.proc.kill()
                w.proc.wait()
