"""Peak resident memory of a worker against its memory budget (``--memory-budget``).

Three runs, each a fresh worker folding a fresh topic (one broker, ``LocalCluster`` or
``LUKHAS_BOOTSTRAP``), its peak resident memory (``VmHWM``) read when it has folded all:

1. ``--events`` puts over ``--contexts`` contexts, the default budget (1 GiB);
2. ``--many-events`` puts over the same contexts, the default budget: memory should follow
   the contexts, not the events (the issue's bar: within 10% of run 1). Its resident memory
   is sampled while it folds; the table gives its range once it has folded as many events
   as run 1 (a flat range: memory bounded by the contexts, whatever the peaks);
3. ``--many-contexts`` contexts, one put each, under ``--budget`` (default 512 MiB): the
   peak against the budget, and ``--check-reads`` contexts read back and compared.

Appends go in chunks of 200,000 events, so the benchmark's own memory stays small. Prints a
table and writes ``benchmarks/results/memory.json``. Bounded: every wait has a timeout.
Run: ``.venv/bin/python benchmarks/memory.py`` (the issue's sizes: ``--many-events 10000000
--many-contexts 10000000``; they take a long while here).
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

import orjson
from _support import (
    Records,
    bootstrap_servers,
    doc_for,
    http_get,
    metric,
    print_rows,
    scratch_dir,
    send_partitions,
    spawn_worker,
    stop_worker,
    write_result,
)
from materialize import peak_rss_mib

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import EMPTY_METADATA, ContextEvent, Put
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.topics import Topics, partition_for

CHUNK = 200_000
MIB = 1024 * 1024


async def append(bootstrap: str, topics: Topics, n: int, contexts: int, parts: int) -> None:
    """``n`` puts, event ``i`` on ``ctx-{i % contexts}`` with ``doc_for(i)``, in chunks."""
    codec = EventCodec()
    for start in range(0, n, CHUNK):
        records: Records = {p: [] for p in range(parts)}
        for i in range(start, min(n, start + CHUNK)):
            cid = f"ctx-{i % contexts}"
            key = cid.encode()
            event = ContextEvent(uuid.uuid4().bytes, cid, Put(doc_for(i)), None, None,
                                 EMPTY_METADATA)  # fmt: skip
            records[partition_for(key, parts)].append((key, codec.encode(event)))
        await send_partitions(bootstrap, topics.events, records)


def run(
    bootstrap: str, args: argparse.Namespace, events: int, contexts: int, budget: str | None
) -> dict[str, Any]:
    topics = Topics(f"mem{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_topics(bootstrap, topics.specs(args.partitions)))
    started = time.perf_counter()
    asyncio.run(append(bootstrap, topics, events, contexts, args.partitions))
    appended_s = time.perf_counter() - started
    extra = ("--memory-budget", budget) if budget else ()
    with scratch_dir("lukhas-memory-") as state:
        proc, url = spawn_worker(bootstrap, topics, state, state / "worker.log", extra)
        try:
            deadline = time.monotonic() + args.timeout
            count = 0.0
            series: list[tuple[float, float]] = []  # (records folded, resident MiB)
            folding = time.perf_counter()
            while count < events:
                if proc.poll() is not None:
                    raise RuntimeError(
                        f"the worker stopped: {(state / 'worker.log').read_text()[-2000:]}"
                    )
                if time.monotonic() > deadline:
                    raise RuntimeError(f"folded {count:.0f} of {events} in {args.timeout} s")
                time.sleep(0.5)
                try:
                    count = metric(url, "lukhas_records_consumed_total", timeout=30)
                except OSError:
                    continue
                series.append((count, rss_mib(proc.pid)))
            fold_s = time.perf_counter() - folding
            peak = peak_rss_mib(proc.pid)
            text = http_get(f"{url}/metrics", 30)[1].decode()
            parts = dict(re.findall(r'^lukhas_memory_bytes\{part="(\w+)"\} (\S+)$', text, re.M))
            paused = re.search(r'lukhas_memory_backpressure_total\{action="paused"\} (\S+)', text)
            wrong = check_reads(url, events, contexts, args.check_reads)
        finally:
            stop_worker(proc)
    return {
        "events": events,
        "contexts": contexts,
        "budget": budget or "default (1GiB)",
        "peak_rss_mib": round(peak, 1),
        "memory_bytes": {k: float(v) for k, v in parts.items()},
        "paused_rounds": float(paused.group(1)) if paused else 0.0,
        "reads_checked": min(args.check_reads, contexts),
        "reads_wrong": wrong,
        "rss_series": [(int(c), round(m, 1)) for c, m in series],
        "append_s": round(appended_s, 1),
        "fold_s": round(fold_s, 1),
    }


def rss_mib(pid: int) -> float:
    """``pid``'s resident memory now (VmRSS), in MiB."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    return int(match.group(1)) / 1024 if match else float("nan")


