"""Point reads of cached contexts: latency over HTTP (keep-alive), through the Python client,
and redis-server GET on the same machine, in one run.

A worker folds ``--contexts`` puts (small documents, as ``materialize.py`` writes); then
``--reads`` sequential reads of contexts picked at random from ``--hot`` of them (so they
are in the worker's read cache), each timed alone: ``GET /v1/contexts/{id}`` on one
keep-alive connection (``http.client``), the same on a bare socket (the answer read by its
``Content-Length``: the worker's own time, little of a client's), ``ContextClient.get``
(the async client, its own session), and ``GET`` of the same documents stored in a
redis-server of the benchmark's own (``redis-py``, one connection). Prints p50/p90/p99/max
of each and the ratios the issue sets (p99 at most 1 ms; p50 within 2x of redis), and
writes ``benchmarks/results/reads.json``. Bounded: a fixed count of reads, a timeout on each.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import random
import socket
import statistics
import time
import urllib.parse
import uuid
from typing import Any

import redis
import redis.asyncio
from _support import (
    bootstrap_servers,
    doc_for,
    metric,
    print_rows,
    scratch_dir,
    spawn_worker,
    stop_worker,
    write_result,
)
from locks import redis_url
from materialize import append_events

from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics


def quantiles(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
        "max_ms": ordered[-1] * 1000, "mean_ms": statistics.fmean(ordered) * 1000,
    }  # fmt: skip


def http_reads(url: str, ids: list[str]) -> list[float]:
    parsed = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=10)
    times = []
    try:
        for cid in ids:
            t0 = time.perf_counter()
            conn.request("GET", f"/v1/contexts/{cid}")
            response = conn.getresponse()
            body = response.read()
            times.append(time.perf_counter() - t0)
            if response.status != 200 or not body:
                raise RuntimeError(f"GET {cid}: {response.status} {body[:200]!r}")
    finally:
        conn.close()
    return times


def raw_reads(url: str, ids: list[str]) -> list[float]:
    """The same GETs on one keep-alive socket, the answer read by its ``Content-Length``
    without parsing the rest: what the worker itself takes, with little of a client's own."""
    parsed = urllib.parse.urlsplit(url)
    times = []
    with socket.create_connection((parsed.hostname, parsed.port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        stream = sock.makefile("rb")
        for cid in ids:
            request = f"GET /v1/contexts/{cid} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
            t0 = time.perf_counter()
            sock.sendall(request)
            status = stream.readline()
            length = -1
            while (line := stream.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            body = stream.read(length) if length >= 0 else b""
            times.append(time.perf_counter() - t0)
            if not status.startswith(b"HTTP/1.1 200") or len(body) != length:
                raise RuntimeError(f"GET {cid}: {status!r} {body[:200]!r}")
    return times


async def client_reads(bootstrap: str, url: str, topics: Topics, ids: list[str]) -> list[float]:
    times = []
    async with ContextClient(ClientConfig(bootstrap, url, topics, timeout_s=10)) as client:
        for cid in ids:
            t0 = time.perf_counter()
            await client.get(cid)
            times.append(time.perf_counter() - t0)
    return times


def redis_reads(rurl: str, ids: list[str], docs: dict[str, bytes]) -> list[float]:
    r = redis.Redis.from_url(rurl)
    for _ in range(100):  # the benchmark's redis-server may still be starting: 10 s at most
        try:
            r.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    r.mset(docs)
    times = []
    for cid in ids:
        t0 = time.perf_counter()
        value = r.get(cid)
        times.append(time.perf_counter() - t0)
        if value is None:
            raise RuntimeError(f"redis has no {cid}")
    r.close()
    return times


async def redis_async_reads(rurl: str, ids: list[str]) -> list[float]:
    """The same GETs through redis-py's asyncio client: what an asyncio client costs on
    this machine against a server that answers at once (``redis_reads`` set the keys)."""
    r = redis.asyncio.Redis.from_url(rurl)
    times = []
    try:
        for cid in ids:
            t0 = time.perf_counter()
            value = await r.get(cid)
            times.append(time.perf_counter() - t0)
            if value is None:
                raise RuntimeError(f"redis has no {cid}")
    finally:
        await r.aclose()
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=100_000)
    parser.add_argument("--hot", type=int, default=1_000)
    parser.add_argument("--reads", type=int, default=20_000)
    parser.add_argument("--partitions", type=int, default=6)
    args = parser.parse_args()
    for name in ("contexts", "hot", "reads", "partitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    rng = random.Random(11)
    hot = rng.sample(range(args.contexts), min(args.hot, args.contexts))
    ids = [f"ctx-{rng.choice(hot)}" for _ in range(args.reads)]
    docs = {f"ctx-{i}": doc_for(i) for i in hot}
    results: dict[str, Any] = {}
    with bootstrap_servers() as bootstrap, redis_url() as rurl:
        topics = Topics(f"reads{uuid.uuid4().hex[:8]}")
        asyncio.run(ensure_topics(bootstrap, topics.specs(args.partitions)))
        asyncio.run(append_events(bootstrap, topics, args.contexts, args.contexts, args.partitions))
        with scratch_dir("lukhas-reads-") as state:
            proc, url = spawn_worker(bootstrap, topics, state, state / "worker.log")
            try:
                deadline = time.monotonic() + 300
                folded = 0.0
                while folded < args.contexts:
                    if time.monotonic() > deadline or proc.poll() is not None:
                        raise RuntimeError("the worker did not fold the contexts")
                    time.sleep(0.2)
                    with contextlib.suppress(OSError):  # not listening yet
                        folded = metric(url, "lukhas_records_consumed_total", timeout=30)
                http_reads(url, ids[:1000])  # warm: caches, connection
                # Alternate the three, a slice at a time, so a slow spell hits all alike.
                times: dict[str, list[float]] = {"http": [], "raw": [], "client": [],
                                                 "redis": [], "redis_async": []}  # fmt: skip
                step = max(1, len(ids) // 10)
                for start in range(0, len(ids), step):
                    part = ids[start : start + step]
                    times["http"] += http_reads(url, part)
                    times["raw"] += raw_reads(url, part)
                    times["client"] += asyncio.run(client_reads(bootstrap, url, topics, part))
                    times["redis"] += redis_reads(rurl, part, docs)
                    times["redis_async"] += asyncio.run(redis_async_reads(rurl, part))
            finally:
                stop_worker(proc)
    for name, samples in times.items():
        results[name] = quantiles(samples)
    rows = [("reads", f"{args.reads:,} of {len(hot):,} hot contexts (of {args.contexts:,}), "
                      "sequential, each timed alone")]  # fmt: skip
    for name, label in (("http", "HTTP keep-alive"), ("raw", "HTTP, raw socket"),
                        ("client", "client.get"), ("redis", "redis GET"),
                        ("redis_async", "redis GET, asyncio")):  # fmt: skip
        q = results[name]
        rows.append((label, f"p50 {q['p50_ms']:.3f} ms  p90 {q['p90_ms']:.3f}  p99 "
                            f"{q['p99_ms']:.3f}  max {q['max_ms']:.2f}"))  # fmt: skip
    for name in ("http", "raw", "client"):
        ratio = results[name]["p50_ms"] / results["redis"]["p50_ms"]
        rows.append((f"{name} p50 / redis", f"{ratio:.2f}x (bar: 2x; p99 bar: 1 ms)"))
    ratio = results["client"]["p50_ms"] / results["redis_async"]["p50_ms"]
    rows.append(("client / redis asyncio", f"{ratio:.2f}x (both asyncio clients)"))
    print_rows(rows, 18)
    write_result("reads", {"contexts": args.contexts, "hot": len(hot), "reads": args.reads,
                           **results})  # fmt: skip


if __name__ == "__main__":
    main()
