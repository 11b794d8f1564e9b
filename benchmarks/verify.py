"""What ``lukhas verify``'s bisection costs on a large partition, against reading it once.

Builds a store of ``--contexts`` contexts (default 1,000,000; small JSON documents), copies it
(a RocksDB checkpoint, as a worker's verify session does), changes ``k`` records of the copy
(the digest kept consistent, so only a comparison can tell), and times:

- ``scan``: ``PartitionStore.verify()`` of one store, i.e. reading every record once and
  hashing it: the floor of any comparison that reads the data;
- ``bisect k``: ``state.ranges.differences`` between the store and the changed copy, for
  ``k`` = 0, 1 and 100 changed records (limit 100), with the records each side read (range
  requests) and the time as a multiple of ``scan``.

Both sides are local stores (``LocalRanges``); over HTTP a worker's side answers the same
requests, a few per level, each one JSON object (``processors.verify_api``). No broker is
needed. Figures to stdout and ``benchmarks/results/verify.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

from _support import print_rows, progress, scratch_dir, write_result

from lukhas_context.state.ranges import LocalRanges, differences
from lukhas_context.state.record import NO_CHECKSUM, ContextRecord
from lukhas_context.state.store import PartitionStore


def build(path: Path, n: int, say: object) -> PartitionStore:
    store = PartitionStore(path)
    batch = 20_000
    for start in range(0, n, batch):
        records = {
            f"bench:{i:08d}".encode(): ContextRecord(
                1, b'{"i":%d,"pad":"%s"}' % (i, b"x" * 40), NO_CHECKSUM, None, i, 1_000 + i
            )
            for i in range(start, min(n, start + batch))
        }
        store.commit(records, min(n, start + batch))
    return store


def change(store: PartitionStore, n: int, k: int, seed: int) -> list[bytes]:
    keys = sorted(f"bench:{i:08d}".encode() for i in random.Random(seed).sample(range(n), k))
    changed = {}
    for key in keys:
        record = store.get(key)
        assert record is not None
        changed[key] = record._replace(version=record.version + 1)
    store.commit(changed, store.next_offset)
    return keys


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--contexts", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=11)
    args = parser.parse_args()
    say = progress("verify")
    n = args.contexts
    rows: list[tuple[str, str]] = []
    result: dict[str, object] = {"contexts": n}
    with scratch_dir("lukhas-bench-verify-") as tmp:
        say(f"building a store of {n:,} contexts")
        a = build(tmp / "a", n, say)
        try:
            started = time.perf_counter()
            summary = a.verify()
            scan_s = time.perf_counter() - started
            assert summary == a.summary()
            rows.append(("scan (verify) of one store", f"{scan_s:.2f} s"))
            result["scan_s"] = round(scan_s, 3)
            for k in (0, 1, 100):
                a.checkpoint(tmp / f"b{k}")
                with PartitionStore(tmp / f"b{k}") as b:
                    keys = change(b, n, k, args.seed) if k else []
                    say(f"bisecting with {k} changed records")
                    started = time.perf_counter()
                    found = asyncio.run(differences(
                        LocalRanges(a), LocalRanges(b), a.summary().records,
                        b.summary().records, limit=100,
                    ))  # fmt: skip
                    took = time.perf_counter() - started
                    assert [d.key for d in found.differences] == keys, "wrong differences"
                    rows.append((f"bisect, {k} changed", f"{took:.2f} s = {took / scan_s:.2f}x "
                                 f"scan, {found.requests} range requests"))  # fmt: skip
                    result[f"bisect_{k}"] = {"seconds": round(took, 3),
                                             "of_scan": round(took / scan_s, 3),
                                             "requests": found.requests}  # fmt: skip
        finally:
            a.close()
    print_rows(rows, 34)
    write_result("verify", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
