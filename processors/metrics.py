"""Prometheus metrics of one worker, in a registry of its own, named as Prometheus says
(units in the name, ``_total`` on counters, one metric with a label rather than one per
value): the fold (``lukhas_events_total{outcome}``...), the read API
(``lukhas_http_requests_total{method,route,status}``, ``lukhas_http_request_duration_seconds``,
fast path included), change streams (``lukhas_sse_streams``, ``lukhas_sse_events_total``),
memory, the process and Python collectors, and ``lukhas_build_info``. No ``_created``
series (``disable_created_metrics``: they doubled the output and no query uses them).

Renamed metrics keep their old name for now, marked ``DEPRECATED`` in their help with the
name to use: ``lukhas_events_applied_total`` is ``lukhas_events_total{outcome="applied"}``.
"""

from __future__ import annotations

import platform
from collections.abc import Sequence

import prometheus_client
from prometheus_client import (
    GC_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

from lukhas_context import __version__

#: The Content-Type of ``WorkerMetrics.render()``: the text format, version 0.0.4.
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
#: Read API latency buckets, seconds: a cached read takes a fraction of a millisecond.
HTTP_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.1, 0.5, 2.5, 10.0)
#: The read API's latency histogram, and the route of the point reads the console plots.
HTTP_SECONDS = "lukhas_http_request_duration_seconds"
READ_ROUTE = "/v1/contexts/{context_id}"
#: The fold's outcomes, the values of ``lukhas_events_total``'s ``outcome`` label.
OUTCOMES = ("applied", "conflict", "rejected", "fenced", "duplicate", "dead_lettered")

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]


class _Both:
    """A count kept under its label of the new metric and, for now, its deprecated name."""

    def __init__(self, new: Counter, old: Counter) -> None:
        self.new, self.old = new, old

    def inc(self, amount: float = 1) -> None:
        self.new.inc(amount)
        self.old.inc(amount)


