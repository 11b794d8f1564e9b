"""The pure fold: ``apply(record, event, position) -> (record', outcome)``.

Pure means: the result depends only on the arguments. No wall clock (time is the record's log
timestamp), no randomness, no I/O, so every replica and every replay computes the same state
from the same log. ``apply`` never raises for any decoded event: everything wrong with an event
is a ``REJECTED`` outcome that leaves the record as it was.

Every applied mutation raises the version by exactly 1; versions continue across delete and
re-create (see ``state.record``). A context whose ``expires_at_ms`` is at or before the event's
log time is treated as absent, as reads treat it.

Event-id deduplication is not here: it needs the window of recent ids (``state.dedupe``),
which the partition's folder keeps (``processors.round``); ``apply`` sees each event id at
most once.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

import orjson
import xxhash

from lukhas_context.schemas.event import (
    BARRIER_CONTEXT_ID,
    BARRIER_KEY,
    ChangeKind,
    CheckpointBarrier,
    ContextEvent,
    Delete,
    Expire,
    Fence,
    Patch,
    PatchFormat,
    Put,
    Touch,
    fence_problem,
)
from lukhas_context.schemas.exceptions import NestingTooDeepError, PatchError
from lukhas_context.schemas.numbers import out_of_range_integer
from lukhas_context.schemas.patch import (
    PatchLimits,
    apply_json_patch,
    apply_merge_patch,
    check_depth,
)
from lukhas_context.state.record import ContextRecord

#: Longest context id, in UTF-8 bytes (the producers' limit too).
MAX_ID_BYTES = 256
#: Largest TTL accepted: 100 years, far inside a 64-bit millisecond timestamp.
MAX_TTL_MS = 100 * 365 * 24 * 3600 * 1000


class Status(enum.IntEnum):
    """The values are the journal's (``state.journal.EntryStatus``)."""

    APPLIED = 0
    CONFLICT = 1
    REJECTED = 2
    FENCED = 6
    PREPARED = 7
    ABORTED = 8


