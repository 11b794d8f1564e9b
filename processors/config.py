"""The worker's configuration: one frozen object, built at the composition root (ops)."""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

from lukhas_context.processors.access import check_origins, check_token
from lukhas_context.processors.exceptions import InvalidWorkerConfigError
from lukhas_context.processors.fold import Limits
from lukhas_context.processors.listener import ListenerLimits
from lukhas_context.processors.members import api_url_problem
from lukhas_context.processors.mirror import check_registry_url
from lukhas_context.processors.shed import READ_QUEUE_BUDGET, check_budget
from lukhas_context.processors.ttl_policy import TtlPolicies
from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.registry import SchemaRegistry
from lukhas_context.state.store import StoreOptions
from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity
from lukhas_context.streams.topics import Topics


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything one materialiser worker needs. Nothing here reads the environment."""

    bootstrap: str
    state_dir: Path
    topics: Topics = field(default_factory=Topics)
    #: How to reach a secured Kafka (TLS, SASL PLAIN or SCRAM: ``streams.security``); every
    #: client the worker makes uses it.
    kafka_security: KafkaSecurity = PLAINTEXT
    group_id: str = "lukhas-materializer"
    #: Static group membership (KIP-345): a worker restarted with the same id takes its
    #: partitions back at once instead of waiting out the dead member's session. None: dynamic.
    instance_id: str | None = None
    session_timeout_ms: int = 10_000
    #: How long the group coordinator waits, once a rebalance begins, for every member to
    #: rejoin (its revocation done: the round in flight committed, openings finished). A
    #: member slower than this is dropped from the generation and rejoins as a new one,
    #: which starts another rebalance; aiokafka's default is the session timeout, and with
    #: two members each slower than it in turn the group never settles (docs/architecture.md,
    #: "Rebalance timeout"). Kept under the consumer's request timeout (JoinGroup waits it).
    rebalance_timeout_ms: int = 30_000
    api_host: str = "127.0.0.1"
    api_port: int = 18080
    #: Most records folded in one round of ``getmany`` (over all partitions).
    max_batch_records: int = 50_000
    fetch_timeout_ms: int = 200
    #: Target wall time of one round: the read API waits while a round folds. Rounds are
    #: sized to it (``Materializer.adapt_round_limit``), and after a round that took longer
    #: fetching pauses for about the overrun (``processors.shed.fold_pause_s``).
    round_budget_s: float = 1.0
    #: Reads in the read API's handlers at once (waits for an offset included) past which
    #: new reads are answered 503 with Retry-After (``processors.shed``). None: never shed.
    read_queue_budget: int | None = READ_QUEUE_BUDGET
    #: How often the group's committed offsets are refreshed (for lag tools only).
    commit_interval_s: float = 2.0
    limits: Limits = field(default_factory=Limits)
    #: How many offsets of outcomes the journal keeps per partition (at least the dedupe
    #: window, which is rebuilt from it on restart).
    journal_offsets: int = 1_000_000
    #: Keep the history index (``state.history``: every record of a context, for ``lukhas
    #: history``). Off saves its RocksDB writes (about a quarter of the fold's time); a store
    #: folded with it off says so (``covered_from`` starts again when it is back on).
    history_index: bool = True
    store: StoreOptions = field(default_factory=StoreOptions)
    #: The worker's memory budget in bytes (``state.memory``; ``lukhas worker`` gives 1 GiB
    #: unless told otherwise); None: none (each store sized on its own, as tools open them).
    memory_budget_bytes: int | None = None
    client_id: str = "lukhas-worker"
    #: Where checkpoints are kept (default ``STATE_DIR/checkpoints``); put it on another disk
    #: to survive the loss of the state disk.
    checkpoint_dir: Path | None = None
    #: Checkpoints kept per partition (the newest; older ones are deleted).
    checkpoint_keep: int = 3
    #: Append a barrier to every partition once per this many seconds (the worker that owns
    #: partition 0 does it, so the cluster takes one checkpoint per interval). None: never.
    checkpoint_interval_s: float | None = None
    #: Fault injection for tests: seconds to sleep between a checkpoint's files and its
    #: manifest. Always 0 in production.
    checkpoint_pause_s: float = 0.0
    #: Recompute a local store's digest when it opens and quarantine it if it differs.
    verify_on_open: bool = True
    #: How often the expiry index is swept (None: never), and the most Expire events one
    #: sweep appends per partition.
    expiry_interval_s: float | None = 0.5
    expiry_batch: int = 10_000
    #: An Expire that has not applied after this long is appended again (it was lost, or
    #: refused as early); each further retry of the same version waits twice as long, up to
    #: ``expiry_retry_max_s``. "Due" is decided by the log's clock (``processors.clock``).
    expiry_retry_s: float = 5.0
    expiry_retry_max_s: float = 300.0
    #: Access-driven TTL (``processors.ttl_policy``, ``processors.toucher``): the policies by
    #: context-id prefix; None (the default): off, reads are not counted and nothing is
    #: touched. Every ``ttl_touch_interval_s`` the owner appends the Touch events they ask
    #: for, at most ``ttl_touch_batch`` per partition, and counts the reads of at most
    #: ``ttl_read_contexts`` distinct contexts per interval (further ones are dropped).
    ttl_policies: TtlPolicies | None = None
    ttl_touch_interval_s: float = 60.0
    ttl_touch_batch: int = 10_000
    ttl_read_contexts: int = 100_000
    #: How often the log's clock is measured by a probe append to the clock topic (None:
    #: never; then only the WAL's records and acknowledgements measure it).
    clock_probe_interval_s: float | None = 30.0
    #: A skew between this worker's wall clock and the log's beyond this is logged.
    clock_skew_warn_s: float = 1.0
    #: The read API's connection cap and deadlines.
    listener: ListenerLimits = field(default_factory=ListenerLimits)
    #: Process-wide log rate limit installed by ``run_worker``: lines of one logger and
    #: message template beyond ``log_burst`` per ``log_interval_s`` are counted, not written.
    log_burst: int = 50
    log_interval_s: float = 30.0
    #: The read API's URL as clients reach it (default: from api_host and api_port), in this
    #: worker's group subscription, which the routing table is built from.
    advertised_url: str | None = None
    #: The URL other workers forward requests to, when it is not ``advertised_url`` (docker
    #: compose: clients on the host use the published port, workers the compose network).
    peer_url: str | None = None
    #: A directory of newer writer schemas (``ContextEvent.vN.avsc``) to decode besides the
    #: shipped ones, resolved to the shipped reader schema: how a worker learns a schema
    #: version producers started writing (``lukhas dlq redrive`` then folds what it
    #: dead-lettered before). None: the shipped schemas only.
    schema_dir: Path | None = None
    #: Publish each round's changes, dead letters and WAL appends in a Kafka transaction of
    #: the partition's own transactional producer, with the WAL offset (``processors.
    #: publisher``): a zombie's round is aborted by the broker, never seen by a subscriber or
    #: kept by the log cleaner (the default). False: one idempotent producer, at least once
    #: (faster; a zombie's last round can reach the change topic).
    exactly_once: bool = True
    #: How the change stream's batches are compressed: ``none``, ``lz4`` or ``zstd``
    #: (``streams.batching.COMPRESSIONS``). A change carries the whole document: a
    #: conversation of a few KB moves all of it at every appended message, and compressed
    #: those bytes cost the worker, the broker and every subscriber much less. lz4 (the
    #: default): measured faster than none for puts and appends alike; zstd compresses more
    #: but was not faster here.
    change_compression: str = "lz4"
    #: Publish only the last change of each context in a round (a round is at most
    #: ``max_batch_records`` records and about ``round_budget_s``): what the change topic's
    #: compaction would keep of it, as Kafka Streams' record cache forwards a KTable's
    #: updates. A context written many times a second (a conversation growing by a message
    #: per event) then costs the change stream once per round, not once per write; a
    #: subscriber sees its latest version each round, not every version. Off: every applied
    #: event publishes its change (the default, DESIGN.md's contract). Needs ``exactly_once``
    #: (a round's changes then become visible together or not at all).
    coalesce_changes: bool = False
    #: Probe the other members' read APIs and evict one that refuses connections from the
    #: group, so its partitions move at once instead of after its session timeout
    #: (``processors.peers``). Off: a dead member's partitions wait for the session timeout.
    evict_dead_peers: bool = False
    #: Standby copies the group keeps of each partition, on workers other than its owner
    #: (``processors.standby``; Kafka Streams' ``num.standby.replicas``). The group uses the
    #: largest number any member asks for; 0 everywhere: none, and plain round-robin
    #: assignment.
    standby_replicas: int = 0
    #: How long the broker lets one round's transaction stay open before it aborts it (the
    #: round is then given up as fenced, and the partition reopened).
    transaction_timeout_ms: int = 60_000
    #: Delete, every this many seconds, the WAL records no restore path needs any more
    #: (``processors.retention``) for the partitions this worker serves. None: never (the
    #: default: then only ``lukhas wal prune`` deletes).
    prune_interval_s: float | None = None
    #: A bearer token every request to the read API but the probes must carry
    #: (``processors.access``); None: none needed. Never printed (``repr=False``).
    api_token: str | None = field(default=None, repr=False)
    #: The bearer token of the API's routes that change something (``POST
    #: /v1/checkpoints``; ``processors.access``); it reads too. None: the API is read-only
    #: (those routes answer 403). Never printed.
    api_write_token: str | None = field(default=None, repr=False)
    #: Origins whose pages may use the read API from a browser (CORS; ``*``: any).
    cors_origins: tuple[str, ...] = ()
    #: A Schema Registry (its Confluent-compatible API, e.g. ``http://registry:8081``) to
    #: mirror the change stream for, in its wire format, to ``Topics.changes_registry``
    #: (``processors.mirror``). None: no mirror. May hold a password: never printed.
    schema_registry_url: str | None = field(default=None, repr=False)

    #: How often the worker computes its scaling advice (``processors.advisor``: the load over
    #: the interval, its peers' too) and sets ``lukhas_desired_workers``. None: never.
    advice_interval_s: float | None = 15.0
    #: How long ``lukhas_desired_workers`` waits, once the load needs fewer workers, before it
    #: says so: no higher figure for this long (scaling up is at once).
    advice_cooldown_s: float = 300.0

    def event_codec(self) -> EventCodec:
        """The event codec of this worker: the shipped schemas and those of ``schema_dir``
        (``SchemaFileError`` when one is not usable). One per directory, shared."""
        return _event_codec(self.schema_dir)

    def __post_init__(self) -> None:
        for name, url in (("advertised_url", self.advertised_url), ("peer_url", self.peer_url)):
            problem = None if url is None else api_url_problem(url)
            if problem is not None:
                raise InvalidWorkerConfigError(f"{name}: {problem}")
        if not 0 < self.expiry_retry_s <= self.expiry_retry_max_s:
            raise InvalidWorkerConfigError(
                f"expiry_retry_s ({self.expiry_retry_s}) must be positive and at most "
                f"expiry_retry_max_s ({self.expiry_retry_max_s})"
            )
        if not 0 < self.ttl_touch_interval_s <= 86_400:
            raise InvalidWorkerConfigError(
                f"ttl_touch_interval_s must be in (0, 86400], not {self.ttl_touch_interval_s}"
            )
        for name in ("ttl_touch_batch", "ttl_read_contexts"):
            if not 1 <= getattr(self, name) <= 100_000_000:
                raise InvalidWorkerConfigError(
                    f"{name} must be 1 to 100000000, not {getattr(self, name)}"
                )
        if self.schema_registry_url is not None:
            check_registry_url(self.schema_registry_url)
        check_token(self.api_token)
        check_budget(self.read_queue_budget)
        if not (math.isfinite(self.round_budget_s) and self.round_budget_s > 0):
            raise InvalidWorkerConfigError(
                f"round_budget_s must be a positive number of seconds, got {self.round_budget_s}"
            )
        check_token(self.api_write_token)
        check_origins(self.cors_origins)
        if self.change_compression not in ("none", "lz4", "zstd"):
            raise InvalidWorkerConfigError(
                f"change_compression must be none, lz4 or zstd, not {self.change_compression!r}"
            )
        if self.coalesce_changes and not self.exactly_once:
            raise InvalidWorkerConfigError(
                "coalesce_changes needs exactly_once: at least once, a round can be left half "
                "published by a crash, and half a coalesced round is a state no prefix of the "
                "WAL has (a restore from the change topic would take it)"
            )
        interval = self.advice_interval_s
        if interval is not None and not 0 < interval <= 86_400:
            raise InvalidWorkerConfigError(
                f"advice_interval_s must be over 0 and at most a day, got {interval}"
            )
        if not 0 <= self.advice_cooldown_s <= 86_400:
            raise InvalidWorkerConfigError(
                f"advice_cooldown_s must be 0 to a day, got {self.advice_cooldown_s}"
            )
        if self.checkpoint_keep < 1:
            raise InvalidWorkerConfigError(
                f"checkpoint_keep must be at least 1, got {self.checkpoint_keep}"
            )
        # The dedupe window is rebuilt from the journal on restart: it must hold the window.
        if self.journal_offsets < self.limits.dedupe_window:
            raise InvalidWorkerConfigError(
                f"journal_offsets ({self.journal_offsets}) must be at least the dedupe window "
                f"({self.limits.dedupe_window})"
            )

    @property
    def api_url(self) -> str:
        return self.advertised_url or f"http://{self.api_host}:{self.api_port}"

    @property
    def member_id(self) -> str:
        """This worker's key on the members topic: its static instance id, else its API."""
        return self.instance_id or f"{self.client_id}@{self.api_url}"

    @property
    def checkpoint_root(self) -> Path:
        """Where checkpoints are kept: ``checkpoint_dir``, by default ``STATE_DIR/checkpoints``."""
        return self.checkpoint_dir or self.state_dir / "checkpoints"


@functools.lru_cache(maxsize=8)
def _event_codec(schema_dir: Path | None) -> EventCodec:
    registry = SchemaRegistry.shipped()
    if schema_dir is not None:
        registry = registry.with_writers(SchemaRegistry.load_dir(schema_dir))
    return EventCodec(registry)
