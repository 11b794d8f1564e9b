"""What the client's guards cost, and whether its deadlines hold: circuit breakers and
adaptive deadlines (``streams.breaker``, ``streams.deadlines``).

1. **Overhead, in process:** the bookkeeping one read adds (the breaker's ``allows`` and
   ``record``, the latency window's ``add``, the allowance's quantile), ``--ops`` times,
   per call.
2. **Overhead, end to end:** one worker on a one-broker cluster (``LocalCluster``, or
   ``LUKHAS_BOOTSTRAP``), ``--reads`` point reads of one context by one client, with the
   guards as shipped and with them replaced by no-ops, alternating ``--rounds`` times;
   reads per second of each (medians).
3. **Timeout accuracy:** the worker is stopped (SIGSTOP) for ``--stop-s`` seconds while
   ``--calls`` reads with budgets of 0.25 to 2 s (``timeout=``) are made, one after
   another; each must fail with ``DeadlineExceededError`` when its budget (its timeout plus
   the transport allowance learnt from the worker's latency) is spent. Reported: the share
   of calls that ended within 10% of their budget, the largest overrun, and the budget
   against the fixed 5 s allowance of before. Then SIGCONT, and a read must answer again.

Writes ``benchmarks/results/guards.json``. Bounded: every loop by count and time.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import time
import uuid
from typing import Any

from _support import (
    bootstrap_servers,
    print_rows,
    progress,
    scratch_dir,
    start_worker,
    stop_worker,
    write_result,
)

from lukhas_context import DeadlineExceededError
from lukhas_context.streams.admin import ensure_topics
from lukhas_context.streams.breaker import Breaker
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.deadlines import DeadlinePolicy, LatencyWindow
from lukhas_context.streams.topics import Topics


def in_process(ops: int) -> float:
    """Nanoseconds of guard bookkeeping per read (what ``Router.send`` and ``request`` do
    around the wire)."""
    breaker, policy = Breaker("http://w"), DeadlinePolicy()
    window = LatencyWindow(policy.window)
    started = time.perf_counter_ns()
    for i in range(ops):
        breaker.acquire()
        policy.allowance_s(window)
        policy.usual_s(window)
        latency = 0.0005 + (i % 7) * 1e-5
        breaker.record(True, latency)
        window.add(latency)
    return (time.perf_counter_ns() - started) / ops


class _Open:
    """A breaker that always lets calls through and remembers nothing."""

    last_error = None

    def acquire(self) -> int:
        return 0

    def record(self, ok: bool, latency_s: float | None = None, error: str | None = None) -> None:
        pass

    def release(self, permit: int) -> None:
        pass

    def retry_after_s(self) -> float:
        return 0.0


class _NoBreakers:
    def __getitem__(self, name: str) -> _Open:
        return _OPEN

    def snapshot(self) -> list[dict[str, Any]]:
        return []


_OPEN = _Open()


class _FixedDeadlines(DeadlinePolicy):
    """The allowance of before: always the ceiling, nothing learnt."""

    def allowance_s(self, window: LatencyWindow | None) -> float:
        return self.ceiling_s

    def usual_s(self, window: LatencyWindow | None) -> float:
        return 0.0


async def _reads(config: ClientConfig, reads: int, guarded: bool) -> float:
    async with ContextClient(config) as client:
        if not guarded:
            client.router.breakers = _NoBreakers()  # type: ignore[assignment]
            client.router.deadlines = _FixedDeadlines()
            client.router._latencies = _NoWindows()  # type: ignore[assignment]
        await client.get("g", timeout=5)
        started = time.perf_counter()
        for _ in range(reads):
            await client.get("g", timeout=5)
        return reads / (time.perf_counter() - started)


class _NoWindows(dict[Any, LatencyWindow]):
    """Latency windows that keep nothing (the no-op side)."""

    def __setitem__(self, key: Any, value: LatencyWindow) -> None:
        pass


async def accuracy(config: ClientConfig, proc: Any, calls: int, stop_s: float) -> dict[str, Any]:
    budgets = [0.25, 0.5, 1.0, 2.0]
    async with ContextClient(config) as client:
        for _ in range(50):  # the client learns the worker's latency
            await client.get("g", timeout=5)
        reads = [w for (_, kind), w in client.router._latencies.items() if kind.endswith("/*")]
        learnt = client.router.deadlines.allowance_s(reads[0])
        proc.send_signal(signal.SIGSTOP)
        stopped = time.monotonic()
        ended: list[dict[str, Any]] = []
        try:
            for i in range(calls):
                if time.monotonic() - stopped > stop_s:
                    break
                timeout = budgets[i % len(budgets)]
                started = time.monotonic()
                try:
                    await client.get("g", timeout=timeout)
                    outcome = "answered"
                    budget = None
                except DeadlineExceededError as exc:
                    outcome, budget = "deadline", exc.budget_s
                except Exception as exc:  # a typed error of another kind: counted apart
                    outcome, budget = type(exc).__name__, None
                elapsed = time.monotonic() - started
                ended.append(
                    {
                        "timeout": timeout,
                        "budget_s": budget,
                        "elapsed_s": elapsed,
                        "outcome": outcome,
                    }
                )
        finally:
            proc.send_signal(signal.SIGCONT)
        resumed = time.monotonic()
        await client.get("g", timeout=30)
        back_s = time.monotonic() - resumed
    timed = [e for e in ended if e["budget_s"]]
    within = [e for e in timed if e["elapsed_s"] <= 1.1 * e["budget_s"]]
    overruns = [e["elapsed_s"] / e["budget_s"] - 1 for e in timed]
    return {
        "calls": len(ended),
        "deadline_errors": len(timed),
        "other_outcomes": sorted({e["outcome"] for e in ended if not e["budget_s"]}),
        "within_10pct": len(within),
        "share_within_10pct": round(len(within) / len(timed), 4) if timed else None,
        "max_overrun": round(max(overruns), 4) if overruns else None,
        "learnt_allowance_s": round(learnt, 4),
        "fixed_allowance_s": DeadlinePolicy().ceiling_s,
        "read_after_resume_s": round(back_s, 3),
    }


async def run(bootstrap: str, args: argparse.Namespace) -> dict[str, Any]:
    say = progress("guards")
    topics = Topics(f"gd{uuid.uuid4().hex[:8]}")
    await ensure_topics(bootstrap, topics.specs(1))
    with scratch_dir("lukhas-guards-") as scratch:
        proc, url = await asyncio.to_thread(
            start_worker, bootstrap, topics, scratch / "w" / "state", 1, 120
        )
        try:
            config = ClientConfig(bootstrap, url, topics)
            async with ContextClient(config) as client:
                await client.get("g", min_offset=await client.put("g", {"v": 1}), timeout=30)
            say(f"{args.reads:,} reads x {args.rounds} rounds, guarded and not")
            sides: dict[str, list[float]] = {"guarded": [], "no-op": []}
            for _ in range(args.rounds):
                sides["guarded"].append(await _reads(config, args.reads, True))
                sides["no-op"].append(await _reads(config, args.reads, False))
            say(f"SIGSTOP for {args.stop_s:g} s, {args.calls} calls")
            timing = await accuracy(config, proc, args.calls, args.stop_s)
        finally:
            stop_worker(proc)
    medians = {side: statistics.median(rates) for side, rates in sides.items()}
    return {
        "bookkeeping_ns_per_call": round(in_process(args.ops), 1),
        "reads_per_s": {side: round(rate) for side, rate in medians.items()},
        "runs": {side: [round(r) for r in rates] for side, rates in sides.items()},
        "guarded_vs_noop": round(medians["guarded"] / medians["no-op"], 4),
        "accuracy": timing,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=200_000)
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=40)
    parser.add_argument("--stop-s", type=float, default=20.0)
    args = parser.parse_args()
    if min(args.ops, args.reads, args.rounds, args.calls) < 1 or not 0 < args.stop_s <= 300:
        parser.error("--ops, --reads, --rounds, --calls: at least 1; --stop-s: (0, 300]")
    with bootstrap_servers() as bootstrap:
        result = asyncio.run(run(bootstrap, args))
    a, rates, runs = result["accuracy"], result["reads_per_s"], result["runs"]
    other = ", ".join(a["other_outcomes"]) or "none"
    rows = [
        ("bookkeeping", f"{result['bookkeeping_ns_per_call']:,.0f} ns per read"),
        ("reads/s guarded", f"{rates['guarded']:,} (runs {runs['guarded']})"),
        ("reads/s no-op", f"{rates['no-op']:,} (runs {runs['no-op']})"),
        ("guarded / no-op", f"{result['guarded_vs_noop']:.1%}"),
        ("stopped worker", f"{a['calls']} calls, {a['deadline_errors']} ended by their "
                           f"budget, other outcomes: {other}"),
        ("within 10%", "no call ended by its budget" if not a["deadline_errors"] else
                       f"{a['within_10pct']} ({a['share_within_10pct']:.1%}), largest "
                       f"overrun {a['max_overrun']:.1%}"),
        ("allowance", f"{a['learnt_allowance_s']:.3f} s learnt (fixed before: "
                      f"{a['fixed_allowance_s']:g} s)"),
        ("after SIGCONT", f"read answered in {a['read_after_resume_s']:.3f} s"),
    ]  # fmt: skip
    print_rows(rows, 18)
    write_result("guards", result)


if __name__ == "__main__":
    main()