@dataclass(frozen=True, slots=True)
class Limits:
    """What the fold accepts, and its dedupe window. Producers check the same limits before
    sending; these values are part of the fold's semantics and must be the same on every
    replica and replay of a log."""

    max_document_bytes: int = 1024 * 1024
    #: Deepest nesting of objects and arrays in a document (the root object is depth 1), also
    #: after every operation of a JSON Patch.
    max_depth: int = 64
    #: An event id seen within this many preceding offsets of its partition is a retry.
    dedupe_window: int = 100_000
    #: Operations in one JSON Patch.
    max_patch_operations: int = 1000
    #: JSON bytes one JSON Patch may insert, copy or move deeper (``schemas.patch``).
    max_patch_work: int = 2 * 1024 * 1024
    #: A transaction across partitions not decided within this much log time of its prepare
    #: (in the coordinator's partition) is aborted (``processors.twophase``).
    tx_timeout_ms: int = 30_000
    #: The patch bounds above, as ``apply_json_patch`` takes them.
    patch: PatchLimits = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        patch = PatchLimits(self.max_patch_operations, self.max_depth, self.max_patch_work)
        object.__setattr__(self, "patch", patch)


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an event did. ``version``: the new version (applied) or the current one (conflict,
    rejected; 0 when the context does not exist). ``kind`` is set when a change is published."""

    status: Status
    version: int
    reason: str | None = None
    kind: ChangeKind | None = None


def is_barrier(key: bytes | None, event: ContextEvent) -> bool:
    """A checkpoint barrier as appended by ``lukhas checkpoint``: empty key and id."""
    return (
        key == BARRIER_KEY
        and type(event.op) is CheckpointBarrier
        and event.context_id == BARRIER_CONTEXT_ID
    )


def dead_letter_reason(key: bytes | None, event: ContextEvent) -> str | None:
    """Why the fold (``processors.round``) dead-letters a decoded event instead of folding it
    (the key is not the payload's context id, or the id is empty or over ``MAX_ID_BYTES``),
    or None.
    The dry run asks the same question, so it says what the fold would do."""
    if is_barrier(key, event):
        return None
    if key is None or event.context_id.encode() != key:
        return f"key {key!r} is not the payload's context id"
    if not 0 < len(key) <= MAX_ID_BYTES:
        return f"context id of {len(key)} bytes outside 1..{MAX_ID_BYTES}"
    return None


def remembered_by_fold(key: bytes | None, event: ContextEvent) -> bool:
    """True when the fold passes this decoded event to the dedupe window (``state.dedupe``):
    a checkpoint barrier, or an event it does not dead-letter (``dead_letter_reason``)."""
    return dead_letter_reason(key, event) is None


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
    reason = out_of_range_integer(doc)
    if reason is not None:
        return f"document: {reason}"
    return canonical_value(value, limits, walk=might_be_too_deep(doc, limits.max_depth))


def canonical_value(value: Any, limits: Limits, walk: bool = True) -> bytes | str:
    """Canonical bytes of a parsed document, or the reason it is not acceptable. ``walk``
    False skips the depth walk (the caller knows the document is shallow enough)."""
    if type(value) is not dict:
        return f"document is a JSON {type(value).__name__}, not an object"
    reason = _too_deep(value, limits) if walk else None
    if reason is not None:
        return reason
    try:
        canonical = orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
    except orjson.JSONEncodeError as exc:  # e.g. nesting past orjson's own limit of 254
        return f"document cannot be encoded: {exc}"
    if len(canonical) > limits.max_document_bytes:
        return (
            f"document of {len(canonical)} bytes is over the limit of {limits.max_document_bytes}"
        )
    return canonical


def might_be_too_deep(doc: bytes, max_depth: int) -> bool:
    """A cheap test that is True whenever the document may nest deeper than ``max_depth``:
    nesting needs at least that many brackets. Only then is the document walked."""
    return doc.count(b"{") + doc.count(b"[") >= max_depth


def _too_deep(value: dict[str, Any], limits: Limits) -> str | None:
    try:
        check_depth(value, limits.max_depth)
    except PatchError as exc:
        return exc.reason
    return None


def _ttl_reason(ttl: int) -> str | None:
    if 0 < ttl <= MAX_TTL_MS:
        return None
    return f"ttl_ms {ttl} outside (0, {MAX_TTL_MS}]"


def fence_verdict(fence: Fence, highest: int | None) -> tuple[Status, str] | None:
    """What the fence of an event decides: None when the event goes on (its token is at least
    ``highest``, the highest token folded for its lock in the partition, None: no token yet);
    ``REJECTED`` for a fence no lock can issue (``schemas.event.fence_problem``); ``FENCED``
    for a token below ``highest``: a later holder of the lock has written already."""
    problem = fence_problem(fence)
    if problem is not None:
        return Status.REJECTED, problem
    if highest is not None and fence.token < highest:
        return Status.FENCED, (
            f"fencing token {fence.token} of lock {fence.lock!r} is below {highest}, "
            "already used by a later holder"
        )
    return None


def apply(
    record: ContextRecord | None,
    event: ContextEvent,
    offset: int,
    log_time_ms: int,
    limits: Limits,
    fence_floor: int | None = None,
) -> tuple[ContextRecord | None, Outcome]:
    """Folds one event into the record of its context. ``fence_floor``: for an event with a
    fence, the highest token folded for its lock (``fence_verdict``); the caller keeps those
    and raises them (``processors.round``).

    Returns the record after the event (the same object when nothing changed) and the outcome.
    """
    live = record is not None and record.is_live(log_time_ms)
    current = record.version if record is not None else 0
    visible = current if live else 0
    op = event.op
    if event.fence is not None:
        verdict = fence_verdict(event.fence, fence_floor)
        if verdict is not None:
            return record, Outcome(verdict[0], visible, verdict[1])
    if type(op) is Expire:
        return _expire(record, op, offset, log_time_ms)
    expected = event.expected_version
    if expected is not None and expected != visible:
        return record, Outcome(Status.CONFLICT, visible, f"expected version {expected}")
    if type(op) is Put:
        return _put(record, current, op, offset, log_time_ms, limits)
    if not live:
        return record, Outcome(Status.REJECTED, 0, "not found")
    assert record is not None and record.doc is not None
    if type(op) is Delete:
        deleted = ContextRecord(current + 1, None, record.checksum, None, offset, log_time_ms)
        return deleted, Outcome(Status.APPLIED, current + 1, None, ChangeKind.DELETE)
    if type(op) is Patch:
        return _patch(record, op, offset, log_time_ms, limits)
    if type(op) is Touch:
        return _touch(record, op, offset, log_time_ms)
    # A checkpoint barrier is handled by the round (``processors.round``) when its key is
    # empty; one keyed by a context id is not a barrier anyone appended.
    return record, Outcome(Status.REJECTED, visible, "a checkpoint barrier must have an empty key")


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
    if ttl is not None and (reason := _ttl_reason(ttl)):
        return record, Outcome(Status.REJECTED, visible, reason)
    doc = canonical_document(op.doc, limits)
    if type(doc) is str:
        return record, Outcome(Status.REJECTED, visible, doc)
    assert isinstance(doc, bytes)
    expires = None if ttl is None else log_time_ms + ttl
    new = ContextRecord(current + 1, doc, checksum(doc), expires, offset, log_time_ms)
    return new, Outcome(Status.APPLIED, current + 1, None, ChangeKind.PUT)


def _patch(
    record: ContextRecord, op: Patch, offset: int, log_time_ms: int, limits: Limits
) -> tuple[ContextRecord, Outcome]:
    version = record.version

    def rejected(reason: str) -> tuple[ContextRecord, Outcome]:
        return record, Outcome(Status.REJECTED, version, reason)

    if op.ttl_ms is not None and op.clear_ttl:
        return rejected("a patch cannot both set and clear the TTL")
    if op.ttl_ms is not None and (reason := _ttl_reason(op.ttl_ms)):
        return rejected(reason)
    if len(op.patch) > limits.max_document_bytes:
        return rejected(f"patch of {len(op.patch)} bytes is over {limits.max_document_bytes}")
    try:
        patch = orjson.loads(op.patch)
        # Bounds checked before any work: the patch's own nesting (an operations array, an
        # operation, then a value that must fit in a document), then each operation's by
        # apply_json_patch. Nothing here recurses, so no outcome depends on the caller.
        check_depth(patch, limits.max_depth + 2)
        reason = out_of_range_integer(op.patch)
        if reason is not None:
            return rejected(f"patch: {reason}")
        base = orjson.loads(record.doc)  # type: ignore[arg-type]
        if op.format is PatchFormat.JSON_PATCH:
            patched = apply_json_patch(base, patch, limits.patch)
        else:
            patched = apply_merge_patch(base, patch)
    except orjson.JSONDecodeError as exc:
        return rejected(f"patch is not JSON: {exc}")
    except NestingTooDeepError:  # only check_depth raises it
        return rejected(
            f"the patch nests deeper than {limits.max_depth + 2} levels (a value in it must fit "
            f"in a document of {limits.max_depth})"
        )
    except PatchError as exc:
        return rejected(exc.reason)
    doc = canonical_value(patched, limits)
    if type(doc) is str:
        return rejected(doc)
    assert isinstance(doc, bytes)
    digest = checksum(doc)
    if op.expected_checksum is not None and op.expected_checksum != digest:
        return rejected(
            f"checksum after the patch is {digest.hex()}, the writer expected "
            f"{op.expected_checksum.hex()}"
        )
    expires = record.expires_at_ms
    if op.clear_ttl:
        expires = None
    elif op.ttl_ms is not None:
        expires = log_time_ms + op.ttl_ms
    new = ContextRecord(version + 1, doc, digest, expires, offset, log_time_ms)
    return new, Outcome(Status.APPLIED, version + 1, None, ChangeKind.PATCH)


def _touch(
    record: ContextRecord, op: Touch, offset: int, log_time_ms: int
) -> tuple[ContextRecord, Outcome]:
    if op.ttl_ms is not None and (reason := _ttl_reason(op.ttl_ms)):
        return record, Outcome(Status.REJECTED, record.version, reason)
    expires = None if op.ttl_ms is None else log_time_ms + op.ttl_ms
    new = record._replace(
        version=record.version + 1, expires_at_ms=expires, offset=offset, log_time_ms=log_time_ms
    )
    return new, Outcome(Status.APPLIED, record.version + 1, None, ChangeKind.TOUCH)


def _expire(
    record: ContextRecord | None, op: Expire, offset: int, log_time_ms: int
) -> tuple[ContextRecord | None, Outcome]:
    """Applies only to the version it names, and only once that version has expired: a write
    that extended or removed the TTL in between wins."""
    if (
        record is None
        or record.doc is None
        or record.version != op.version
        or record.expires_at_ms is None
        or record.expires_at_ms > log_time_ms
    ):
        current = record.version if record is not None else 0
        return record, Outcome(Status.REJECTED, current, f"stale expiry of version {op.version}")
    gone = ContextRecord(record.version + 1, None, record.checksum, None, offset, log_time_ms)
    return gone, Outcome(Status.APPLIED, record.version + 1, None, ChangeKind.EXPIRE)
