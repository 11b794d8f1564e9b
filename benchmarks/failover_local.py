"""Failover of local worker processes with a large state: kill -9 one of two workers under
load, then the time until each partition it served answers a read-your-write again.

1. Start a one-broker cluster (``LocalCluster``, or ``LUKHAS_BOOTSTRAP``); fresh topics of
   ``--partitions`` (6) partitions; append ``--contexts`` puts (1,000,000), one per context.
2. Start two ``lukhas worker`` processes of one group (``--session-timeout``, 6 s: the
   broker's smallest), wait until they split the partitions and have folded everything (a
   checkpoint is taken then, as an operator's periodic checkpoint would have been).
3. A writer puts to random contexts (``--rate`` per second) all along.
4. kill -9 the worker that serves partition 0. For every partition it served, a put and a
   ``get(min_offset=receipt)`` (1 s wait) are tried every 50 ms from that moment until one
   succeeds: that partition's failover time. The group moves a dead member's partitions only
   after its session timeout, which bounds every time from below. The survivor's own
   partitions are probed the same way all along: the longest time without a read-your-write
   on each (the rebalance revokes and assigns them too) is reported as ``kept``.
   Alongside, from the same moment, a plain read of each moved partition (any answer of its
   owner), and a read that accepts a standby's answer (``allow_stale``), every 50 ms until
   one succeeds: the time to the first successful read (issue 17's figure to beat: 850 ms).
   ``--evict-dead-peers`` runs the workers with it: the survivor evicts the dead member as
   soon as its API refuses connections, before the session timeout.

Run once without standby replicas and once with ``--standby-replicas 1`` (each on fresh
topics; ``--standbys 0,1``): with them each worker keeps a copy of the other's partitions,
waited for until caught up before the kill. Prints one row per moved partition (time, and
how the survivor opened it: from the change topic, a checkpoint, a replay or its standby
copy), the median and max of each run and their ratio; writes
``benchmarks/results/failover_local.json``. Bounded: a timeout on every wait, the writer's
rate and count.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import statistics
import time
import uuid
from datetime import datetime
from pathlib import Path
from typing import Any

from _support import (
    bootstrap_servers,
    encoded_puts,
    http_get,
    metric,
    print_rows,
    progress,
    scratch_dir,
    send_partitions,
    spawn_worker,
    stop_worker,
    write_result,
)

from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import ContextNotFoundError
from lukhas_context.streams.topics import Topics, partition_for


def _get_json(url: str) -> Any:
    status, body = http_get(url, timeout=10)
    if status != 200:
        raise OSError(f"{url}: {status}")
    return json.loads(body)


def _partitions(url: str) -> dict[int, dict[str, Any]]:
    """What a worker serves: partition -> its summary and restore report."""
    with contextlib.suppress(OSError, ValueError):
        return {int(s["partition"]): s for s in _get_json(f"{url}/v1/partitions")["partitions"]}
    return {}


async def _until(check: Any, what: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        if time.monotonic() > deadline:
            raise SystemExit(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.5)


def _one_per_partition(partitions: int, prefix: str) -> dict[int, str]:
    names: dict[int, str] = {}
    n = 0
    while len(names) < partitions:
        name = f"{prefix}{n}"
        names.setdefault(partition_for(name.encode(), partitions), name)
        n += 1
    return names


async def _writer(client: ContextClient, contexts: int, rate: float, stop: asyncio.Event) -> int:
    """Puts to random contexts at ``rate`` per second until ``stop`` (errors while a
    partition moves are expected: counted as not written). Returns the puts acknowledged."""
    rng = random.Random(7)
    acked = 0
    while not stop.is_set():
        with contextlib.suppress(Exception):
            await client.put(f"ctx-{rng.randrange(contexts)}", {"load": acked})
            acked += 1
        await asyncio.sleep(1 / rate)
    return acked


async def _failover(client: ContextClient, name: str, killed: float, timeout: float) -> float:
    attempt = 0
    while True:
        attempt += 1
        try:
            receipt = await client.put(name, {"attempt": attempt})
            await client.get(name, min_offset=receipt, timeout=1)
            return time.monotonic() - killed
        except Exception:  # the partition is moving: try again
            if time.monotonic() - killed > timeout:
                raise SystemExit(f"{name}: no failover within {timeout} s") from None
            await asyncio.sleep(0.05)


async def _first_read(
    client: ContextClient, name: str, killed: float, timeout: float, stale: bool
) -> float:
    """From the kill, a read of ``name`` every 50 ms (any answer: the document, or that it
    does not exist yet) until one succeeds; its time after the kill. ``stale``: a read that
    accepts a standby copy's answer (``allow_stale``)."""
    while True:
        try:
            await client.get(name, timeout=1, allow_stale=stale)
            return time.monotonic() - killed
        except ContextNotFoundError:
            return time.monotonic() - killed
        except Exception:  # the partition is moving: try again
            if time.monotonic() - killed > timeout:
                raise SystemExit(f"{name}: no read within {timeout} s") from None
            await asyncio.sleep(0.05)


