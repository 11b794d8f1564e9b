"""Fencing tokens end to end, on the real redis-server, broker and worker: the test of
Kleppmann's argument (a holder paused past its lock's TTL writes with its old token and is
fenced; nothing is lost), tokens that stay above every one used after Redis loses its data, and
the CLI's ``--fence``."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

from lukhas_context.schemas.event import Fence
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import LockUnavailableError, ValidationError
from lukhas_context.streams.locks import LockManager

from .conftest import free_port, serving_all

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: Holder A: takes the lock, says its token, and keeps the fence it will write with (as a
#: process that read its token before a long pause would). Then it waits for a line on stdin
#: (sent once it is resumed) and writes with that fence, printing the outcome.
HOLDER = textwrap.dedent("""
    import json, sys
    from lukhas_context.streams.client import ClientConfig, SyncContextClient
    from lukhas_context.streams.topics import Topics

    bootstrap, api, prefix, redis_url = sys.argv[1:5]
    config = ClientConfig(bootstrap, api, Topics(prefix), redis_url=redis_url)
    with SyncContextClient(config) as client:
        lock = client.lock("doc:lock", ttl=1.0)
        lock.acquire()
        fence = lock.fence
        print(json.dumps({"token": fence.token}), flush=True)
        sys.stdin.readline()  # paused (SIGSTOP) before this line comes, resumed after
        receipts = [  # every write it makes after the takeover, of every kind
            client.put("doc", {"by": "A", "token": fence.token}, fence=fence),
            client.patch("doc", {"by": "A again"}, merge=True, fence=fence),
            client.touch("doc", 60, fence=fence),
            client.delete("doc", fence=fence),
        ]
        outcomes = [client.outcome(r, 30) for r in receipts]
        print(json.dumps([{"status": o.status, "reason": o.reason} for o in outcomes]),
              flush=True)
