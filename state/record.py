"""A context as the store keeps it, and its byte layout.

Layout (little-endian): format byte (1), flags (1: bit 0 = deleted, bit 1 = has expiry),
version (8), offset (8), log time ms (8), expires at ms (8), checksum (8), then the canonical
JSON document (empty when deleted). The format byte lets a later layout coexist with this one.

A deleted context keeps a *tombstone* (its version, no document): a writer that read version N
before a delete must not see a re-created context at version N again (the ABA problem), so
versions continue across delete and re-create.
"""

from __future__ import annotations

import struct
from typing import NamedTuple

from lukhas_context.state.exceptions import CorruptRecordError

FORMAT_V1 = 1
_HEADER = struct.Struct("<BBqqqq8s")
HEADER_SIZE = _HEADER.size
_DELETED = 1
_HAS_EXPIRY = 2
NO_CHECKSUM = bytes(8)


class ContextRecord(NamedTuple):
    """One context after its latest applied event (a NamedTuple: the fold makes one per
    applied event, and a frozen dataclass costs nearly three times as much to build).

    ``offset`` is the WAL offset of the event that made this version; ``log_time_ms`` its log
    timestamp. ``doc`` is None for a tombstone.
    """

    version: int
    doc: bytes | None
    checksum: bytes
    expires_at_ms: int | None
    offset: int
    log_time_ms: int

    def is_live(self, now_ms: int) -> bool:
        """Exists and has not expired at ``now_ms`` (log time in the fold, wall time on reads)."""
        return self.doc is not None and (self.expires_at_ms is None or now_ms < self.expires_at_ms)


def encode_record(record: ContextRecord) -> bytes:
    flags = (_DELETED if record.doc is None else 0) | (
        _HAS_EXPIRY if record.expires_at_ms is not None else 0
    )
    header = _HEADER.pack(
        FORMAT_V1,
        flags,
        record.version,
        record.offset,
        record.log_time_ms,
        record.expires_at_ms or 0,
        record.checksum,
    )
    return header + (record.doc or b"")


def decode_record(data: bytes) -> ContextRecord:
    if len(data) < HEADER_SIZE or data[0] != FORMAT_V1:
        raise CorruptRecordError(f"stored record of {len(data)} bytes, format {data[:1].hex()}")
    _, flags, version, offset, log_time, expires, checksum = _HEADER.unpack_from(data)
    return ContextRecord(
        version,
        None if flags & _DELETED else data[HEADER_SIZE:],
        checksum,
        expires if flags & _HAS_EXPIRY else None,
        offset,
        log_time,
    )
