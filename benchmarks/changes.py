"""Change-stream throughput to one subscriber, and put-to-change latency, in one run.

One broker, ``--partitions`` (3) partitions, one ``lukhas worker`` subprocess on fresh topics.

1. Throughput. N puts (``--events``, over ``--contexts`` ids ``ctx-D-C``, D = C mod 10, small
   documents) are appended straight to the WAL with a batched producer; once the worker has
   published all N changes (its ``/metrics``), one ``Watcher`` (``start="earliest"``) reads
   them, alternating ``--runs`` times with a bare ``AIOKafkaConsumer`` reading the same
   change-topic records (no decoding: the ceiling). Then once each: ``prefix="ctx-3-"`` (10 %
   of the ids: every record is read, one in ten yielded), and ``deltas=True`` on the first
   ``--delta-events`` changes (a JSON Patch per change is much slower), with the plain watcher
   on the same count beside it. Rate = changes received / time from the first to the last
   (the bare consumer: records after its first batch over the time from that batch to the
   last record), so connection set-up and positioning are not counted.
2. Latency. A live subscriber (``start="latest"``, no filter, started before the writes);
   ``--latency-writes`` puts of distinct ids (version 1) through ``ContextClient.put`` at
   ``--rate`` per second from ``--writers`` concurrent writers. Per put: ``perf_counter`` at
   the call (submit), when its ``await`` returned (acknowledged) and when the subscriber got
   the change of (id, 1). Reports ack -> received and submit -> received, p50/p99/max.

Starts its own one-broker cluster (``LocalCluster``) unless ``LUKHAS_BOOTSTRAP`` is set. Every
loop is bounded in count and time (``--timeout`` per wait). Progress goes to stderr; the
figures to stdout and ``benchmarks/results/changes.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import statistics
import sys
import time
import uuid
from typing import Any

from _support import (
    bare_read,
    bootstrap_servers,
    encoded_puts,
    log_problems,
    metric,
    offsets,
    percentile,
    print_rows,
    progress,
    scratch_dir,
    send_partitions,
    start_worker,
    stop_worker,
    write_result,
)
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.changes import Change
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics

PREFIX = "ctx-3-"
say = progress("changes-bench")


def context_id(c: int) -> str:
    return f"ctx-{c % 10}-{c}"


def summary_ms(seconds: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in seconds)
    if not ms:
        return {}
    return {
        "min": ms[0],
        "p50": percentile(ms, 0.50),
        "p99": percentile(ms, 0.99),
        "max": ms[-1],
        "mean": statistics.fmean(ms),
    }


# ---------------------------------------------------------------- worker


async def wait_published(url: str, n: int, timeout_s: float) -> float:
    """Polls ``/metrics`` until the worker has published ``n`` changes; returns the time."""
    deadline = time.monotonic() + timeout_s
    published = 0.0
    while published < n:
        if time.monotonic() > deadline:
            raise RuntimeError(f"worker published {published:.0f} of {n} changes in {timeout_s} s")
        await asyncio.sleep(0.1)  # a scrape costs the worker ~1 ms: keep them rare
        published = await asyncio.to_thread(metric, url, "lukhas_changes_published")
    return time.perf_counter()


# ---------------------------------------------------------------- appending


async def append_events(
    bootstrap: str, topics: Topics, n: int, contexts: int, parts: int
) -> tuple[float, int]:
    """Appends ``n`` puts round-robin over ``contexts`` ids in full batches; returns the
    seconds spent and how many of the puts have ids starting with ``PREFIX``."""
    matching = sum(context_id(i % contexts).startswith(PREFIX) for i in range(n))
    by_partition = encoded_puts(n, parts, lambda i: context_id(i % contexts))
    started = time.perf_counter()
    await send_partitions(bootstrap, topics.events, by_partition)
    return time.perf_counter() - started, matching


async def change_topic_records(bootstrap: str, topics: Topics, parts: int) -> int:
    low, end = await offsets(bootstrap, topics.changes, parts)
    return sum(end[p] - low[p] for p in range(parts))


# ---------------------------------------------------------------- 1. throughput


async def bare_consumer(
    bootstrap: str, topics: Topics, parts: int, n: int, timeout_s: float
) -> dict[str, float]:
    """Reads ``n`` change-topic records from the beginning, touching key, value and offset,
    with the fetch settings of the ``Watcher``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    tps = [TopicPartition(topics.changes, p) for p in range(parts)]
    seen, rate, seconds = await bare_read(
        consumer, n, timeout_s, timeout_ms=200, max_records=10_000, assign=tps
    )
    return {"per_s": rate, "seconds": seconds, "records": seen}


