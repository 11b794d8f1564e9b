"""Access-driven TTL (issue 17): point reads per second with a TTL policy and without, and the
Touch events the policy appends per second of reads.

``--contexts`` puts with a TTL (``--base``) are folded by a worker; then ``--reads`` sequential
reads on one keep-alive connection (the fast path), of contexts picked at random from
``--hot`` of them, in ``--rounds`` slices alternating between a worker with no policy and one
with ``ctx-=base=B,min=B/2,max=1h,per_read=P`` and ``--ttl-touch-interval`` (so a slow spell
hits both alike). Prints reads/s of each, the Touch events appended
(``lukhas_ttl_touches_total``), per second of reads and per 1,000 reads, and writes
``benchmarks/results/ttl_touch.json``. Bounded: a fixed count of reads, timeouts on each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import socket
import time
import urllib.parse
import uuid
from pathlib import Path
from typing import Any

from _support import (
    Records,
    bootstrap_servers,
    doc_for,
    http_get,
    log_problems,
    metric,
    print_rows,
    scratch_dir,
    send_partitions,
    start_worker,
    stop_worker,
    write_result,
)

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import ContextEvent, Put
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.topics import Topics, partition_for


def puts_with_ttl(n: int, parts: int, ttl_ms: int) -> Records:
    codec = EventCodec()
    by_partition: Records = {p: [] for p in range(parts)}
    for i in range(n):
        cid = f"ctx-{i}"
        event = ContextEvent(uuid.uuid4().bytes, cid, Put(doc_for(i), ttl_ms))
        by_partition[partition_for(cid.encode(), parts)].append((cid.encode(), codec.encode(event)))
    return by_partition


def reads(url: str, ids: list[str]) -> float:
    """Sequential GETs on one keep-alive socket; returns the seconds they took."""
    parsed = urllib.parse.urlsplit(url)
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = sock.makefile("rb")
        started = time.perf_counter()
        for cid in ids:
            sock.sendall(f"GET /v1/contexts/{cid} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            status = stream.readline()
            length = -1
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = stream.read(length) if length >= 0 else b""
            if not status.startswith(b"HTTP/1.1 200") or len(body) != length:
                raise RuntimeError(f"GET {cid}: {status!r} {body[:200]!r}")
        return time.perf_counter() - started


def folded(url: str, n: int, timeout_s: float = 120) -> None:
    """Until the worker holds ``n`` documents (folded from the WAL, or restored from the
    change topic the other worker published: then it consumed none)."""
    deadline = time.monotonic() + timeout_s
    while True:
        with contextlib.suppress(OSError, ValueError):
            status, body = http_get(f"{url}/v1/partitions", 30)
            parts = json.loads(body)["partitions"] if status == 200 else []
            if sum(p["documents"] for p in parts) >= n:
                return
        if time.monotonic() > deadline:
            raise RuntimeError("the worker did not fold the contexts")
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=20_000)
    parser.add_argument("--hot", type=int, default=2_000)
    parser.add_argument("--reads", type=int, default=60_000)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--base", default="2m", help="the policy's base TTL (and the puts')")
    parser.add_argument("--per-read", default="30s")
    parser.add_argument("--interval", type=float, default=1.0, help="--ttl-touch-interval")
    args = parser.parse_args()
    for name in ("contexts", "hot", "reads", "rounds", "partitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    from lukhas_context.processors.ttl_policy import parse_duration_ms

    base_ms = parse_duration_ms(args.base, "--base")
    policy = f"ctx-=base={base_ms}ms,min={max(1, base_ms // 2)}ms,max=1h,per_read={args.per_read}"
    rng = random.Random(17)
    hot = rng.sample(range(args.contexts), min(args.hot, args.contexts))
    ids = [f"ctx-{rng.choice(hot)}" for _ in range(args.reads)]
    step = max(1, len(ids) // args.rounds)
    seconds = {"off": 0.0, "on": 0.0}
    touches = counted = 0.0
    with bootstrap_servers() as bootstrap, scratch_dir("lukhas-ttl-touch-") as scratch:
        topics = Topics(f"ttl{uuid.uuid4().hex[:8]}")
        asyncio.run(ensure_topics(bootstrap, topics.specs(args.partitions)))
        asyncio.run(
            send_partitions(
                bootstrap, topics.events, puts_with_ttl(args.contexts, args.partitions, base_ms)
            )
        )
        workers: dict[str, Any] = {}
        try:
            for mode, extra in (
                ("off", ()),
                ("on", ("--ttl-policy", policy, "--ttl-touch-interval", str(args.interval))),
            ):  # fmt: skip
                # Each its own group: both fold every partition.
                state = Path(scratch) / mode / "state"
                workers[mode] = start_worker(
                    bootstrap, topics, state, args.partitions, 120,
                    ["--group", f"{topics.prefix}-{mode}", *extra],
                )  # fmt: skip
                folded(workers[mode][1], args.contexts)
            for mode in ("off", "on"):
                reads(workers[mode][1], ids[:1000])  # warm: caches, connection
            for start in range(0, len(ids), step):
                part = ids[start : start + step]
                for mode in ("off", "on"):
                    seconds[mode] += reads(workers[mode][1], part)
            on_url = workers["on"][1]
            # Warm-up reads counted too: the last sweep must have run over all of them.
            time.sleep(args.interval * 2 + 0.5)
            touches = metric(on_url, "lukhas_ttl_touches_total")
            counted = metric(on_url, "lukhas_ttl_reads_counted_total")
        finally:
            for proc, _ in workers.values():
                stop_worker(proc)
            problems = [p for mode in workers for p in
                        log_problems(Path(scratch) / mode / "worker.log")]  # fmt: skip
    total_reads = len(ids) + 1000
    rate = {mode: len(ids) / s for mode, s in seconds.items()}
    on_seconds = seconds["on"] * total_reads / len(ids)  # the warm-up's share
    rows = [
        ("reads", f"{len(ids):,} of {len(hot):,} hot contexts (of {args.contexts:,}), "
                  f"sequential, {args.rounds} alternating slices"),
        ("policy", f"{policy}, interval {args.interval:g} s"),
        ("reads/s, no policy", f"{rate['off']:,.0f}"),
        ("reads/s, policy", f"{rate['on']:,.0f} ({rate['on'] / rate['off']:.2f}x)"),
        ("reads counted", f"{counted:,.0f} of {total_reads:,}"),
        ("Touch appended", f"{touches:,.0f}"),
        ("Touch per s of reads", f"{touches / on_seconds:,.1f}"),
        ("Touch per 1,000 reads", f"{touches * 1000 / total_reads:,.2f}"),
        ("worker warnings", str(len(problems))),
    ]  # fmt: skip
    print_rows(rows, 22)
    write_result("ttl_touch", {
        "contexts": args.contexts, "hot": len(hot), "reads": len(ids), "policy": policy,
        "interval_s": args.interval, "reads_per_s_off": rate["off"], "reads_per_s_on": rate["on"],
        "reads_counted": counted, "touches": touches,
        "touches_per_read_second": touches / on_seconds,
        "touches_per_1000_reads": touches * 1000 / total_reads, "worker_problems": problems[:20],
    })  # fmt: skip


if __name__ == "__main__":
    main()
