"""The pure fold: ``apply(record, event, position) -> (record', outcome)``.

Pure means: the result depends only on the arguments. No wall clock (time is the record's log
timestamp), no randomness, no I/O, so every replica and every replay computes the same state
from the same log. ``apply`` never raises for any decoded event: everything wrong with an event
is a ``REJECTED`` outcome that leaves the record as it was.

Every applied mutation raises the version by exactly 1; versions continue across delete and
re-create (see ``state.record``). A context whose ``expires_at_ms`` is at or before the event's
log time is treated as absent, as reads treat it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

import orjson
import xxhash

from lukhas_context.schemas.event import ChangeKind, ContextEvent, Delete, Put
from lukhas_context.state.record import ContextRecord

#: Largest TTL accepted: 100 years, far inside a 64-bit millisecond timestamp.
MAX_TTL_MS = 100 * 365 * 24 * 3600 * 1000


class Status(enum.IntEnum):
    APPLIED = 0
    CONFLICT = 1
    REJECTED = 2


@dataclass(frozen=True, slots=True)
class Limits:
    """What the fold accepts. Producers check the same limits before sending."""

    max_document_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an event did. ``version``: the new version (applied) or the current one (conflict,
    rejected; 0 when the context does not exist). ``kind`` is set when a change is published."""

    status: Status
    version: int
    reason: str | None = None
    kind: ChangeKind | None = None


def checksum(doc: bytes) -> bytes:
    """xxh3-64 of canonical document bytes, big-endian (8 bytes)."""
    return xxhash.xxh3_64_digest(doc)


def canonical_document(doc: bytes, limits: Limits) -> bytes | str:
    """The canonical bytes of a JSON object document, or the reason it is not acceptable.

    Canonical: orjson with sorted keys, no whitespace. The checksum is taken over these bytes.
    """
    if len(doc) > limits.max_document_bytes:
        return f"document of {len(doc)} bytes is over the limit of {limits.max_document_bytes}"
    try:
        value = orjson.loads(doc)
    except orjson.JSONDecodeError as exc:
        return f"document is not JSON: {exc}"
    if type(value) is not dict:
        return f"document is a JSON {type(value).__name__}, not an object"
    canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    if len(canonical) > limits.max_document_bytes:
        return (
            f"document of {len(canonical)} bytes is over the limit of {limits.max_document_bytes}"
        )
    return canonical


def apply(
    record: ContextRecord | None,
    event: ContextEvent,
    offset: int,
    log_time_ms: int,
    limits: Limits,
) -> tuple[ContextRecord | None, Outcome]:
    """Folds one event into the record of its context.

    Returns the record after the event (the same object when nothing changed) and the outcome.
    """
    live = record is not None and record.is_live(log_time_ms)
    current = record.version if record is not None else 0
    visible = current if live else 0
    if event.fence is not None:
        return record, Outcome(Status.REJECTED, visible, "fencing is not supported yet")
    expected = event.expected_version
    if expected is not None and expected != visible:
        return record, Outcome(Status.CONFLICT, visible, f"expected version {expected}")
    op = event.op
    if type(op) is Put:
        return _put(record, current, op, offset, log_time_ms, limits)
    if type(op) is Delete:
        if not live:
            return record, Outcome(Status.REJECTED, 0, "not found")
        deleted = ContextRecord(current + 1, None, record.checksum, None, offset, log_time_ms)  # type: ignore[union-attr]
        return deleted, Outcome(Status.APPLIED, current + 1, None, ChangeKind.DELETE)
    name = type(op).__name__
    return record, Outcome(Status.REJECTED, visible, f"operation {name} is not supported yet")


def _put(
    record: ContextRecord | None,
    current: int,
    op: Put,
    offset: int,
    log_time_ms: int,
    limits: Limits,
) -> tuple[ContextRecord | None, Outcome]:
    visible = current if record is not None and record.is_live(log_time_ms) else 0
    ttl = op.ttl_ms
    if ttl is not None and not 0 < ttl <= MAX_TTL_MS:
        return record, Outcome(Status.REJECTED, visible, f"ttl_ms {ttl} outside (0, {MAX_TTL_MS}]")
    doc = canonical_document(op.doc, limits)
    if type(doc) is str:
        return record, Outcome(Status.REJECTED, visible, doc)
    assert isinstance(doc, bytes)
    expires = None if ttl is None else log_time_ms + ttl
    new = ContextRecord(current + 1, doc, checksum(doc), expires, offset, log_time_ms)
    return new, Outcome(Status.APPLIED, current + 1, None, ChangeKind.PUT)