async def watch_all(
    client: ContextClient, expect: int, timeout_s: float, idle_s: float, **kw: Any
) -> dict[str, Any]:
    """One ``Watcher`` from the earliest change: reads until ``expect`` changes arrived (or it
    was idle ``idle_s``, or ``timeout_s``). Rate: changes over first-to-last receive time."""
    count = gaps = 0
    t_first = t_last = 0.0
    deadline = time.monotonic() + timeout_s
    async with client.watch(start="earliest", idle_timeout=idle_s, **kw) as w:
        async for item in w:
            now = time.perf_counter()
            if not isinstance(item, Change):
                gaps += 1
                continue
            count += 1
            if count == 1:
                t_first = now
            t_last = now
            if count >= expect or (count % 4096 == 0 and time.monotonic() > deadline):
                break
    if count < expect:
        raise RuntimeError(f"watcher {kw} got {count} of {expect} changes ({gaps} gaps)")
    seconds = t_last - t_first
    return {"changes": count, "gaps": gaps, "seconds": seconds, "per_s": count / seconds}


async def throughput_phase(
    bootstrap: str, topics: Topics, url: str, args: argparse.Namespace
) -> dict[str, Any]:
    n, parts = args.events, args.partitions
    say(f"appending {n:,} puts over {args.contexts:,} contexts ...")
    append_s, matching = await asyncio.wait_for(
        append_events(bootstrap, topics, n, args.contexts, parts), args.timeout
    )
    appended_at = time.perf_counter()
    say(f"appended in {append_s:.1f} s; waiting for the worker to publish {n:,} changes ...")
    published_at = await wait_published(url, n, args.timeout)
    fold_s = published_at - appended_at
    on_topic = await change_topic_records(bootstrap, topics, parts)
    applied = await asyncio.to_thread(metric, url, "lukhas_events_applied")
    say(f"published ({fold_s:.1f} s after the append); {on_topic:,} records on the change topic")

    bares: list[dict[str, float]] = []
    plains: list[dict[str, Any]] = []
    async with ContextClient(ClientConfig(bootstrap, None, topics)) as client:
        for run in range(args.runs):  # alternate, so a slow spell of the machine hits both
            bares.append(await bare_consumer(bootstrap, topics, parts, n, args.timeout))
            plains.append(await watch_all(client, n, args.timeout, args.idle))
            say(
                f"run {run + 1}: bare {bares[-1]['per_s']:,.0f} records/s, "
                f"watcher {plains[-1]['per_s']:,.0f} changes/s"
            )
        prefixed = await watch_all(client, matching, args.timeout, args.idle, prefix=PREFIX)
        say(f"prefix={PREFIX!r}: {prefixed['per_s']:,.0f} changes/s")
        m = min(n, args.delta_events)
        deltas = await watch_all(client, m, args.timeout, args.idle, deltas=True)
        plain_m = await watch_all(client, m, args.timeout, args.idle)
        say(f"deltas on {m:,}: {deltas['per_s']:,.0f}/s (plain {plain_m['per_s']:,.0f}/s)")
    bare_rate = statistics.median(b["per_s"] for b in bares)
    plain_rate = statistics.median(p["per_s"] for p in plains)
    return {
        "events": n,
        "contexts": args.contexts,
        "append_s": append_s,
        "append_per_s": n / append_s,
        "fold_publish_s": fold_s,
        "worker_applied": applied,
        "change_topic_records": on_topic,
        "runs": args.runs,
        "bare_per_s": bare_rate,
        "bare_runs": [round(b["per_s"]) for b in bares],
        "watch_per_s": plain_rate,
        "watch_runs": [round(p["per_s"]) for p in plains],
        "watch_gaps": sum(p["gaps"] for p in plains),
        "watch_vs_bare": plain_rate / bare_rate,
        "prefix": PREFIX,
        "prefix_changes": matching,
        "prefix_per_s": prefixed["per_s"],
        "prefix_scanned_per_s": n / prefixed["seconds"],
        "delta_changes": m,
        "delta_per_s": deltas["per_s"],
        "plain_same_count_per_s": plain_m["per_s"],
    }


# ---------------------------------------------------------------- 2. latency


