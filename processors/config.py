"""The worker's configuration: one frozen object, built at the composition root (ops)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lukhas_context.processors.fold import Limits
from lukhas_context.state.store import StoreOptions
from lukhas_context.streams.topics import Topics


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """Everything one materialiser worker needs. Nothing here reads the environment."""

    bootstrap: str
    state_dir: Path
    topics: Topics = field(default_factory=Topics)
    group_id: str = "lukhas-materializer"
    #: Static group membership (KIP-345): a worker restarted with the same id takes its
    #: partitions back at once instead of waiting out the dead member's session. None: dynamic.
    instance_id: str | None = None
    session_timeout_ms: int = 10_000
    api_host: str = "127.0.0.1"
    api_port: int = 18080
    #: Most records folded in one round of ``getmany`` (over all partitions).
    max_batch_records: int = 50_000
    fetch_timeout_ms: int = 200
    #: Target wall time of one round: the read API waits while a round folds.
    round_budget_s: float = 1.0
    #: How often the group's committed offsets are refreshed (for lag tools only).
    commit_interval_s: float = 2.0
    limits: Limits = field(default_factory=Limits)
    #: How many offsets of outcomes the journal keeps per partition (at least the dedupe
    #: window, which is rebuilt from it on restart).
    journal_offsets: int = 1_000_000
    store: StoreOptions = field(default_factory=StoreOptions)
    client_id: str = "lukhas-worker"

    def __post_init__(self) -> None:
        # The dedupe window is rebuilt from the journal on restart: it must hold the window.
        if self.journal_offsets < self.limits.dedupe_window:
            raise ValueError(
                f"journal_offsets ({self.journal_offsets}) must be at least the dedupe window "
                f"({self.limits.dedupe_window})"
            )
