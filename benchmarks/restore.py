"""Restore from a checkpoint against a full replay, and expiry under load, in one run.

A. Restore (``--contexts`` distinct contexts, default 1,000,000, in one WAL partition):
   1. append one put per context, one checkpoint barrier (``bench-ck``), ``--tail`` more puts
      (updates of existing contexts);
   2. full replay: ``restore_offline(..., From.SCRATCH, until=<end of the WAL>)`` folds
      everything and, passing the barrier, writes checkpoint ``bench-ck``;
   3. ``restore_offline(..., From.CHECKPOINT, "bench-ck", until=<end>)`` on another state
      dir: installs the checkpoint (hard links), verifies its digest by a full scan, folds
      the tail;
   4. both must end with the same digest and next_offset (exit 1 otherwise);
   5. ``lukhas replay --as-of 0:O`` (``processors.pointintime.build``) for an offset O in the middle
      of the tail, from the checkpoint (the newest at or below O) and, with no checkpoint
      directory, from scratch: the two must agree on the digest.
B. Expiry: ``lukhas worker --expiry-interval 0.2`` on fresh 3-partition topics; ``--expiring``
   puts whose TTL (``--ttl-ms``, default 5 s) runs out shortly after they are written, while a
   background load of plain puts (``--load-rate``/s on other ids) runs; the change topic is read
   until every expired tombstone has arrived. Throughput: tombstones over the span of their log
   times; lateness: ``log_time_ms - expires_at_ms`` of each tombstone (its headers).

Starts its own one-broker cluster (``LocalCluster``) unless ``LUKHAS_BOOTSTRAP`` is set. Every
wait is bounded (``--timeout`` per wait, ``--overall-timeout`` per half). Progress goes to
stderr; the figures to stdout and ``benchmarks/results/restore.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import shutil
import sys
import time
import uuid
from pathlib import Path
from typing import Any

from _support import (
    Records,
    bootstrap_servers,
    doc_for,
    log_problems,
    metric,
    new_producer,
    offsets,
    percentile,
    print_rows,
    progress,
    scratch_dir,
    send_records,
    start_worker,
    stop_worker,
    write_result,
)
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.offline import From, OfflineRestoreReport, restore_offline
from lukhas_context.schemas.binary import write_bytes
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import EMPTY_METADATA, ContextEvent, Put
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.barriers import append_barriers
from lukhas_context.streams.topics import Topics, partition_for

CHECKPOINT_ID = "bench-ck"
CHUNK = 100_000
say = progress("restore-bench")


# ---------------------------------------------------------------- encoding and appending


class PutEncoder:
    """Encodes ``Put`` events from a template cut out of one ``EventCodec.encode``: header,
    event id, context id, the op's prefix, the document and the fixed tail (TTL, no
    condition, no fence, no metadata). Checked against the codec before use."""

    def __init__(self, codec: EventCodec, ttl_ms: int | None = None) -> None:
        self.codec, self.ttl_ms = codec, ttl_ms
        eid, doc = b"\xab" * 16, b"D" * 10
        sample = codec.encode(ContextEvent(eid, "x", Put(doc, ttl_ms), None, None, EMPTY_METADATA))
        head = codec.header + eid + write_bytes(b"x")
        if not sample.startswith(head):
            raise RuntimeError("the event layout changed: the template does not apply")
        rest = sample[len(head) :]
        at = rest.find(write_bytes(doc))
        if at < 0:
            raise RuntimeError("the event layout changed: the document was not found")
        self.header = codec.header
        self.op_prefix = rest[:at]
        self.tail = rest[at + len(write_bytes(doc)) :]
        for cid, doc in (("ctx-0", b"{}"), ("c" * 200, b'{"a":"' + b"x" * 300 + b'"}')):
            event_id = uuid.uuid4().bytes
            event = ContextEvent(event_id, cid, Put(doc, ttl_ms), None, None, EMPTY_METADATA)
            if self.encode(event_id, cid.encode(), doc) != codec.encode(event):
                raise RuntimeError("the template encodes differently from EventCodec.encode")

    def encode(self, event_id: bytes, key: bytes, doc: bytes) -> bytes:
        return b"".join(
            (self.header, event_id, write_bytes(key), self.op_prefix, write_bytes(doc), self.tail)
        )


LINGER_MS = 5
EXPIRY_ARGS = ("--expiry-interval", "0.2")


# ---------------------------------------------------------------- A. checkpoint vs replay


async def append_restore_log(bootstrap: str, topics: Topics, args: argparse.Namespace) -> float:
    """N puts over N contexts, the barrier, ``tail`` updates; all in partition 0 when the WAL
    has one partition. Returns the seconds spent."""
    codec = EventCodec()
    enc = PutEncoder(codec)
    n, parts = args.contexts, args.partitions
    started = time.perf_counter()
    producer = new_producer(bootstrap, LINGER_MS)
    await producer.start()
    try:

        async def put_range(first: int, last: int, cid_of: Any) -> None:
            by_partition: Records = {p: [] for p in range(parts)}
            for i in range(first, last):
                key = cid_of(i)
                value = enc.encode(uuid.uuid4().bytes, key, doc_for(i))
                by_partition[0 if parts == 1 else partition_for(key, parts)].append((key, value))
            await asyncio.gather(
                *(send_records(producer, topics.events, p, r) for p, r in by_partition.items())
            )

        for first in range(0, n, CHUNK):
            await put_range(first, min(n, first + CHUNK), lambda i: b"ctx-%d" % i)
            say(f"appended {min(n, first + CHUNK):,} / {n:,} puts")
        offsets = await append_barriers(producer, codec, topics.events, CHECKPOINT_ID, parts)
        say(f"appended barrier {CHECKPOINT_ID} at {offsets}")
        stride = max(1, n // max(1, args.tail))
        for first in range(0, args.tail, CHUNK):
            last = min(args.tail, first + CHUNK)
            await put_range(first, last, lambda i: b"ctx-%d" % ((i * stride) % n))
        say(f"appended {args.tail:,} tail puts")
    finally:
        await producer.stop()
    return time.perf_counter() - started


async def timed_rebuild(config: WorkerConfig, source: From, until: int, timeout_s: float) -> Any:
    checkpoint_id = CHECKPOINT_ID if source is From.CHECKPOINT else None
    started = time.perf_counter()
    report: OfflineRestoreReport = await asyncio.wait_for(
        restore_offline(config, 0, source, checkpoint_id, progress=False, until=until), timeout_s
    )
    return report, time.perf_counter() - started


async def time_as_of(
    bootstrap: str, topics: Topics, work: Path, offset: int, timeout_s: float
) -> dict[str, Any]:
    """``replay --as-of 0:OFFSET`` from the checkpoint and from scratch."""
    from lukhas_context.processors.pointintime import build, parse_as_of

    point = parse_as_of(f"0:{offset}")
    out: dict[str, Any] = {"offset": offset}
    for name, ck in (("checkpoint", work / "ck"), ("scratch", work / "no-ck")):
        config = WorkerConfig(bootstrap, state_dir=work / f"asof-{name}-state", topics=topics,
                              checkpoint_dir=ck)  # fmt: skip
        started = time.perf_counter()
        manifest = await asyncio.wait_for(
            build(config, work / f"asof-{name}", point, [0], progress=False), timeout_s
        )
        out[f"{name}_s"] = time.perf_counter() - started
        out[f"{name}_digest"] = manifest["partitions"]["0"]["digest"]
        out[f"{name}_source"] = manifest["partitions"]["0"]["source"]
        say(f"replay --as-of 0:{offset} from {name}: {out[f'{name}_s']:.2f} s")
        shutil.rmtree(work / f"asof-{name}", ignore_errors=True)
    out["match"] = out["checkpoint_digest"] == out["scratch_digest"]
    out["ratio"] = out["scratch_s"] / out["checkpoint_s"]
    return out


async def run_restore(bootstrap: str, args: argparse.Namespace, work: Path) -> dict[str, Any]:
    topics = Topics(f"benchrestore{uuid.uuid4().hex[:8]}")
    await ensure_topics(bootstrap, topics.specs(args.partitions), brokers=None)
    append_s = await asyncio.wait_for(append_restore_log(bootstrap, topics, args), args.timeout)
    end = (await offsets(bootstrap, topics.events, args.partitions))[1][0]
    say(f"WAL partition 0 ends at offset {end:,}; full replay from scratch ...")
    ck = work / "ck"

    def config(state: str) -> WorkerConfig:
        return WorkerConfig(bootstrap, state_dir=work / state, topics=topics, checkpoint_dir=ck)

    replay, replay_s = await timed_rebuild(config("replay"), From.SCRATCH, end, args.timeout)
    say(f"replay: {replay_s:.1f} s, {replay.events_folded:,} records folded; restoring ...")
    restored, restore_s = await timed_rebuild(
        config("restored"), From.CHECKPOINT, end, args.timeout
    )
    say(f"checkpoint restore: {restore_s:.1f} s, {restored.events_folded:,} records folded")
    as_of = await time_as_of(bootstrap, topics, work, end - args.tail // 2, args.timeout)
    return {
        "as_of": as_of,
        "contexts": args.contexts,
        "tail": args.tail,
        "partitions": args.partitions,
        "events": end,
        "append_s": append_s,
        "replay_s": replay_s,
        "restore_s": restore_s,
        "ratio": replay_s / restore_s,
        "replay": replay.to_dict(),
        "restored": restored.to_dict(),
        "restore_install_verify_s": restored.restore.seconds - restored.fold_seconds,
        "match": (
            replay.restore.digest == restored.restore.digest
            and replay.restore.next_offset == restored.restore.next_offset
        ),
    }


# ---------------------------------------------------------------- B. expiry under load


async def background_load(
    producer: AIOKafkaProducer, topic: str, rate: int, stop: asyncio.Event, until: float
) -> int:
    """Plain puts on ``load-*`` ids at ``rate`` per second, until ``stop`` or ``until``."""
    codec = EventCodec()
    enc = PutEncoder(codec)
    sent, tick, started = 0, 0.05, time.monotonic()
    acks = []
    while not stop.is_set() and time.monotonic() < until:
        due = int((time.monotonic() - started) * rate)
        for i in range(sent, due):
            key = b"load-%d" % (i % 10_000)
            value = enc.encode(uuid.uuid4().bytes, key, doc_for(i))
            acks.append(await producer.send(topic, value=value, key=key))
        sent = max(sent, due)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), tick)
    await asyncio.gather(*acks)
    return sent


async def read_expired(
    bootstrap: str, topics: Topics, partitions: int, n: int, deadline: float
) -> list[tuple[int, int]]:
    """``(log_time_ms, expires_at_ms)`` of the first expired tombstone of each context, from
    the change topic, until ``n`` contexts have one or ``deadline``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        isolation_level="read_committed",
        max_partition_fetch_bytes=4 * 1024 * 1024,
    )
    await consumer.start()
    found: dict[bytes, tuple[int, int]] = {}
    try:
        tps = [TopicPartition(topics.changes, p) for p in range(partitions)]
        consumer.assign(tps)
        await consumer.seek_to_beginning(*tps)
        reported = 0
        while len(found) < n and time.monotonic() < deadline:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            for records in batch.values():
                for m in records:
                    if m.value is not None or m.key in found:
                        continue
                    headers = dict(m.headers or ())
                    if headers.get("kind") != b"expired":
                        continue
                    found[m.key] = (int(headers["log_time_ms"]), int(headers["expires_at_ms"]))
            if len(found) >= reported + n // 10:
                reported = len(found)
                say(f"expired tombstones: {reported:,} / {n:,}")
    finally:
        await consumer.stop()
    return list(found.values())


