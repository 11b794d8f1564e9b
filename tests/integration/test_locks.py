"""Distributed locks on the real redis-server: fencing tokens that only grow per name, one
holder at a time, renewal while held, expiry without it, release only by the holder, typed
errors for bad input and for a Redis that is down."""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

import pytest

from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import (
    LockLostError,
    LockTimeoutError,
    LockUnavailableError,
    ValidationError,
)
from lukhas_context.streams.locks import _ACQUIRE, LockManager

pytestmark = pytest.mark.integration


@pytest.fixture
async def client(cluster: Any, topics: Any) -> Any:
    assert cluster.redis_url, "the session cluster starts a redis-server"
    async with ContextClient(ClientConfig(cluster.bootstrap, None, topics,
                                          redis_url=cluster.redis_url)) as c:  # fmt: skip
        yield c


async def test_one_holder_at_a_time_and_tokens_only_grow(client: Any) -> None:
    tokens = []
    async with client.lock("job:1", ttl=5) as first:
        tokens.append(first.token)
        with pytest.raises(LockTimeoutError):
            await client.lock("job:1", ttl=5, timeout=0.3).acquire()
        async with client.lock("job:2", ttl=5) as other:  # another name: its own lock
            assert other.held
    async with client.lock("job:1", ttl=5) as second:
        tokens.append(second.token)
    assert tokens[1] > tokens[0] and not second.held


async def test_contenders_take_turns_each_with_a_larger_token(client: Any) -> None:
    order: list[int] = []
    inside = 0

    async def worker() -> None:
        nonlocal inside
        async with client.lock("shared", ttl=5, timeout=30) as lock:
            inside += 1
            assert inside == 1  # never two holders at once
            order.append(lock.check())
            await asyncio.sleep(0.02)
            inside -= 1

    await asyncio.gather(*(worker() for _ in range(8)))
    assert order == sorted(order) and len(set(order)) == 8


async def test_renewal_keeps_it_and_expiry_without_renewal_loses_it(client: Any) -> None:
    async with client.lock("renewed", ttl=0.3) as lock:
        await asyncio.sleep(1.0)  # three TTLs: renewed meanwhile
        assert lock.check() == lock.token
        with pytest.raises(LockTimeoutError):
            await client.lock("renewed", ttl=0.3, timeout=0.2).acquire()
    paused = client.lock("paused", ttl=0.3)
    await paused.acquire()
    assert paused._renewing is not None
    paused._renewing.cancel()  # as a holder that stops: no renewal
    await asyncio.sleep(0.5)
    async with client.lock("paused", ttl=5, timeout=1) as taker:  # expired: free again
        assert taker.token > paused.token
        assert not await paused.release()  # the old holder cannot release the new one's
        assert taker.check() == taker.token
    with pytest.raises(LockLostError):
        paused.check()


