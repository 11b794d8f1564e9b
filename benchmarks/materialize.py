"""Materialisation throughput against the ceiling of a bare consumer, in one run.

1. Start a one-broker cluster with the project's own ``LocalCluster`` (or use
   ``LUKHAS_BOOTSTRAP``), create fresh topics.
2. Append N small puts over K contexts to the WAL (batched producer).
3. Ceiling: a bare aiokafka consumer reads the whole topic (touching key, value and offset).
   And the ceiling of any fold that publishes its changes exactly once with these clients: a
   bare pipe that reads the same way and copies every record to another topic, a Kafka
   transaction per fetch, through the worker's own batch builder (no decoding, no state).
4. The processor: ``lukhas worker`` in its own process, fresh state, folds the same topic;
   its progress is read from ``/metrics``. Once ``--exactly-once`` (each round's changes in
   a Kafka transaction) and once ``--at-least-once``, on a copy of the topic.
5. Patches: the conversation-append workload. Each of K contexts starts as a put of an empty
   conversation, then grows by one message per event (``add /messages/-``, as ``update()``
   sends for an appended message), to about 5 KB after 100 messages. And small patches
   (replace one member, add one) on documents under 200 bytes. The conversation workload
   again with ``--coalesce-changes`` (each context's last change of a round published), and
   the puts too.
3 to 5 alternate ``--runs`` times (default 3) and the medians are compared: this machine is
shared, and one run of each can differ by a factor of two.

Every side is counted the same way, from samples ``(time, records done)``: the window starts
at the first sample with at least ``START_SHARE`` of the records done (so group joins,
connection set-up and the first fetch are out of it, alike for all) and ends at the first
with all of them; the rate is the records in between over the window's time. A run whose
window is shorter than ``MIN_WINDOW_S`` is timed from its start instead (and flagged), so a
small ``--events`` still gives a figure. Prints both, their ratio and the processor's peak
resident memory (VmHWM); writes the figures to ``benchmarks/results/materialize.json``.
Bounded: N records, and a timeout on every wait.
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
from collections.abc import Callable
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
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import EMPTY_METADATA, ContextEvent, Patch, PatchFormat, Put
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.batching import next_batch
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics, partition_for


async def append_events(bootstrap: str, topics: Topics, n: int, contexts: int, parts: int) -> float:
    """Appends ``n`` puts (small documents) round-robin over ``contexts`` ids; returns seconds."""
    by_partition = encoded_puts(n, parts, lambda i: f"ctx-{i % contexts}")
    started = time.perf_counter()
    await send_partitions(bootstrap, topics.events, by_partition)
    return time.perf_counter() - started


#: The share of a run's records done when its timing window opens (see the module docstring).
START_SHARE = 0.05
#: A window shorter than this is not trusted: the run is timed from its start instead.
MIN_WINDOW_S = 0.5


def window_rate(samples: list[tuple[float, float]], n: int) -> dict[str, float]:
    """The rate of one run from its samples ``(time, records done)``, the first taken at its
    start with 0 done: records from the first sample at ``START_SHARE`` of ``n`` to the first
    at ``n``, over that time (see the module docstring)."""
    end = next(((t, c) for t, c in samples if c >= n), None)
    if end is None:
        raise RuntimeError(f"the run did {samples[-1][1]:.0f} of {n} records")
    start = next((t, c) for t, c in samples if c >= START_SHARE * n)
    from_start = end[0] - start[0] < MIN_WINDOW_S
    if from_start:
        start = samples[0]
    seconds = max(end[0] - start[0], 1e-9)
    return {
        "records_per_s": (end[1] - start[1]) / seconds,
        "seconds": seconds,
        "timed_from_start": float(from_start),
    }


def conversation_message(i: int) -> dict[str, str]:
    return {"role": "user" if i % 2 else "agent", "text": f"turn {i} " * 4}


async def append_ops(
    bootstrap: str, topics: Topics, n: int, contexts: int, parts: int,
    op_for: Callable[[int], Put | Patch],
) -> None:  # fmt: skip
    """``n`` events, event ``i`` on ``ctx-{i % contexts}`` with the operation ``op_for(i)``."""
    codec = EventCodec()
    records: Records = {p: [] for p in range(parts)}
    for i in range(n):
        cid = f"ctx-{i % contexts}"
        key = cid.encode()
        event = ContextEvent(uuid.uuid4().bytes, cid, op_for(i), None, None, EMPTY_METADATA)
        records[partition_for(key, parts)].append((key, codec.encode(event)))
    await send_partitions(bootstrap, topics.events, records)


async def append_small_patches(
    bootstrap: str, topics: Topics, n: int, contexts: int, parts: int
) -> None:
    """``contexts`` puts of a small document, then ``n - contexts`` JSON Patches of two
    operations each (replace one member, add one to an object): documents stay under 200
    bytes, so this measures the patch path, not the bytes the change stream carries."""

    def op_for(i: int) -> Put | Patch:
        if i < contexts:
            return Put(b'{"turn":0,"user":"u-%d","notes":{}}' % i)
        body = b'[{"op":"replace","path":"/turn","value":%d},' % i
        body += b'{"op":"add","path":"/notes/n%d","value":"seen"}]' % (i % 16)
        return Patch(PatchFormat.JSON_PATCH, body)

    await append_ops(bootstrap, topics, n, contexts, parts, op_for)


async def append_patches(bootstrap: str, topics: Topics, n: int, contexts: int, parts: int) -> None:
    """The conversation-append workload: ``contexts`` puts of an empty conversation, then
    ``n - contexts`` JSON Patches, each appending one message to one of them in turn."""

    def op_for(i: int) -> Put | Patch:
        if i < contexts:
            return Put(b'{"agent":"a-%d","messages":[]}' % i)
        value = conversation_message(i)
        return Patch(
            PatchFormat.JSON_PATCH,
            orjson.dumps([{"op": "add", "path": "/messages/-", "value": value}]),
        )

    await append_ops(bootstrap, topics, n, contexts, parts, op_for)


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
            messages = [*messages, conversation_message(i)]
            doc = {"agent": "a-1", "messages": messages}
            await client.update("bench-conversation", doc)
            put_bytes += len(
                client.event("x", Put(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)), None)[1]
            )
    return sum(sizes), put_bytes


def bare_reader(bootstrap: str, topic: str, name: str) -> AIOKafkaConsumer:
    """The bare sides' consumer: a group of its own, from the start, read committed, the
    worker's fetch sizes."""
    return AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"{name}-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )


