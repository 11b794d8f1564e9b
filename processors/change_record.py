"""A change-topic record as the worker reads it back: every field checked, or refused with
the reason (``UnusableChangeError``); ``check_change_record`` gives a ``CheckedChange``.

The worker reads the change topic it writes in two places: the *coverage* (which WAL offsets
have their changes published already) and the *change-topic restore* (the newest change of
every context becomes its stored record). Anyone who can write to that topic, and any bug or
bit flip, can put a record there that is not a change of this log; such a record must make
only itself, or that restore path for that partition, unusable — never the worker unable to
start, and never a store that differs from the fold of the log. What is checked here, without
the WAL: the record decodes; the key is a context id and, for a change with a document, its
payload's; integers are in range; a tombstone's headers are exactly the ones the processor
writes; a document matches its checksum; and, when the caller knows the WAL's end, the WAL
offset named is below it. Whether the WAL holds that very event at that offset is checked by
the caller (``processors.opener``), which reads the WAL.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from lukhas_context.processors.exceptions import UnusableChangeError
from lukhas_context.processors.fold import MAX_ID_BYTES
from lukhas_context.processors.twophase import TX_STATE_PREFIX, read_state_record
from lukhas_context.schemas.change import (
    ChangeRecord,
    FenceRecord,
    document_matches,
    is_fence_key,
    read_fence_record,
)
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind
from lukhas_context.schemas.exceptions import BadFenceRecordError, BadTombstoneError, CodecError
from lukhas_context.state.record import ContextRecord

#: Largest value of a stored 64-bit signed field.
INT64_MAX = 2**63 - 1
#: Change kinds that carry a document (the others are tombstones).
_WITH_DOCUMENT = frozenset({ChangeKind.PUT, ChangeKind.PATCH, ChangeKind.TOUCH})


@dataclass(frozen=True, slots=True)
class CheckedChange:
    """A usable change: the stored record it stands for and the id of the event that made
    it (``record.offset`` is that event's WAL offset); ``position`` is the record's own
    offset in the change topic (-1: not given)."""

    key: bytes
    record: ContextRecord
    event_id: bytes
    position: int = -1


@dataclass(frozen=True, slots=True)
class TxStateRecord:
    """A prepared transaction's state as the change topic carries it
    (``processors.twophase``): None once it is decided."""

    tx_id: bytes
    wal_offset: int
    state: bytes | None


#: What a record of a change partition can be.
ChangeTopicRecord = CheckedChange | FenceRecord | TxStateRecord


def read_change_topic_record(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]] | None,
    codec: ChangeCodec,
    position: int = -1,
) -> ChangeTopicRecord:
    """What one record of a change partition is, for every reader that rebuilds state from
    it (the change-topic restore, standby copies): a transaction's state, a lock's fence
    record or a change (``check_change_record``); ``UnusableChangeError`` with the reason for
    anything else. The caller decides what an unusable record means: a restore refuses the
    topic, a standby passes over the record."""
    if isinstance(key, bytes) and key.startswith(TX_STATE_PREFIX):
        try:
            tx_id, offset, state = read_state_record(key, value)
        except ValueError as exc:
            raise UnusableChangeError(str(exc)) from exc
        return TxStateRecord(tx_id, offset, state)
    if is_fence_key(key):
        try:
            return read_fence_record(key, value)
        except BadFenceRecordError as exc:
            raise UnusableChangeError(str(exc)) from exc
    return check_change_record(key, value, headers, codec, None, position)


def check_change_record(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]] | None,
    codec: ChangeCodec,
    wal_end: int | None = None,
    position: int = -1,
) -> CheckedChange:
    """The change a change-topic record holds, or ``UnusableChangeError`` saying why it
    cannot be one. ``wal_end``: the WAL partition's end offset read *after* the record was
    (a change published before that names an offset below it), None to leave that check to
    the caller."""
    if not isinstance(key, bytes) or not 0 < len(key) <= MAX_ID_BYTES:
        size = "no" if key is None else f"a {len(key)}-byte"
        raise UnusableChangeError(f"{size} key, not a context id of 1-{MAX_ID_BYTES} bytes")
    try:
        key.decode()
    except UnicodeDecodeError:
        raise UnusableChangeError("the key is not UTF-8") from None
    change = (
        _tombstone(key, headers, position)
        if value is None
        else _change(key, value, codec, position)
    )
    _check_ranges(change.record)
    if wal_end is not None and change.record.offset >= wal_end:
        raise UnusableChangeError(
            f"names WAL offset {change.record.offset}, past the WAL's end {wal_end}: "
            "not a change of this log"
        )
    return change


def _change(key: bytes, value: bytes, codec: ChangeCodec, position: int) -> CheckedChange:
    try:
        c = codec.decode(value)
    except CodecError as exc:
        raise UnusableChangeError(f"does not decode ({type(exc).__name__}: {exc})") from None
    if c.context_id.encode() != key:
        raise UnusableChangeError(f"its key is not its payload's context id {c.context_id!r}")
    if c.kind not in _WITH_DOCUMENT:
        raise UnusableChangeError(f"a {c.kind.name} change with a document")
    if not document_matches(c.doc, c.checksum):
        raise UnusableChangeError(f"its document does not match its checksum {c.checksum.hex()}")
    record = ContextRecord(
        c.version, c.doc, c.checksum, c.expires_at_ms, c.wal_offset, c.log_time_ms
    )
    return CheckedChange(key, record, c.event_id, position)


def _tombstone(
    key: bytes, headers: Iterable[tuple[str, bytes]] | None, position: int
) -> CheckedChange:
    """A deletion or expiry: its headers must be the ones ``tombstone_headers`` writes (read
    by the one tombstone reader, ``ChangeRecord.from_tombstone``)."""
    try:
        c = ChangeRecord.from_tombstone(key, headers)
    except BadTombstoneError as exc:
        raise UnusableChangeError(f"a tombstone whose header {exc.header} is bad: {exc}") from None
    record = ContextRecord(c.version, None, c.checksum, None, c.wal_offset, c.log_time_ms)
    return CheckedChange(key, record, c.event_id, position)


def _check_ranges(record: ContextRecord) -> None:
    """The integers a stored record keeps, in the ranges the fold can produce."""
    if not 1 <= record.version <= INT64_MAX:
        raise UnusableChangeError(f"version {record.version} out of range")
    if not 0 <= record.offset <= INT64_MAX:
        raise UnusableChangeError(f"WAL offset {record.offset} out of range")
    if not 0 <= record.log_time_ms <= INT64_MAX:
        raise UnusableChangeError(f"log time {record.log_time_ms} out of range")
    if record.expires_at_ms is not None and not 0 <= record.expires_at_ms <= INT64_MAX:
        raise UnusableChangeError(f"expiry {record.expires_at_ms} out of range")