async def test_a_renewal_that_finds_the_lock_gone_marks_it_lost(client: Any) -> None:
    lock = await client.lock("stolen", ttl=0.3).__aenter__()
    redis = client._locks._client()
    await redis.delete(client._locks.keys("stolen")[0])  # expired or removed behind its back
    await asyncio.sleep(0.4)
    with pytest.raises(LockLostError, match="no longer held"):
        lock.check()
    await lock.__aexit__(None, None, None)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (("", 5), "non-empty"),
        (("x" * 201, 5), "at most 200"),
        (("a\nb", 5), "control character"),
        (("ok", 0), "ttl"),
        (("ok", -1), "ttl"),
        (("ok", math.nan), "ttl"),
        (("ok", "5"), "ttl"),
        (("ok", 10**9), "ttl"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_sent(
    client: Any, args: tuple[Any, Any], said: str
) -> None:
    with pytest.raises(ValidationError, match=said):
        client.lock(*args)


async def test_redis_down_fails_at_once_and_writes_without_locks_go_on(
    cluster: Any, topics: Any
) -> None:
    config = ClientConfig(cluster.bootstrap, None, topics, redis_url="redis://127.0.0.1:1/0")
    async with ContextClient(config) as client:
        # Not a wait of 300 s ending in LockTimeoutError: the first try fails, typed.
        with pytest.raises(LockUnavailableError, match=r"127\.0\.0\.1:1"):
            await client.lock("any", ttl=5, timeout=300).acquire()
        receipt = await client.put("no:lock", {"ok": True})  # Kafka only
        assert receipt.offset >= 0
    async with ContextClient(ClientConfig(cluster.bootstrap, None, topics)) as client:
        with pytest.raises(ValidationError, match="redis_url"):
            client.lock("any", ttl=5)


async def test_the_token_is_issued_by_the_lock_script_itself(cluster: Any) -> None:
    """A holder's value names its token: what it renews and releases is exactly its own."""
    manager = LockManager(cluster.redis_url, "scripttest")
    try:
        keys = manager.keys("n")
        first = await manager.call(_ACQUIRE, keys, ["me", 5000])
        assert first is not None and await manager.call(_ACQUIRE, keys, ["you", 5000]) is None
        redis = manager._client()
        assert (await redis.get(keys[0])).decode() == f"me:{first}"
        assert int(await redis.get(keys[1])) == first
    finally:
        await manager._client().delete(*manager.keys("n"))
        await manager.close()


def test_lukhas_lock_runs_commands_one_at_a_time_with_their_tokens(
    cluster: Any, tmp_path: Any
) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "LUKHAS_REDIS_URL": cluster.redis_url,
           "LUKHAS_DATA_DIR": str(tmp_path / "none"),
           "LUKHAS_TOPIC_PREFIX": "locktest"}  # fmt: skip
    log = tmp_path / "log"
    script = f'echo "start $LUKHAS_FENCE" >> {log}; sleep 0.3; echo "end $LUKHAS_FENCE" >> {log}'
    argv = [sys.executable, "-m", "lukhas_context.ops", "lock", "cli:job", "--ttl", "5",
            "--timeout", "60", "--", "sh", "-c", script]  # fmt: skip
    procs = [subprocess.Popen(argv, env=env, stderr=subprocess.PIPE) for _ in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    lines = log.read_text().split()
    # start/end pairs never interleave, and the tokens grow run after run
    events = list(zip(lines[0::2], lines[1::2], strict=True))
    assert [kind for kind, _ in events] == ["start", "end"] * 3
    fences = [fence for _, fence in events]
    assert all(fences[i] == fences[i + 1] for i in range(0, 6, 2))
    tokens = [int(f.rsplit(":", 1)[1]) for f in fences[0::2]]
    assert tokens == sorted(tokens) and len(set(tokens)) == 3
    done = subprocess.run([*argv[:argv.index("--") + 1], "sh", "-c", "exit 5"], env=env,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert done.returncode == 5  # the command's own code
    bad = subprocess.run([*argv[:5], "--ttl", "-1", "--", "true"], env=env, capture_output=True,
                         text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "--ttl" in bad.stderr


def test_the_sync_client_locks_too(cluster: Any, topics: Any) -> None:
    from lukhas_context.streams.client import SyncContextClient

    config = ClientConfig(cluster.bootstrap, None, topics, redis_url=cluster.redis_url)
    with SyncContextClient(config) as client:
        with client.lock("sync:1", ttl=0.3) as lock:
            first = lock.check()
            time.sleep(0.8)  # renewed by the client's thread meanwhile
            assert lock.check() == first
            with pytest.raises(LockTimeoutError):
                client.lock("sync:1", ttl=1, timeout=0.2).acquire()
        assert not lock.held
        with client.lock("sync:1", ttl=1) as again:
            assert again.check() > first


async def test_a_redis_restarted_without_its_data_still_issues_larger_tokens(
    tmp_path: Any,
) -> None:
    """Tokens never go below Redis's clock: losing the counter cannot send them back."""
    import shutil
    import subprocess

    from .conftest import free_port

    port = free_port()
    data = tmp_path / "redis"

    def start() -> subprocess.Popen[bytes]:
        data.mkdir(exist_ok=True)
        proc = subprocess.Popen(
            [shutil.which("redis-server") or "redis-server", "--port", str(port), "--bind",
             "127.0.0.1", "--dir", str(data), "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        return proc

    async def token() -> int:
        manager = LockManager(f"redis://127.0.0.1:{port}/0", "restart")
        try:
            for _ in range(100):  # until the server answers (bounded: 100 tries, 10 s)
                try:
                    async with manager.lock("res", ttl=5) as lock:
                        assert lock.token is not None
                        return lock.token
                except LockUnavailableError:
                    await asyncio.sleep(0.1)
            raise AssertionError("the private redis-server never answered")
        finally:
            await manager.close()

    proc = start()
    try:
        before = [await token() for _ in range(3)]
        assert before == sorted(before) and len(set(before)) == 3
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    shutil.rmtree(data)  # everything it knew is gone
    proc = start()
    try:
        after = await token()
        assert after > before[-1]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def test_closing_the_client_releases_the_locks_it_holds(cluster: Any, topics: Any) -> None:
    config = ClientConfig(cluster.bootstrap, None, topics, redis_url=cluster.redis_url)
    async with ContextClient(config) as client:
        held = await client.lock("left:open", ttl=30).__aenter__()
        assert held.held
    assert not held.held  # released by close(): its renewal stopped, the lock is free again
    async with ContextClient(config) as other, other.lock("left:open", ttl=5, timeout=1) as again:
        assert again.token > held.token
    with pytest.raises(ValidationError, match="Redis URL"):
        LockManager("localhost:6379")
