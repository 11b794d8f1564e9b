"""The fold journal: what became of every WAL record, one block per round and partition.

Each block is one RocksDB value, keyed by the round's first offset (8 bytes, big-endian, so
keys sort by offset). It holds a fixed-size entry per folded record —

    offset (int64) | status (uint8) | version (int64) | event id (16) | payload hash (uint64)

— in offset order, then the reasons of the entries that were not applied (JSON). One write per
round keeps the hot path free of per-event puts. The journal serves two things:

* ``receipt.outcome()``: the outcome of the event at an offset (binary search in one block);
* the event-id dedupe window (``state.dedupe``), rebuilt from the newest blocks when a store
  opens, so that retries are recognised across restarts and restores exactly as in an
  uninterrupted fold.

Statuses are those of ``processors.fold.Status`` plus ``DEAD_LETTERED``, ``DUPLICATE`` and
``RESTORED``.
"""

from __future__ import annotations

import enum
import struct
from collections.abc import Iterator
from dataclasses import dataclass

import orjson

from lukhas_context.state.exceptions import CorruptRecordError

ENTRY = struct.Struct("<qBq16sQ")
ENTRY_SIZE = ENTRY.size  # 41
_HEAD = struct.Struct("<BI")
_FORMAT = 1
NO_EVENT_ID = bytes(16)


class EntryStatus(enum.IntEnum):
    APPLIED = 0
    CONFLICT = 1
    REJECTED = 2
    DEAD_LETTERED = 3
    DUPLICATE = 4
    #: Folded before the store was restored from the change topic, which keeps no outcomes:
    #: the event id is known (for the dedupe window), what became of the event is not.
    RESTORED = 5
    #: Its fencing token was below the highest folded for its lock (``processors.round``).
    FENCED = 6
    #: A transaction's part prepared here, voted yes, and waiting for the decision
    #: (``processors.twophase``); its outcome is the decision's record's (``txres``).
    PREPARED = 7
    #: A transaction's part dropped by the coordinator's decision to abort.
    ABORTED = 8


@dataclass(frozen=True, slots=True)
class JournalEntry:
    """The outcome of one WAL record. ``version``: the new version when applied, the current
    one otherwise; for a duplicate, the offset of the original event."""

    offset: int
    status: EntryStatus
    version: int
    event_id: bytes
    payload_hash: int
    reason: str | None = None


def block_key(first_offset: int) -> bytes:
    return first_offset.to_bytes(8, "big")


def encode_block(entries: bytes | bytearray, reasons: dict[int, str]) -> bytes:
    """``entries``: concatenated ``ENTRY`` structs in offset order."""
    tail = orjson.dumps({str(k): v for k, v in reasons.items()}) if reasons else b""
    return _HEAD.pack(_FORMAT, len(entries) // ENTRY_SIZE) + bytes(entries) + tail


def _split(block: bytes) -> tuple[memoryview, dict[str, str]]:
    if len(block) < _HEAD.size or block[0] != _FORMAT:
        raise CorruptRecordError(f"journal block of {len(block)} bytes, format {block[:1].hex()}")
    count = _HEAD.unpack_from(block)[1]
    end = _HEAD.size + count * ENTRY_SIZE
    if end > len(block):
        raise CorruptRecordError(f"journal block claims {count} entries in {len(block)} bytes")
    reasons = orjson.loads(block[end:]) if end < len(block) else {}
    return memoryview(block)[_HEAD.size : end], reasons


def find(block: bytes, offset: int) -> JournalEntry | None:
    """The entry of ``offset`` in a block, or None (binary search over fixed-size entries)."""
    entries, reasons = _split(block)
    lo, hi = 0, len(entries) // ENTRY_SIZE
    while lo < hi:
        mid = (lo + hi) // 2
        found = ENTRY.unpack_from(entries, mid * ENTRY_SIZE)
        if found[0] < offset:
            lo = mid + 1
        elif found[0] > offset:
            hi = mid
        else:
            return _entry(found, reasons)
    return None


def reasons(block: bytes) -> dict[str, str]:
    """The reasons of a block's entries that were not applied, by offset (decimal string)."""
    return _split(block)[1]


def entries(block: bytes) -> Iterator[JournalEntry]:
    """Every entry of a block, in offset order."""
    raw, reasons = _split(block)
    for i in range(len(raw) // ENTRY_SIZE):
        yield _entry(ENTRY.unpack_from(raw, i * ENTRY_SIZE), reasons)


def _entry(fields: tuple[int, int, int, bytes, int], reasons: dict[str, str]) -> JournalEntry:
    offset, status, version, event_id, payload_hash = fields
    return JournalEntry(
        offset, EntryStatus(status), version, event_id, payload_hash, reasons.get(str(offset))
    )
