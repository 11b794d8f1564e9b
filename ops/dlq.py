"""``lukhas dlq list|show|redrive``: the dead-letter queue, read and re-driven.

A dead letter is a WAL record the fold could not read as an event (it does not decode: an
unknown schema version, garbage bytes; its key is not its event's context; its event id was
used before for other bytes). The worker copies it to the DLQ, the same partition number, the
bytes and key unchanged, with headers naming the error and the WAL position it came from.

``list`` and ``show`` read the DLQ (``read_committed``, a consumer that never commits) between
bounds fixed before the read starts, filtered by reason, time and context. ``redrive`` appends
the chosen records' original bytes to the WAL again, under their original key: the event id
inside them is the original one, so the fold sees a re-driven event exactly as the producer's
retry of it — a second re-drive (or a re-drive of an event that meanwhile got through) is
journaled ``duplicate`` within the dedupe window (100,000 offsets of its partition), never
applied twice. A record that still cannot be folded is dead-lettered again, with its new
reason. Before appending anything, each record is dry-run on the worker that owns its
context (``POST /v1/dry-run``): what the fold would do now. Without ``--yes`` that is all it
does.

``prune`` deletes the dead letters logged before a time (Kafka's DeleteRecords): the DLQ
keeps everything otherwise (``retention.ms=-1``). Nothing restores from the DLQ — each record
stays in the WAL too — so a prune loses only the convenience of finding them there.
"""

from __future__ import annotations

import contextlib
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

from aiokafka import TopicPartition
from tqdm import tqdm

from lukhas_context.ops.exceptions import OpsError
from lukhas_context.ops.inspect import Bound, NoSuchOffsetError, dlq_line, records
from lukhas_context.schemas.exceptions import LukhasError
from lukhas_context.schemas.txrecord import is_tx_key
from lukhas_context.streams import kafka
from lukhas_context.streams.admin import delete_records_below
from lukhas_context.streams.client import ContextClient
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.security import KafkaSecurity
from lukhas_context.streams.topics import Topics

__all__ = [
    "DlqError",
    "Filters",
    "NoSuchDeadLetterError",
    "Redrive",
    "listing",
    "prune",
    "redrive",
    "show",
]


class DlqError(OpsError):
    """The dead-letter queue cannot be read or re-driven as asked."""


class NoSuchDeadLetterError(DlqError):
    """No dead letter at the position asked for (exit 3)."""

    not_found = True


@dataclass(frozen=True)
class Filters:
    """Which dead letters: ``partitions`` of the DLQ (None: all), logged at or after
    ``since``, whose reason contains ``reason`` (case-insensitive), of context ``context_id``;
    at most ``limit``."""

    partitions: list[int] | None = None
    since: Bound | None = None
    reason: str | None = None
    context_id: str | None = None
    limit: int = 100

    def keep(self, line: dict[str, Any]) -> bool:
        if self.reason is not None and self.reason.lower() not in line["reason"].lower():
            return False
        return self.context_id is None or line.get("context_id") == self.context_id


async def _chosen(
    bootstrap: str, topics: Topics, f: Filters, security: KafkaSecurity
) -> AsyncIterator[tuple[Any, dict[str, Any]]]:
    """``(record, line)`` of each dead letter the filters keep, at most ``f.limit``."""
    left = f.limit
    found = records(
        bootstrap, topics, "dlq", f.partitions, f.since, None, f.context_id, security=security
    )
    async with contextlib.aclosing(found) as found:
        async for m in found:
            line = dlq_line(m)
            if not f.keep(line):
                continue
            yield m, line
            left -= 1
            if left == 0:
                return


async def listing(
    bootstrap: str, topics: Topics, f: Filters, *, security: KafkaSecurity
) -> list[dict[str, Any]]:
    """The dead letters the filters keep, as ``lukhas inspect dlq`` shows them."""
    return [line async for _, line in _chosen(bootstrap, topics, f, security)]


async def show(
    bootstrap: str, topics: Topics, partition: int, offset: int, *, security: KafkaSecurity
) -> dict[str, Any]:
    """Everything about the dead letter at ``partition:offset`` of the DLQ: its line, every
    header, the key, the size and first bytes of the value, and the event when it decodes."""
    start = Bound(offset=offset)
    found = records(
        bootstrap, topics, "dlq", [partition], start, Bound(offset=offset + 1), security=security
    )
    with contextlib.suppress(NoSuchOffsetError):
        async with contextlib.aclosing(found) as found:
            async for m in found:
                if m.offset != offset:
                    break
                return _detail(m)
    raise NoSuchDeadLetterError(
        f"no dead letter at {partition}:{offset} of {topics.dlq} (deleted, a transaction "
        "marker, or past its end)"
    )


