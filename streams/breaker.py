"""Circuit breakers for the client's endpoints (each worker's read API, the producer path).

A ``Breaker`` watches the outcomes of one endpoint's calls and says whether the next call may
go to it:

* **closed**: calls go through; each outcome updates two exponential moving averages (EMA),
  of the failure rate and of the latency of successful calls;
* **open**: the endpoint failed too often; calls are refused at once (the caller goes to
  another endpoint, or fails fast with ``CircuitOpenError``) until the open period ends;
* **half-open**: after the open period, one probe call at a time goes through (another
  after ``probe_s`` if it is still in flight: a long poll does not hold the slot): a success
  closes the breaker, a failure opens it again for twice as long (up to ``max_open_s``). An
  answer that comes in while it is open (a call sent before, the routing table's reload)
  closes it too: the endpoint is back.

What counts as failing adapts to the endpoint, and only once it has been seen enough
(``min_samples`` outcomes): a success slower than ``slow_factor`` times its latency EMA (and
than ``slow_floor_s``) counts as a failure; the breaker opens when the failure-rate EMA passes
the endpoint's own baseline (a slower EMA of its failure rate, learnt while the faster one
is under ``failure_rate``) by ``rate_margin``, and never below ``failure_rate``. Before
``min_samples``, only ``consecutive_failures`` failures in a row open it: a fresh endpoint is
not judged on a rate of three calls, and a dead one is still left quickly.

Pure and clock-driven (``clock``: ``time.monotonic`` unless a test gives another), so every
transition is unit-tested without sleeping; not thread-safe (one per event loop).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from lukhas_context.streams.exceptions import ReadError

__all__ = [
    "Breaker",
    "BreakerPolicy",
    "BreakerState",
    "Breakers",
    "CircuitOpenError",
    "metrics_text",
]


#: Slack of the open period's end against the clock (float sums of a wait and a time).
_EPSILON_S = 1e-6


class BreakerState(enum.Enum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpenError(ReadError):
    """Every endpoint that could answer has its breaker open, and none will let a call
    through before the caller's time is up: failing now instead of waiting.
    ``retry_after_s``: when the first of them lets a probe through."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


@dataclass(frozen=True, slots=True)
class BreakerPolicy:
    """When a breaker opens and for how long (see the module doc). ``ValueError`` naming the
    field when one is out of range."""

    #: Outcomes seen before the rates and latencies are trusted.
    min_samples: int = 20
    #: Weight of the newest outcome in the failure-rate and latency EMAs.
    alpha: float = 0.2
    #: Weight of the newest outcome in the baseline failure-rate EMA (slower).
    baseline_alpha: float = 0.02
    #: The least failure-rate EMA that opens a breaker.
    failure_rate: float = 0.5
    #: How far the failure-rate EMA must pass the endpoint's baseline to open it.
    rate_margin: float = 0.3
    #: Failures in a row that open a breaker whatever the rates (a dead endpoint).
    consecutive_failures: int = 3
    #: A success slower than this many times the latency EMA counts as a failure...
    slow_factor: float = 10.0
    #: ... and than this many seconds.
    slow_floor_s: float = 0.25
    #: The first open period; each failed probe doubles it, up to ``max_open_s``.
    open_s: float = 0.25
    max_open_s: float = 2.0
    #: A probe in flight longer than this (a long poll) no longer holds the half-open slot.
    probe_s: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "min_samples": self.min_samples >= 1,
            "alpha": 0 < self.alpha <= 1,
            "baseline_alpha": 0 < self.baseline_alpha <= 1,
            "failure_rate": 0 < self.failure_rate <= 1,
            "rate_margin": 0 <= self.rate_margin <= 1,
            "consecutive_failures": self.consecutive_failures >= 1,
            "slow_factor": self.slow_factor >= 1,
            "slow_floor_s": self.slow_floor_s >= 0,
            "open_s": self.open_s > 0,
            "max_open_s": self.max_open_s >= self.open_s,
            "probe_s": self.probe_s > 0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"BreakerPolicy.{name} out of range: {getattr(self, name)!r}")


