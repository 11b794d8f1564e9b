"""The fold against its peers on the same work, the same broker, in one run, interleaved:
``lukhas worker`` (exactly once and at least once), Quix Streams (its RocksDB state,
exactly once and at least once) and a faust-streaming table (rocksdict, at least once).

Each side gets a fresh copy of the same WAL (``--events`` puts over ``--contexts`` contexts,
6 partitions) and folds it in a process of its own (``benchmarks/peer_apps.py`` for the
peers: decode the Avro event, canonical JSON, state in RocksDB, one change record per event).
Every side is counted alike, from its output topic's end offsets sampled every 0.25 s (the
worker's change topic, Quix's sink topic, faust's table changelog): the rate over the window
from ``START_SHARE`` of the records to all of them, as ``materialize.py`` counts. A side that
does not finish within ``--window`` seconds of its first output is timed over what it did
(faust folds far slower: it gets ``--faust-events``). Medians of ``--runs`` alternating
rounds; printed as a table of rates and ratios and written to
``benchmarks/results/peers.json``. Needs the benchmark extra (``pip install -e .[bench]``:
quixstreams); a peer that is not installed is reported as missing, not run.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import statistics
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _support import (
    bootstrap_servers,
    print_rows,
    scratch_dir,
    spawn_worker,
    stop_worker,
    write_result,
)
from aiokafka import AIOKafkaConsumer, TopicPartition
from materialize import MIN_WINDOW_S, START_SHARE, append_events

from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.topics import Topics

HERE = Path(__file__).parent


async def _end_total(consumer: AIOKafkaConsumer, tps: list[TopicPartition]) -> int:
    ends = await consumer.end_offsets(tps)
    return sum(ends.values())


async def sample(bootstrap: str, topic: str, n: int, window_s: float, timeout_s: float,
                 proc: subprocess.Popen[bytes]) -> dict[str, float]:  # fmt: skip
    """Samples the end offsets of ``topic`` until they reach ``n`` (or the window after the
    first output passes, or the side dies); the rate as ``materialize.window_rate`` counts."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        started = time.perf_counter()
        samples: list[tuple[float, int]] = [(started, 0)]
        tps: list[TopicPartition] = []
        first_output: float | None = None
        while True:
            now = time.perf_counter()
            if proc.poll() is not None:
                raise RuntimeError(f"the side stopped (exit {proc.returncode}) before {n} records")
            if now - started > timeout_s:
                raise RuntimeError(f"no output on {topic} within {timeout_s} s")
            if not tps:
                parts = consumer.partitions_for_topic(topic)
                if not parts:
                    # The topic appears later. Not `consumer.topics()`: it fetches metadata
                    # without updating the consumer's own view, which partitions_for_topic reads.
                    await consumer._client.force_metadata_update()
                    await asyncio.sleep(0.25)
                    continue
                tps = [TopicPartition(topic, p) for p in sorted(parts)]
            done = await _end_total(consumer, tps)
            samples.append((now, done))
            if done and first_output is None:
                first_output = now
            if done >= n or (first_output is not None and now - first_output > window_s):
                break
            await asyncio.sleep(0.25)
    finally:
        await consumer.stop()
    total = samples[-1][1]
    start = next((t, c) for t, c in samples if c >= START_SHARE * min(n, total))
    end = samples[-1]
    if end[0] - start[0] < MIN_WINDOW_S:  # too short to time: from the side's start
        start = samples[0]
    seconds = max(end[0] - start[0], 1e-9)
    return {"records_per_s": (end[1] - start[1]) / seconds, "seconds": seconds,
            "records": float(total)}  # fmt: skip


def run_worker_side(bootstrap: str, topics: Topics, n: int, args: argparse.Namespace,
                    guarantee: str) -> dict[str, float]:  # fmt: skip
    with scratch_dir("lukhas-peers-") as state:
        proc, _ = spawn_worker(bootstrap, topics, state, state / "worker.log", (f"--{guarantee}",))
        try:
            return asyncio.run(
                sample(bootstrap, topics.changes, n, args.window, args.timeout, proc)
            )
        finally:
            stop_worker(proc)