""")


async def test_a_holder_paused_past_its_ttl_is_fenced_and_no_update_is_lost(
    start_worker: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    worker = await start_worker()
    await serving_all(worker)
    config = ClientConfig(cluster.bootstrap, worker.url, topics, redis_url=cluster.redis_url)
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    a = subprocess.Popen(  # noqa: ASYNC220 (its pipes are read in threads)
        [sys.executable, str(script), cluster.bootstrap, worker.url, topics.prefix,
         cluster.redis_url],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert a.stdout is not None and a.stdin is not None
        line = await asyncio.wait_for(asyncio.to_thread(a.stdout.readline), 120)
        assert line, a.stderr.read() if a.stderr else ""
        token_a = json.loads(line)["token"]
        os.kill(a.pid, signal.SIGSTOP)  # A stops: no renewal, no write
        await asyncio.sleep(2.5)  # past the 1 s TTL: the lock is free, A does not know
        async with ContextClient(config) as client:
            async with client.lock("doc:lock", ttl=5, timeout=10) as b:
                assert b.token > token_a
                receipt = await client.put("doc", {"by": "B", "token": b.token}, fence=b)
                assert (await receipt.outcome(30)).status == "applied"
            os.kill(a.pid, signal.SIGCONT)
            a.stdin.write("go\n")
            a.stdin.flush()
            line = await asyncio.wait_for(asyncio.to_thread(a.stdout.readline), 120)
            assert line, a.stderr.read() if a.stderr else ""
            verdicts = json.loads(line)
            assert [v["status"] for v in verdicts] == ["fenced"] * 4, verdicts
            said = f"token {token_a} of lock 'doc:lock' is below {b.token}"
            assert all(said in v["reason"] for v in verdicts), verdicts
            # B's update is there; A's stale write changed nothing.
            current = await client.get("doc")
            assert current is not None and current.doc == {"by": "B", "token": b.token}
            assert current.version == 1
            history = await client.history("doc")
            assert [e.status for e in history.events] == ["applied"] + ["fenced"] * 4
        assert a.wait(timeout=60) == 0
    finally:
        if a.poll() is None:
            os.kill(a.pid, signal.SIGCONT)
            a.kill()
            a.wait()


async def test_after_redis_loses_its_data_a_new_holder_still_writes_and_the_old_is_fenced(
    start_worker: Any, cluster: Any, topics: Any, tmp_path: Path
) -> None:
    """The counter is gone with the data; the token floor (Redis's clock) keeps the next
    token above every one the processor has folded, so the new holder is not fenced and the
    old holder still is."""
    worker = await start_worker()
    await serving_all(worker)
    port = free_port()
    data = tmp_path / "redis"
    url = f"redis://127.0.0.1:{port}/0"

    def start() -> subprocess.Popen[bytes]:
        data.mkdir(exist_ok=True)
        return subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
             "127.0.0.1", "--dir", str(data), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip

    async def write_under_lock(client: ContextClient, who: str) -> tuple[int, str]:
        manager = LockManager(url, "restarted")
        try:
            for _ in range(100):  # until the private server answers (at most 10 s)
                try:
                    async with manager.lock("acct", ttl=5) as lock:
                        receipt = await client.put("acct", {"by": who}, fence=lock)
                        return lock.check(), (await receipt.outcome(30)).status
                except LockUnavailableError:
                    await asyncio.sleep(0.1)
            raise AssertionError("the private redis-server never answered")
        finally:
            await manager.close()

    async with ContextClient(ClientConfig(cluster.bootstrap, worker.url, topics)) as client:
        proc = start()
        try:
            first, status = await write_under_lock(client, "first")
            assert status == "applied"
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(data)  # the counter, and everything else it knew, is gone
        proc = start()
        try:
            second, status = await write_under_lock(client, "second")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
        assert second > first and status == "applied"
        stale = await client.put("acct", {"by": "first, late"}, fence=Fence("acct", first))
        outcome = await stale.outcome(30)
        assert outcome.status == "fenced"
        current = await client.get("acct")
        assert current is not None and current.doc == {"by": "second"}


async def test_bad_fences_are_refused_before_anything_is_sent(cluster: Any, topics: Any) -> None:
    async with ContextClient(ClientConfig(cluster.bootstrap, None, topics)) as client:
        for fence in ("", "L", "L:-1", ":1", "L:x", Fence("", 1), Fence("L", -1),
                      Fence("x" * 201, 1), Fence("L", 2**63), 7):  # fmt: skip
            with pytest.raises(ValidationError):
                await client.put("c", {}, fence=fence)
        assert client.writer._producer is None  # nothing was even connected


async def test_the_cli_writes_with_a_fence_and_exits_9_when_it_is_stale(
    cluster: Any, topics: Any, start_worker: Any, tmp_path: Path
) -> None:
    worker = await start_worker()
    await serving_all(worker)
    env = {**os.environ, "LUKHAS_DATA_DIR": str(tmp_path / "none"),
           "LUKHAS_REDIS_URL": cluster.redis_url, "LUKHAS_BOOTSTRAP": cluster.bootstrap,
           "LUKHAS_API_URL": worker.url, "LUKHAS_TOPIC_PREFIX": topics.prefix}  # fmt: skip
    base = [sys.executable, "-m", "lukhas_context.ops"]

    def run(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*base, *argv], env=env, capture_output=True, text=True, timeout=120)

    # Under `lukhas lock`, the command gets the fence in $LUKHAS_FENCE.
    inner = (
        f"{sys.executable} -m lukhas_context.ops put cli:doc '{{\"n\": 1}}' "
        '--fence "$LUKHAS_FENCE" --json'
    )
    held = await asyncio.to_thread(run, "lock", "cli:lock", "--ttl", "5", "--", "sh", "-c", inner)
    assert held.returncode == 0, held.stderr
    assert json.loads(held.stdout)["outcome"]["status"] == "applied"
    # A stale token: waited for (a fence is a condition), exit 9, and the reason said.
    stale = await asyncio.to_thread(run, "put", "cli:doc", '{"n": 2}', "--fence", "cli:lock:0")
    assert stale.returncode == 9, stale.stdout + stale.stderr
    assert "fenced" in stale.stdout and "is below" in stale.stdout
    bad = await asyncio.to_thread(run, "put", "cli:doc", "{}", "--fence", "no-token")
    assert bad.returncode == 2 and "LOCK:TOKEN" in bad.stderr, bad.stderr
