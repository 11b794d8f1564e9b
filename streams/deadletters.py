"""The dead-letter queue: its records listed, one decoded, and re-driven. ``lukhas dlq`` and
the read API's ``/v1/dead-letters`` routes (the console's Dead letters view) both use it.

A dead letter is a WAL record the fold could not read as an event (it does not decode: an
unknown schema version, garbage bytes; its key is not its event's context; its event id was
used before for other bytes). The worker copies it to the DLQ, the same partition number, the
bytes and key unchanged, with headers naming the error and the WAL position it came from.

Reading (``records``, ``listing``, ``read_one``) is bounded before it starts
(``streams.records``). A re-drive appends the chosen records' original bytes to the WAL
again, under their original key: the event id inside them is the original one, so the fold
sees a re-driven event exactly as the producer's retry of it — a second re-drive (or a
re-drive of an event that meanwhile got through) is journaled ``duplicate`` within the
dedupe window, never applied twice. A record that still cannot be folded is dead-lettered
again, with its new reason. Before appending anything, each record is dry-run on the worker
that owns its context (``POST /v1/dry-run``): what the fold would do now. Without ``yes``
that is all a re-drive does.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import (
    CheckpointBarrier,
    ContextEvent,
    Delete,
    Expire,
    Patch,
    Put,
    Touch,
)
from lukhas_context.schemas.exceptions import CodecError, LukhasError
from lukhas_context.schemas.txrecord import is_tx_key
from lukhas_context.streams.position import Bound
from lukhas_context.streams.records import NoSuchOffsetError, TopicReadError, records
from lukhas_context.streams.security import KafkaSecurity
from lukhas_context.streams.topics import Topics

if TYPE_CHECKING:
    from lukhas_context.streams.async_client import ContextClient

__all__ = [
    "DeadLetterError",
    "Filters",
    "NoSuchDeadLetterError",
    "Redrive",
    "event_summary",
    "iso_ms",
    "letter_detail",
    "letter_line",
    "letters",
    "listing",
    "read_one",
    "redrive",
]

#: What decodes a WAL record's value into an event (a worker's codec knows the writer
#: schemas it was given; the default, the shipped ones).
Decode = Callable[[bytes], ContextEvent]


class DeadLetterError(TopicReadError):
    """The dead-letter queue cannot be read or re-driven as asked."""


class NoSuchDeadLetterError(DeadLetterError):
    """No dead letter at the position asked for (the CLI exits 3, the API answers 404)."""

    not_found = True


def iso_ms(ms: int) -> str:
    """A log time (ms since the epoch) as ISO 8601 in UTC, to the millisecond."""
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    )


KINDS = {Put: "put", Patch: "patch", Delete: "delete", Touch: "touch", Expire: "expire",
         CheckpointBarrier: "checkpoint-barrier"}  # fmt: skip


def event_summary(e: ContextEvent) -> dict[str, Any]:
    """One event as ``lukhas inspect`` shows it: ``event_id``, ``context_id``, ``kind``, and
    ``if_version``, ``expires_version`` or ``checkpoint_id`` when it has one."""
    out: dict[str, Any] = {"event_id": e.event_id.hex(), "context_id": e.context_id,
                           "kind": KINDS.get(type(e.op), type(e.op).__name__.lower())}  # fmt: skip
    if e.expected_version is not None:
        out["if_version"] = e.expected_version
    if isinstance(e.op, Expire):
        out["expires_version"] = e.op.version
    if isinstance(e.op, CheckpointBarrier):
        out["checkpoint_id"] = e.op.checkpoint_id
    return out


def _headers(m: Any) -> dict[str, str]:
    return {k: v.decode("utf-8", "backslashreplace") for k, v in (m.headers or ())}


def letter_line(m: Any, decode: Decode | None = None) -> dict[str, Any]:
    """One dead letter as ``lukhas dlq list`` shows it: ``position`` (in the DLQ),
    ``log_time``, ``reason``, ``source`` (its WAL position), ``context_id`` (its key) and the
    event's ``event_id`` and ``kind`` (or ``event``: why it does not decode)."""
    return _line(m, *_event_of(m, decode))


def letter_detail(m: Any, decode: Decode | None = None) -> dict[str, Any]:
    """Everything about one dead letter: its line, every header, the key, the size and first
    bytes of the value, and, when it decodes, the event itself (``decoded``: its operation's
    fields, a document or patch as JSON when it is JSON, else as text), or why not
    (``undecodable``)."""
    event, error = _event_of(m, decode)
    value = m.value or b""
    out = _line(m, event, error)
    out["headers"] = _headers(m)
    out["key"] = out["context_id"]
    out["value_bytes"] = len(value)
    out["value_head"] = value[:64].hex()
    if event is None:
        out["undecodable"] = f"{type(error).__name__}: {error}"
    else:
        out["decoded"] = _decoded(event)
    return out


def _event_of(m: Any, decode: Decode | None) -> tuple[ContextEvent | None, Exception | None]:
    """The event in a dead letter's value, or why there is none."""
    try:
        if m.value is None:
            raise ValueError("no value")
        return (decode or _shipped().decode)(bytes(m.value)), None
    except (CodecError, ValueError) as exc:
        return None, exc


