"""Materialisation throughput against the ceiling of a bare consumer, in one run.

1. Start a one-broker cluster with the project's own ``LocalCluster`` (or use
   ``LUKHAS_BOOTSTRAP``), create fresh topics.
2. Append N small puts over K contexts to the WAL (batched producer).
3. Ceiling: a bare aiokafka consumer reads the whole topic (touching key, value and offset).
4. The processor: ``lukhas worker`` in its own process, fresh state, folds the same topic;
   its progress is read from ``/metrics``. Once ``--exactly-once`` (each round's changes in
   a Kafka transaction) and once ``--at-least-once``, on a copy of the topic.
3 and 4 alternate ``--runs`` times (default 3) and the medians are compared: this machine is
shared, and one run of each can differ by a factor of two.

Both rates are counted the same way: records after the first batch, over the time from the
first batch to the last record, so group joins and connection set-up are not counted.
Prints both, their ratio and the processor's peak resident memory (VmHWM); writes the figures
to ``benchmarks/results/materialize.json``. Bounded: N records, and a timeout on every wait.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import time
import uuid
from pathlib import Path

import orjson
from _support import (
    Records,
    bare_read,
    bootstrap_servers,
    encoded_puts,
    metric,
    print_rows,
    scratch_dir,
    send_partitions,
    spawn_worker,
    stop_worker,
    write_result,
)
from aiokafka import AIOKafkaConsumer

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import EMPTY_METADATA, ContextEvent, Patch, PatchFormat, Put
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics, partition_for


async def append_events(bootstrap: str, topics: Topics, n: int, contexts: int, parts: int) -> float:
    """Appends ``n`` puts (small documents) round-robin over ``contexts`` ids; returns seconds."""
    by_partition = encoded_puts(n, parts, lambda i: f"ctx-{i % contexts}")
    started = time.perf_counter()
    await send_partitions(bootstrap, topics.events, by_partition)
    return time.perf_counter() - started


async def append_patches(bootstrap: str, topics: Topics, n: int, contexts: int, parts: int) -> None:
    """``contexts`` puts, then ``n - contexts`` JSON Patches (replace one field, add one)."""
    codec = EventCodec()
    records: Records = {p: [] for p in range(parts)}
    for i in range(n):
        cid = f"ctx-{i % contexts}"
        key = cid.encode()
        if i < contexts:
            op: Put | Patch = Put(b'{"turn":0,"user":"u-%d","notes":{}}' % i)
        else:
            body = b'[{"op":"replace","path":"/turn","value":%d},' % i
            body += b'{"op":"add","path":"/notes/n%d","value":"seen"}]' % (i % 16)
            op = Patch(PatchFormat.JSON_PATCH, body)
        event = ContextEvent(uuid.uuid4().bytes, cid, op, None, None, EMPTY_METADATA)
        records[partition_for(key, parts)].append((key, codec.encode(event)))
    await send_partitions(bootstrap, topics.events, records)


async def measure_update_bytes(bootstrap: str, topics: Topics, writes: int) -> tuple[int, int]:
    """Bytes of event values sent by ``update()`` for a conversation growing by one message per
    write, against whole-document puts of the same documents."""
    async with ContextClient(ClientConfig(bootstrap, None, topics)) as client:
        producer = await client.writer.producer()
        sizes: list[int] = []
        original = producer.send_and_wait

        async def counting(topic: str, value: bytes, **kw: object) -> object:
            sizes.append(len(value))
            return await original(topic, value, **kw)

        producer.send_and_wait = counting  # type: ignore[method-assign]
        put_bytes = 0
        messages: list[dict[str, str]] = []
        for i in range(writes):
            messages = [*messages, {"role": "user" if i % 2 else "agent", "text": f"turn {i} " * 4}]
            doc = {"agent": "a-1", "messages": messages}
            await client.update("bench-conversation", doc)
            put_bytes += len(
                client.event("x", Put(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)), None)[1]
            )
    return sum(sizes), put_bytes


async def bare_consumer(bootstrap: str, topic: str, n: int, timeout_s: float) -> dict[str, float]:
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    _, rate, seconds = await bare_read(consumer, n, timeout_s, timeout_ms=500, max_records=20_000)
    return {"records_per_s": rate, "seconds": seconds}


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def run_processor(
    bootstrap: str, topics: Topics, n: int, timeout_s: float, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    with scratch_dir("lukhas-bench-") as state:
        log = state / "worker.log"
        proc, url = spawn_worker(bootstrap, topics, state, log, extra)
        try:
            deadline = time.monotonic() + timeout_s
            count = 0.0
            while count == 0:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"worker did not start folding: {log.read_text()[-2000:]}")
                with contextlib.suppress(OSError):
                    count = metric(url, "lukhas_records_consumed_total", timeout=30)
                time.sleep(0.01)
            t_first, first_count = time.perf_counter(), count
            while count < n:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker folded {count} of {n} in {timeout_s} s")
                time.sleep(0.05)  # a /metrics scrape costs the worker ~1 ms: keep them rare
                count = metric(url, "lukhas_records_consumed_total", timeout=30)
            t_last = time.perf_counter()
            applied = metric(url, "lukhas_events_applied_total", timeout=30)
            rss = peak_rss_mib(proc.pid)
        finally:
            stop_worker(proc)
    return {
        "records_per_s": (n - first_count) / (t_last - t_first),
        "seconds": t_last - t_first,
        "applied": applied,
        "peak_rss_mib": rss,
    }


async def prepare(bootstrap: str, args: argparse.Namespace) -> tuple[Topics, Topics, Topics, float]:
    """Topics of one run: the puts, the same puts again (for the at-least-once worker: a
    worker on a topic whose changes were published restores instead of folding), patches."""
    topics = Topics(f"bench{uuid.uuid4().hex[:8]}")
    again = Topics(f"benchalo{uuid.uuid4().hex[:8]}")
    patches = Topics(f"benchpatch{uuid.uuid4().hex[:8]}")
    for t in (topics, again, patches):
        await ensure_topics(bootstrap, t.specs(args.partitions))
    seconds = await append_events(bootstrap, topics, args.events, args.contexts, args.partitions)
    await append_events(bootstrap, again, args.events, args.contexts, args.partitions)
    await append_patches(bootstrap, patches, args.patch_events, args.contexts, args.partitions)
    return topics, again, patches, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--contexts", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of each side")
    parser.add_argument("--patch-events", type=int, default=100_000)
    args = parser.parse_args()

    bares: list[dict[str, float]] = []
    procs: list[dict[str, float]] = []
    at_least_once: list[dict[str, float]] = []
    patch_runs: list[dict[str, float]] = []
    with bootstrap_servers() as bootstrap:
        # Alternate them, so a slow spell of this shared machine hits all alike. Each run has
        # topics of its own: a fresh worker on a topic whose changes an earlier run published
        # would restore from the change topic instead of folding (processors/opener.py).
        for _ in range(args.runs):
            topics, again, patch_topics, append_s = asyncio.run(prepare(bootstrap, args))
            bare = bare_consumer(bootstrap, topics.events, args.events, args.timeout)
            bares.append(asyncio.run(bare))
            eos = ("--exactly-once",)
            procs.append(run_processor(bootstrap, topics, args.events, args.timeout, eos))
            at_least_once.append(
                run_processor(bootstrap, again, args.events, args.timeout, ("--at-least-once",))
            )
            patch_runs.append(
                run_processor(bootstrap, patch_topics, args.patch_events, args.timeout, eos)
            )
        update_bytes, put_bytes = asyncio.run(measure_update_bytes(bootstrap, topics, 200))

    bare_rate = statistics.median(b["records_per_s"] for b in bares)
    proc_rate = statistics.median(p["records_per_s"] for p in procs)
    ratio = proc_rate / bare_rate
    patch_rate = statistics.median(p["records_per_s"] for p in patch_runs)
    alo_rate = statistics.median(p["records_per_s"] for p in at_least_once)
    result = {
        "events": args.events,
        "contexts": args.contexts,
        "partitions": args.partitions,
        "runs": args.runs,
        "append_events_per_s": args.events / append_s,
        "bare_consumer_records_per_s": bare_rate,
        "processor_events_per_s": proc_rate,
        "ratio": ratio,
        "bare_runs": [round(b["records_per_s"]) for b in bares],
        "processor_runs": [round(p["records_per_s"]) for p in procs],
        "processor_applied": [p["applied"] for p in procs + at_least_once],
        "processor_at_least_once_events_per_s": alo_rate,
        "at_least_once_runs": [round(p["records_per_s"]) for p in at_least_once],
        "exactly_once_vs_at_least_once": proc_rate / alo_rate,
        "processor_peak_rss_mib": max(p["peak_rss_mib"] for p in procs),
        "patch_events": args.patch_events,
        "processor_patch_events_per_s": patch_rate,
        "patch_runs": [round(p["records_per_s"]) for p in patch_runs],
        "update_wire_bytes": update_bytes,
        "put_wire_bytes": put_bytes,
        "update_saving": 1 - update_bytes / put_bytes,
    }
    rows = [
        ("events", f"{args.events:,} puts over {args.contexts:,} contexts, "
                   f"{args.partitions} partitions, 1 broker, median of {args.runs} runs"),
        ("append (producer)", f"{result['append_events_per_s']:,.0f} events/s"),
        ("bare consumer", f"{bare_rate:,.0f} records/s (ceiling)  runs {result['bare_runs']}"),
        ("processor (fold)", f"{proc_rate:,.0f} events/s  runs {result['processor_runs']}  "
                             "(exactly once: a Kafka transaction per partition and round)"),
        ("ratio", f"{ratio:.1%}"),
        ("at least once", f"{alo_rate:,.0f} events/s  runs {result['at_least_once_runs']}  "
                          f"(exactly once: {proc_rate / alo_rate:.1%} of it)"),
        ("processor (patches)", f"{patch_rate:,.0f} events/s  runs {result['patch_runs']}  "
                                f"({args.patch_events:,} JSON Patches, same contexts)"),
        ("update() wire bytes", f"{update_bytes:,} vs {put_bytes:,} for whole puts: "
                                f"{result['update_saving']:.1%} fewer (200 growing writes)"),
        ("processor peak RSS", f"{result['processor_peak_rss_mib']:.1f} MiB"),
    ]  # fmt: skip
    print_rows(rows, 20)
    write_result("materialize", result)
    for applied in result["processor_applied"]:
        if applied != args.events:
            sys.exit(f"a processor run applied {applied:.0f} of {args.events} events")


if __name__ == "__main__":
    main()
