"""Commit latency of transactions, against a real broker and worker.

``--rounds`` times (default 200), one after another: a single put, a transaction of
``--events`` puts (default 3) whose contexts live in one partition, and one whose contexts live
in as many partitions. Each is timed from the first write call to its outcome known
(``Receipt.outcome``: the worker has folded it), and the commit alone (leaving the block, or
the put's acknowledgement). One partition: one transaction record through the idempotent
producer; several: one record per partition in one Kafka transaction, then the commit
protocol in the log (prepare, votes to the coordinator, its decision to the others: two more
appends and folds before the outcome is known). The seed claims 35 ms for its two-phase
commit. Uses ``LUKHAS_BOOTSTRAP`` when set, else a one-broker cluster of its own.
Figures to stdout and ``benchmarks/results/transactions.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
import uuid
from pathlib import Path

from _support import (
    bootstrap_servers,
    percentile,
    print_rows,
    progress,
    scratch_dir,
    start_worker,
    stop_worker,
    write_result,
)

from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics, partition_for

PARTITIONS = 3


def ids_in(partition: int, n: int, tag: str) -> list[str]:
    found = (f"{tag}-{i}" for i in range(100_000))
    return [c for c in found if partition_for(c.encode(), PARTITIONS) == partition][:n]


async def measure(bootstrap: str, url: str, topics: Topics, rounds: int, events: int) -> dict:
    one = ids_in(0, events, "one")
    across = [ids_in(p % PARTITIONS, 1 + p // PARTITIONS, "across")[p // PARTITIONS]
              for p in range(events)]  # fmt: skip
    times: dict[str, list[float]] = {k: [] for k in ("put", "one", "across")}
    commits: dict[str, list[float]] = {k: [] for k in ("put", "one", "across")}
    async with ContextClient(ClientConfig(bootstrap, url, topics)) as client:

        async def tx(ids: list[str], i: int) -> tuple[float, float]:
            started = time.perf_counter()
            async with client.transaction() as t:
                for cid in ids:
                    await t.put(cid, {"i": i})
                committing = time.perf_counter()
            committed = time.perf_counter()
            outcomes = await asyncio.gather(*(r.outcome(30) for r in t.receipts))
            assert all(o.status == "applied" for o in outcomes), outcomes
            return time.perf_counter() - started, committed - committing

        async def put(i: int) -> tuple[float, float]:
            started = time.perf_counter()
            receipt = await client.put("single", {"i": i})
            acked = time.perf_counter()
            assert (await receipt.outcome(30)).status == "applied"
            return time.perf_counter() - started, acked - started

        for i in range(3):  # warm-up: producers started, the transaction log created
            await put(i)
            await tx(one, i)
            await tx(across, i)
        for i in range(rounds):
            for name, call in (("put", put(i)), ("one", tx(one, i)), ("across", tx(across, i))):
                total, commit = await call
                times[name].append(total)
                commits[name].append(commit)
    return {"times": times, "commits": commits}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--events", type=int, default=3)
    args = parser.parse_args()
    say = progress("transactions")
    with bootstrap_servers(say) as bootstrap, scratch_dir("lukhas-bench-tx-") as tmp:
        topics = Topics(f"benchtx{uuid.uuid4().hex[:8]}")
        asyncio.run(ensure_topics(bootstrap, topics.specs(PARTITIONS), brokers=None))
        proc, url = start_worker(bootstrap, topics, Path(tmp) / "state", PARTITIONS, 120)
        try:
            say(f"{args.rounds} rounds of a put and two transactions of {args.events} puts")
            found = asyncio.run(measure(bootstrap, url, topics, args.rounds, args.events))
        finally:
            stop_worker(proc)
    rows = []
    result: dict[str, object] = {"rounds": args.rounds, "events": args.events}
    labels = {
        "put": "single put",
        "one": f"transaction of {args.events}, one partition",
        "across": f"transaction of {args.events}, {args.events} partitions",
    }
    for name, label in labels.items():
        total = sorted(found["times"][name])
        commit = sorted(found["commits"][name])
        p50, p99 = percentile(total, 0.5) * 1e3, percentile(total, 0.99) * 1e3
        c50 = percentile(commit, 0.5) * 1e3
        rows.append((f"{label}: to applied", f"p50 {p50:.1f} ms, p99 {p99:.1f} ms"))
        rows.append((f"{label}: commit (acknowledged)", f"p50 {c50:.1f} ms"))
        result[f"{name}_applied_p50_ms"] = round(p50, 2)
        result[f"{name}_applied_p99_ms"] = round(p99, 2)
        result[f"{name}_commit_p50_ms"] = round(c50, 2)
    print_rows(rows, 56)
    write_result("transactions", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