def check_reads(url: str, events: int, contexts: int, samples: int) -> int:
    """Reads ``samples`` random contexts over HTTP; returns how many differ from the last
    document written to them."""
    wrong = 0
    rng = random.Random(7)
    for c in rng.sample(range(contexts), min(samples, contexts)):
        last = c + ((events - 1 - c) // contexts) * contexts  # the last event on ctx-c
        status, body = http_get(f"{url}/v1/contexts/ctx-{c}", 30)
        if status != 200 or orjson.loads(body)["doc"] != orjson.loads(doc_for(last)):
            wrong += 1
    return wrong


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--many-events", type=int, default=3_000_000)
    parser.add_argument("--contexts", type=int, default=1_000)
    parser.add_argument("--many-contexts", type=int, default=2_000_000)
    parser.add_argument("--budget", default="512MiB")
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--check-reads", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=1800)
    args = parser.parse_args()
    for name in ("events", "many_events", "contexts", "many_contexts", "partitions"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    with bootstrap_servers() as bootstrap:
        few = run(bootstrap, args, args.events, args.contexts, None)
        many = run(bootstrap, args, args.many_events, args.contexts, None)
        wide = run(bootstrap, args, args.many_contexts, args.many_contexts, args.budget)
    growth = many["peak_rss_mib"] / few["peak_rss_mib"] - 1
    # The longer run's resident memory once it has folded as many events as the shorter one:
    # flat means memory follows the contexts; the peak is the highest moment of it.
    later = [mib for done, mib in many["rss_series"] if done >= few["events"]]
    plateau = (min(later), statistics.median(later), max(later)) if later else None
    budget_mib = wide["memory_bytes"].get("budget", 0) / MIB
    rows = [
        ("events, default budget", f"{few['events']:,} puts over {few['contexts']:,} contexts: "
                                   f"peak {few['peak_rss_mib']:.1f} MiB"),
        ("more events", f"{many['events']:,} puts over {many['contexts']:,} contexts: peak "
                        f"{many['peak_rss_mib']:.1f} MiB ({growth:+.1%})"),
        ("after as many", "longer run, from its first "
                          f"{few['events']:,} puts on, sampled every 0.5 s: " + (
                              "resident {:.1f} / {:.1f} / {:.1f} MiB (min / median / max)"
                              .format(*plateau) if plateau else "no samples")),
        ("many contexts", f"{wide['contexts']:,} contexts under --memory-budget {args.budget}: "
                          f"peak {wide['peak_rss_mib']:.1f} MiB of {budget_mib:.0f} MiB "
                          f"({wide['peak_rss_mib'] - budget_mib:+.1f} MiB), paused rounds "
                          f"{wide['paused_rounds']:.0f}"),
        ("reads", f"{wide['reads_checked']} contexts read back, {wide['reads_wrong']} wrong"),
    ]  # fmt: skip
    print_rows(rows, 24)
    write_result("memory", {"runs": [few, many, wide], "growth": growth, "plateau": plateau})
    if wide["reads_wrong"]:
        raise SystemExit(f"{wide['reads_wrong']} reads differ from what was written")


if __name__ == "__main__":
    main()