async def latency_phase(bootstrap: str, topics: Topics, args: argparse.Namespace) -> dict[str, Any]:
    n, rate, writers = args.latency_writes, args.rate, args.writers
    tag = uuid.uuid4().hex[:6]
    ids = [f"lat-{tag}-{i}" for i in range(n)]
    warm = [f"warm-{tag}-{i}" for i in range(args.warmup)]
    wanted = {(cid, 1) for cid in (*ids, *warm)}
    received: dict[tuple[str, int], tuple[float, int, int]] = {}
    warm_in, all_in = asyncio.Event(), asyncio.Event()
    submitted = [0.0] * n
    acked = [0.0] * n
    receipts: list[Any] = [None] * n
    deadline = time.monotonic() + args.timeout

    async def collect(w: Any) -> None:
        warm_left = len(warm)
        async for item in w:
            now = time.perf_counter()
            if isinstance(item, Change) and (item.context_id, item.version) in wanted:
                received[(item.context_id, item.version)] = (now, item.partition, item.wal_offset)
                if item.context_id.startswith("warm-"):
                    warm_left -= 1
                    if warm_left <= 0:
                        warm_in.set()
                if len(received) >= len(wanted):
                    all_in.set()
                    return
            if time.monotonic() > deadline:
                return

    client = ContextClient(ClientConfig(bootstrap, None, topics))
    async with client, client.watch(start="latest", idle_timeout=args.idle_latency) as w:
        collector = asyncio.create_task(collect(w))
        try:
            for cid in warm:  # producer connection, worker and watcher paths warmed up
                await client.put(cid, {"warm": True})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(warm_in.wait(), 30)
            say(f"warm-up: {len(received)} of {len(warm)} received; {n:,} timed puts ...")
            order = itertools.count()
            t0 = time.perf_counter() + 0.05

            async def writer() -> None:
                for i in order:
                    if i >= n or time.monotonic() > deadline:
                        return
                    delay = t0 + i / rate - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    doc = {"turn": i, "user": f"u-{i % 97}", "text": "hello"}
                    submitted[i] = time.perf_counter()
                    receipts[i] = await client.put(ids[i], doc)
                    acked[i] = time.perf_counter()

            await asyncio.wait_for(
                asyncio.gather(*(writer() for _ in range(writers))), args.timeout
            )
            write_s = time.perf_counter() - t0
            with contextlib.suppress(TimeoutError):  # missing changes are reported below
                await asyncio.wait_for(all_in.wait(), 30)
        finally:
            collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await collector
    done = [i for i in range(n) if acked[i] and (ids[i], 1) in received]
    ack_to_rx = [received[(ids[i], 1)][0] - acked[i] for i in done]
    submit_to_rx = [received[(ids[i], 1)][0] - submitted[i] for i in done]
    submit_to_ack = [acked[i] - submitted[i] for i in range(n) if acked[i]]
    mismatched = sum(
        1 for i in done if received[(ids[i], 1)][1:] != (receipts[i].partition, receipts[i].offset)
    )
    return {
        "writes": n,
        "writers": writers,
        "target_rate": rate,
        "achieved_rate": sum(1 for a in acked if a) / write_s,
        "acked": sum(1 for a in acked if a),
        "received": len(done),
        "position_mismatches": mismatched,
        "negative_ack_to_received": sum(1 for d in ack_to_rx if d < 0),
        "ack_to_received_ms": summary_ms(ack_to_rx),
        "submit_to_received_ms": summary_ms(submit_to_rx),
        "submit_to_ack_ms": summary_ms(submit_to_ack),
    }


# ---------------------------------------------------------------- main


async def run_all(
    bootstrap: str, topics: Topics, url: str, args: argparse.Namespace
) -> dict[str, Any]:
    result: dict[str, Any] = {"throughput": await throughput_phase(bootstrap, topics, url, args)}
    result["latency"] = await latency_phase(bootstrap, topics, args)
    return result


