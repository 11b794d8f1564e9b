"""The replicated WAL under broker faults: a steady load of acknowledged writes, and the checks
that every fault test makes afterwards (issue 11).

The load: ``writers`` tasks, each with contexts of its own. A write is either a JSON Patch that
appends a unique write id to its context's ``log`` array, or a put of a fresh context holding
its id. The ledger keeps, per context, the ids the client acknowledged (acks=all) and the ids
whose writes failed: those may or may not have landed (a send whose answer was lost), and the
checks allow them at most once. Bounded in writes and in time.

The checks, once the faults are over:
* every acknowledged write is folded exactly once: its id is in its context's ``log`` once,
  and nothing else is there but ids of failed writes, each at most once; the version counts
  exactly the puts and patches folded (with no failed write, the acknowledged ones);
* the change stream has every version of every context once, none missing;
* each partition's digest, on the worker serving it, equals an offline replay of the WAL to
  the same offset;
* the end of each partition, as its current leader confirms it (``streams.leader_end``, the
  read API's ground for "no such offset"), is past every acknowledged write there.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
import urllib.request
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.offline import From, restore_offline
from lukhas_context.streams import kafka
from lukhas_context.streams.changes import Change
from lukhas_context.streams.client import ContextClient, Receipt
from lukhas_context.streams.leader_end import leader_end
from lukhas_context.streams.security import PLAINTEXT
from lukhas_context.streams.topics import Topics

from .conftest import read_until, seen_all, sentinels


@dataclass
class Ledger:
    """What the load wrote, as its client saw it."""

    #: context -> write ids acknowledged (patch contexts: appended to ``log``).
    acked: dict[str, list[str]] = field(default_factory=dict)
    #: context -> write ids whose write failed (landed or not: unknown).
    failed: dict[str, list[str]] = field(default_factory=dict)
    #: context -> the receipt of its last acknowledged write.
    last: dict[str, Receipt] = field(default_factory=dict)
    #: Contexts that are a single put each (doc ``{"id": ...}``).
    puts: set[str] = field(default_factory=set)
    errors: Counter[str] = field(default_factory=Counter)

    @property
    def acked_count(self) -> int:
        return sum(len(ids) for ids in self.acked.values())

    def merge(self, other: Ledger) -> None:
        for name, ids in other.acked.items():
            self.acked.setdefault(name, []).extend(ids)
        for name, ids in other.failed.items():
            self.failed.setdefault(name, []).extend(ids)
        self.last.update(other.last)
        self.puts |= other.puts
        self.errors.update(other.errors)


async def create_contexts(client: ContextClient, prefix: str, writers: int, per_writer: int
                          ) -> Ledger:  # fmt: skip
    """The patch contexts of the load, each put once as ``{"log": []}`` (acknowledged)."""
    ledger = Ledger()
    for w in range(writers):
        for k in range(per_writer):
            name = f"{prefix}:w{w}:c{k}"
            ledger.last[name] = await client.put(name, {"log": []})
            ledger.acked[name] = [f"{name}#put"]
    return ledger


async def write_load(
    client: ContextClient,
    prefix: str,
    writers: int,
    per_writer: int,
    stop: asyncio.Event,
    max_writes: int,
    max_seconds: float,
    pause_s: float = 0.02,
) -> Ledger:
    """Runs the load until ``stop`` is set, ``max_writes`` writes per writer or
    ``max_seconds``: every fifth write a put of a fresh context, the others patches."""
    deadline = time.monotonic() + max_seconds
    ledgers = [Ledger() for _ in range(writers)]

    async def writer(w: int) -> None:
        ledger = ledgers[w]
        names = itertools.cycle(f"{prefix}:w{w}:c{k}" for k in range(per_writer))
        for n in range(max_writes):
            if stop.is_set() or time.monotonic() >= deadline:
                return
            wid = f"{prefix}:w{w}:{n}"
            if n % 5 == 4:
                name, write = wid, client.put(wid, {"id": wid})
                ledger.puts.add(name)
            else:
                name = next(names)
                patch = [{"op": "add", "path": "/log/-", "value": wid}]
                write = client.patch(name, patch)
            try:
                receipt = await write
            except Exception as exc:
                ledger.failed.setdefault(name, []).append(wid)
                ledger.errors[type(exc).__name__] += 1
                await asyncio.sleep(0.2)
                continue
            ledger.acked.setdefault(name, []).append(wid)
            ledger.last[name] = receipt
            await asyncio.sleep(pause_s)

    await asyncio.gather(*(writer(w) for w in range(writers)))
    total = Ledger()
    for ledger in ledgers:
        total.merge(ledger)
    return total


async def check_folded_once(client: ContextClient, ledger: Ledger, timeout: float = 120
                            ) -> dict[str, int]:  # fmt: skip
    """Every acknowledged write folded exactly once (see the module doc); returns each
    context's version."""
    versions: dict[str, int] = {}
    for name, receipt in sorted(ledger.last.items()):
        ctx = await client.get(name, min_offset=receipt, timeout=timeout)
        acked = [i for i in ledger.acked.get(name, []) if not i.endswith("#put")]
        failed = ledger.failed.get(name, [])
        if name in ledger.puts:
            assert ctx.version == 1 and ctx.doc == {"id": name}, (name, ctx.version, ctx.doc)
        else:
            log = ctx.doc["log"]
            counts = Counter(log)
            assert all(counts[i] == 1 for i in acked), (name, "acked not once", counts)
            assert set(log) <= set(acked) | set(failed), (name, set(log) - set(acked))
            assert max(counts.values(), default=1) == 1, (name, "a write folded twice")
            assert ctx.version == 1 + len(log), (name, ctx.version, len(log))
            if not failed:
                assert ctx.version == 1 + len(acked), (name, ctx.version, len(acked))
        versions[name] = ctx.version
    return versions


