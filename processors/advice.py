"""Scaling advice: how many workers the load needs, from two samples of each worker's
counters. No I/O and no clock: times are given; the worker (``processors.advisor``) and
``lukhas advise`` both call it.

**The rule.** Each worker's load over an interval (``load_between``) is measured in *worker
units*, the share of one worker's event loop it takes:

* fold: ``(incoming + lag / drain_s) * busy / folded`` — records appended to its partitions
  per second (plus its backlog spread over ``Policy.drain_s``) times the seconds of loop one
  folded record cost (``busy``: the share of the interval spent in rounds, from
  ``lukhas_batch_seconds``). While the lag grows (more appended than folded, and a lag over a
  second of folding: ``SATURATED_*``) the worker is saturated whatever ``busy`` says (a round
  is not all of the loop's work), so the fold takes at least ``incoming / folded``. A worker
  that folded nothing while records waited (stalled: restoring, paused) counts as one unit:
  its capacity is unknown, and more workers are not known to help it;
* reads: ``requests per second / Policy.reads_per_worker`` (reads share the fold's loop);
* memory: ``resident / (budget * Policy.memory_near)`` — a worker at its budget counts as
  one unit, over it as more (fewer partitions each is what lowers a worker's memory).

The group needs ``ceil((Σ fold + Σ reads) / Policy.target_busy)`` workers for the load and
``ceil(Σ memory)`` for memory, the larger of the two and at least ``min_workers``: that is
``needed``. A consumer group cannot use more workers than the WAL has partitions (the others
get none), so ``desired`` is ``needed`` capped at the partition count, and
``partition_limited`` says the cap decided: add partitions. ``headroom`` says how far the load
can grow before the partitions become the limit (``partitions * target_busy / load``).

Every input is checked: a rate that is negative, NaN or infinite counts as 0, counters that
went backwards (a restart) give no rate, huge numbers are capped (``MAX_RATE``,
``MAX_WORKERS``): ``advise`` never raises and always returns ``min_workers`` to
``max_workers``.

**Hysteresis** (``Stabilizer``, what ``lukhas_desired_workers`` exports): up at once, down
only once no higher figure has been computed for ``cooldown_s`` — the highest figure of the
last ``cooldown_s``, as Kubernetes' HPA stabilises a scale-down. Each figure is itself a rate
over the sampling interval, so one round's burst does not scale up.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "DEFAULT_POLICY",
    "MAX_RATE",
    "MAX_WORKERS",
    "Advice",
    "Policy",
    "Stabilizer",
    "WorkerLoad",
    "WorkerSample",
    "advise",
    "load_between",
]

#: The most workers any advice names (a bound for hostile inputs, far above any group).
MAX_WORKERS = 10_000
#: Rates (records or requests per second) above this count as this.
MAX_RATE = 1e12
#: A worker is saturated when more was appended than it folded, by more than this share,
#: and its lag is over ``SATURATED_LAG_S`` of its folding: a smaller growth, or a lag of a
#: fetch or two, is the fetcher's view of the end running ahead of the fold within a round.
SATURATED_GROWTH = 0.05
SATURATED_LAG_S = 1.0
#: A worker that folded nothing is stalled (not idle) with at least this lag (records) or
#: this many records coming per second: below, the lag is markers or aborted records.
STALL_LAG_RECORDS = 1000
STALL_RATE = 10.0
#: The largest offset a sample may carry (Kafka's are signed 64-bit).
MAX_OFFSET = 2**63 - 1
#: The most partitions one sample carries (a peer's answer is not trusted to be small).
MAX_SAMPLE_PARTITIONS = 100_000


def _finite(x: object, high: float = MAX_RATE) -> float:
    """``x`` as a float in ``[0, high]``; anything else (NaN, negative, not a number) is 0."""
    if isinstance(x, bool) or not isinstance(x, int | float):
        return 0.0
    try:
        v = float(x)
    except OverflowError:  # an int past any float
        return high if x > 0 else 0.0
    if not math.isfinite(v):
        return high if v == math.inf else 0.0
    return min(max(v, 0.0), high)


def _ceil(x: float) -> int:
    """The whole number of workers ``x`` units need (float noise forgiven), bounded."""
    if not math.isfinite(x) or x <= 0:
        return 0
    return min(MAX_WORKERS, math.ceil(x - 1e-9))


@dataclass(frozen=True, slots=True)
class WorkerSample:
    """One worker's cumulative counters at one time.

    ``at_s``: the worker's monotonic clock, seconds (only differences count, and only
    between samples of one worker). ``ends``: the WAL end offset of each partition it folds
    (the brokers', else as its fetcher last saw it); ``next_offsets``: the next offset to
    fold of each (the store's). ``busy_s``: seconds spent in rounds so far; ``reads``: read
    API requests answered so far. ``resident_bytes``/``budget_bytes``: memory now (None:
    unknown)."""

    at_s: float
    ends: Mapping[int, int]
    next_offsets: Mapping[int, int]
    busy_s: float
    reads: float
    resident_bytes: int | None = None
    budget_bytes: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "at_s": self.at_s, "busy_s": self.busy_s, "reads": self.reads,
            "ends": {str(p): e for p, e in self.ends.items()},
            "next_offsets": {str(p): o for p, o in self.next_offsets.items()},
            "resident_bytes": self.resident_bytes, "budget_bytes": self.budget_bytes,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, data: object) -> WorkerSample | None:
        """The sample ``to_dict`` gave, or None when ``data`` is not one (a peer's answer:
        anything may come); offsets that are not whole numbers are left out."""
        if not isinstance(data, dict):
            return None
        at_s = data.get("at_s")
        if isinstance(at_s, bool) or not isinstance(at_s, int | float) or not math.isfinite(at_s):
            return None
        return cls(
            at_s=float(at_s), ends=_offsets(data.get("ends")),
            next_offsets=_offsets(data.get("next_offsets")),
            busy_s=_finite(data.get("busy_s"), math.inf),
            reads=_finite(data.get("reads"), math.inf),
            resident_bytes=_bytes(data.get("resident_bytes")),
            budget_bytes=_bytes(data.get("budget_bytes")),
        )  # fmt: skip


def _offsets(raw: object) -> dict[int, int]:
    if not isinstance(raw, dict):
        return {}
    out: dict[int, int] = {}
    for key, value in list(raw.items())[:MAX_SAMPLE_PARTITIONS]:
        if (isinstance(key, str) and key.isdigit() and len(key) < 10 and type(value) is int
                and 0 <= value <= MAX_OFFSET):  # fmt: skip
            out[int(key)] = value
    return out


def _bytes(raw: object) -> int | None:
    return raw if type(raw) is int and raw > 0 else None


@dataclass(frozen=True, slots=True)
class WorkerLoad:
    """One worker's load over an interval: records appended to its partitions (``incoming``)
    and folded (``folded``) per second, the share of the interval spent in rounds (``busy``,
    0 to 1), the records not folded at its end (``lag``), read requests per second, and
    resident memory over the budget (None: no budget)."""

    incoming: float
    folded: float
    busy: float
    lag: int
    reads: float = 0.0
    memory: float | None = None

    @property
    def lag_growth(self) -> float:
        """Records per second the lag grew by (negative: it shrank)."""
        return self.incoming - self.folded

    def to_dict(self) -> dict[str, Any]:
        return {"incoming": self.incoming, "folded": self.folded, "busy": self.busy,
                "lag": self.lag, "lag_growth": self.lag_growth, "reads": self.reads,
                "memory": self.memory}  # fmt: skip

    @classmethod
    def from_dict(cls, data: object) -> WorkerLoad | None:
        """The load ``to_dict`` gave, every number bounded (``advise``'s rule: not a number
        or negative is 0), or None when ``data`` is not a mapping (a peer's answer)."""
        if not isinstance(data, dict):
            return None
        memory = data.get("memory")
        return cls(
            incoming=_finite(data.get("incoming")), folded=_finite(data.get("folded")),
            busy=_finite(data.get("busy"), 1.0), lag=int(_finite(data.get("lag"))),
            reads=_finite(data.get("reads")), memory=None if memory is None else _finite(memory),
        )  # fmt: skip


def load_between(before: WorkerSample, after: WorkerSample) -> WorkerLoad | None:
    """The load between two samples of one worker; None when they span no time (or time ran
    backwards). Only partitions in both samples count for the rates (a partition that moved
    in between has no rate here); a counter that went backwards gives none either."""
    span = after.at_s - before.at_s
    if not math.isfinite(span) or span <= 0:
        return None
    incoming = folded = 0.0
    for p, end in after.ends.items():
        if p in before.ends and p in before.next_offsets and p in after.next_offsets:
            incoming += max(0, end - before.ends[p])
            folded += max(0, after.next_offsets[p] - before.next_offsets[p])
    lag = sum(max(0, end - after.next_offsets.get(p, end)) for p, end in after.ends.items())
    memory = None
    if after.resident_bytes is not None and after.budget_bytes:
        memory = _finite(after.resident_bytes / after.budget_bytes)
    return WorkerLoad(
        incoming=_finite(incoming / span), folded=_finite(folded / span),
        busy=_finite((after.busy_s - before.busy_s) / span, 1.0), lag=int(_finite(lag)),
        reads=_finite((after.reads - before.reads) / span), memory=memory,
    )  # fmt: skip


@dataclass(frozen=True, slots=True)
class Policy:
    """How much of a worker the advice aims to use. ``target_busy``: the share of a worker's
    loop the fold and reads may take (the rest absorbs bursts and rebalances); ``drain_s``: a
    backlog should be folded within this; ``reads_per_worker``: read requests per second one
    worker serves beside its fold (a default to tune: measure yours); ``memory_near``: the
    share of the memory budget at which a worker counts as full (the materialiser's
    back-pressure starts there)."""

    target_busy: float = 0.7
    drain_s: float = 300.0
    reads_per_worker: float = 5000.0
    memory_near: float = 0.9
    min_workers: int = 1
    max_workers: int = MAX_WORKERS

    def __post_init__(self) -> None:
        if not (0 < self.target_busy <= 1 and 0 < self.memory_near <= 1):
            raise ValueError("target_busy and memory_near must be in (0, 1]")
        if not (self.drain_s > 0 and self.reads_per_worker > 0):
            raise ValueError("drain_s and reads_per_worker must be positive")
        if not 1 <= self.min_workers <= self.max_workers <= MAX_WORKERS:
            raise ValueError(f"need 1 <= min_workers <= max_workers <= {MAX_WORKERS}")


@dataclass(frozen=True, slots=True)
class Advice:
    """What ``advise`` says. ``desired``: workers to run (``needed`` capped at the partition
    count); ``reason``: the signal that decided — ``lag`` (the fold, with the lag growing or
    a backlog), ``fold``, ``reads``, ``memory``, or ``minimum`` when no signal needs more than
    ``min_workers`` — and ``partition_limited`` when the cap did (then add partitions).
    ``demand``: each signal in worker units; ``load_workers``: fold and reads in workers at
    the policy's target busy share (what ``needed`` rounds up, memory aside)."""

    desired: int
    needed: int
    reason: str
    partition_limited: bool
    partitions: int
    workers: int
    unknown: int
    demand: Mapping[str, float] = field(default_factory=dict)
    lag: int = 0
    lag_growth: float = 0.0
    headroom: float | None = None
    load_workers: float = 0.0
    min_workers: int = 1

    def to_dict(self) -> dict[str, Any]:
        return {
            "desired_workers": self.desired, "needed_workers": self.needed,
            "load_workers": round(self.load_workers, 4),
            "reason": self.reason, "partition_limited": self.partition_limited,
            "partitions": self.partitions, "workers": self.workers,
            "workers_unmeasured": self.unknown,
            "demand": {k: round(v, 4) for k, v in self.demand.items()}, "lag": self.lag,
            "lag_growth": round(self.lag_growth, 3),
            "headroom": None if self.headroom is None else round(self.headroom, 3),
        }  # fmt: skip

    def sentence(self) -> str:
        """The advice in words, for ``lukhas advise``."""
        why = {
            "lag": f"the lag, growing by {self.lag_growth:.0f} records/s"
            if self.lag_growth > 0 else f"a backlog of {self.lag} records to fold",
            "fold": "the fold's load", "reads": "the read load",
            "memory": "memory against the budget",
            "minimum": f"the minimum of {_workers(self.min_workers)}",
        }[self.reason]  # fmt: skip
        text = (
            f"Run {_workers(self.desired)} ({_workers(self.workers)} running), decided by "
            f"{why}; the load needs {self.load_workers:.2f} workers' worth."
        )
        if self.partition_limited:
            return text + (
                f" That is {self.needed}, but the WAL's {self.partitions} partitions limit the "
                "group to that many: add partitions."
            )
        if self.headroom is not None and self.headroom <= 100:
            text += (
                f" The {self.partitions} partitions become the limit when the load grows "
                f"{self.headroom:.1f}x."
            )
        elif self.headroom is not None:
            text += f" The {self.partitions} partitions are far from the limit."
        return text


#: The policy ``advise`` uses unless given another.
DEFAULT_POLICY = Policy()


def _workers(n: int) -> str:
    return f"{n} worker{'' if n == 1 else 's'}"


def advise(
    loads: Sequence[WorkerLoad | None], partitions: int, policy: Policy = DEFAULT_POLICY
) -> Advice:
    """The workers the loads need (see the module docstring). ``loads``: one per worker of the
    group; None for a worker whose load is unknown (no answer, no second sample), which
    counts as using one worker's share. ``partitions``: the WAL's (0 or less: unknown, no
    cap). Never raises; ``desired`` is within ``min_workers`` to ``max_workers``."""
    p = policy
    fold = reads = memory = 0.0
    lag = 0
    growth = incoming = 0.0
    saturated = False
    unknown = 0
    for load in loads:
        if load is None:
            unknown += 1
            fold += p.target_busy
            continue
        units, behind = _fold_units(load, p)
        fold += units
        saturated = saturated or behind
        reads += _finite(load.reads) / p.reads_per_worker
        memory += _finite(load.memory) / p.memory_near
        lag = min(int(MAX_RATE), lag + int(_finite(load.lag)))
        growth += _finite(load.incoming) - _finite(load.folded)
        incoming += _finite(load.incoming)
    by_load = _ceil((fold + reads) / p.target_busy)
    by_memory = _ceil(memory)
    needed = min(p.max_workers, max(p.min_workers, by_load, by_memory))
    if needed <= p.min_workers and not saturated:
        reason = "minimum"
    elif by_memory > by_load:
        reason = "memory"
    elif reads > fold:
        reason = "reads"
    elif saturated or lag / p.drain_s > incoming / 2:
        reason = "lag"
    else:
        reason = "fold"
    cap = partitions if isinstance(partitions, int) and partitions > 0 else 0
    desired = max(p.min_workers, min(needed, cap)) if cap else needed
    load_units = fold + reads
    headroom = cap * p.target_busy / load_units if cap and load_units > 0 else None
    return Advice(
        desired=desired, needed=needed, reason=reason, partition_limited=bool(cap) and needed > cap,
        partitions=cap, workers=len(loads), unknown=unknown,
        demand={"fold": fold, "reads": reads, "memory": memory}, lag=lag, lag_growth=growth,
        headroom=None if headroom is None else min(headroom, MAX_RATE),
        load_workers=min(load_units / p.target_busy, float(MAX_WORKERS)), min_workers=p.min_workers,
    )  # fmt: skip


def _fold_units(load: WorkerLoad, p: Policy) -> tuple[float, bool]:
    """One worker's fold in worker units (the module docstring's rule), and whether it is
    saturated (falling behind)."""
    incoming, folded = _finite(load.incoming), _finite(load.folded)
    busy, lag = _finite(load.busy, 1.0), _finite(load.lag)
    wanted = incoming + lag / p.drain_s
    if folded <= 0:
        # Nothing folded: idle, or stalled with records waiting (capacity unknown). A lag of
        # a few records with none coming is transaction markers (the WAL's end counts them,
        # a store's next offset does not), or aborted records: idle, not stalled.
        stalled = lag >= STALL_LAG_RECORDS or incoming >= STALL_RATE
        return (1.0, True) if stalled else (0.0, False)
    units = wanted * busy / folded
    behind = incoming > folded * (1 + SATURATED_GROWTH) and lag > folded * SATURATED_LAG_S
    if behind:
        units = max(units, wanted / folded)
    return min(units, float(MAX_WORKERS)), behind


class Stabilizer:
    """The desired workers with hysteresis: up at once, down only when no higher figure has
    come for ``cooldown_s`` (the highest figure of the last ``cooldown_s`` seconds).
    Times are a monotonic clock's; one that goes backwards, or is not a number, counts as
    the last time seen; a figure is bounded to 0..``MAX_WORKERS``. Memory is bounded: the
    window keeps only strictly falling figures, so at most ``MAX_WORKERS + 1`` of them."""

    def __init__(self, cooldown_s: float) -> None:
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0):
            raise ValueError(f"cooldown_s must be a finite number >= 0, not {cooldown_s}")
        self.cooldown_s = cooldown_s
        #: (time, figure), figures strictly falling: the head is the window's highest.
        self._window: deque[tuple[float, int]] = deque()
        self._last = -math.inf

    @property
    def value(self) -> int | None:
        """The figure to export now (None before the first ``update``)."""
        return self._window[0][1] if self._window else None

    def update(self, now_s: float, figure: int) -> int:
        """Takes a new figure computed at ``now_s``; returns the figure to export."""
        now = now_s if isinstance(now_s, int | float) and math.isfinite(now_s) else self._last
        now = max(now, self._last) if math.isfinite(self._last) else now
        if not math.isfinite(now):
            now = 0.0
        self._last = now
        figure = min(max(figure, 0), MAX_WORKERS) if type(figure) is int else 0
        window = self._window
        while window and window[0][0] <= now - self.cooldown_s:
            window.popleft()
        while window and window[-1][1] <= figure:
            window.pop()
        window.append((now, figure))
        return window[0][1]
