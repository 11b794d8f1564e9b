"""Topic names and the configuration each topic must have (DESIGN.md, "Topics")."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiokafka.partitioner import murmur2

DEFAULT_PREFIX = "lukhas"
#: Largest record batch each topic takes. A change is a little larger than the event that made
#: it, and a dead letter adds headers to a WAL record, so each topic downstream of the WAL takes
#: more than the WAL: an event the WAL accepted can always be published on.
WAL_MAX_MESSAGE_BYTES = 2 * 1024 * 1024
DOWNSTREAM_MAX_MESSAGE_BYTES = 4 * 1024 * 1024
#: How long the change topic keeps tombstones: 100 years, i.e. for good.
TOMBSTONE_RETENTION_MS = 100 * 365 * 24 * 3600 * 1000
#: How long the clock probes are kept (they are only ever read back by their acknowledgement).
CLOCK_RETENTION_MS = 3600 * 1000


def partition_for(key: bytes, partitions: int) -> int:
    """The partition of a context id's key: the producers' default partitioner (murmur2, as
    Java's), so events, changes and reads agree on where a context lives."""
    return (int(murmur2(key)) & 0x7FFFFFFF) % partitions


@dataclass(frozen=True, slots=True)
class TopicSpec:
    """What one topic must look like. ``replication`` None means: 3 when the cluster has at
    least 3 brokers, else 1 (and ``min.insync.replicas`` follows, 2 or 1)."""

    name: str
    partitions: int
    configs: dict[str, str] = field(default_factory=dict)
    replication: int | None = None


@dataclass(frozen=True, slots=True)
class Topics:
    """The topic names of one deployment, derived from one prefix."""

    prefix: str = DEFAULT_PREFIX

    @property
    def events(self) -> str:
        return f"{self.prefix}.context.events"

    @property
    def changes(self) -> str:
        return f"{self.prefix}.context.changes"

    @property
    def changes_registry(self) -> str:
        """The change stream again in Schema Registry wire format (``processors.mirror``),
        written only by workers given a registry (``--schema-registry``)."""
        return f"{self.prefix}.context.changes.sr"

    @property
    def dlq(self) -> str:
        return f"{self.prefix}.context.dlq"

    @property
    def checkpoints(self) -> str:
        return f"{self.prefix}.context.checkpoints"

    @property
    def members(self) -> str:
        """Retired: where earlier versions published which worker serves which partitions.
        Routing now comes from the group coordinator (``processors.members``); nothing
        creates, reads or writes this topic, and deployments that have it may delete it."""
        return f"{self.prefix}.context.members"

    @property
    def clock(self) -> str:
        """Workers' clock probes: tiny appends whose log-append times measure the brokers'
        clock (``processors.clock``); kept an hour."""
        return f"{self.prefix}.context.clock"

    def registry_spec(self, partitions: int, min_compaction_lag_ms: int = 3_600_000) -> TopicSpec:
        """The mirror of the change stream (``changes_registry``): co-partitioned with the
        change topic (``partitions`` is its count) and kept as it is."""
        return TopicSpec(self.changes_registry, partitions, _changes_configs(min_compaction_lag_ms))

    def specs(self, partitions: int = 6, min_compaction_lag_ms: int = 3_600_000) -> list[TopicSpec]:
        """The topic specs of the design. Events and changes are co-partitioned (same count)."""
        return [
            TopicSpec(
                self.events,
                partitions,
                {
                    "cleanup.policy": "delete",
                    "retention.ms": "-1",
                    "message.timestamp.type": "LogAppendTime",
                    "unclean.leader.election.enable": "false",
                    "max.message.bytes": str(WAL_MAX_MESSAGE_BYTES),
                },
            ),
            TopicSpec(self.changes, partitions, _changes_configs(min_compaction_lag_ms)),
            TopicSpec(
                self.dlq,
                partitions,
                {
                    "cleanup.policy": "delete",
                    "retention.ms": "-1",
                    "max.message.bytes": str(DOWNSTREAM_MAX_MESSAGE_BYTES),
                },
            ),
            TopicSpec(self.checkpoints, partitions, {"cleanup.policy": "compact"}),
            TopicSpec(
                self.clock,
                1,
                {
                    "cleanup.policy": "delete",
                    "message.timestamp.type": "LogAppendTime",
                    "retention.ms": str(CLOCK_RETENTION_MS),
                    "segment.ms": str(CLOCK_RETENTION_MS),
                },
            ),
        ]


def _changes_configs(min_compaction_lag_ms: int) -> dict[str, str]:
    return {
        "cleanup.policy": "compact",
        "min.compaction.lag.ms": str(min_compaction_lag_ms),
        # Tombstones stay, as the stores keep them (their versions prevent ABA): a store
        # restored from this topic then equals the fold, deletes included.
        "delete.retention.ms": str(TOMBSTONE_RETENTION_MS),
        "unclean.leader.election.enable": "false",
        "max.message.bytes": str(DOWNSTREAM_MAX_MESSAGE_BYTES),
    }