async def bare_consumer(bootstrap: str, topic: str, n: int, timeout_s: float) -> dict[str, float]:
    consumer = bare_reader(bootstrap, topic, "bare")
    samples: list[tuple[float, float]] = []
    await bare_read(consumer, n, timeout_s, timeout_ms=500, max_records=20_000, samples=samples)
    return window_rate(samples, n)


async def bare_pipe(
    bootstrap: str, source: str, target: str, n: int, timeout_s: float
) -> dict[str, float]:
    """The ceiling of any fold that publishes one change per event exactly once with these
    Kafka clients: the bare consumer's reads, each record copied as it is (key and value, a
    ``seq`` header) to ``target`` through the worker's own batch builder
    (``streams.batching.next_batch``), one Kafka transaction per fetch, waited for. No
    decoding, no state, one transactional producer (the worker has one per partition)."""
    consumer = bare_reader(bootstrap, source, "pipe")
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap,
        transactional_id=f"pipe-{uuid.uuid4().hex[:8]}",
        enable_idempotence=True,
        acks="all",
        max_batch_size=512 * 1024,
        linger_ms=0,
    )
    samples: list[tuple[float, float]] = [(time.perf_counter(), 0.0)]
    await consumer.start()
    await producer.start()
    seen = 0
    deadline = time.monotonic() + timeout_s
    try:
        while seen < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=50_000)
            if not batch:
                continue
            async with producer.transaction():
                acks = []
                for tp, records in batch.items():
                    copies = [(m.key, m.value, []) for m in records]
                    i = 0
                    while i < len(copies):
                        built, i_next = next_batch(producer, copies, i, ("seq", seen))
                        acks.append(
                            await producer.send_batch(built, target, partition=tp.partition)
                        )
                        i = i_next
                    seen += len(records)
                await asyncio.gather(*acks)
            samples.append((time.perf_counter(), float(seen)))
    finally:
        await producer.stop()
        await consumer.stop()
    if seen < n:
        raise RuntimeError(f"the pipe copied {seen} of {n} records in {timeout_s} s")
    return window_rate(samples, n)


