"""The history index: every WAL record of a context, by context, in offset order.

The journal (``state.journal``) answers "what became of the record at offset O"; it is keyed by
offset, so "what happened to context X" would mean reading every block. The history index is
the same facts keyed the other way: one entry per folded record that names a context,

    key   = len(id) (uint16, big-endian) | id | offset (int64, big-endian)
    value = status (uint8) | version (int64, little-endian)

— the id length first so that no id's entries interleave with another's whose id it prefixes
(``a`` and ``ab``), the offset big-endian so a context's entries sort by offset. ``status`` and
``version`` are those of the journal entry (``EntryStatus``; for a duplicate ``version`` is
the original's offset); the reason of an entry that was not applied stays in the journal,
which the reader asks for while it still holds it.

The entries are written in the round's WriteBatch (``PartitionStore.commit``), so the index is
exactly as current as ``next_offset``, and derived from the log alone: every replay that
indexes the same records writes the same entries (a store restored from the change topic, or
folded with the index switched off for a while, has none for what it did not fold with it:
``meta/history_from`` says from where it is complete). It is not part of the digest (like
the journal, it records how the state came to be, not the state). Records without a
context — checkpoint barriers, and records whose key is no context id (empty, or longer than
``MAX_ID_BYTES``: dead-lettered) — have no entry.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import Any

from lukhas_context.state.journal import ENTRY, EntryStatus

__all__ = [
    "MAX_ID_BYTES",
    "MAX_PAGE",
    "decode",
    "entry_key",
    "prefix",
    "rows",
    "split_key",
]

log = logging.getLogger(__name__)

#: The longest context id the fold accepts (``processors.fold.MAX_ID_BYTES``).
MAX_ID_BYTES = 256
#: The most entries one read of the index returns.
MAX_PAGE = 10_000
_LEN = struct.Struct(">H")
_OFFSET = struct.Struct(">q")
_VALUE = struct.Struct("<Bq")


def prefix(key: bytes) -> bytes:
    """The prefix every index key of the context ``key`` starts with, and no other does."""
    return _LEN.pack(len(key)) + key


def entry_key(key: bytes, offset: int) -> bytes:
    return _LEN.pack(len(key)) + key + _OFFSET.pack(offset)


def split_key(raw: bytes) -> tuple[bytes, int]:
    """``(context key, offset)`` of an index key."""
    n = _LEN.unpack_from(raw)[0]
    return raw[2 : 2 + n], _OFFSET.unpack_from(raw, 2 + n)[0]


def decode(value: bytes) -> tuple[EntryStatus, int]:
    """``(status, version)`` of an index value."""
    status, version = _VALUE.unpack(value)
    return EntryStatus(status), version


def rows(
    messages: Sequence[Any],
    first: int,
    entries: bytes | bytearray,
    tx_keys: Mapping[int, Sequence[bytes]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The index entries of a round: ``messages`` are the round's WAL records (those below
    ``first`` were folded before and have no journal entry in it), ``entries`` its journal
    entries, one per record from ``first`` on, in the same order. ``tx_keys``: the contexts
    of each transaction record (by offset), each of which gets the record's entry; any other
    record under a key that is no context id (a transaction record that did not decode, a
    barrier) gets none.

    The fold makes exactly one entry per record; should the two ever disagree in length, the
    entries are matched by offset instead (and it is logged), so the index is still right."""
    folded = [m for m in messages if m.offset >= first]
    unpacked = list(ENTRY.iter_unpack(entries))
    out: list[tuple[bytes, bytes]] = []
    if len(folded) == len(unpacked) and all(
        m.offset == e[0] for m, e in zip(folded, unpacked, strict=True)
    ):
        pairs: Any = zip(folded, unpacked, strict=True)
    else:
        log.error("history: %d records and %d journal entries in one round; matched by offset",
                  len(folded), len(unpacked))  # fmt: skip
        by_offset = {m.offset: m for m in folded}
        pairs = ((by_offset[e[0]], e) for e in unpacked if e[0] in by_offset)
    for m, (offset, status, version, _event_id, _hash) in pairs:
        key = m.key
        if tx_keys and offset in tx_keys:
            value = _VALUE.pack(status, version)
            keys = tx_keys[offset]
            if key and len(key) <= MAX_ID_BYTES and key[0] < 0xF5 and key not in keys:
                keys = [key, *keys]  # a record of a context that also decided a transaction
            out.extend((entry_key(k, offset), value) for k in keys)
            continue
        if not key or len(key) > MAX_ID_BYTES or key[0] >= 0xF5:  # 0xF5-0xFF: never UTF-8
            continue
        out.append((entry_key(key, offset), _VALUE.pack(status, version)))
    return out