async def expiry_phase(
    bootstrap: str, topics: Topics, args: argparse.Namespace, url: str, n: int, spread_ms: int
) -> dict[str, Any]:
    """``n`` contexts expiring ``ttl_ms`` after they are written: all at once (a burst, the
    sweeper's worst case) or, with ``spread_ms``, evenly over that many milliseconds (a steady
    rate, where lateness is the sweep interval plus the trip through the log)."""
    parts = 3
    codec = EventCodec()
    enc = PutEncoder(codec, args.ttl_ms)
    records: Records = {p: [] for p in range(parts)}
    for i in range(n):
        key = b"exp-%d" % i
        if spread_ms:
            ttl = args.ttl_ms + i * spread_ms // n
            put = ContextEvent(uuid.uuid4().bytes, key.decode(), Put(b"{}", ttl))
            value = codec.encode(put)
        else:
            value = enc.encode(uuid.uuid4().bytes, key, b"{}")
        records[partition_for(key, parts)].append((key, value))
    deadline = time.monotonic() + args.timeout
    producer = new_producer(bootstrap, LINGER_MS)
    await producer.start()
    stop = asyncio.Event()
    load = None
    try:
        reader = asyncio.create_task(read_expired(bootstrap, topics, parts, n, deadline))
        load = asyncio.create_task(
            background_load(producer, topics.events, args.load_rate, stop, deadline)
        )
        started = time.perf_counter()
        await asyncio.gather(
            *(send_records(producer, topics.events, p, r) for p, r in records.items())
        )
        append_s = time.perf_counter() - started
        say(f"appended {n:,} puts with ttl_ms={args.ttl_ms} in {append_s:.2f} s; waiting ...")
        expired = await reader
        stop.set()
        load_sent = await load
        load_s = time.perf_counter() - started
    finally:
        stop.set()
        if load is not None and not load.done():
            load.cancel()
            with contextlib.suppress(BaseException):
                await load
        await producer.stop()
    if len(expired) < n:
        raise RuntimeError(f"only {len(expired):,} of {n:,} expired tombstones in {args.timeout} s")
    appended = await asyncio.to_thread(metric, url, "lukhas_expire_events_appended", math.nan)
    log_times = sorted(t for t, _ in expired)
    lateness = sorted(t - e for t, e in expired)
    expires_at = sorted(e for _, e in expired)
    span_ms = log_times[-1] - log_times[0]
    return {
        "expiring": n,
        "spread_ms": spread_ms,
        "ttl_ms": args.ttl_ms,
        "partitions": parts,
        "append_s": append_s,
        "load_puts": load_sent,
        "load_rate_per_s": load_sent / load_s,
        "expiry_span_ms": span_ms,
        "expires_at_span_ms": expires_at[-1] - expires_at[0],
        "throughput_per_s": n / (span_ms / 1000) if span_ms else float("inf"),
        "lateness_ms": {
            "min": lateness[0],
            "p50": percentile(lateness, 0.50),
            "p99": percentile(lateness, 0.99),
            "max": lateness[-1],
        },
        "expire_events_appended": appended,
    }