async def check_change_stream(
    client: ContextClient, versions: dict[str, int], partitions: int, prefix: str,
    timeout: float = 180,
) -> None:  # fmt: skip
    """The change stream, from the earliest offset, has versions 1..V of every context in
    ``versions`` exactly once. A last write in every partition marks the end."""
    ends = sentinels(f"{prefix}:end:", partitions)
    for name in ends:
        await client.put(name, {"end": True})
    async with client.watch(start="earliest") as stream:
        items = await read_until(stream, seen_all(ends), timeout=timeout, limit=1_000_000)
    seen: dict[str, list[int]] = {}
    for item in items:
        assert isinstance(item, Change), item  # a gap would mean changes were lost
        if item.context_id in versions:
            seen.setdefault(item.context_id, []).append(item.version)
    for name, version in versions.items():
        assert seen.get(name) == list(range(1, version + 1)), (name, seen.get(name), version)


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return json.loads(answer.read())


async def check_digests(
    bootstrap: str, topics: Topics, api_urls: list[str], partitions: int, scratch: Path,
    timeout: float = 120,
) -> dict[int, str]:  # fmt: skip
    """Each partition's digest, as the worker serving it says, equals an offline replay of
    the WAL to the same offset; every partition is served. Returns the digests."""
    deadline = time.monotonic() + timeout
    while True:
        served: dict[int, dict[str, Any]] = {}
        for url in api_urls:
            try:
                for p in (await asyncio.to_thread(get_json, f"{url}/v1/partitions"))["partitions"]:
                    served[p["partition"]] = p
            except OSError:
                continue  # a worker that is gone serves nothing
        if len(served) == partitions:
            break
        assert time.monotonic() < deadline, f"served: {sorted(served)}"
        await asyncio.sleep(0.5)
    replay = WorkerConfig(bootstrap, scratch, topics=topics)
    digests = {}
    for p, s in sorted(served.items()):
        report = await restore_offline(replay, p, From.SCRATCH, progress=False,
                                       until=s["next_offset"])  # fmt: skip
        assert report.restore.digest == s["digest"], (p, s, report.restore.digest)
        digests[p] = s["digest"]
    return digests


async def check_ends(bootstrap: str, topic: str, ledger: Ledger, timeout: float = 60) -> None:
    """Each partition's confirmed end is past its last acknowledged write (an end is
    confirmed once a majority of brokers agree on the leader, which may take a moment after
    a fault)."""
    last: dict[int, int] = {}
    for receipt in ledger.last.values():
        last[receipt.partition] = max(receipt.offset, last.get(receipt.partition, -1))
    client = kafka.bare_client(bootstrap, "check-ends", 5.0, security=PLAINTEXT)
    await client.bootstrap()
    try:
        deadline = time.monotonic() + timeout
        for partition, offset in sorted(last.items()):
            while (end := await leader_end(client, topic, partition, 5.0)) is None:
                assert time.monotonic() < deadline, f"no confirmed end of {partition}"
                await asyncio.sleep(0.5)
            assert end > offset, (partition, end, offset)
    finally:
        await client.close()


async def partition_leaders(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> node id of its leader (-1: none)."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10_000)
    await admin.start()
    try:
        (described,) = await admin.describe_topics([topic])
        return {p["partition"]: p["leader"] for p in described["partitions"]}
    finally:
        await admin.close()


async def busiest_leader(bootstrap: str, topic: str) -> int:
    """The node id that leads the most partitions of ``topic``."""
    leaders = Counter(v for v in (await partition_leaders(bootstrap, topic)).values() if v >= 0)
    return leaders.most_common(1)[0][0]


async def fault_under_load(
    client: ContextClient, prefix: str, fault: Callable[[], Awaitable[None]],
    bootstrap: str, topics: Topics, api_urls: list[str], partitions: int, scratch: Path,
) -> Ledger:  # fmt: skip
    """The fault scenario: 4 writers (3 contexts each) write for 3 s, ``fault()`` runs (it
    makes the fault, waits it out and repairs it) while they go on, they write 3 s more; then
    every check of this module. Returns the ledger."""
    ledger = await create_contexts(client, prefix, writers=4, per_writer=3)
    stop = asyncio.Event()
    load = asyncio.create_task(write_load(client, prefix, 4, 3, stop, 1000, 150))
    try:
        await asyncio.sleep(3)  # writing before the fault
        await fault()
        await asyncio.sleep(3)  # writing after the repair
    finally:
        stop.set()
        ledger.merge(await load)
    assert ledger.acked_count > 12, ledger.errors  # the load wrote, not only the setup
    await check_ends(bootstrap, topics.events, ledger)
    versions = await check_folded_once(client, ledger)
    await check_change_stream(client, versions, partitions, prefix)
    await check_digests(bootstrap, topics, api_urls, partitions, scratch)
    return ledger
