"""Load shedding: a worker over its budgets says "later" instead of queueing more work.

Two budgets, both on by default (they only ever protect):

* **The read queue** (``ReadQueue``): the reads in the worker's handlers at once, those waiting
  for a ``min_offset`` or an outcome included. Past ``read_queue_budget`` a new read is
  answered at once ``503`` with ``Retry-After`` and the problem ``urn:lukhas:problem:overloaded``,
  without doing the read: the plain-read fast path by a counter check
  (``ReadQueue.fast_refusal``), the others before their handler runs. Only the reads of
  ``SHED_ROUTES`` are counted and shed: health, readiness, metrics, members (the client's
  routing table), ``/v1/partitions`` (operators' tools), the OpenAPI document, the change
  stream (it has a cap of its own) and ``lukhas verify``'s sessions never are.
* **The round** (``fold_pause_s``): a round whose synchronous fold took longer than
  ``round_budget_s`` held every read that long; the fold then pauses fetching for about the
  overrun (at most ``FOLD_PAUSE_MAX_S``) so reads are answered and commits happen before more
  is fetched (``FetchPause``, from ``Materializer.mind_round``; the memory budget's pauses,
  ``Materializer.mind_memory``, go through it too).

``Retry-After`` (``retry_after_s``): the reads turned away in the current second, this one
included, over the rate the queue drains, so clients shed together come back spread out at
about that rate; at least 1 s, at most ``RETRY_MAX_S``. The rate is Little's law: the reads
in the queue over the time a read spends there (``ReadQueue.drain_per_s``). Not the reads
finished a second: the queue admits only its budget, so when it sheds, few finish whatever
the worker could do.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from lukhas_context.processors.exceptions import InvalidWorkerConfigError
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.problems import PROBLEM_CONTENT_TYPE, problem, problem_body

log = logging.getLogger(__name__)

#: Reads in the handlers at once past which new reads are shed (``--read-queue-budget``).
READ_QUEUE_BUDGET = 512
#: The longest ``Retry-After`` (seconds): the longest wait a read may ask for (``MAX_WAIT_S``).
RETRY_MAX_S = 30
#: ``Retry-After`` when the drain rate cannot be told (nothing measured yet): the default
#: wait of a read, by which such waits end.
RETRY_IDLE_S = 5
#: Reads turned away are counted over windows of this many seconds (``Retry-After``).
RATE_WINDOW_S = 1.0
#: The weight of each finished read in the mean time a read spends in the queue.
MEAN_WEIGHT = 0.1
#: The shortest and the longest pause of fetching after a round over its budget.
FOLD_PAUSE_MIN_S = 0.02
FOLD_PAUSE_MAX_S = 0.5
#: The routes (aiohttp's path templates) whose reads are shed; every other route never is.
SHED_ROUTES = frozenset(
    {
        "/v1/contexts",
        "/v1/contexts/{context_id}",
        "/v1/contexts/{context_id}/history",
        "/v1/outcomes/{partition}/{offset}",
        "/v1/dry-run",
    }
)
#: The route of the reads the fast path answers (``processors.listener``).
FAST_ROUTE = "/v1/contexts/{context_id}"
_SHED_METHODS = frozenset({"GET", "HEAD", "POST"})


def retry_after_s(turned_away: int, drain_per_s: float) -> int:
    """Seconds a shed client should wait: the time ``turned_away`` reads (those shed in the
    current window, this one included: the demand over the budget) take to be done at
    ``drain_per_s`` reads a second, so the nth client shed comes back when n reads could have
    finished; ``RETRY_IDLE_S`` when the rate is not known; always within
    ``[1, RETRY_MAX_S]``."""
    if drain_per_s <= 0:
        return RETRY_IDLE_S
    return max(1, min(RETRY_MAX_S, math.ceil(max(1, turned_away) / drain_per_s)))


def fold_pause_s(round_s: float, budget_s: float) -> float:
    """How long fetching pauses after a round whose synchronous fold took ``round_s``: 0
    within the budget, else about the overrun (the time reads were held past the promise),
    within ``[FOLD_PAUSE_MIN_S, FOLD_PAUSE_MAX_S]``."""
    if round_s <= budget_s:
        return 0.0
    return min(FOLD_PAUSE_MAX_S, max(FOLD_PAUSE_MIN_S, round_s - budget_s))


def check_budget(budget: int | None) -> None:
    """``InvalidWorkerConfigError`` unless ``budget`` is None (never shed) or positive."""
    if budget is not None and budget < 1:
        raise InvalidWorkerConfigError(
            f"read_queue_budget must be at least 1 (None: never shed), got {budget}"
        )


class ReadQueue:
    """The reads in the worker's handlers, and the decision to shed new ones.

    ``in_flight >= limit`` is the whole check (the fast path makes it inline); ``enter`` and
    ``leave`` bracket a read's handler. Not thread-safe: the event loop's thread only."""

    __slots__ = (
        "_age_sum",
        "_clock",
        "_epoch",
        "_fast_refusals",
        "_fast_shed",
        "_mean_s",
        "_shed",
        "_shed_n",
        "_shed_t",
        "budget",
        "in_flight",
        "limit",
    )  # fmt: skip

    def __init__(
        self,
        budget: int | None,
        metrics: WorkerMetrics,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        check_budget(budget)
        self.budget = budget
        #: What ``in_flight`` is compared with (no budget: a count never reached).
        self.limit = budget if budget is not None else 1 << 62
        self.in_flight = 0
        self._clock = clock
        #: Start times are kept relative to this (small floats: the sum stays exact enough),
        #: and ``_age_sum`` is their sum over the reads in the queue (0 when it is empty).
        self._epoch = clock()
        self._age_sum = 0.0
        #: The mean time a finished read spent in the queue (0: none finished yet).
        self._mean_s = 0.0
        #: Reads shed since ``_shed_t``, the start of the current window.
        self._shed_t = -math.inf
        self._shed_n = 0
        self._shed = metrics.reads_shed
        self._fast_shed = metrics.reads_shed.labels(FAST_ROUTE)
        self._fast_refusals: dict[int, bytes] = {}
        metrics.read_queue.set_function(lambda: self.in_flight)
        metrics.read_queue_budget.set(budget or 0)

    def enter(self) -> float:
        """A read's handler starts; returns what its ``leave`` takes."""
        started = self._clock() - self._epoch
        self.in_flight += 1
        self._age_sum += started
        return started

    def leave(self, started: float) -> None:
        """The read that ``enter`` returned ``started`` for is answered."""
        self.in_flight -= 1
        if self.in_flight:
            self._age_sum -= started
        else:
            self._age_sum = 0.0  # exact again: no drift from many additions
        spent = self._clock() - self._epoch - started
        self._mean_s = (
            spent if not self._mean_s else self._mean_s + MEAN_WEIGHT * (spent - self._mean_s)
        )

    def drain_per_s(self) -> float:
        """Reads the queue finishes a second now, by Little's law: those in it over the time
        a read spends in it, the longer of the mean of the reads finished and the mean age
        of those in the queue (reads stuck waiting drain slowly, however fast the earlier
        ones were). 0 when it cannot be told (empty, nothing measured)."""
        if not self.in_flight:
            return 0.0
        now = self._clock() - self._epoch
        waited = now - self._age_sum / self.in_flight
        spent = max(self._mean_s, waited)
        return self.in_flight / spent if spent > 0 else 0.0

    def retry_after(self) -> int:
        """The ``Retry-After`` of a read shed now (counted among the turned away)."""
        now = self._clock()
        if now - self._shed_t >= RATE_WINDOW_S:
            self._shed_t, self._shed_n = now, 0
        self._shed_n += 1
        return retry_after_s(self._shed_n, self.drain_per_s())

    def detail(self) -> str:
        return (
            f"this worker has {self.in_flight} reads in progress, its budget is {self.limit}: "
            "ask again after Retry-After seconds (or another worker that serves the partition)"
        )

    def refusal(self, route: str) -> web.Response:
        """The 503 of a read of ``route`` (a path template) shed before its handler
        (counted)."""
        self._shed.labels(route).inc()
        retry = self.retry_after()
        return problem(
            503, self.detail(), "overloaded", {"retry_after": retry},
            headers={"Retry-After": str(retry)},
        )  # fmt: skip

    def fast_refusal(self) -> bytes:
        """The whole 503 of a read shed on the fast path (counted), keeping the connection
        (its length is given): made once per ``Retry-After`` value, then reused."""
        self._fast_shed.inc()
        retry = self.retry_after()
        answer = self._fast_refusals.get(retry)
        if answer is None:
            body = problem_body(
                503, f"this worker has more reads in progress than its budget ({self.limit}): "
                "ask again after Retry-After seconds", "overloaded", retry_after=retry,
            )  # fmt: skip
            answer = (
                b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: %s\r\nContent-Length: %d\r\n"
                b"Retry-After: %d\r\n\r\n%s"
                % (PROBLEM_CONTENT_TYPE.encode(), len(body), retry, body)
            )
            self._fast_refusals[retry] = answer
        return answer