async def _kept(client: ContextClient, name: str, stop: asyncio.Event) -> float:
    """For a partition the survivor served all along: a put and a ``get(min_offset=receipt)``
    every 50 ms until ``stop``; returns the longest time without one succeeding (the
    partition is revoked and assigned again in the rebalance that moves the others)."""
    last = time.monotonic()
    longest = 0.0
    attempt = 0
    while not stop.is_set():
        attempt += 1
        try:
            receipt = await client.put(name, {"attempt": attempt})
            await client.get(name, min_offset=receipt, timeout=1)
        except Exception:  # revoked meanwhile: the gap goes on
            pass
        else:
            now = time.monotonic()
            longest = max(longest, now - last)
            last = now
        await asyncio.sleep(0.05)
    return max(longest, time.monotonic() - last)


def _timeline(log: Path, killed: float) -> list[str]:
    """The survivor's rebalance as it logged it: revocation, assignment, partitions kept or
    opened, each with its time after the kill (seconds)."""
    lines = []
    for line in log.read_text(errors="replace").splitlines():
        if " lukhas_context.processors.assignment: " not in line:
            continue
        try:
            at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()
        except ValueError:
            continue
        if at >= killed - 1:
            lines.append(f"{at - killed:+.2f} s {line.split(': ', 1)[1]}")
    return lines


def _standbys_caught_up(urls: list[str], partitions: int) -> bool:
    """Every partition has a standby copy somewhere, none behind."""
    copies = []
    for url in urls:
        with contextlib.suppress(OSError, ValueError):
            copies += _get_json(f"{url}/v1/partitions").get("standbys", [])
    return len(copies) == partitions and all(c.get("lag_records") == 0 for c in copies)


