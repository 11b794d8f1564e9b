"""WAL retention: how far a partition's WAL may be deleted, and the worker's periodic prune.

A partition's WAL records below the lowest of these are needed by no restore path:

- the oldest valid checkpoint's offset (a restore from any kept checkpoint folds on from it);
- the change topic's coverage less the dedupe window (a restore from the change topic folds
  on from the coverage and rebuilds its dedupe window from the records just before it);
- the live store's ``next_offset`` (a worker never finds its next record deleted).

With no valid checkpoint, or an unknown coverage, nothing may go: a full replay would be the
only way back. ``prune_bound`` is that rule, shared by ``lukhas wal prune`` (``ops.prune``,
which shows it first and deletes on ``--yes``) and by ``WalRetention``: with
``WorkerConfig.prune_interval_s`` each worker deletes, every interval, what the rule allows
for the partitions it serves (its own checkpoints and store; the change topic is the
group's), through Kafka's DeleteRecords. A failure is logged and tried again next interval.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

from aiokafka.errors import KafkaError

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.opener import StoreOpener
from lukhas_context.state.checkpoints import CheckpointDir
from lukhas_context.streams.admin import delete_records_below

__all__ = ["Bound", "WalRetention", "prune_bound"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Bound:
    """Where a partition's WAL may start: ``prune_to`` (records below it can go) and, when it
    is the log's start already, ``kept_because`` says why nothing may go."""

    prune_to: int
    kept_because: list[str] = field(default_factory=list)


def prune_bound(
    low: int, position: int, coverage: int | None, window: int, oldest_checkpoint: int | None
) -> Bound:
    """The rule above, for a partition whose WAL starts at ``low``; ``coverage`` None (or 0)
    when unknown, ``oldest_checkpoint`` None when there is no valid checkpoint."""
    reasons = []
    if oldest_checkpoint is None:
        reasons.append("no valid checkpoint")
    if not coverage:
        reasons.append("the change topic's coverage is unknown")
    if reasons:
        return Bound(low, reasons)
    assert coverage is not None and oldest_checkpoint is not None
    return Bound(max(low, min(position, max(0, coverage - window), oldest_checkpoint)))


class WalRetention:
    """The worker's periodic prune of the partitions it serves."""

    def __init__(self, config: WorkerConfig, opener: StoreOpener, metrics: WorkerMetrics) -> None:
        self.config = config
        self.opener = opener
        self.metrics = metrics
        self.checkpoints = CheckpointDir(config.checkpoint_root, config.topics.events)

    async def prune(self, positions: Mapping[int, int]) -> dict[int, int]:
        """Deletes, for each served partition (``positions``: its store's ``next_offset``,
        read before this starts: it only grows meanwhile), the WAL records the rule allows;
        returns the new start of each partition it moved."""
        todo: dict[int, int] = {}
        for p, position in sorted(positions.items()):
            try:
                low, _end = await self.opener.watermarks(p)
                coverage = await self.opener.changes_coverage(p)
            except Exception as exc:  # Kafka's, wrapped or not: try again next interval
                log.warning("partition %d: WAL not pruned this time: %s", p, exc)
                continue
            kept = self.checkpoints.valid(p)
            oldest = min((m.next_offset for m in kept), default=None)
            bound = prune_bound(low, position, coverage.offset if coverage.known else None,
                                self.config.limits.dedupe_window, oldest)  # fmt: skip
            if bound.prune_to > low:
                todo[p] = bound.prune_to
        try:
            moved = await delete_records_below(self.config.bootstrap, self.config.topics.events,
                                               todo, f"{self.config.client_id}-prune",
                                               security=self.config.kafka_security)  # fmt: skip
        except KafkaError as exc:
            log.warning("WAL not pruned this time: %s", exc)
            return {}
        for p, start in sorted(moved.items()):
            log.info("partition %d: WAL records below offset %d deleted (retention)", p, start)
        self.metrics.wal_pruned.inc(len(moved))
        return moved