def peak_rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def run_processor(
    bootstrap: str, topics: Topics, n: int, timeout_s: float, extra: tuple[str, ...] = ()
) -> dict[str, float]:
    with scratch_dir("lukhas-bench-") as state:
        log = state / "worker.log"
        samples: list[tuple[float, float]] = [(time.perf_counter(), 0.0)]
        proc, url = spawn_worker(bootstrap, topics, state, log, extra)
        try:
            deadline = time.monotonic() + timeout_s
            count = 0.0
            while count < n:
                if proc.poll() is not None:
                    raise RuntimeError(f"the worker stopped: {log.read_text()[-2000:]}")
                if time.monotonic() > deadline:
                    raise RuntimeError(f"worker folded {count:.0f} of {n} in {timeout_s} s")
                time.sleep(0.05)  # a /metrics scrape costs the worker ~1 ms: keep them rare
                with contextlib.suppress(OSError):  # not listening yet
                    count = metric(url, "lukhas_records_consumed_total", timeout=30)
                    samples.append((time.perf_counter(), count))
            applied = metric(url, "lukhas_events_applied_total", timeout=30)
            rss = peak_rss_mib(proc.pid)
        finally:
            stop_worker(proc)
    return {**window_rate(samples, n), "applied": applied, "peak_rss_mib": rss}


