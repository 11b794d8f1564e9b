"""The log's clock as seen from a worker: what time the brokers would stamp on an append now.

The fold decides expiry by log time (the WAL is ``LogAppendTime``: the partition leader's
clock), so everything a worker decides *ahead* of the fold must use the same time base: a read
hiding an expired context, a dry run, the sweeper's "due". The worker's own wall clock may be
off by any amount (a worker an hour ahead read live contexts as gone and re-appended refused
Expires every few seconds).

``LogClock`` keeps bounds on ``offset = log time - this process's monotonic clock`` from two
kinds of evidence, both stamped by a broker, never by a client:

* an append acknowledged with a log-append time ``T``, sent at ``t0`` and acknowledged at
  ``t1`` (monotonic): the broker stamped it in between, so ``T - t1 <= offset <= T - t0``
  (Cristian's bounds: the error is at most half the round trip);
* a record of a ``LogAppendTime`` topic with time ``T`` received at ``t``: it was stamped
  before it arrived, so ``offset >= T - t`` (a lower bound only).

The bounds are kept on the monotonic clock, so a step of the worker's wall clock changes
nothing; they widen with age by ``DRIFT`` (the clocks' rates may differ that much), and
samples older than ``WINDOW_S`` are dropped. A sample that contradicts the others (the
brokers' clock stepped, or brokers disagree with each other) replaces them all and is logged.

Until something was measured, the clock is the worker's wall clock (``measured`` False).
Decisions that must not come early (a read hiding a context, the sweeper's "due") use the
lower bound, ``earliest_ms()``: they are late by at most the error, typically milliseconds.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from aiokafka.errors import KafkaError

log = logging.getLogger(__name__)

#: How far the worker's and the brokers' clock rates may differ (100 ppm: well above what NTP
#: leaves, and a quartz clock's spec). Bounds widen by this much of their age.
DRIFT = 1e-4
#: Samples are kept this long (seconds). A probe every 30 s keeps the bounds fresh.
WINDOW_S = 600.0
#: Samples within one bucket of this many seconds are folded into one (max lower bound, min
#: upper bound), so the bounds cost O(window / bucket) only when a bucket opens or expires.
BUCKET_S = 10.0
#: Kafka's timestamp type of a record or acknowledgement stamped by the broker.
LOG_APPEND_TIME = 1
#: A skew warning is repeated at most this often while the skew lasts.
WARN_EVERY_S = 600.0
#: A probe whose round trip took longer than this (the first one fetches metadata) is repeated
#: after ``REPROBE_S`` rather than after the interval: its bounds are loose.
SLOW_PROBE_S = 0.1
REPROBE_S = 1.0
_INF = math.inf


@dataclass(frozen=True, slots=True)
class Skew:
    """How far this worker's wall clock is ahead of the log's (negative: behind).

    ``skew_ms`` is None while nothing was measured; ``error_ms`` bounds its error (None when
    only lower bounds of the log's clock were seen, so the skew may be larger)."""

    skew_ms: float | None
    error_ms: float | None
    samples: int

    def to_dict(self) -> dict[str, object]:
        return {
            "skew_ms": None if self.skew_ms is None else round(self.skew_ms, 1),
            "error_ms": None if self.error_ms is None else round(self.error_ms, 1),
            "measured": self.skew_ms is not None,
            "samples": self.samples,
        }


class LogClock:
    """Bounds on the log's clock (see the module doc). Not thread-safe: one event loop."""

    def __init__(
        self,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._monotonic = monotonic
        self._wall = wall
        #: ``[start, max(lo + DRIFT * t), min(hi - DRIFT * t)]`` per bucket, in ms.
        self._buckets: deque[list[float]] = deque()
        self._lo = -_INF  # max over buckets of the drift-adjusted lower bounds
        self._hi = _INF
        self.samples = 0

    # ---- evidence ----

    def observe_append(self, sent: float, acked: float, log_ms: int) -> None:
        """An append sent at monotonic ``sent`` and acknowledged at ``acked`` (seconds) with
        the broker's log-append time ``log_ms``."""
        self._add(sent, log_ms - acked * 1000.0, log_ms - sent * 1000.0)

    def observe_read(self, log_ms: int, received: float) -> None:
        """A record stamped ``log_ms`` by its broker, received at monotonic ``received``."""
        self._add(received, log_ms - received * 1000.0, _INF)

    def observe_records(self, batch: dict[Any, list[Any]], received: float) -> None:
        """The newest record of each partition of a fetched batch, if its topic stamps log
        time (a record with a producer's time proves nothing)."""
        for records in batch.values():
            if records and records[-1].timestamp_type == LOG_APPEND_TIME:
                self.observe_read(records[-1].timestamp, received)

    def watch(self, ack: asyncio.Future[Any], sent: float) -> None:
        """Observes the acknowledgement of an append sent at ``sent`` once it arrives."""
        ack.add_done_callback(lambda f: self._acked(f, sent))

    def _acked(self, ack: asyncio.Future[Any], sent: float) -> None:
        if ack.cancelled() or ack.exception() is not None:
            return
        meta = ack.result()
        if meta is not None and meta.timestamp_type == LOG_APPEND_TIME:
            self.observe_append(sent, self._monotonic(), meta.timestamp)

    # ---- the estimate ----

    @property
    def measured(self) -> bool:
        """True once a lower bound of the log's clock is known."""
        self._expire()
        return self._lo > -_INF

    def bounds_ms(self) -> tuple[float, float] | None:
        """``(earliest, latest)`` the log's clock can read now (ms since the epoch; latest is
        infinite when only lower bounds were seen), or None when nothing was measured."""
        self._expire()
        if self._lo == -_INF:
            return None
        now = self._monotonic()
        widen = DRIFT * now * 1000.0
        base = now * 1000.0
        return base + self._lo - widen, base + self._hi + widen

    def now_ms(self) -> int:
        """The best estimate of the log's clock now: the middle of the bounds, the lower bound
        when there is no upper one, this worker's wall clock when nothing was measured."""
        bounds = self.bounds_ms()
        if bounds is None:
            return int(self._wall() * 1000)
        lo, hi = bounds
        return int(lo if hi == _INF else (lo + hi) / 2)

    def earliest_ms(self) -> int:
        """A time the log's clock has certainly reached (the wall clock when unmeasured): an
        Expire due by it and appended now is never refused as early."""
        bounds = self.bounds_ms()
        return int(self._wall() * 1000) if bounds is None else int(bounds[0])

    def skew(self) -> Skew:
        """This worker's wall clock minus the log's clock, with its error bound."""
        bounds = self.bounds_ms()
        if bounds is None:
            return Skew(None, None, self.samples)
        lo, hi = bounds
        wall = self._wall() * 1000.0
        if hi == _INF:
            return Skew(wall - lo, None, self.samples)
        return Skew(wall - (lo + hi) / 2, (hi - lo) / 2, self.samples)

    # ---- bookkeeping ----

    def _add(self, at: float, lo: float, hi: float) -> None:
        self.samples += 1
        ms = at * 1000.0
        self._expire()
        # The bounds known so far, widened to the sample's time.
        known_lo, known_hi = self._lo - DRIFT * ms, self._hi + DRIFT * ms
        if lo > known_hi or hi < known_lo:
            # Contradicts what was measured: the log's clock stepped (or brokers disagree).
            # The newest evidence wins; the old bounds would now be wrong.
            log.warning(
                "the log's clock moved against earlier measurements (by at least %.0f ms); "
                "keeping only the newest",
                max(lo - known_hi, known_lo - hi),
            )
            self._buckets.clear()
            self._lo, self._hi = -_INF, _INF
        lo_adj, hi_adj = lo + DRIFT * ms, hi - DRIFT * ms
        buckets = self._buckets
        if buckets and at - buckets[-1][0] < BUCKET_S:
            last = buckets[-1]
            last[1] = max(last[1], lo_adj)
            last[2] = min(last[2], hi_adj)
        else:
            buckets.append([at, lo_adj, hi_adj])
        self._lo = max(self._lo, lo_adj)
        self._hi = min(self._hi, hi_adj)

    def _expire(self) -> None:
        buckets = self._buckets
        if not buckets or self._monotonic() - buckets[0][0] <= WINDOW_S:
            return
        cutoff = self._monotonic() - WINDOW_S
        while buckets and buckets[0][0] < cutoff:
            buckets.popleft()
        self._lo = max((b[1] for b in buckets), default=-_INF)
        self._hi = min((b[2] for b in buckets), default=_INF)


class SkewReporter:
    """Logs a warning when the worker's clock is off the log's by more than ``threshold_s``
    (once, then at most every ``WARN_EVERY_S`` while it lasts, and once when it is back)."""

    def __init__(self, clock: LogClock, threshold_s: float) -> None:
        self.clock = clock
        self.threshold_ms = threshold_s * 1000.0
        self._warned_at: float | None = None

    def check(self) -> None:
        skew = self.clock.skew()
        if skew.skew_ms is None:
            return
        now = time.monotonic()
        # Off for sure: the skew exceeds the threshold by more than its error.
        off = abs(skew.skew_ms) - (skew.error_ms or 0.0) > self.threshold_ms
        if off and (self._warned_at is None or now - self._warned_at >= WARN_EVERY_S):
            self._warned_at = now
            log.warning(
                "this worker's clock is %+.3f s off the log's (the brokers') clock (error "
                "%s): reads and expiry use the log's clock; fix the worker's time sync",
                skew.skew_ms / 1000,
                "unknown" if skew.error_ms is None else f"±{skew.error_ms / 1000:.3f} s",
            )
        elif not off and self._warned_at is not None:
            self._warned_at = None
            log.warning("this worker's clock agrees with the log's again (%+.3f s)",
                        skew.skew_ms / 1000)  # fmt: skip


async def probe_forever(
    clock: LogClock,
    reporter: SkewReporter,
    send: Callable[[], Any],
    topic: str,
    interval_s: float,
) -> None:
    """Measures the log's clock every ``interval_s`` by a tiny append to ``topic`` (which
    must stamp ``LogAppendTime``); ``send()`` appends and returns the acknowledgement's
    future. Never raises except on cancellation; failures are logged."""
    warned_type = False
    while True:
        sent = time.monotonic()
        delay = interval_s
        try:
            meta = await asyncio.wait_for(await send(), timeout=max(interval_s, 5.0))
        except (KafkaError, TimeoutError, OSError) as exc:
            log.warning("clock probe on %s failed: %r", topic, exc)
        else:
            acked = time.monotonic()
            if meta.timestamp_type == LOG_APPEND_TIME:
                clock.observe_append(sent, acked, meta.timestamp)
                if acked - sent > SLOW_PROBE_S:
                    delay = min(interval_s, REPROBE_S)
            elif not warned_type:
                warned_type = True
                log.warning(
                    "topic %s does not stamp LogAppendTime: the log's clock is measured only "
                    "from the WAL (create it with `lukhas up` or ensure_topics)",
                    topic,
                )
        reporter.check()
        await asyncio.sleep(delay)
