"""Failover time of the docker compose cluster: a worker container killed (``docker kill``,
SIGKILL) until the first successful read-your-write on a partition it served.

Needs the compose cluster (``make compose-up``). ``--rounds`` times (3), alternating the
worker killed: a context on one of the victim's partitions is written and read back; the victim
is killed; from that moment a put and a ``get(min_offset=receipt)`` (2 s wait) are tried every
50 ms until one succeeds, which is the failover time; then the victim is started again and the
cluster waited for until both workers serve. The group's session timeout (``--session-timeout``
of the workers in docker-compose.yml: 6 s) bounds it from below: the group moves a dead
member's partitions only after it. Every loop is bounded (``--timeout`` per wait).

Prints a row per round and the median and max; writes ``benchmarks/results/failover.json``.
``tests/integration/test_compose.py`` measures one failover on every test run and writes
``benchmarks/results/compose_failover.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import time
import urllib.request
from typing import Any

from _support import progress, write_result

from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics, partition_for

BOOTSTRAP = "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
APIS = {"worker-1": "http://127.0.0.1:28081", "worker-2": "http://127.0.0.1:28082"}
PROJECT = "lukhas"
SESSION_TIMEOUT_S = 6.0


def _owners() -> dict[int, str]:
    for url in APIS.values():
        try:
            with urllib.request.urlopen(f"{url}/v1/members", timeout=5) as answer:
                table = json.loads(answer.read())
            return {int(p): u for p, u in table["owners"].items()}
        except OSError:
            continue
    return {}


def _docker(*argv: str) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=True)
    return done.stdout.strip()


def _container(service: str) -> str:
    return _docker("docker-compose", "-p", PROJECT, "ps", "-q", service)


async def _until_both_serve(partitions: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        table = await asyncio.to_thread(_owners)
        if len(table) == partitions and set(table.values()) == set(APIS.values()):
            return
        if time.monotonic() >= deadline:
            raise SystemExit(f"the workers do not share the partitions after {timeout} s: {table}")
        await asyncio.sleep(0.5)


async def one_round(client: ContextClient, victim: str, partitions: int, timeout: float
                    ) -> dict[str, Any]:  # fmt: skip
    table = await asyncio.to_thread(_owners)
    moved = sorted(p for p, url in table.items() if url == APIS[victim])
    name = next(f"fo:{n}" for n in range(100_000)
                if partition_for(f"fo:{n}".encode(), partitions) == moved[0])  # fmt: skip
    await client.get(name, min_offset=await client.put(name, {"n": 0}), timeout=30)
    _docker("docker", "kill", _container(victim))
    killed = time.monotonic()
    attempts = 0
    while True:
        attempts += 1
        try:
            receipt = await client.put(name, {"n": attempts})
            await client.get(name, min_offset=receipt, timeout=2)
            break
        except Exception:  # the partition is moving: try again
            if time.monotonic() - killed > timeout:
                raise SystemExit(f"no failover within {timeout} s") from None
            await asyncio.sleep(0.05)
    failover_s = time.monotonic() - killed
    _docker("docker-compose", "-p", PROJECT, "start", victim)
    await _until_both_serve(partitions, timeout)
    return {"victim": victim, "partitions_moved": moved, "failover_s": round(failover_s, 3),
            "attempts": attempts}  # fmt: skip


async def main(args: argparse.Namespace) -> None:
    say = progress("failover")
    config = ClientConfig(BOOTSTRAP, ",".join(APIS.values()), Topics(), timeout_s=10)
    async with ContextClient(config) as client:
        await _until_both_serve(args.partitions, args.timeout)
        rounds = []
        for i in range(args.rounds):
            victim = "worker-1" if i % 2 == 0 else "worker-2"
            say(f"round {i + 1}: killing {victim}")
            row = await one_round(client, victim, args.partitions, args.timeout)
            print(json.dumps(row))
            rounds.append(row)
    times = [r["failover_s"] for r in rounds]
    result = {
        "rounds": rounds, "median_s": round(statistics.median(times), 3),
        "max_s": max(times), "session_timeout_s": SESSION_TIMEOUT_S,
    }  # fmt: skip
    print(f"failover: median {result['median_s']} s, max {result['max_s']} s over "
          f"{len(times)} kills (session timeout {SESSION_TIMEOUT_S:g} s)")  # fmt: skip
    write_result("failover", result)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=120.0)
    asyncio.run(main(parser.parse_args()))