@dataclass(slots=True)
class Breaker:
    """The breaker of one endpoint (``name``: its URL, or ``kafka`` for the producer)."""

    name: str
    policy: BreakerPolicy = field(default_factory=BreakerPolicy)
    clock: Callable[[], float] = time.monotonic
    state: BreakerState = BreakerState.CLOSED
    samples: int = 0
    failure_ema: float = 0.0
    baseline_ema: float = 0.0
    latency_ema_s: float | None = None
    failures_in_row: int = 0
    opened_at: float = 0.0
    open_for_s: float = 0.0
    probing: bool = False
    probe_started: float = 0.0
    #: Probes let through so far: the permit of the one holding the half-open slot.
    probes: int = 0
    #: Why its last failed call failed, as the caller said (for the errors it raises).
    last_error: str | None = None
    #: Transitions so far, by the state entered (for metrics).
    transitions: dict[str, int] = field(default_factory=dict)

    def acquire(self) -> int | None:
        """A permit for a call to the endpoint now, or None. In half-open, one call at a
        time gets one (the probe) until its outcome is recorded: its permit is the probe's
        number (from 1), to ``release``; any other permit is 0."""
        if self.state is BreakerState.CLOSED:
            return 0
        if self.state is BreakerState.OPEN:
            if self.clock() < self.opened_at + self.open_for_s - _EPSILON_S:
                return None
            self._enter(BreakerState.HALF_OPEN)
        now = self.clock()
        if self.probing and now - self.probe_started < self.policy.probe_s:
            return None
        self.probing, self.probe_started = True, now
        self.probes += 1
        return self.probes

    def release(self, permit: int) -> None:
        """A call let through with ``permit`` ended with no outcome to judge (cancelled by
        its caller): when it was the probe still holding the half-open slot, frees it, else
        no other call would be let through again. Any other call's permit frees nothing."""
        if self.probing and permit == self.probes:
            self.probing = False

    def retry_after_s(self) -> float:
        """Seconds until the breaker lets a call through (0: now)."""
        if self.state is BreakerState.OPEN:
            return max(0.0, self.opened_at + self.open_for_s - self.clock())
        if self.state is BreakerState.HALF_OPEN and self.probing:
            return max(0.0, self.probe_started + self.policy.probe_s - self.clock())
        return 0.0

    def slow_after_s(self) -> float | None:
        """The latency past which a success counts as a failure; None until trusted."""
        if self.samples < self.policy.min_samples or self.latency_ema_s is None:
            return None
        return max(self.policy.slow_floor_s, self.latency_ema_s * self.policy.slow_factor)

    def record(self, ok: bool, latency_s: float | None = None, error: str | None = None) -> None:
        """The outcome of one call: ``ok`` False for a failure to connect or answer (an
        answer of any status is ``ok``: the endpoint is alive), with its latency (None for
        a call that waits on purpose, e.g. a long poll: alive, its time says nothing)."""
        slow = self.slow_after_s()
        failed = not ok or (slow is not None and latency_s is not None and latency_s > slow)
        if ok and latency_s is not None:
            # A slow success moves the latency EMA by no more than the threshold it passed:
            # one stall does not make the next ones look normal, yet an endpoint that has
            # become slower for good is learnt within a few calls (a factor of up to
            # 1 + alpha * (slow_factor - 1) a call).
            seen = latency_s if slow is None else min(latency_s, slow)
            a = self.policy.alpha
            self.latency_ema_s = (
                seen if self.latency_ema_s is None else (1 - a) * self.latency_ema_s + a * seen
            )
        if not ok:
            self.last_error = error
        self.samples += 1
        self.failure_ema += self.policy.alpha * (float(failed) - self.failure_ema)
        self.failures_in_row = self.failures_in_row + 1 if failed else 0
        if self.state is BreakerState.HALF_OPEN:
            self.probing = False
            if failed:
                self._open(min(self.policy.max_open_s, self.open_for_s * 2))
            else:
                self.failure_ema = self.baseline_ema
                self._enter(BreakerState.CLOSED)
            return
        if self.state is BreakerState.OPEN:
            # A call let through before it opened, or one that goes around the breaker (the
            # routing table's reload): a failure is judged already; an answer in time is
            # the endpoint back, as a probe's would be.
            if not failed:
                self.failure_ema = self.baseline_ema
                self.failures_in_row = 0
                self._enter(BreakerState.CLOSED)
            return
        if self._should_open():
            self._open(self.policy.open_s)
        elif self.failure_ema <= self.policy.failure_rate:
            # The baseline learns only while the endpoint looks healthy by the floor: a
            # healthy endpoint that starts failing is judged against what it was, not
            # against a baseline that follows it up.
            self.baseline_ema += self.policy.baseline_alpha * (float(failed) - self.baseline_ema)

    def _should_open(self) -> bool:
        p = self.policy
        if self.failures_in_row >= p.consecutive_failures:
            return True
        if self.samples < p.min_samples:
            return False
        return self.failure_ema > max(p.failure_rate, self.baseline_ema + p.rate_margin)

    def _open(self, seconds: float) -> None:
        self.opened_at = self.clock()
        self.open_for_s = seconds
        self.probing = False
        self._enter(BreakerState.OPEN)

    def _enter(self, state: BreakerState) -> None:
        self.state = state
        self.transitions[state.value] = self.transitions.get(state.value, 0) + 1

    def snapshot(self) -> dict[str, Any]:
        """What ``ContextClient.breakers()`` shows of it."""
        return {
            "endpoint": self.name,
            "state": self.state.value,
            "samples": self.samples,
            "failure_rate": round(self.failure_ema, 4),
            "baseline_failure_rate": round(self.baseline_ema, 4),
            "latency_ms": None
            if self.latency_ema_s is None
            else round(self.latency_ema_s * 1e3, 3),
            "slow_after_ms": None if (s := self.slow_after_s()) is None else round(s * 1e3, 3),
            "retry_after_s": round(self.retry_after_s(), 3),
            "transitions": dict(self.transitions),
            "last_error": self.last_error,
        }


