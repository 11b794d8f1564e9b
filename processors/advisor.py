"""The worker's scaling advice (``processors.advice`` computes it): every
``WorkerConfig.advice_interval_s`` the worker samples its own counters, takes its load over the
interval, asks each other member of the group for theirs (``GET /v1/advice``, the ``load``
each computed over its own last interval), and exports the group's advice:

* ``lukhas_desired_workers``: the workers the group's load needs, capped at the WAL's
  partitions, with hysteresis (``advice.Stabilizer``: up at once, down only once no higher
  figure has come for ``advice_cooldown_s``) — what an autoscaler (HPA, KEDA) reads;
* ``lukhas_advice_needed_workers``: the figure of this interval, before the cool-down and
  the cap;
* ``lukhas_advice_partition_limited``: 1 when the load needs more workers than there are
  partitions (more workers would sit idle: add partitions).

Every worker computes the same group figure from the same loads (up to when each asked), so an
autoscaler may read any of them, or their ``max``. A member that does not answer counts as
using its one worker's share (``advise``): a figure that neither collapses nor grows while a
peer restarts. The first figure, before this worker has two samples, counts its own load as
unknown too: a worker that has just started asks for what the group has.

A failure to compute (it should not happen) is logged and the figure kept; it never stops
the worker.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import orjson

from lukhas_context.processors.advice import (
    DEFAULT_POLICY,
    Advice,
    Policy,
    Stabilizer,
    WorkerLoad,
    WorkerSample,
    advise,
    load_between,
)
from lukhas_context.processors.metrics import WorkerMetrics

__all__ = ["ADVICE_PATH", "MAX_ANSWER_BYTES", "Advisor"]

log = logging.getLogger(__name__)

ADVICE_PATH = "/v1/advice"
#: A peer's answer longer than this is not read (its load is then unknown).
MAX_ANSWER_BYTES = 4 * 1024 * 1024


class Advisor:
    """Samples, advises and exports, every ``interval_s`` (``run``) or when asked (``step``).

    ``sample``: this worker's counters now; ``peers``: the other members' API URLs now;
    ``partitions``: the WAL's partition count (0: not known yet)."""

    def __init__(
        self, metrics: WorkerMetrics, sample: Callable[[], Awaitable[WorkerSample]],
        peers: Callable[[], list[str]], partitions: Callable[[], int], *, interval_s: float,
        cooldown_s: float, headers: dict[str, str] | None = None, policy: Policy = DEFAULT_POLICY,
    ) -> None:  # fmt: skip
        self.metrics = metrics
        self.sample = sample
        self.peers = peers
        self.partitions = partitions
        self.interval_s = interval_s
        self.policy = policy
        self.stabilizer = Stabilizer(cooldown_s)
        # Before the first figure: the least the group runs, never 0 (an autoscaler reading a
        # fresh worker must not scale the group away).
        metrics.desired_workers.set(policy.min_workers)
        self._headers = headers or {}
        self._previous: WorkerSample | None = None
        #: This worker's load over its last interval (None before it has two samples).
        self.load: WorkerLoad | None = None
        #: The last advice (before the cool-down), and which peers answered for it.
        self.advice: Advice | None = None
        self.answered: dict[str, bool] = {}
        self._http: aiohttp.ClientSession | None = None

    async def step(self, now_s: float) -> Advice:
        """One interval: sample, ask the peers, advise, export. Returns the advice. Nothing
        is exported while the WAL's partition count is not known (before the first
        assignment): an uncapped figure would be held for the whole cool-down."""
        current = await self.sample()
        if self._previous is not None:
            self.load = load_between(self._previous, current)
        self._previous = current
        urls = self.peers()
        loads = await asyncio.gather(*(self._peer_load(url) for url in urls))
        self.answered = {url: load is not None for url, load in zip(urls, loads, strict=True)}
        partitions = self.partitions()
        advice = advise([self.load, *loads], partitions, self.policy)
        self.advice = advice
        if not partitions:
            return advice
        m = self.metrics
        m.desired_workers.set(self.stabilizer.update(now_s, advice.desired))
        m.advice_needed.set(advice.needed)
        m.advice_partition_limited.set(int(advice.partition_limited))
        return advice

    async def run(self) -> None:
        """``step`` every ``interval_s`` until cancelled, the first at once."""
        while True:
            try:
                await self.step(time.monotonic())
            except Exception as exc:  # the advice is never worth the worker
                log.warning("scaling advice not computed this interval: %r", exc)
            await asyncio.sleep(self.interval_s)

    async def _peer_load(self, url: str) -> WorkerLoad | None:
        """A peer's load over its last interval; None when it does not say (down, slow,
        an answer that is not one)."""
        if self._http is None:
            self._http = aiohttp.ClientSession()
        timeout = aiohttp.ClientTimeout(total=max(0.5, min(5.0, self.interval_s / 2)))
        try:
            async with self._http.get(
                url.rstrip("/") + ADVICE_PATH, params={"sample": "0"}, headers=self._headers,
                timeout=timeout,
            ) as answer:  # fmt: skip
                if answer.status != 200:
                    return None
                # All of it, in however many pieces it comes (one read() returns what is
                # buffered: a cut answer would count the peer as unknown), up to the cap.
                body = bytearray()
                async for chunk in answer.content.iter_chunked(64 * 1024):
                    body += chunk
                    if len(body) > MAX_ANSWER_BYTES:
                        return None
            data = orjson.loads(body)
        except (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError, ValueError):
            return None
        return WorkerLoad.from_dict(data.get("load")) if isinstance(data, dict) else None

    async def report(self, fresh: bool = True) -> dict[str, Any]:
        """What ``GET /v1/advice`` answers: this worker's counters now (``sample``: two of
        them a few seconds apart give a load, as ``lukhas advise`` takes it; ``fresh`` False:
        the last interval's, or None), its load over its last interval, the group's last
        advice, the exported figure and the rule's settings."""
        sample = await self.sample() if fresh else self._previous
        return {
            "sample": None if sample is None else sample.to_dict(),
            "load": None if self.load is None else self.load.to_dict(),
            "advice": None if self.advice is None else self.advice.to_dict(),
            "desired_workers": self.stabilizer.value,
            "peers_answered": self.answered,
            "interval_s": self.interval_s,
            "cooldown_s": self.stabilizer.cooldown_s,
        }

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
            self._http = None
