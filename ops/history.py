"""``lukhas history``: what happened to one context, event by event.

The outcomes come from the owning worker's history index (``GET /v1/contexts/{id}/history``,
``ContextClient.history``), paged until ``limit`` entries or the end. Each entry is then joined
with its WAL record, read at its offset (a seek per entry that the previous fetch did not
already bring, one small fetch each): its log time, event id, kind and condition. A record the
WAL no longer holds (pruned) is marked so; when Kafka cannot be reached, the outcomes are still
shown and ``wal_error`` says why the records are not.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from tqdm import tqdm

from lukhas_context.ops.inspect import wal_line
from lukhas_context.streams import kafka
from lukhas_context.streams.client import ContextClient
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.reader import MAX_HISTORY_PAGE
from lukhas_context.streams.records import FETCH_TIMEOUT_S, TopicReadError
from lukhas_context.streams.results import History
from lukhas_context.streams.security import KafkaSecurity

__all__ = ["HistoryReport", "context_history"]

#: What one fetch of a single WAL record asks the broker for (it sends a first batch that is
#: larger anyway): small, so a history of scattered records does not read whole segments.
_FETCH_BYTES = 64 * 1024


@dataclass
class HistoryReport:
    """A context's history as ``lukhas history`` prints it."""

    context_id: str
    partition: int | None = None
    covered_from: int | None = None
    pruned_below: int = 0
    next_offset: int = 0
    #: One dict per entry: ``offset``, ``status``, ``version``, ``reason``, ``duplicate_of``,
    #: and from the WAL ``log_time``, ``event_id``, ``kind`` (and ``if_version``, ...) or
    #: ``wal: "pruned"``.
    events: list[dict[str, Any]] = field(default_factory=list)
    #: More entries follow the last one shown (``limit`` reached).
    more: bool = False
    #: Why the WAL records were not read (None: they were, or were not asked for).
    wal_error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "context_id": self.context_id,
            "partition": self.partition,
            "covered_from": self.covered_from,
            "pruned_below": self.pruned_below,
            "next_offset": self.next_offset,
            "events": self.events,
            "more": self.more,
            "wal_error": self.wal_error,
        }


async def context_history(
    client: ContextClient, context_id: str, limit: int, after: int | None = None,
    wal: bool = True, timeout: float = 10.0, progress: bool = False,
) -> HistoryReport:  # fmt: skip
    """Up to ``limit`` entries of the history of ``context_id`` after offset ``after``
    (``progress``: a bar on stderr while the WAL records are read)."""
    report = HistoryReport(context_id)
    page: History | None = None
    while len(report.events) < limit:
        size = min(MAX_HISTORY_PAGE, limit - len(report.events))
        page = await client.history(context_id, after, size, timeout)
        report.events.extend(
            {
                "offset": e.offset,
                "status": e.status,
                "version": e.version,
                "reason": e.reason,
                "duplicate_of": e.duplicate_of,
            }
            for e in page.events
        )
        if not page.more or not page.events:
            break
        after = page.events[-1].offset
    assert page is not None
    report.partition, report.covered_from = page.partition, page.covered_from
    report.pruned_below, report.next_offset = page.pruned_below, page.next_offset
    report.more = page.more
    if wal and report.events:
        config = client.config
        offsets = [e["offset"] for e in report.events]
        try:
            found, low = await _read_wal(config.bootstrap, config.topics.events, page.partition,
                                         offsets, progress, config.kafka_security)  # fmt: skip
        except TopicReadError as exc:
            report.wal_error = str(exc)
        else:
            for event in report.events:
                m = found.get(event["offset"])
                if m is not None:
                    line = wal_line(m)
                    event.update({k: v for k, v in line.items() if k != "position"})
                elif event["offset"] < low:
                    event["wal"] = "pruned"
    return report


async def _read_wal(
    bootstrap: str, topic: str, partition: int, offsets: list[int], progress: bool,
    security: KafkaSecurity,
) -> tuple[dict[int, Any], int]:  # fmt: skip
    """The WAL records at ``offsets`` (ascending) that the partition still holds, and where
    it starts now."""
    consumer = kafka.consumer(bootstrap, "lukhas-history", isolation="read_committed",
                              fetch_bytes=_FETCH_BYTES, security=security)  # fmt: skip
    try:
        with kafka_errors(TopicReadError, f"cannot reach Kafka at {bootstrap}"):
            await consumer.start()
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        with kafka_errors(TopicReadError, f"cannot read {topic}[{partition}]"):
            low = (await consumer.beginning_offsets([tp]))[tp]
            end = (await consumer.end_offsets([tp]))[tp]
        found: dict[int, Any] = {}
        fetched: dict[int, Any] = {}
        top = -1  # the highest offset fetched so far
        bar = tqdm(offsets, unit="ev", disable=not progress, desc="WAL records", file=sys.stderr)
        for wanted in bar:
            if wanted < low or wanted >= end:
                continue
            if wanted > top:
                fetched.clear()
                consumer.seek(tp, wanted)
                with kafka_errors(TopicReadError, f"cannot read {topic}[{partition}]"):
                    batch = await consumer.getmany(tp, timeout_ms=int(FETCH_TIMEOUT_S * 1000))
                records = batch.get(tp, [])
                if not records:
                    raise TopicReadError(f"{topic}[{partition}] sent nothing for "
                                       f"{FETCH_TIMEOUT_S:g} s at offset {wanted}")  # fmt: skip
                fetched = {m.offset: m for m in records}
                top = records[-1].offset
            m = fetched.get(wanted)
            if m is not None:
                found[wanted] = m
        return found, low
    finally:
        await consumer.stop()