def metrics_text(snapshots: list[dict[str, Any]], prefix: str = "lukhas_client") -> str:
    """The breakers' state in the Prometheus text format (``ContextClient.breaker_metrics``):
    ``{prefix}_breaker_state{endpoint,state}`` 1 for the state each is in (0 for the others),
    ``{prefix}_breaker_transitions_total{endpoint,state}``, ``{prefix}_breaker_failure_rate``
    and ``{prefix}_breaker_latency_seconds`` (EMAs). Endpoint labels escaped as the format
    asks."""
    lines = [
        f"# HELP {prefix}_breaker_state The circuit breaker state of an endpoint (1: in it).",
        f"# TYPE {prefix}_breaker_state gauge",
    ]
    for s in snapshots:
        for state in BreakerState:
            value = int(s["state"] == state.value)
            lines.append(f"{prefix}_breaker_state{{{_labels(s, state.value)}}} {value}")
    lines += [
        f"# HELP {prefix}_breaker_transitions_total Transitions of a breaker, by state entered.",
        f"# TYPE {prefix}_breaker_transitions_total counter",
    ]
    for s in snapshots:
        for state in BreakerState:
            count = s["transitions"].get(state.value, 0)
            lines.append(f"{prefix}_breaker_transitions_total{{{_labels(s, state.value)}}} {count}")
    lines += [
        f"# HELP {prefix}_breaker_failure_rate Moving average of an endpoint's failed calls.",
        f"# TYPE {prefix}_breaker_failure_rate gauge",
        *(f"{prefix}_breaker_failure_rate{{{_labels(s)}}} {s['failure_rate']}" for s in snapshots),
        f"# HELP {prefix}_breaker_latency_seconds Moving average of an endpoint's latency.",
        f"# TYPE {prefix}_breaker_latency_seconds gauge",
    ]
    for s in snapshots:
        if s["latency_ms"] is not None:
            seconds = s["latency_ms"] / 1000
            lines.append(f"{prefix}_breaker_latency_seconds{{{_labels(s)}}} {seconds}")
    return "\n".join(lines) + "\n"


def _labels(snapshot: dict[str, Any], state: str | None = None) -> str:
    endpoint = str(snapshot["endpoint"]).replace("\\", "\\\\").replace('"', '\\"')
    endpoint = endpoint.replace("\n", "\\n")
    return f'endpoint="{endpoint}"' + (f',state="{state}"' if state else "")


class Breakers:
    """One breaker per endpoint name, made on first use with one policy and clock."""

    def __init__(
        self, policy: BreakerPolicy | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.policy = policy or BreakerPolicy()
        self.clock = clock
        self._by_name: dict[str, Breaker] = {}

    def __getitem__(self, name: str) -> Breaker:
        breaker = self._by_name.get(name)
        if breaker is None:
            breaker = self._by_name[name] = Breaker(name, self.policy, self.clock)
        return breaker

    def snapshot(self) -> list[dict[str, Any]]:
        return [b.snapshot() for b in self._by_name.values()]
