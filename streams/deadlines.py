"""Adaptive deadlines of the client's read API calls.

Every read has a budget: the caller's ``timeout`` (what a read waits for its ``min_offset``
at most) plus a transport allowance. Before this module the allowance was a fixed 5 s and
each attempt could take all of it; now:

* **The allowance adapts.** Each worker's recent latencies (of answers that did not wait on
  purpose) are kept in a ``LatencyWindow``; the allowance is ``factor`` times their
  ``quantile`` (p99), kept within ``floor_s`` and ``ceiling_s``; before ``min_samples``
  answers it is the ceiling (nothing learnt yet: the old 5 s by default).
* **An attempt that does not wait on purpose gets that allowance, no more** (and never more
  than the budget left): a worker that stops answering (stopped, swapping, a network that
  drops packets) is given up after a few of its usual latencies, so the call can try again
  (another worker, a standby, the same one after the routing table's reload) within its
  budget instead of spending it all on one attempt.
* **A call never outlives its budget.** Every step (an attempt, the routing table's reload,
  the pause before a retry) is cut to the time left; when it is gone the call fails with
  ``DeadlineExceededError``. A call that would certainly exceed it fails at once instead of
  queueing: when the time left is under the worker's usual latency (``quantile`` 0.5), or a
  worker that sheds load asks to be called again (``Retry-After``) after it
  (``OverloadedError``).

Pure and clock-free (times are passed in), so the arithmetic is unit-tested without sleeping.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lukhas_context.streams.exceptions import ReadError

__all__ = [
    "DeadlineExceededError",
    "DeadlinePolicy",
    "LatencyWindow",
    "OverloadedError",
    "retry_after_of",
]


class DeadlineExceededError(ReadError):
    """A read API call's budget ran out (``budget_s``, after ``elapsed_s``), or it would
    have: the call failed instead of waiting past it. ``last_error``: why its last attempt
    failed, if one did."""

    def __init__(
        self, message: str, budget_s: float, elapsed_s: float, last_error: str | None = None
    ) -> None:
        super().__init__(message)
        self.budget_s = budget_s
        self.elapsed_s = elapsed_s
        self.last_error = last_error


class OverloadedError(ReadError):
    """The worker that can answer sheds load (``503`` with ``Retry-After``) and asks to be
    called again in ``retry_after_s``, after the call's budget: failing now instead."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class DeadlinePolicy:
    """How attempt timeouts follow observed latency (see the module doc). ``ValueError``
    naming the field when one is out of range."""

    #: The least allowance and attempt timeout (seconds).
    floor_s: float = 0.25
    #: The most (seconds): the allowance before anything is learnt.
    ceiling_s: float = 5.0
    #: Which latency quantile the allowance is a multiple of...
    quantile: float = 0.99
    #: ... and how many times it.
    factor: float = 4.0
    #: Answers seen before the latencies are trusted.
    min_samples: int = 20
    #: The latencies kept per worker (the newest).
    window: int = 256

    def __post_init__(self) -> None:
        checks = {
            "floor_s": math.isfinite(self.floor_s) and self.floor_s > 0,
            "ceiling_s": math.isfinite(self.ceiling_s) and self.ceiling_s >= self.floor_s,
            "quantile": 0 < self.quantile <= 1,
            "factor": math.isfinite(self.factor) and self.factor >= 1,
            "window": 1 <= self.window <= 1 << 16,
            "min_samples": 1 <= self.min_samples <= self.window,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"DeadlinePolicy.{name} out of range: {getattr(self, name)!r}")

    def allowance_s(self, window: LatencyWindow | None) -> float:
        """The transport allowance (and attempt timeout) for a worker whose latencies are
        ``window``: ``factor`` x its ``quantile``, within ``floor_s`` and ``ceiling_s``."""
        q = None if window is None else window.quantile(self.quantile, self.min_samples)
        if q is None:
            return self.ceiling_s
        return min(self.ceiling_s, max(self.floor_s, self.factor * q))

    def usual_s(self, window: LatencyWindow | None) -> float:
        """A worker's usual latency (its median), 0 until trusted: a call with less time
        left than this would not be answered in time."""
        q = None if window is None else window.quantile(0.5, self.min_samples)
        return 0.0 if q is None else q


#: Latencies recorded before a window's quantiles are computed again.
RESORT_EVERY = 16


class LatencyWindow:
    """The newest ``size`` latencies of one worker (seconds), and their quantiles. Recording
    is O(1); the sorted copy the quantiles are read from (a few microseconds for 256) is
    made again only once ``RESORT_EVERY`` latencies came in since the last one (or while
    there are fewer than that), so a read pays a fraction of a sort."""

    __slots__ = ("_at", "_samples", "_size", "_sorted", "_unsorted")

    def __init__(self, size: int = 256) -> None:
        self._size = size
        self._samples: list[float] = []
        self._at = 0
        self._sorted: list[float] | None = None
        #: Latencies recorded since ``_sorted`` was made.
        self._unsorted = 0

    def __len__(self) -> int:
        return len(self._samples)

    def add(self, latency_s: float) -> None:
        """One answer's latency; a value that is not a finite non-negative number (a clock
        step) is ignored."""
        if not (latency_s >= 0 and math.isfinite(latency_s)):
            return
        if len(self._samples) < self._size:
            self._samples.append(latency_s)
        else:
            self._samples[self._at] = latency_s
            self._at = (self._at + 1) % self._size
        self._unsorted += 1

    def quantile(self, q: float, min_samples: int = 1) -> float | None:
        """The ``q`` quantile (nearest rank) of the window; None with fewer than
        ``min_samples`` latencies."""
        n = len(self._samples)
        if n < max(1, min_samples):
            return None
        if self._sorted is None or (
            self._unsorted and (self._unsorted >= RESORT_EVERY or n <= RESORT_EVERY)
        ):
            self._sorted = sorted(self._samples)
            self._unsorted = 0
        m = len(self._sorted)  # the latencies of the last sort
        return self._sorted[min(m - 1, max(0, math.ceil(q * m) - 1))]


#: The longest ``Retry-After`` honoured (seconds): a larger one is taken as this.
MAX_RETRY_AFTER_S = 60.0


def retry_after_of(data: object, default: float) -> float:
    """The ``retry_after`` (seconds; ``retry_after_s`` is read too) of a worker's problem
    answer (``processors.problems``: the ``Retry-After`` header's value, which the client's
    lean GETs do not keep), within [0, ``MAX_RETRY_AFTER_S``]; ``default`` when it has none
    or not a number."""
    value = None
    if isinstance(data, dict):
        value = data.get("retry_after", data.get("retry_after_s"))
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return default
    return min(MAX_RETRY_AFTER_S, max(0.0, float(value)))
