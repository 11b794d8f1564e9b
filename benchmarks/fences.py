"""What fencing tokens cost the fold.

Folds one partition's log of ``--records`` puts (default 300,000) over ``--contexts`` contexts
(default 10,000), in rounds of 5,000 records as a worker's are, three ways: without fences on
the native path (the worker's default for unconditional puts), without fences on the general
path (``native=False``), and with a fence on every event (``--locks`` lock names, default 100;
each holder writes ``--per-token`` events, default 20, before the lock's token rises; one event
in ``--stale`` carries a token below its lock's highest, so it is fenced). A fenced event
always takes the general path, so the fair price of the check itself is "fenced" against
"general path"; the price a user sees is "fenced" against "native". No broker is needed.
Figures to stdout and ``benchmarks/results/fences.json``.
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
from lukhas_context.schemas.event import EMPTY_METADATA, ContextEvent, Fence, Put
from lukhas_context.state.store import PartitionStore

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
ROUND = 5_000


def make_log(
    n: int, contexts: int, locks: int, per_token: int, stale: int, fenced: bool, seed: int
) -> list:
    rng = random.Random(seed)
    codec = EventCodec()
    tokens = [0] * locks
    written = [per_token] * locks
    log = []
    for offset in range(n):
        cid = f"ctx:{rng.randrange(contexts):06d}"
        doc = b'{"turn":%d,"pad":"%s"}' % (offset, b"x" * 32)
        fence = None
        if fenced:
            lock = rng.randrange(locks)
            if stale and offset % stale == 0 and tokens[lock] > 1:
                token = tokens[lock] - 1  # a holder that lost the lock: fenced
            else:
                if written[lock] >= per_token:  # the next holder: a higher token
                    tokens[lock] += 1
                    written[lock] = 0
                written[lock] += 1
                token = tokens[lock]
            fence = Fence(f"lock:{lock:04d}", token)
        event = ContextEvent(os.urandom(16), cid, Put(doc), None, fence, EMPTY_METADATA)
        log.append(Message("wal", 0, offset, cid.encode(), codec.encode(event), offset, []))
    return log


def fold(path: Path, log: list, native: bool) -> tuple[float, int]:
    with PartitionStore(path) as store:
        folder = PartitionFolder(0, store, Limits(), native=native)
        fenced = 0
        started = time.perf_counter()
        for start in range(0, len(log), ROUND):
            r = folder.fold(log[start : start + ROUND])
            assert r is not None
            fenced += r.fenced
            folder.commit(r, 1_000_000)
        return time.perf_counter() - started, fenced


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--contexts", type=int, default=10_000)
    parser.add_argument("--locks", type=int, default=100)
    parser.add_argument("--per-token", type=int, default=20, help="events per holder")
    parser.add_argument("--stale", type=int, default=100, help="one stale token in N events")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    say = progress("fences")
    n = args.records
    say(f"encoding {n:,} puts, without fences and with one on each ({args.locks} locks)")
    shape = (n, args.contexts, args.locks, args.per_token, args.stale)
    plain = make_log(*shape, False, args.seed)
    fenced_log = make_log(*shape, True, args.seed)
    rates: dict[str, float] = {}
    fenced = 0
    with scratch_dir("lukhas-bench-fences-") as tmp:
        for name, log, native in (
            ("native", plain, True),
            ("general", plain, False),
            ("fenced", fenced_log, True),
        ):
            say(f"folding: {name}")
            seconds, count = fold(tmp / name, log, native)
            rates[name] = n / seconds
            if name == "fenced":
                fenced = count
    assert fenced > 0, "no event was fenced: the check was not exercised"
    rows = [
        ("fold without fences, native path", f"{rates['native']:,.0f} records/s"),
        ("fold without fences, general path", f"{rates['general']:,.0f} records/s"),
        ("fold with a fence on every event", f"{rates['fenced']:,.0f} records/s"),
        ("events fenced (stale tokens)", f"{fenced:,}"),
        ("fenced / general path", f"{rates['fenced'] / rates['general']:.2f}x"),
        ("fenced / native path", f"{rates['fenced'] / rates['native']:.2f}x"),
    ]
    print_rows(rows, 40)
    write_result(
        "fences",
        {
            "records": n,
            "contexts": args.contexts,
            "locks": args.locks,
            "events_per_token": args.per_token,
            "fenced_events": fenced,
            "native_rps": round(rates["native"]),
            "general_rps": round(rates["general"]),
            "fenced_rps": round(rates["fenced"]),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
