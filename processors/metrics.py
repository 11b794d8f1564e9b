"""Prometheus metrics of one worker, in a registry of its own (no process-global state)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

#: The Content-Type of ``WorkerMetrics.render()``: the text format, version 0.0.4.
PROMETHEUS_CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4


class WorkerMetrics:
    """Counters are bumped once per batch, never per event (the hot path stays lean)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.consumed = Counter("lukhas_records_consumed", "WAL records read", registry=r)
        self.applied = Counter("lukhas_events_applied", "Events applied to state", registry=r)
        self.conflicts = Counter(
            "lukhas_events_conflicted", "Events refused by a version condition", registry=r
        )
        self.rejected = Counter("lukhas_events_rejected", "Events rejected as invalid", registry=r)
        self.fenced = Counter(
            "lukhas_events_fenced", "Events refused for a stale fencing token", registry=r
        )
        self.fenced_rounds = Counter(
            "lukhas_rounds_fenced",
            "Rounds not published because the partition's change producer was fenced "
            "(another worker had opened the partition)",
            registry=r,
        )
        self.dead_lettered = Counter(
            "lukhas_records_dead_lettered", "Undecodable WAL records sent to the DLQ", registry=r
        )
        self.duplicates = Counter(
            "lukhas_events_duplicate", "Retried events recognised by event id", registry=r
        )
        self.changes = Counter("lukhas_changes_published", "Changes published", registry=r)
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
        self.expires_refused_early = Counter(
            "lukhas_expire_events_early",
            "Expire events the sweeper appended that the log stamped before the expiry "
            "(the fold refuses them; the sweeper backs off)",
            registry=r,
        )

    def render(self) -> bytes:
        """The Prometheus text exposition of every metric."""
        return bytes(generate_latest(self.registry))