def run_expiry(
    bootstrap: str, args: argparse.Namespace, work: Path, name: str, n: int, spread_ms: int
) -> dict[str, Any]:
    topics = Topics(f"benchexpiry{uuid.uuid4().hex[:8]}")
    asyncio.run(ensure_topics(bootstrap, topics.specs(3), brokers=None))
    state = work / name / "state"
    proc, url = start_worker(bootstrap, topics, state, 3, args.timeout, EXPIRY_ARGS)
    say(f"worker pid {proc.pid} healthy at {url}")
    try:
        phase = expiry_phase(bootstrap, topics, args, url, n, spread_ms)
        result = asyncio.run(asyncio.wait_for(phase, args.overall_timeout))
    finally:
        stop_worker(proc)
    result["worker_exit"] = proc.returncode
    result["worker_log_problems"] = log_problems(work / name / "worker.log")
    return result


# ---------------------------------------------------------------- main


def print_table(result: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = []
    a = result.get("restore")
    if a:
        rp, rs = a["replay"], a["restored"]
        rows += [
            ("contexts / events", f"{a['contexts']:,} contexts, {a['events']:,} WAL records "
                                  f"(incl. barrier, {a['tail']:,} tail puts), 1 partition"),
            ("append", f"{a['append_s']:.1f} s ({a['events'] / a['append_s']:,.0f} events/s)"),
            ("full replay", f"{a['replay_s']:.2f} s ({rp['events_folded']:,} records folded, "
                            f"{rp['fold_seconds']:.2f} s of fold)"),
            ("checkpoint restore", f"{a['restore_s']:.2f} s"),
            ("  install+verify", f"{a['restore_install_verify_s']:.2f} s "
                                 f"(restore.seconds {rs['seconds']:.2f} s incl. fold)"),
            ("  fold of the tail", f"{rs['fold_seconds']:.2f} s "
                                   f"({rs['events_folded']:,} records)"),
            ("ratio replay/restore", f"{a['ratio']:.1f}x"),
            ("replay --as-of 0:O", f"O = {a['as_of']['offset']:,}: from the checkpoint "
                                   f"{a['as_of']['checkpoint_s']:.2f} s, from scratch "
                                   f"{a['as_of']['scratch_s']:.2f} s "
                                   f"({a['as_of']['ratio']:.1f}x), digests "
                                   + ("equal" if a["as_of"]["match"] else "DIFFERENT")),
            ("digest / next_offset", f"{rp['digest']} / {rp['next_offset']:,} vs "
                                     f"{rs['digest']} / {rs['next_offset']:,}: "
                                     + ("equal" if a["match"] else "DIFFERENT")),
        ]  # fmt: skip
    for label, b in (("burst", result.get("expiry")), ("steady", result.get("expiry_steady"))):
        if not b:
            continue
        late = b["lateness_ms"]
        due = ("all due at once" if not b["spread_ms"]
               else f"due evenly over {b['spread_ms']:,} ms")  # fmt: skip
        rows += [
            (f"expiry ({label})", f"{b['expiring']:,} puts with ttl_ms={b['ttl_ms']}, {due}, "
                                  f"3 partitions, appended in {b['append_s']:.2f} s"),
            ("background load", f"{b['load_puts']:,} puts ({b['load_rate_per_s']:,.0f}/s)"),
            ("expiry throughput", f"{b['throughput_per_s']:,.0f} tombstones/s (log times over "
                                  f"{b['expiry_span_ms']:,} ms; expiries due over "
                                  f"{b['expires_at_span_ms']:,} ms)"),
            ("expiry lateness", f"p50 {late['p50']:,} ms  p99 {late['p99']:,} ms  "
                                f"max {late['max']:,} ms  (min {late['min']:,} ms)"),
            ("Expire events sent", f"{b['expire_events_appended']:,.0f} (sweeper, incl. retries)"),
            ("worker", f"exit {b['worker_exit']}, {len(b['worker_log_problems'])} warnings/errors "
                       "in its log"),
        ]  # fmt: skip
    rows.append(("total runtime", f"{result['total_s']:.1f} s"))
    print_rows(rows, 22)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=1_000_000)
    parser.add_argument("--tail", type=int, default=50_000)
    parser.add_argument("--partitions", type=int, default=1, help="WAL partitions of part A")
    parser.add_argument("--expiring", type=int, default=100_000, help="burst: all due at once")
    parser.add_argument("--steady", type=int, default=30_000, help="steady: due evenly over")
    parser.add_argument("--spread-ms", type=int, default=15_000, help="... this many ms")
    parser.add_argument("--ttl-ms", type=int, default=5_000)
    parser.add_argument("--load-rate", type=int, default=2_000, help="background puts per s")
    parser.add_argument("--timeout", type=float, default=900, help="bound of each wait (s)")
    parser.add_argument("--overall-timeout", type=float, default=1800, help="per half (s)")
    parser.add_argument("--skip-replay", action="store_true", help="skip A (restore vs replay)")
    parser.add_argument("--skip-expiry", action="store_true", help="skip B (expiry)")
    args = parser.parse_args()
    if args.contexts < 1 or args.tail < 0 or args.expiring < 1:
        parser.error("--contexts and --expiring must be positive, --tail not negative")

    started = time.perf_counter()
    result: dict[str, Any] = {"restore": None, "expiry": None}
    with scratch_dir("lukhas-bench-restore-") as work, bootstrap_servers(say) as bootstrap:
        if not args.skip_replay:
            coro = run_restore(bootstrap, args, work)
            result["restore"] = asyncio.run(asyncio.wait_for(coro, args.overall_timeout))
            for sub in ("replay", "restored"):  # free the disk before part B
                shutil.rmtree(work / sub, ignore_errors=True)
        if not args.skip_expiry:
            result["expiry"] = run_expiry(bootstrap, args, work, "expiry", args.expiring, 0)
            result["expiry_steady"] = run_expiry(
                bootstrap, args, work, "expiry-steady", args.steady, args.spread_ms
            )
    result["total_s"] = time.perf_counter() - started
    print_table(result)
    write_result("restore", result)
    if result["restore"] is not None and not result["restore"]["match"]:
        sys.exit("the checkpoint restore and the full replay end in different states")
    if result["restore"] is not None and not result["restore"]["as_of"]["match"]:
        sys.exit("replay --as-of from the checkpoint and from scratch end in different states")


if __name__ == "__main__":
    main()