async def prepare(
    bootstrap: str, args: argparse.Namespace
) -> tuple[Topics, Topics, Topics, Topics, Topics, Topics, float]:
    """Topics of one run: the puts, the same puts again (for the at-least-once worker: a
    worker on a topic whose changes were published restores instead of folding), patches."""
    topics = Topics(f"bench{uuid.uuid4().hex[:8]}")
    again = Topics(f"benchalo{uuid.uuid4().hex[:8]}")
    patches = Topics(f"benchpatch{uuid.uuid4().hex[:8]}")
    coalesced = Topics(f"benchcoal{uuid.uuid4().hex[:8]}")
    small = Topics(f"benchsmall{uuid.uuid4().hex[:8]}")
    coalesced_puts = Topics(f"benchcoalput{uuid.uuid4().hex[:8]}")
    for t in (topics, again, patches, coalesced, small, coalesced_puts):
        await ensure_topics(bootstrap, t.specs(args.partitions))
    seconds = await append_events(bootstrap, topics, args.events, args.contexts, args.partitions)
    await append_events(bootstrap, again, args.events, args.contexts, args.partitions)
    await append_events(bootstrap, coalesced_puts, args.events, args.contexts, args.partitions)
    conversations = max(1, args.patch_events // args.messages)
    await append_patches(bootstrap, patches, args.patch_events, conversations, args.partitions)
    await append_patches(bootstrap, coalesced, args.patch_events, conversations, args.partitions)
    await append_small_patches(
        bootstrap, small, args.patch_events, args.contexts, args.partitions
    )  # fmt: skip
    return topics, again, patches, coalesced, small, coalesced_puts, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--contexts", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--timeout", type=float, default=300)
    parser.add_argument("--runs", type=int, default=3, help="alternating runs of each side")
    parser.add_argument("--patch-events", type=int, default=300_000)
    parser.add_argument(
        "--messages", type=int, default=100,
        help="messages each conversation grows by in the patch workload (100: about 5 KB)",
    )  # fmt: skip
    args = parser.parse_args()
    for name in ("events", "contexts", "partitions", "runs", "patch_events", "messages"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.patch_events <= args.patch_events // args.messages:
        parser.error("--patch-events must be more than --patch-events / --messages (the puts)")

    bares: list[dict[str, float]] = []
    pipes: list[dict[str, float]] = []
    procs: list[dict[str, float]] = []
    at_least_once: list[dict[str, float]] = []
    patch_runs: list[dict[str, float]] = []
    coalesced_runs: list[dict[str, float]] = []
    small_runs: list[dict[str, float]] = []
    coalesced_put_runs: list[dict[str, float]] = []
    with bootstrap_servers() as bootstrap:
        # Alternate them, so a slow spell of this shared machine hits all alike. Each run has
        # topics of its own: a fresh worker on a topic whose changes an earlier run published
        # would restore from the change topic instead of folding (processors/opener.py).
        for _ in range(args.runs):
            topics, again, patch_topics, coalesced, small, coalesced_puts, append_s = asyncio.run(
                prepare(bootstrap, args)
            )
            pipe_topics = Topics(f"benchpipe{uuid.uuid4().hex[:8]}")
            asyncio.run(ensure_topics(bootstrap, pipe_topics.specs(args.partitions)))
            pipe_topic = pipe_topics.changes
            bare = bare_consumer(bootstrap, topics.events, args.events, args.timeout)
            bares.append(asyncio.run(bare))
            pipe = bare_pipe(bootstrap, topics.events, pipe_topic, args.events, args.timeout)
            pipes.append(asyncio.run(pipe))
            eos = ("--exactly-once",)
            procs.append(run_processor(bootstrap, topics, args.events, args.timeout, eos))
            at_least_once.append(
                run_processor(bootstrap, again, args.events, args.timeout, ("--at-least-once",))
            )
            patch_runs.append(
                run_processor(bootstrap, patch_topics, args.patch_events, args.timeout, eos)
            )
            coalesced_runs.append(
                run_processor(bootstrap, coalesced, args.patch_events, args.timeout,
                              (*eos, "--coalesce-changes"))
            )  # fmt: skip
            small_runs.append(run_processor(bootstrap, small, args.patch_events, args.timeout, eos))
            coalesced_put_runs.append(
                run_processor(bootstrap, coalesced_puts, args.events, args.timeout,
                              (*eos, "--coalesce-changes"))
            )  # fmt: skip
        update_bytes, put_bytes = asyncio.run(measure_update_bytes(bootstrap, topics, 200))

    bare_rate = statistics.median(b["records_per_s"] for b in bares)
    pipe_rate = statistics.median(p["records_per_s"] for p in pipes)
    proc_rate = statistics.median(p["records_per_s"] for p in procs)
    ratio = proc_rate / bare_rate
    patch_rate = statistics.median(p["records_per_s"] for p in patch_runs)
    small_rate = statistics.median(p["records_per_s"] for p in small_runs)
    coalesced_rate = statistics.median(p["records_per_s"] for p in coalesced_runs)
    alo_rate = statistics.median(p["records_per_s"] for p in at_least_once)
    coalesced_put_rate = statistics.median(p["records_per_s"] for p in coalesced_put_runs)
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
        "bare_pipe_records_per_s": pipe_rate,
        "pipe_runs": [round(p["records_per_s"]) for p in pipes],
        "pipe_vs_bare": pipe_rate / bare_rate,
        "processor_vs_pipe": proc_rate / pipe_rate,
        "processor_runs": [round(p["records_per_s"]) for p in procs],
        "processor_applied": [p["applied"] for p in procs + at_least_once + coalesced_put_runs],
        "processor_at_least_once_events_per_s": alo_rate,
        "at_least_once_runs": [round(p["records_per_s"]) for p in at_least_once],
        "exactly_once_vs_at_least_once": proc_rate / alo_rate,
        "processor_peak_rss_mib": max(p["peak_rss_mib"] for p in procs),
        "patch_events": args.patch_events,
        "processor_patch_events_per_s": patch_rate,
        "patch_runs": [round(p["records_per_s"]) for p in patch_runs],
        "patches_vs_puts": patch_rate / proc_rate,
        "processor_coalesced_patch_events_per_s": coalesced_rate,
        "coalesced_patch_runs": [round(p["records_per_s"]) for p in coalesced_runs],
        "coalesced_patches_vs_puts": coalesced_rate / proc_rate,
        "processor_coalesced_put_events_per_s": coalesced_put_rate,
        "coalesced_put_runs": [round(p["records_per_s"]) for p in coalesced_put_runs],
        "coalesced_puts_vs_bare": coalesced_put_rate / bare_rate,
        "coalesced_patches_vs_coalesced_puts": coalesced_rate / coalesced_put_rate,
        "processor_small_patch_events_per_s": small_rate,
        "small_patch_runs": [round(p["records_per_s"]) for p in small_runs],
        "small_patches_vs_puts": small_rate / proc_rate,
        "messages_per_conversation": args.messages,
        "runs_timed_from_start": sum(
            int(r["timed_from_start"])
            for r in [
                *bares,
                *pipes,
                *procs,
                *at_least_once,
                *patch_runs,
                *coalesced_runs,
                *small_runs,
                *coalesced_put_runs,
            ]
        ),
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
        ("bare pipe", f"{pipe_rate:,.0f} records/s  runs {result['pipe_runs']}  (read, copied "
                      "to a topic exactly once, no fold: the ceiling with these clients; "
                      f"{pipe_rate / bare_rate:.1%} of the bare consumer, the fold "
                      f"{proc_rate / pipe_rate:.1%} of it)"),
        ("at least once", f"{alo_rate:,.0f} events/s  runs {result['at_least_once_runs']}  "
                          f"(exactly once: {proc_rate / alo_rate:.1%} of it)"),
        ("processor (patches)", f"{patch_rate:,.0f} events/s  runs {result['patch_runs']}  "
                                f"({args.patch_events:,} events: conversations growing by "
                                f"{args.messages} appended messages)"),
        ("patches / puts", f"{patch_rate / proc_rate:.1%}"),
        ("patches, coalesced", f"{coalesced_rate:,.0f} events/s  runs "
                               f"{result['coalesced_patch_runs']}  (--coalesce-changes: each "
                               "conversation's last change of a round published; "
                               f"{coalesced_rate / proc_rate:.1%} of puts, "
                               f"{coalesced_rate / coalesced_put_rate:.1%} of coalesced puts)"),
        ("puts, coalesced", f"{coalesced_put_rate:,.0f} events/s  runs "
                            f"{result['coalesced_put_runs']}  (--coalesce-changes; "
                            f"{coalesced_put_rate / bare_rate:.1%} of the bare consumer)"),
        ("small patches", f"{small_rate:,.0f} events/s  runs {result['small_patch_runs']}  "
                          f"(replace + add on documents under 200 bytes; "
                          f"{small_rate / proc_rate:.1%} of puts)"),
        ("update() wire bytes", f"{update_bytes:,} vs {put_bytes:,} for whole puts: "
                                f"{result['update_saving']:.1%} fewer (200 growing writes)"),
        ("processor peak RSS", f"{result['processor_peak_rss_mib']:.1f} MiB"),
    ]  # fmt: skip
    if result["runs_timed_from_start"]:
        rows.append(
            (
                "note",
                f"{result['runs_timed_from_start']} runs finished within "
                f"{MIN_WINDOW_S} s of their window's start and were timed from "
                "their start: use more --events for a steady figure",
            )
        )
    print_rows(rows, 20)
    write_result("materialize", result)
    for applied in result["processor_applied"]:
        if applied != args.events:
            sys.exit(f"a processor run applied {applied:.0f} of {args.events} events")


if __name__ == "__main__":
    main()