def run_peer(bootstrap: str, kind: str, wal: str, n: int, args: argparse.Namespace,
             guarantee: str) -> dict[str, float]:  # fmt: skip
    out = f"peer{kind}{uuid.uuid4().hex[:8]}"
    # faust's table changelog is <app id>-<table>-changelog; Quix writes to the sink topic.
    watched = f"peer-faust-{out}-{out}-changelog" if kind == "faust" else out
    with scratch_dir(f"lukhas-{kind}-") as state:
        log = (state / "peer.log").open("wb")
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "peer_apps.py"), kind, bootstrap, wal, out, str(state),
             guarantee],
            stdout=log, stderr=subprocess.STDOUT, cwd=state,
        )  # fmt: skip
        try:
            if kind == "quix":
                asyncio.run(_create(bootstrap, out, args.partitions))
            return asyncio.run(sample(bootstrap, watched, n, args.window, args.timeout, proc))
        except RuntimeError as exc:
            raise RuntimeError(
                f"{kind}: {exc}: {(state / 'peer.log').read_text()[-1500:]}"
            ) from None
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


async def _create(bootstrap: str, topic: str, partitions: int) -> None:
    from aiokafka.admin import AIOKafkaAdminClient, NewTopic

    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, partitions, 1)])
    finally:
        await admin.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--faust-events", type=int, default=30_000)
    parser.add_argument("--contexts", type=int, default=1_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument(
        "--window",
        type=float,
        default=60.0,
        help="most SECONDS a side is timed after its first output",
    )
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    for name in ("events", "faust_events", "contexts", "runs"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    have_quix = importlib.util.find_spec("quixstreams") is not None
    have_faust = importlib.util.find_spec("faust") is not None

    def worker(guarantee: str) -> Any:
        return lambda b, t, w: run_worker_side(b, t, args.events, args, guarantee)

    def peer(kind: str, n: int, guarantee: str) -> Any:
        return lambda b, t, w: run_peer(b, kind, w, n, args, guarantee)

    sides: list[tuple[str, Any]] = [
        ("lukhas exactly once", worker("exactly-once")),
        ("lukhas at least once", worker("at-least-once")),
    ]
    if have_quix:
        sides += [
            ("quix exactly once", peer("quix", args.events, "exactly-once")),
            ("quix at least once", peer("quix", args.events, "at-least-once")),
        ]
    if have_faust:
        sides.append(("faust table", peer("faust", args.faust_events, "at-least-once")))
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _ in sides}
    with bootstrap_servers() as bootstrap:
        for _ in range(args.runs):
            for name, run in sides:
                topics = Topics(f"peers{uuid.uuid4().hex[:8]}")
                asyncio.run(ensure_topics(bootstrap, topics.specs(args.partitions)))
                n = args.faust_events if name == "faust table" else args.events
                asyncio.run(append_events(bootstrap, topics, n, args.contexts, args.partitions))
                results[name].append(run(bootstrap, topics, topics.events))
                print(f"  {name}: {results[name][-1]['records_per_s']:,.0f} records/s", flush=True)
    medians = {
        name: statistics.median(r["records_per_s"] for r in runs) for name, runs in results.items()
    }
    ours = medians["lukhas exactly once"]
    work = (
        f"{args.events:,} puts over {args.contexts:,} contexts ({args.faust_events:,} for "
        f"faust), {args.partitions} partitions, 1 broker, median of {args.runs}"
    )
    rows = [("work", work)]
    for name, rate in medians.items():
        runs = [round(r["records_per_s"]) for r in results[name]]
        rows.append((name, f"{rate:,.0f} records/s  runs {runs}  lukhas exactly once is "
                           f"{ours / rate:.2f}x"))  # fmt: skip
    if not have_quix:
        rows.append(("quix", "not installed (pip install -e .[bench])"))
    print_rows(rows, 22)
    write_result("peers", {"events": args.events, "faust_events": args.faust_events,
                           "medians": medians, "runs": results})  # fmt: skip


if __name__ == "__main__":
    main()