def print_table(result: dict[str, Any]) -> None:
    t, lat = result["throughput"], result["latency"]

    def pct(d: dict[str, float]) -> str:
        return (
            f"p50 {d['p50']:7.1f}  p99 {d['p99']:7.1f}  max {d['max']:7.1f} ms"
            f"  (min {d['min']:.1f}, mean {d['mean']:.1f})"
        )

    rows = [
        ("setup", f"1 broker, {result['partitions']} partitions, 1 lukhas worker (subprocess)"),
        ("events", f"{t['events']:,} puts over {t['contexts']:,} contexts, appended at "
                   f"{t['append_per_s']:,.0f}/s; folded+published {t['fold_publish_s']:.1f} s "
                   f"after; {t['change_topic_records']:,} change records"),
        ("bare consumer", f"{t['bare_per_s']:>9,.0f} records/s (ceiling)  runs {t['bare_runs']}"),
        ("watcher, all", f"{t['watch_per_s']:>9,.0f} changes/s  runs {t['watch_runs']}  "
                         f"(median of {t['runs']}, {t['watch_gaps']} gaps)"),
        ("watcher / bare", f"{t['watch_vs_bare']:.1%}"),
        ("watcher, prefix", f"{t['prefix_per_s']:>9,.0f} changes/s  ({t['prefix_changes']:,} "
                            f"of {t['events']:,} match {t['prefix']!r}; "
                            f"{t['prefix_scanned_per_s']:,.0f} records scanned/s)"),
        ("watcher, deltas", f"{t['delta_per_s']:>9,.0f} changes/s  (first "
                            f"{t['delta_changes']:,}; plain on the same: "
                            f"{t['plain_same_count_per_s']:,.0f}/s)"),
        ("latency writes", f"{lat['acked']:,} puts acked, {lat['received']:,} received; "
                           f"{lat['writers']} writers at {lat['achieved_rate']:,.0f}/s "
                           f"(target {lat['target_rate']}/s)"),
        ("ack -> received", pct(lat["ack_to_received_ms"])),
        ("submit -> received", pct(lat["submit_to_received_ms"])),
        ("submit -> ack", pct(lat["submit_to_ack_ms"])),
        ("checks", f"{lat['position_mismatches']} change positions != receipts, "
                   f"{lat['negative_ack_to_received']} changes before their ack; worker exit "
                   f"{result['worker_exit']}, {len(result['worker_log_problems'])} "
                   f"warnings/errors in its log"),
        ("total runtime", f"{result['total_s']:.1f} s"),
    ]  # fmt: skip
    print_rows(rows, 19)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--contexts", type=int, default=10_000)
    parser.add_argument("--partitions", type=int, default=3)
    parser.add_argument("--runs", type=int, default=2, help="alternating bare/watcher runs")
    parser.add_argument("--delta-events", type=int, default=50_000)
    parser.add_argument("--idle", type=float, default=2.0, help="watcher idle_timeout (s)")
    parser.add_argument("--latency-writes", type=int, default=2_000)
    parser.add_argument("--rate", type=float, default=200.0, help="latency puts per second")
    parser.add_argument("--writers", type=int, default=4, help="concurrent latency writers")
    parser.add_argument("--warmup", type=int, default=20, help="untimed puts first")
    parser.add_argument("--idle-latency", type=float, default=15.0, help="live watcher idle (s)")
    parser.add_argument("--timeout", type=float, default=300, help="bound of each wait (s)")
    args = parser.parse_args()
    if min(args.events, args.contexts, args.partitions, args.runs, args.latency_writes) < 1:
        parser.error("counts must be positive")
    args.idle_latency = max(args.idle_latency, 5.0)

    started = time.perf_counter()
    proc = None
    with scratch_dir("lukhas-bench-changes-") as work, bootstrap_servers(say) as bootstrap:
        try:
            topics = Topics(f"benchchanges{uuid.uuid4().hex[:8]}")
            asyncio.run(ensure_topics(bootstrap, topics.specs(args.partitions), brokers=None))
            state = work / "state"
            proc, url = start_worker(bootstrap, topics, state, args.partitions, args.timeout)
            say(f"worker pid {proc.pid} healthy at {url}")
            overall = 4 * args.timeout
            result = asyncio.run(asyncio.wait_for(run_all(bootstrap, topics, url, args), overall))
        finally:
            if proc is not None:
                stop_worker(proc)
            problems = log_problems(work / "worker.log")
    result["partitions"] = args.partitions
    result["worker_exit"] = proc.returncode
    result["worker_log_problems"] = problems
    result["total_s"] = time.perf_counter() - started
    print_table(result)
    write_result("changes", result)
    lat = result["latency"]
    if lat["received"] < lat["writes"] or lat["position_mismatches"]:
        sys.exit("some changes were missing or did not match their receipts")


if __name__ == "__main__":
    main()