def _detail(m: Any) -> dict[str, Any]:
    value = m.value or b""
    out = dlq_line(m)
    out["headers"] = {k: v.decode("utf-8", "backslashreplace") for k, v in (m.headers or ())}
    out["key"] = None if m.key is None else m.key.decode("utf-8", "backslashreplace")
    out["value_bytes"] = len(value)
    out["value_head"] = value[:64].hex()
    return out


@dataclass
class Redrive:
    """What ``redrive`` did (or, without ``yes``, would do) with each dead letter."""

    appended: bool
    #: One dict per dead letter: ``position`` (in the DLQ), ``source`` (the WAL position it
    #: came from), ``context_id``, ``reason`` (why it was dead-lettered), ``now`` (the dry
    #: run's verdict: status and reason), and once appended ``wal_position`` and ``outcome``
    #: (``status``, ``version``, ``reason``, ``duplicate_of``); ``skipped`` when it could
    #: not be appended (no key).
    records: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"appended": self.appended, "records": self.records}


async def redrive(
    client: ContextClient, f: Filters, yes: bool, outcome_timeout: float = 30.0,
    progress: bool = False,
) -> Redrive:  # fmt: skip
    """Dry-runs the chosen dead letters on their owners, then (``yes``) appends their bytes to
    the WAL under their keys, one after another in DLQ order, and waits for each outcome
    (``progress``: a bar on stderr)."""
    config = client.config
    chosen = [
        (m, line)
        async for m, line in _chosen(config.bootstrap, config.topics, f, config.kafka_security)
    ]
    report = Redrive(appended=yes)
    bar = tqdm(total=len(chosen) * (2 if yes else 1), unit="rec", disable=not progress,
               desc="dead letters", file=sys.stderr)  # fmt: skip
    with bar:
        await _dry_runs(client, chosen, report, bar)
        if yes:
            await _append(client, chosen, report, bar, outcome_timeout)
    return report


async def _dry_runs(client: ContextClient, chosen: list[tuple[Any, dict[str, Any]]],
                    report: Redrive, bar: Any) -> None:  # fmt: skip
    for m, line in chosen:
        bar.update(1)
        entry: dict[str, Any] = {
            "position": line["position"],
            "source": line["source"],
            "context_id": line.get("context_id"),
            "reason": line["reason"],
        }
        report.records.append(entry)
        if m.key is None:
            entry["skipped"] = "no key: the fold can only dead-letter it again"
            continue
        if is_tx_key(m.key):  # not one event: the dry run takes one; appended all the same
            entry["now"] = {"status": "unknown", "reason": "a transaction record is not dry-run"}
            continue
        verdict = await client.dry_run_encoded(m.value or b"")
        entry["now"] = {"status": verdict.status, "reason": verdict.reason}


async def _append(client: ContextClient, chosen: list[tuple[Any, dict[str, Any]]],
                  report: Redrive, bar: Any, outcome_timeout: float) -> None:  # fmt: skip
    for (m, _line), entry in zip(chosen, report.records, strict=True):
        bar.update(1)
        if "skipped" in entry:
            continue
        event_id = _event_id(m.value or b"")
        partition = None
        if is_tx_key(m.key):  # its key names no partition: back to the one it came from
            event_id = uuid.UUID(bytes=(m.value or b"")[4:20].ljust(16, b"\0"))
            headers = dict(m.headers or ())
            partition = int(headers.get("source.partition", b"0"))
        receipt = await client.writer.send(m.key, m.value or b"", event_id, partition=partition)
        entry["wal_position"] = f"{receipt.partition}:{receipt.offset}"
        entry["outcome"] = await _outcome(client, receipt.partition, receipt.offset,
                                          outcome_timeout)  # fmt: skip


async def _outcome(client: ContextClient, partition: int, offset: int, timeout: float
                   ) -> dict[str, Any]:  # fmt: skip
    try:
        o = await client.outcome(partition, offset, timeout)
    except LukhasError as exc:
        return {"status": "unknown", "version": None,
                "reason": f"{type(exc).__name__}: {exc}", "duplicate_of": None}  # fmt: skip
    status = "duplicate" if o.duplicate_of is not None else o.status
    return {"status": status, "version": o.version, "reason": o.reason,
            "duplicate_of": o.duplicate_of}  # fmt: skip


def _event_id(value: bytes) -> uuid.UUID:
    """The event id in a single-object event's bytes (offset 10, 16 bytes) for the writer's
    messages; a nil id when the bytes are too short to hold one."""
    raw = value[10:26]
    return uuid.UUID(bytes=raw) if len(raw) == 16 else uuid.UUID(int=0)


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
