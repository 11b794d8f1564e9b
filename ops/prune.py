"""``lukhas wal prune``: delete the WAL records no restore path needs any more.

Per partition, the records below the lowest of these are deletable (Kafka's DeleteRecords,
which moves the log start; the rule is ``processors.retention.prune_bound``, which a worker
with ``--prune-interval`` applies on its own):

- the oldest valid checkpoint's offset: a restore from any kept checkpoint folds the WAL on
  from its offset;
- the change topic's coverage, less the dedupe window: a restore from the change topic
  folds the WAL on from the coverage, and rebuilds its dedupe window from the records just
  before it;
- the live store's ``next_offset``, as the worker serving the partition reports it: a worker
  never finds its next record deleted.

With no valid checkpoint, or an unknown coverage, nothing is deletable: a full replay would be
the only way back. After a prune a full replay (``restore --from-scratch``, ``verify``) fails
with ``WalTruncatedError`` naming the checkpoint to start from instead. The plan is computed
and shown first; records are deleted only when the caller says so (``--yes``).
"""

from __future__ import annotations

from typing import Any

import aiohttp

from lukhas_context.ops.auth import api_headers
from lukhas_context.ops.exceptions import OpsError
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.retention import prune_bound
from lukhas_context.streams import kafka
from lukhas_context.streams.admin import delete_records_below
from lukhas_context.streams.kafka import kafka_errors

__all__ = ["PruneError", "apply", "plan"]


class PruneError(OpsError):
    """The prune cannot be planned or done (the reason says why)."""


async def plan(config: WorkerConfig, api: str, partitions: list[int] | None,
               dedupe_window: int | None = None) -> list[dict[str, Any]]:  # fmt: skip
    """Per partition: what bounds the prune, and ``prune_to`` (records below it can go).
    ``dedupe_window``: the workers' (default: ``config.limits.dedupe_window``)."""
    from lukhas_context.processors.opener import StoreOpener
    from lukhas_context.state.checkpoints import CheckpointDir

    live = await _live_offsets(api)
    opener = StoreOpener(config)
    count = await _partition_count(config)
    chosen = sorted(set(partitions)) if partitions else list(range(count))
    bad = [p for p in chosen if p >= count]
    if bad:
        raise PruneError(f"no partition {bad[0]}: {config.topics.events} has {count}")
    checkpoints = CheckpointDir(config.checkpoint_root, config.topics.events)
    out = []
    for p in chosen:
        low, end = await opener.watermarks(p)
        kept = checkpoints.valid(p)
        oldest = min(kept, key=lambda m: m.next_offset) if kept else None
        coverage = await opener.changes_coverage(p)
        position = live.get(p)
        if position is None:
            raise PruneError(f"no worker at {api} reports partition {p}: its store's position "
                             "is unknown, so nothing can be pruned safely")  # fmt: skip
        window = config.limits.dedupe_window if dedupe_window is None else dedupe_window
        bound = prune_bound(low, position, coverage.offset if coverage.known else None, window,
                            None if oldest is None else oldest.next_offset)  # fmt: skip
        reasons = [
            f"{r} in {config.checkpoint_root}" if r == "no valid checkpoint" else r
            for r in bound.kept_because
        ]
        prune_to = bound.prune_to
        out.append({
            "partition": p, "log_start": low, "end": end,
            "oldest_checkpoint": None if oldest is None else
            {"id": oldest.checkpoint_id, "next_offset": oldest.next_offset},
            "changes_coverage": coverage.offset, "dedupe_window": window,
            "live_next_offset": position,
            "prune_to": prune_to, "deletes": prune_to - low,
            "kept_because": reasons,
        })  # fmt: skip
    return out


async def apply(config: WorkerConfig, planned: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Deletes what ``planned`` says (only partitions with something to delete); each entry
    gains ``log_start_now``."""
    topic = config.topics.events
    todo = {e["partition"]: e["prune_to"] for e in planned if e["deletes"] > 0}
    with kafka_errors(PruneError, f"cannot delete records of {topic}"):
        done = await delete_records_below(
            config.bootstrap, topic, todo, "lukhas-prune", security=config.kafka_security
        )
    for e in planned:
        e["log_start_now"] = done.get(e["partition"], e["log_start"])
    return planned


async def _partition_count(config: WorkerConfig) -> int:
    consumer = kafka.consumer(
        config.bootstrap, "lukhas-prune", isolation="read_committed",
        security=config.kafka_security,
    )  # fmt: skip
    try:
        with kafka_errors(PruneError, f"cannot reach Kafka at {config.bootstrap}"):
            await consumer.start()
            metadata = await consumer._client.fetch_all_metadata()
    finally:
        await consumer.stop()
    count = len(metadata.partitions_for_topic(config.topics.events) or ())
    if not count:
        raise PruneError(f"no topic {config.topics.events}")
    return count


async def _live_offsets(api: str) -> dict[int, int]:
    """partition -> next offset, from every worker the routing table names."""
    urls = {api}
    out: dict[int, int] = {}
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout, headers=api_headers()) as http:
        try:
            async with http.get(f"{api}/v1/members") as r:
                members = await r.json(content_type=None)
            owners = members.get("owners") if isinstance(members, dict) else None
            urls |= {u for u in (owners or {}).values() if isinstance(u, str) and u}
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise PruneError(f"cannot reach the read API at {api}: {exc}") from None
        for url in sorted(urls):
            try:
                async with http.get(f"{url.rstrip('/')}/v1/partitions") as r:
                    data = await r.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError, ValueError):
                continue
            served = data.get("partitions") if isinstance(data, dict) else None
            for s in served if isinstance(served, list) else []:
                try:
                    p, offset = int(s["partition"]), int(s["next_offset"])
                except (KeyError, TypeError, ValueError):
                    continue
                out[p] = min(offset, out.get(p, offset))  # two owners in a rebalance: the lower
    return out
