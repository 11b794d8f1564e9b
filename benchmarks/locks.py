"""Lock acquire and release latency against a real redis-server (``streams.locks``).

``--rounds`` times (default 2,000): acquire a free lock (one Lua call: the lock and its
fencing token), release it (one Lua call); then the same with ``--contenders`` tasks taking
turns on one name (acquire waits while another holds it, so that latency includes the wait).
Uses ``LUKHAS_REDIS_URL`` when set, else a redis-server of its own on a free port (the
``redis-server`` binary on PATH), stopped on exit. The seed claims 5 to 10 ms per acquisition.
Figures to stdout and ``benchmarks/results/locks.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator

from _support import free_port, percentile, print_rows, progress, scratch_dir, write_result

from lukhas_context.streams.exceptions import LockUnavailableError
from lukhas_context.streams.locks import LockManager


@contextlib.contextmanager
def redis_url() -> Iterator[str]:
    url = os.environ.get("LUKHAS_REDIS_URL")
    if url:
        yield url
        return
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("no redis-server on PATH and no LUKHAS_REDIS_URL")
    port = free_port()
    with scratch_dir("lukhas-bench-redis-") as data:
        proc = subprocess.Popen(
            [binary, "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
             "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        try:
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            proc.terminate()
            proc.wait(timeout=30)


async def ready(manager: LockManager) -> None:
    for _ in range(100):  # bounded: 10 s
        try:
            async with manager.lock("bench:ready", ttl=1):
                return
        except LockUnavailableError:
            await asyncio.sleep(0.1)
    sys.exit("redis-server did not answer within 10 s")


async def run(url: str, rounds: int, contenders: int) -> dict[str, object]:
    manager = LockManager(url, "bench")
    try:
        await ready(manager)
        acquire, release = [], []
        for i in range(rounds):
            lock = manager.lock(f"bench:{i % 64}", ttl=10)
            t0 = time.perf_counter()
            await lock.acquire()
            t1 = time.perf_counter()
            await lock.release()
            t2 = time.perf_counter()
            acquire.append((t1 - t0) * 1000)
            release.append((t2 - t1) * 1000)
        waits: list[float] = []

        async def contender(n: int) -> None:
            for _ in range(n):
                lock = manager.lock("bench:contended", ttl=10, timeout=60)
                t0 = time.perf_counter()
                async with lock:
                    waits.append((time.perf_counter() - t0) * 1000)

        started = time.perf_counter()
        per = max(1, rounds // (contenders * 4))
        await asyncio.gather(*(contender(per) for _ in range(contenders)))
        contended_s = time.perf_counter() - started
    finally:
        await manager.close()
    acquire.sort()
    release.sort()
    waits.sort()
    return {
        "rounds": rounds,
        "acquire_ms": {"p50": percentile(acquire, 0.5), "p99": percentile(acquire, 0.99)},
        "release_ms": {"p50": percentile(release, 0.5), "p99": percentile(release, 0.99)},
        "contenders": contenders,
        "contended_acquisitions": len(waits),
        "contended_per_s": len(waits) / contended_s,
        "contended_wait_ms": {"p50": percentile(waits, 0.5), "p99": percentile(waits, 0.99)},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=2_000)
    parser.add_argument("--contenders", type=int, default=8)
    args = parser.parse_args()
    say = progress("locks")
    with redis_url() as url:
        say(f"redis at {url}")
        result = asyncio.run(run(url, args.rounds, args.contenders))
    a, r, w = result["acquire_ms"], result["release_ms"], result["contended_wait_ms"]
    print_rows(
        [
            ("acquire (free lock)", f"p50 {a['p50']:.2f} ms  p99 {a['p99']:.2f} ms"),  # type: ignore[index]
            ("release", f"p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms"),  # type: ignore[index]
            (f"{args.contenders} contenders, one name",
             f"{result['contended_per_s']:,.0f} acquisitions/s; wait p50 {w['p50']:.1f} ms "  # type: ignore[index]
             f"p99 {w['p99']:.1f} ms"),  # type: ignore[index]
        ],
        32,
    )  # fmt: skip
    write_result("locks", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