def sheds(method: str, route: str) -> bool:
    """Whether a request of ``method`` on ``route`` (a path template) may be shed."""
    return route in SHED_ROUTES and method in _SHED_METHODS


@dataclass(slots=True)
class _Episode:
    """Pauses of one reason in a row: how many, how long in all."""

    pauses: int = 0
    seconds: float = 0.0


class FetchPause:
    """Pauses fetching between two rounds (``breathe``), with one log line when an episode of
    pauses (of one reason, in a row) begins and one when it ends (``calm``).

    Only between rounds: a round's Kafka transaction commits inside the round
    (``Materializer.fold_segment``), so no transaction is ever open across a pause. Only the
    partitions that fold and are not paused already are paused (one still opening is paused
    by ``processors.assignment`` until its store is ready, and stays so), and they are resumed
    only if no rebalance happened meanwhile (the group's generation is the same) and they
    still fold here: a rebalance gives every partition a fresh, unpaused fetch position, and a
    revoked one must not be touched (aiokafka refuses to resume it)."""

    def __init__(
        self,
        metrics: WorkerMetrics,
        generation: Callable[[], int],
        folds: Callable[[int], bool],
    ) -> None:
        self._paused_gauge = metrics.fetch_paused
        self._seconds = metrics.fetch_paused_seconds
        self._generation = generation
        self._folds = folds
        self._episodes: dict[str, _Episode] = {}

    async def breathe(
        self,
        consumer: Any,
        seconds: float,
        reason: str,
        why: str | None,
        stopping: asyncio.Event,
    ) -> None:
        """Pauses fetching for ``seconds`` (less if ``stopping`` is set), for ``reason``
        (``round`` or ``memory``: the metric's label; ``why``: the log's words at the start
        of an episode, None: the caller logs)."""
        episode = self._episodes.get(reason)
        if episode is None:
            episode = self._episodes[reason] = _Episode()
        if episode.pauses == 0 and why is not None:
            log.warning("fetching paused between rounds, %.2f s at a time, until it passes: %s",
                        seconds, why)  # fmt: skip
        generation = self._generation()
        mine = [tp for tp in consumer.assignment() - consumer.paused() if self._folds(tp.partition)]
        if mine:
            consumer.pause(*mine)
        self._paused_gauge.set(1)
        started = time.monotonic()
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), seconds)
        finally:
            took = time.monotonic() - started
            self._paused_gauge.set(0)
            self._seconds.labels(reason).inc(took)
            episode.pauses += 1
            episode.seconds += took
            if mine and self._generation() == generation:
                assigned = consumer.assignment()
                back = [tp for tp in mine if tp in assigned and self._folds(tp.partition)]
                if back:
                    consumer.resume(*back)

    def calm(self, reason: str) -> None:
        """A round (or memory check) of ``reason`` needed no pause: ends its episode."""
        episode = self._episodes.pop(reason, None)
        if episode is not None:
            log.info("fetching no longer paused for %s: %d pauses, %.1f s in all",
                     reason, episode.pauses, episode.seconds)  # fmt: skip