async def run(bootstrap: str, args: argparse.Namespace, standbys: int) -> dict[str, Any]:
    say = progress(f"failover_local standbys={standbys}")
    topics = Topics(f"fo{uuid.uuid4().hex[:8]}")
    await ensure_topics(bootstrap, topics.specs(args.partitions))
    say(f"appending {args.contexts:,} puts")
    await send_partitions(
        bootstrap, topics.events, encoded_puts(args.contexts, args.partitions, lambda i: f"ctx-{i}")
    )
    extra = (
        "--session-timeout", str(args.session_timeout), "--expiry-interval", "5",
        "--standby-replicas", str(standbys),
        *(("--evict-dead-peers",) if args.evict_dead_peers else ()),
    )  # fmt: skip
    with scratch_dir("lukhas-failover-") as scratch:
        workers = {}
        urls: list[str] = []
        try:
            # a first, alone: it folds every partition; then b joins and restores its half.
            # The one killed is a, so b has never folded the partitions that move to it: it
            # has no store of them but its standby copy (when there are standbys).
            for name in ("a", "b"):
                (scratch / name).mkdir()
                workers[name] = spawn_worker(
                    bootstrap, topics, scratch / name / "state", scratch / name / "worker.log",
                    extra,
                )  # fmt: skip
                urls.append(workers[name][1])
                if name == "a":
                    say("waiting for a to fold everything")
                    await _until(
                        lambda: sum(s["documents"] for s in _partitions(urls[0]).values())
                        >= args.contexts, "a folded everything", args.timeout,
                    )  # fmt: skip
            say("waiting for both workers to fold everything")

            def folded() -> bool:
                served = [_partitions(url) for url in urls]
                total = sum(s["documents"] for p in served for s in p.values())
                return (
                    all(len(p) == args.partitions // 2 for p in served) and total >= args.contexts
                )

            await _until(folded, "both workers serve half the partitions, folded", args.timeout)
            if standbys:
                say("waiting for the standby copies to catch up")
                await _until(
                    lambda: _standbys_caught_up(urls, args.partitions),
                    "every partition has a caught-up standby", args.timeout,
                )  # fmt: skip
            config = ClientConfig(bootstrap, ",".join(urls), topics, timeout_s=10)
            async with ContextClient(config) as client:
                await client.wait_checkpoint(await client.checkpoint("before-kill"), timeout=120)
                victim_name, (victim, victim_url) = "a", workers["a"]
                survivor_url = workers["b"][1]
                moved = sorted(_partitions(victim_url))
                kept = sorted(_partitions(survivor_url))
                names = _one_per_partition(args.partitions, "fo:")
                for p in range(args.partitions):  # each answers before the kill
                    await client.get(
                        names[p], min_offset=await client.put(names[p], {}), timeout=30
                    )
                stop = asyncio.Event()
                load = asyncio.create_task(_writer(client, args.contexts, args.rate, stop))
                kept_probes = [asyncio.create_task(_kept(client, names[p], stop)) for p in kept]
                await asyncio.sleep(2)
                say(f"kill -9 worker {victim_name} (partitions {moved})")
                victim.kill()
                killed, killed_wall = time.monotonic(), time.time()
                probes = await asyncio.gather(
                    *(_failover(client, names[p], killed, args.timeout) for p in moved),
                    *(_first_read(client, names[p], killed, args.timeout, False) for p in moved),
                    *(_first_read(client, names[p], killed, args.timeout, True) for p in moved),
                )
                n = len(moved)
                times, reads, stale_reads = probes[:n], probes[n : 2 * n], probes[2 * n :]
                await asyncio.sleep(3)  # the survivor's own partitions: settled after the move
                stop.set()
                acked = await load
                outages = await asyncio.gather(*kept_probes)
            opened = _partitions(survivor_url)
            kept_count = metric(survivor_url, "lukhas_partitions_kept")
            timeline = _timeline(scratch / "b" / "worker.log", killed_wall)
        finally:
            for proc, _ in workers.values():
                if proc.poll() is None:
                    stop_worker(proc)
    rows = [
        {"partition": p, "failover_s": round(t, 3),
         "first_read_s": round(r, 3), "first_stale_read_s": round(sr, 3),
         "opened_from": opened.get(p, {}).get("opened_from"),
         "restore_s": opened.get(p, {}).get("open_seconds")}
        for p, t, r, sr in zip(moved, times, reads, stale_reads, strict=True)
    ]  # fmt: skip
    return {
        "contexts": args.contexts, "partitions": args.partitions,
        "session_timeout_s": args.session_timeout, "standbys": standbys,
        "evict_dead_peers": args.evict_dead_peers, "moved": rows,
        "median_s": round(statistics.median(times), 3), "max_s": round(max(times), 3),
        "first_read_median_s": round(statistics.median(reads), 3),
        "first_stale_read_median_s": round(statistics.median(stale_reads), 3),
        "kept": [{"partition": p, "longest_outage_s": round(t, 3)}
                 for p, t in zip(kept, outages, strict=True)],
        "survivor_partitions_kept": kept_count,
        "survivor_timeline": timeline,
        "kept_max_outage_s": round(max(outages), 3),
        "load_puts_acked": acked,
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=6)
    parser.add_argument("--session-timeout", type=float, default=6.0)
    parser.add_argument("--rate", type=float, default=200.0, help="puts per second meanwhile")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--evict-dead-peers",
        action="store_true",
        help="run the workers with --evict-dead-peers (a dead peer is evicted before its "
        "session timeout)",
    )
    parser.add_argument(
        "--standbys",
        default="0,1",
        help="standby replicas of each run, comma-separated (default 0,1)",
    )
    args = parser.parse_args()
    if args.partitions % 2:
        parser.error("--partitions must be even (two workers split them)")
    try:
        runs = [int(n) for n in args.standbys.split(",")]
    except ValueError:
        parser.error(f"--standbys takes numbers like 0,1, not {args.standbys!r}")
    if any(not 0 <= n <= 1 for n in runs):
        parser.error("--standbys: 0 or 1 (two workers: one copy of each partition at most)")
    results = []
    with bootstrap_servers() as bootstrap:
        for standbys in runs:
            results.append(asyncio.run(run(bootstrap, args, standbys)))
    evicting = ", --evict-dead-peers" if args.evict_dead_peers else ""
    rows = [("state", f"{args.contexts:,} contexts, {args.partitions} partitions, 2 workers, "
                      f"session timeout {args.session_timeout:g} s{evicting}")]  # fmt: skip
    for result in results:
        label = f"standbys={result['standbys']}"
        rows += [
            *((f"{label} p{r['partition']}", f"{r['failover_s']:.2f} s (opened from "
               f"{r['opened_from']} in {r['restore_s']} s); first read "
               f"{r['first_read_s']:.2f} s, stale {r['first_stale_read_s']:.2f} s")
              for r in result["moved"]),
            (f"{label} first read", f"median {result['first_read_median_s']:.3f} s; "
             f"accepting a standby's answer {result['first_stale_read_median_s']:.3f} s"),
            (f"{label} median/max", f"{result['median_s']:.2f} s / {result['max_s']:.2f} s"),
            (f"{label} kept", "longest outage of the survivor's own partitions " + ", ".join(
                f"p{k['partition']} {k['longest_outage_s']:.2f} s" for k in result["kept"])),
        ]  # fmt: skip
    by = {r["standbys"]: r for r in results}
    if 0 in by and 1 in by:
        rows.append(("with / without", f"median {by[1]['median_s'] / by[0]['median_s']:.1%}, "
                                       f"max {by[1]['max_s'] / by[0]['max_s']:.1%}"))  # fmt: skip
        over = [by[n]["median_s"] - args.session_timeout for n in (1, 0)]
        rows.append(("past session timeout", f"median {over[0]:.2f} s vs {over[1]:.2f} s"))
    print_rows(rows, 22)
    write_result("failover_local", {"runs": results})


if __name__ == "__main__":
    main()
