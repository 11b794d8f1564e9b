"""What the history index costs the fold, and what it saves a reader.

Folds one partition's log of ``--records`` puts (default 1,000,000) over ``--contexts``
contexts (default 10,000, chosen at random) plus one context with ``--hot`` events (default
10,000), in rounds of 5,000 records as a worker's are, twice: without the history index and
with it (``PartitionFolder.index_history``). Reports the fold rate of each, the time per
record the index adds, and the store's size on disk after a flush. Then times reading the hot
context's history from the index (``PartitionStore.history``, every entry) against the floor
of doing without one: comparing the key of every record of the partition, in memory (a real
WAL scan also fetches and decodes them, so the ratio is a lower bound). No broker is needed.
Figures to stdout and ``benchmarks/results/history.json``.
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from collections import namedtuple
from pathlib import Path

from _support import print_rows, progress, scratch_dir, write_result

from lukhas_context.processors.fold import Limits
from lukhas_context.processors.round import PartitionFolder
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import EMPTY_METADATA, ContextEvent, Put
from lukhas_context.state.store import PartitionStore

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
ROUND = 5_000


def make_log(n: int, contexts: int, hot: int, seed: int) -> list[Message]:
    rng = random.Random(seed)
    codec = EventCodec()
    hot_at = set(rng.sample(range(n), hot))
    log = []
    for offset in range(n):
        cid = "hot:1" if offset in hot_at else f"ctx:{rng.randrange(contexts):06d}"
        doc = b'{"turn":%d,"pad":"%s"}' % (offset, b"x" * 32)
        event = ContextEvent(os.urandom(16), cid, Put(doc), None, None, EMPTY_METADATA)
        log.append(Message("wal", 0, offset, cid.encode(), codec.encode(event), offset, []))
    return log


def fold(path: Path, log: list[Message], index: bool) -> tuple[float, PartitionStore]:
    store = PartitionStore(path)
    folder = PartitionFolder(0, store, Limits(), index_history=index)
    started = time.perf_counter()
    for start in range(0, len(log), ROUND):
        r = folder.fold(log[start : start + ROUND])
        assert r is not None
        folder.commit(r, 1_000_000)
    return time.perf_counter() - started, store


def size_of(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=1_000_000)
    parser.add_argument("--contexts", type=int, default=10_000)
    parser.add_argument("--hot", type=int, default=10_000)
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    say = progress("history")
    n = args.records
    say(f"encoding {n:,} puts over {args.contexts:,} contexts and one of {args.hot:,} events")
    log = make_log(n, args.contexts, args.hot, args.seed)
    rows: list[tuple[str, str]] = []
    result: dict[str, object] = {"records": n, "contexts": args.contexts, "hot": args.hot}
    with scratch_dir("lukhas-bench-history-") as tmp:
        times, sizes = {}, {}
        for index in (False, True):
            name = "with" if index else "without"
            say(f"folding {name} the index")
            seconds, store = fold(tmp / name, log, index)
            if index:
                started = time.perf_counter()
                entries, more = store.history(b"hot:1", limit=10_000)
                read_s = time.perf_counter() - started
                assert len(entries) == args.hot and not more
            store.close()
            times[name], sizes[name] = seconds, size_of(tmp / name)
            rows.append((f"fold {name} the index", f"{n / seconds:,.0f} records/s"))
            rows.append((f"store {name} the index", f"{sizes[name] / 1e6:.1f} MB"))
        started = time.perf_counter()
        found = [m.offset for m in log if m.key == b"hot:1"]
        scan_s = time.perf_counter() - started
        assert len(found) == args.hot
    added_us = (times["with"] - times["without"]) / n * 1e6
    share = times["with"] / times["without"] - 1
    rows.append(("index cost per record", f"{added_us:.2f} µs ({share:+.1%} fold time)"))
    rows.append((f"history of {args.hot:,} events from the index", f"{read_s * 1e3:.1f} ms"))
    ratio = f"{scan_s * 1e3:.1f} ms ({scan_s / read_s:.0f}x the index)"
    rows.append((f"key scan of {n:,} records in memory", ratio))
    result.update(
        fold_without_rps=round(n / times["without"]),
        fold_with_rps=round(n / times["with"]),
        added_us_per_record=round(added_us, 3),
        store_without_bytes=sizes["without"],
        store_with_bytes=sizes["with"],
        history_read_ms=round(read_s * 1e3, 2),
        key_scan_ms=round(scan_s * 1e3, 2),
    )
    print_rows(rows, 44)
    write_result("history", result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