def _line(m: Any, event: ContextEvent | None, error: Exception | None) -> dict[str, Any]:
    h = _headers(m)
    out: dict[str, Any] = {
        "position": f"{m.partition}:{m.offset}",
        "log_time": iso_ms(m.timestamp),
        "reason": f"{h.get('error.class', '?')}: {h.get('error.message', '')}",
        "source": f"{h.get('source.partition', '?')}:{h.get('source.offset', '?')}",
        "context_id": None if m.key is None else m.key.decode("utf-8", "backslashreplace"),
    }
    if event is None:
        out["event"] = f"does not decode ({type(error).__name__})"
    else:
        out.update({k: v for k, v in event_summary(event).items() if k != "context_id"})
    return out


def _decoded(e: ContextEvent) -> dict[str, Any]:
    out = event_summary(e)
    op = e.op
    if isinstance(op, Put):
        out["doc"] = _json_or_text(op.doc)
    if isinstance(op, Patch):
        out["patch_format"] = op.format.name.lower()
        out["patch"] = _json_or_text(op.patch)
        if op.expected_checksum is not None:
            out["expected_checksum"] = op.expected_checksum.hex()
        if op.clear_ttl:
            out["clear_ttl"] = True
    if isinstance(op, Put | Patch | Touch) and op.ttl_ms is not None:
        out["ttl_ms"] = op.ttl_ms
    if e.fence is not None:
        out["fence"] = {"lock": e.fence.lock, "token": e.fence.token}
    if e.metadata:
        out["metadata"] = dict(e.metadata)
    return out


def _json_or_text(raw: bytes) -> Any:
    """The JSON ``raw`` holds, or its text when it is not JSON or nests too deep to be
    written back as JSON (orjson's limit, 254 levels: a hostile document must not make the
    answer that shows it fail)."""
    try:
        value = orjson.loads(raw)
        orjson.dumps(value)
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):
        return raw.decode("utf-8", "backslashreplace")
    return value


_codec: EventCodec | None = None


def _shipped() -> EventCodec:
    global _codec
    if _codec is None:
        _codec = EventCodec()
    return _codec


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


async def letters(
    bootstrap: str, topics: Topics, f: Filters, *, security: KafkaSecurity,
    decode: Decode | None = None,
) -> AsyncIterator[tuple[Any, dict[str, Any]]]:  # fmt: skip
    """``(record, line)`` of each dead letter the filters keep, at most ``f.limit``."""
    left = f.limit
    found = records(bootstrap, topics.dlq, f.partitions, f.since, None, f.context_id,
                    security=security, client_id="lukhas-dlq")  # fmt: skip
    async with contextlib.aclosing(found) as found:
        async for m in found:
            line = letter_line(m, decode)
            if not f.keep(line):
                continue
            yield m, line
            left -= 1
            if left == 0:
                return


async def listing(
    bootstrap: str, topics: Topics, f: Filters, *, security: KafkaSecurity,
    decode: Decode | None = None,
) -> list[dict[str, Any]]:  # fmt: skip
    """The lines of the dead letters the filters keep."""
    return [line async for _, line in letters(bootstrap, topics, f, security=security,
                                              decode=decode)]  # fmt: skip


async def read_one(
    bootstrap: str, topics: Topics, partition: int, offset: int, *, security: KafkaSecurity
) -> Any:
    """The dead letter (aiokafka's ``ConsumerRecord``) at ``partition:offset`` of the DLQ;
    ``NoSuchDeadLetterError`` when there is none there."""
    found = records(bootstrap, topics.dlq, [partition], Bound(offset=offset),
                    Bound(offset=offset + 1), security=security,
                    client_id="lukhas-dlq")  # fmt: skip
    with contextlib.suppress(NoSuchOffsetError):
        async with contextlib.aclosing(found) as found:
            async for m in found:  # the bounds let only that offset through
                return m
    raise NoSuchDeadLetterError(
        f"no dead letter at {partition}:{offset} of {topics.dlq} (deleted, a transaction "
        "marker, or past its end)"
    )


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
    client: ContextClient, chosen: list[tuple[Any, dict[str, Any]]], yes: bool,
    outcome_timeout: float = 30.0, step: Callable[[], None] | None = None,
) -> Redrive:  # fmt: skip
    """Dry-runs the ``chosen`` dead letters (``(record, line)``, as ``letters`` yields them)
    on their owners, then (``yes``) appends their bytes to the WAL under their keys, one
    after another in DLQ order, and waits for each outcome. ``step`` is called once per
    record and phase (a progress bar)."""
    report = Redrive(appended=yes)
    tick = step or (lambda: None)
    await _dry_runs(client, chosen, report, tick)
    if yes:
        await _append(client, chosen, report, tick, outcome_timeout)
    return report


async def _dry_runs(client: ContextClient, chosen: list[tuple[Any, dict[str, Any]]],
                    report: Redrive, tick: Callable[[], None]) -> None:  # fmt: skip
    for m, line in chosen:
        tick()
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
                  report: Redrive, tick: Callable[[], None],
                  outcome_timeout: float) -> None:  # fmt: skip
    for (m, _line), entry in zip(chosen, report.records, strict=True):
        tick()
        if "skipped" in entry:
            continue
        if is_tx_key(m.key):  # its key names no partition: back to the one it came from
            event_id = uuid.UUID(bytes=(m.value or b"")[4:20].ljust(16, b"\0"))
            partition = int(dict(m.headers or ()).get("source.partition", b"0"))
        else:
            event_id, partition = _event_id(m.value or b""), None
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