class WorkerMetrics:
    """Counters are bumped once per batch, never per event (the hot path stays lean)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        r.register(GC_COLLECTOR)
        Info("lukhas_build", "The running version of LUKHAS Context", registry=r).info(
            {"version": __version__, "python": platform.python_version()}
        )
        self.consumed = Counter("lukhas_records_consumed", "WAL records read", registry=r)
        self.events = Counter(
            "lukhas_events", "WAL records folded, by what became of them", ["outcome"], registry=r
        )

        def outcome(name: str, old: str, said: str) -> _Both:
            deprecated = Counter(
                old, f"DEPRECATED: use lukhas_events_total{{outcome=\"{name}\"}}. {said}",
                registry=r,
            )  # fmt: skip
            return _Both(self.events.labels(name), deprecated)

        self.applied = outcome("applied", "lukhas_events_applied", "Events applied to state")
        self.conflicts = outcome(
            "conflict", "lukhas_events_conflicted", "Events refused by a version condition"
        )
        self.rejected = outcome("rejected", "lukhas_events_rejected", "Events rejected as invalid")
        self.fenced = outcome(
            "fenced", "lukhas_events_fenced", "Events refused for a stale fencing token"
        )
        self.fenced_rounds = Counter(
            "lukhas_rounds_fenced",
            "Rounds not published because the partition's change producer was fenced "
            "(another worker had opened the partition)",
            registry=r,
        )
        self.dead_lettered = outcome(
            "dead_lettered", "lukhas_records_dead_lettered", "WAL records sent to the DLQ"
        )
        self.duplicates = outcome(
            "duplicate", "lukhas_events_duplicate", "Retried events recognised by event id"
        )
        self.changes = Counter("lukhas_changes_published", "Changes published", registry=r)
        self.peer_evictions = Counter(
            "lukhas_peer_evictions",
            "Members evicted from the group because their read API refused connections "
            "(--evict-dead-peers)",
            registry=r,
        )
        self.changes_coalesced = Counter(
            "lukhas_changes_coalesced",
            "Changes not published: superseded by a later change of the same context in the "
            "round (--coalesce-changes)",
            registry=r,
        )
        self.lag = Gauge(
            "lukhas_partition_lag", "WAL records not yet folded", ["partition"], registry=r
        )
        self.next_offset = Gauge(
            "lukhas_partition_next_offset", "Next WAL offset to fold", ["partition"], registry=r
        )
        self.standby_lag = Gauge(
            "lukhas_standby_lag_records",
            "Change-topic records a standby copy has not applied yet", ["partition"], registry=r,
        )  # fmt: skip
        self.standby_next_offset = Gauge(
            "lukhas_standby_next_offset", "Next WAL offset of a standby copy's store",
            ["partition"], registry=r,
        )  # fmt: skip
        self.standby_rebuilds = Counter(
            "lukhas_standby_rebuilds", "Standby copies built from the change topic", registry=r
        )
        self.batch_seconds = Histogram(
            "lukhas_batch_seconds",
            "Time to fold, publish and commit one batch",
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
            registry=r,
        )

        self.expiry_lateness = Histogram(
            "lukhas_expiry_lateness_seconds",
            "Log time of an applied Expire minus the expiry time of the version it removed",
            buckets=(0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 300.0),
            registry=r,
        )
        self.expires_appended = Counter(
            "lukhas_expire_events_appended", "Expire events the sweeper appended", registry=r
        )
        self.ttl_touches = Counter(
            "lukhas_ttl_touches", "Touch events the TTL policies appended", registry=r
        )
        self.ttl_reads_counted = Counter(
            "lukhas_ttl_reads_counted", "Reads counted for the TTL policies", registry=r
        )
        self.ttl_reads_dropped = Counter(
            "lukhas_ttl_reads_dropped",
            "Reads not counted for the TTL policies: too many distinct contexts in an interval",
            registry=r,
        )
        self.checkpoints = Counter(
            "lukhas_checkpoints", "Partition checkpoints taken at barriers", registry=r
        )
        self.wal_pruned = Counter(
            "lukhas_wal_prunes", "Partitions whose WAL start the retention moved", registry=r
        )
        self.checkpoint_failures = Counter(
            "lukhas_checkpoint_failures",
            "Barriers whose checkpoint failed, or disagreed with an existing one (corruption)",
            registry=r,
        )
        self.restores = Counter(
            "lukhas_partition_opens", "Partition stores opened, by path", ["source"], registry=r
        )
        self.kept = Counter(
            "lukhas_partitions_kept",
            "Partitions revoked and given back in the next generation, folded on without "
            "reopening their stores",
            registry=r,
        )
        self.quarantined = Counter(
            "lukhas_stores_quarantined", "Unusable stores moved aside", registry=r
        )
        self.unusable_records = Counter(
            "lukhas_unusable_records",
            "Records of a topic the worker reads that it set aside: unreadable, or naming what "
            "no record of this log can",
            ["topic"],
            registry=r,
        )
        self.restore_skipped = Counter(
            "lukhas_restore_paths_skipped",
            "Restore paths (checkpoint, changes) or change-topic coverage set aside for a "
            "partition, with the reason in the log and the restore report",
            ["path"],
            registry=r,
        )
        self.digest = Gauge(
            "lukhas_partition_digest_low32",
            "Low 32 bits of the partition's state digest (compare replicas)",
            ["partition"],
            registry=r,
        )

        # The read API's connections (processors.listener).
        self.api_connections = Gauge(
            "lukhas_api_connections", "Open read API connections", registry=r
        )
        self.api_max_connections = Gauge(
            "lukhas_api_max_connections", "Cap on open read API connections", registry=r
        )
        self.api_connections_accepted = Counter(
            "lukhas_api_connections_accepted", "Read API connections accepted", registry=r
        )
        self.api_connections_refused = Counter(
            "lukhas_api_connections_refused",
            "Connections over the cap answered 503 and closed (every slot busy with a request)",
            registry=r,
        )
        self.api_connections_evicted = Counter(
            "lukhas_api_connections_evicted",
            "Idle or header-phase connections closed to admit a new one at the cap",
            registry=r,
        )
        self.api_timeouts = Counter(
            "lukhas_api_timeouts",
            "Connections closed by a deadline: headers late, body late, idle too long",
            ["phase"],
            registry=r,
        )
        self.api_accept_errors = Counter(
            "lukhas_api_accept_errors",
            "Failed accept() calls (e.g. out of file descriptors); accepting pauses",
            registry=r,
        )
        self.log_lines_suppressed = Counter(
            "lukhas_log_lines_suppressed",
            "Log lines not written by the repeated-line rate limit (processors.logfilter)",
            registry=r,
        )
        # The log's clock as measured by this worker (processors.clock).
        self.clock_skew = Gauge(
            "lukhas_clock_skew_seconds",
            "This worker's wall clock minus the log's (brokers') clock; NaN until measured",
            registry=r,
        )
        self.clock_error = Gauge(
            "lukhas_clock_skew_error_seconds",
            "Bound on the error of lukhas_clock_skew_seconds (+Inf: no upper bound measured)",
            registry=r,
        )
        # The worker's memory budget (state.memory; set by the materialiser when it has one).
        self.memory = Gauge(
            "lukhas_memory_bytes",
            "Memory by part: budget (--memory-budget), resident (the process), block_cache "
            "and write_buffers (RocksDB, shared by every store), read_cache (decoded records)",
            ["part"], registry=r,
        )  # fmt: skip
        self.memory_backpressure = Counter(
            "lukhas_memory_backpressure",
            "Rounds slowed for memory: smaller (resident memory near the budget) or paused "
            "after shrinking the read caches (over it)",
            ["action"], registry=r,
        )  # fmt: skip
        # Load shedding (processors.shed).
        self.reads_shed = Counter(
            "lukhas_reads_shed",
            "Reads answered 503 (Retry-After) without being done: the read queue was over "
            "its budget (--read-queue-budget), by route",
            ["route"], registry=r,
        )  # fmt: skip
        self.read_queue = Gauge(
            "lukhas_read_queue",
            "Reads in the read API's handlers now, waits for an offset included",
            registry=r,
        )
        self.read_queue_budget = Gauge(
            "lukhas_read_queue_budget",
            "Reads in the handlers past which new ones are shed (0: never shed)",
            registry=r,
        )
        self.fetch_paused = Gauge(
            "lukhas_fetch_paused",
            "1 while the fold has paused fetching to catch its breath (a round over its "
            "budget, or memory over its budget), else 0",
            registry=r,
        )
        self.fetch_paused_seconds = Counter(
            "lukhas_fetch_paused_seconds",
            "Seconds the fold paused fetching, by reason: round (a round over "
            "--round-budget-ms) or memory (over --memory-budget)",
            ["reason"], registry=r,
        )  # fmt: skip
        # Scaling advice (processors.advisor).
        self.desired_workers = Gauge(
            "lukhas_desired_workers",
            "Workers the group's load needs, capped at the WAL's partitions: up at once, down "
            "only after the advice cool-down with no higher figure (what an autoscaler reads)",
            registry=r,
        )
        self.advice_needed = Gauge(
            "lukhas_advice_needed_workers",
            "Workers the load of the last advice interval needs, before the cool-down and the "
            "partition cap",
            registry=r,
        )
        self.advice_partition_limited = Gauge(
            "lukhas_advice_partition_limited",
            "1 when the load needs more workers than the WAL has partitions (add partitions)",
            registry=r,
        )
        self.expires_refused_early = Counter(
            "lukhas_expire_events_early",
            "Expire events the sweeper appended that the log stamped before the expiry "
            "(the fold refuses them; the sweeper backs off)",
            registry=r,
        )

        # The read API's requests (processors.api: a middleware, and the fast path).
        self.http_requests = Counter(
            "lukhas_http_requests",
            "Read API requests answered, by method, route (the path template) and status",
            ["method", "route", "status"], registry=r,
        )  # fmt: skip
        self.http_seconds = Histogram(
            HTTP_SECONDS,
            "Time from a request's head to its answer (a stream's: to its end), by route",
            ["route"], buckets=HTTP_BUCKETS, registry=r,
        )  # fmt: skip
        self.sse_streams = Gauge(
            "lukhas_sse_streams", "Change streams (server-sent events) open now", registry=r
        )
        self.sse_events = Counter(
            "lukhas_sse_events", "Changes and gaps sent on change streams", ["event"], registry=r
        )

    def request(self, method: str, route: str, status: int, seconds: float) -> None:
        self.http_requests.labels(method, route, str(status)).inc()
        self.http_seconds.labels(route).observe(seconds)

    def busy_seconds(self) -> float:
        """Seconds spent in rounds so far (``lukhas_batch_seconds_sum``)."""
        return self.registry.get_sample_value("lukhas_batch_seconds_sum") or 0.0

    def requests_answered(self) -> float:
        """Read API requests answered so far, every route and status."""
        return sum(
            sample.value
            for family in self.http_requests.collect()
            for sample in family.samples
            if sample.name.endswith("_total")
        )

    def figures(self) -> dict[str, float | None]:
        """What the console's Metrics view plots, as ``GET /v1/cluster/metrics`` gives it:
        ``folded`` (``lukhas_events_total``, every outcome), ``read_seconds`` and ``reads``
        (the sum and count of ``lukhas_http_request_duration_seconds`` of ``READ_ROUTE``),
        ``memory_resident_bytes`` and ``memory_budget_bytes`` (``lukhas_memory_bytes``; None
        without a memory budget). Counters since the process started: rates are the
        differences of two readings."""

        def value(metric: Counter | Gauge | Histogram, name: str, **labels: str) -> float | None:
            for family in metric.collect():
                for sample in family.samples:
                    if sample.name == name and all(
                        sample.labels.get(k) == v for k, v in labels.items()
                    ):
                        return float(sample.value)
            return None

        folded = sum(
            sample.value
            for family in self.events.collect()
            for sample in family.samples
            if sample.name == "lukhas_events_total"
        )
        return {
            "folded": float(folded),
            "read_seconds": value(self.http_seconds, f"{HTTP_SECONDS}_sum", route=READ_ROUTE)
            or 0.0,
            "reads": value(self.http_seconds, f"{HTTP_SECONDS}_count", route=READ_ROUTE) or 0.0,
            "memory_resident_bytes": value(self.memory, "lukhas_memory_bytes", part="resident"),
            "memory_budget_bytes": value(self.memory, "lukhas_memory_bytes", part="budget"),
        }

    def names(self) -> Sequence[str]:
        """Every sample name this worker exports (``_total``, ``_bucket``... included),
        whether or not a labelled metric has a sample yet."""
        suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"),
                    "info": ("_info",), "summary": ("_sum", "_count")}  # fmt: skip
        names: set[str] = set()
        for family in self.registry.collect():
            names.update(family.name + end for end in suffixes.get(family.type, ("",)))
            names.update(sample.name for sample in family.samples)
        return sorted(names)

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))
