"""``lukhas dlq list|show|redrive|prune``: the dead-letter queue, read and re-driven.

Reading and re-driving are ``streams.deadletters`` (the read API's ``/v1/dead-letters``
routes use them too): ``list`` and ``show`` read the DLQ between bounds fixed before the read
starts, filtered by reason, time and context; ``redrive`` dry-runs each chosen record on the
worker that owns its context and, with ``--yes``, appends its original bytes to the WAL again
under its original key (a second re-drive is journaled ``duplicate``, never applied twice).

``prune`` deletes the dead letters logged before a time (Kafka's DeleteRecords): the DLQ
keeps everything otherwise (``retention.ms=-1``). Nothing restores from the DLQ — each record
stays in the WAL too — so a prune loses only the convenience of finding them there.
"""

from __future__ import annotations

import sys
from typing import Any

from aiokafka import TopicPartition
from tqdm import tqdm

from lukhas_context.ops.exceptions import OpsError
from lukhas_context.streams import kafka
from lukhas_context.streams.admin import delete_records_below
from lukhas_context.streams.client import ContextClient
from lukhas_context.streams.deadletters import (
    Filters,
    Redrive,
    letter_detail,
    letters,
    read_one,
)
from lukhas_context.streams.deadletters import redrive as redrive_chosen
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.position import Bound
from lukhas_context.streams.security import KafkaSecurity
from lukhas_context.streams.topics import Topics

__all__ = ["DlqError", "prune", "redrive", "show"]


class DlqError(OpsError):
    """The dead-letter queue cannot be pruned as asked."""


async def show(
    bootstrap: str, topics: Topics, partition: int, offset: int, *, security: KafkaSecurity
) -> dict[str, Any]:
    """Everything about the dead letter at ``partition:offset`` of the DLQ
    (``streams.deadletters.letter_detail``)."""
    m = await read_one(bootstrap, topics, partition, offset, security=security)
    return letter_detail(m)


async def redrive(
    client: ContextClient, f: Filters, yes: bool, outcome_timeout: float = 30.0,
    progress: bool = False,
) -> Redrive:  # fmt: skip
    """Dry-runs the chosen dead letters on their owners, then (``yes``) appends their bytes to
    the WAL under their keys and waits for each outcome (``streams.deadletters.redrive``;
    ``progress``: a bar on stderr)."""
    config = client.config
    chosen = [
        x async for x in letters(config.bootstrap, config.topics, f, security=config.kafka_security)
    ]
    bar = tqdm(total=len(chosen) * (2 if yes else 1), unit="rec", disable=not progress,
               desc="dead letters", file=sys.stderr)  # fmt: skip
    with bar:
        return await redrive_chosen(client, chosen, yes, outcome_timeout, lambda: bar.update(1))


async def _count(consumer: Any, tp: TopicPartition, low: int, to: int) -> int:
    """The dead letters at offsets ``[low, to)``: records, not offsets (a worker publishes
    them in Kafka transactions, whose commit markers take offsets too)."""
    if to <= low:
        return 0
    consumer.assign([tp])
    consumer.seek(tp, low)
    count = 0
    while await consumer.position(tp) < to:
        batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
        count += sum(1 for m in batch.get(tp, ()) if m.offset < to)
        if not batch and await consumer.position(tp) >= (await consumer.end_offsets([tp]))[tp]:
            break
    return count


async def prune(bootstrap: str, topics: Topics, partitions: list[int] | None, before: Bound,
                yes: bool, *, security: KafkaSecurity) -> list[dict[str, Any]]:  # fmt: skip
    """Per DLQ partition: the dead letters logged before ``before`` (a time, or an offset:
    exclusive), and with ``yes`` their deletion (DeleteRecords moves the partition's start).
    Each entry: ``partition``, ``log_start``, ``end``, ``prune_to`` (offsets), ``deletes``
    (the dead letters below ``prune_to``) and, once done, ``log_start_now``."""
    topic = topics.dlq
    consumer = kafka.consumer(bootstrap, "lukhas-dlq", isolation="read_committed",
                              security=security)  # fmt: skip
    try:
        with kafka_errors(DlqError, f"cannot reach Kafka at {bootstrap}"):
            await consumer.start()
            metadata = await consumer._client.fetch_all_metadata()
        count = len(metadata.partitions_for_topic(topic) or ())
        if not count:
            raise DlqError(f"no topic {topic} (is this the right cluster and prefix?)")
        chosen = sorted(set(partitions)) if partitions else list(range(count))
        bad = [p for p in chosen if p >= count]
        if bad:
            raise DlqError(f"no partition {bad[0]}: {topic} has {count} (0 to {count - 1})")
        plan = []
        for p in chosen:
            tp = TopicPartition(topic, p)
            with kafka_errors(DlqError, f"cannot read {topic}[{p}]"):
                low = (await consumer.beginning_offsets([tp]))[tp]
                end = (await consumer.end_offsets([tp]))[tp]
                if before.offset is not None:
                    to = min(before.offset, end)
                else:
                    found = (await consumer.offsets_for_times({tp: before.time_ms}))[tp]
                    to = end if found is None else found.offset
                to = max(to, low)
                letters = await _count(consumer, tp, low, to)
            plan.append({"partition": p, "log_start": low, "end": end, "prune_to": to,
                         "deletes": letters})  # fmt: skip
    finally:
        await consumer.stop()
    if yes:
        todo = {e["partition"]: e["prune_to"] for e in plan if e["deletes"] > 0}
        with kafka_errors(DlqError, f"cannot delete records of {topic}"):
            done = await delete_records_below(
                bootstrap, topic, todo, "lukhas-dlq", security=security
            )
        for e in plan:
            e["log_start_now"] = done.get(e["partition"], e["log_start"])
    return plan
