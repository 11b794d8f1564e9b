"""The history index: every WAL record of a context, by context, in offset order.

The journal (``state.journal``) answers "what became of the record at offset O"; it is keyed by
offset, so "what happened to context X" would mean reading every block. The history index is
the same facts keyed the other way: one entry per folded record that names a context, grouped
in one block per context and round:

    key   = len(id) (uint16, big-endian) | id | offset of the block's first entry (int64, BE)
    value = status (uint8) | version (int64, little-endian)                  the first entry
          [ | offset (int64, little-endian) | status | version ] ...         each later one

— the id length first so that no id's blocks interleave with another's whose id it prefixes
(``a`` and ``ab``), the offset big-endian so a context's blocks sort by offset; the entries of
one block are in offset order, and a round's blocks of one context come after its earlier
rounds' (offsets only grow), so reading a context's blocks in key order gives its entries in
offset order. ``status`` and ``version`` are those of the journal entry (``EntryStatus``; for a
duplicate ``version`` is the original's offset); the reason of an entry that was not applied
stays in the journal, which the reader asks for while it still holds it.

Why blocks: a round of 50,000 puts over a few hundred contexts writes a few hundred index rows
instead of 50,000, and building them (``_fastfold.history_blocks``, this module's ``rows`` is
the same in Python) no longer costs more than folding the puts did. A store written before
blocks had one 9-byte row per entry: that is a block of one entry, read the same way.

The blocks are written in the round's WriteBatch (``PartitionStore.commit``), so the index is
exactly as current as ``next_offset``, and derived from the log alone: every replay that
indexes the same records has the same entries, however its rounds were cut (a store restored
from the change topic, or folded with the index switched off for a while, has none for what it
did not fold with it: ``meta/history_from`` says from where it is complete). It is not part of
the digest (like the journal, it records how the state came to be, not the state). Records
without a context — checkpoint barriers, and records whose key is no context id (empty, or
longer than ``MAX_ID_BYTES``: dead-lettered) — have no entry.
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
    "block",
    "block_entries",
    "entry_key",
    "is_context_key",
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
#: Each entry of a block after its first (whose offset is the key's).
_LATER = struct.Struct("<qBq")


def prefix(key: bytes) -> bytes:
    """The prefix every index key of the context ``key`` starts with, and no other does."""
    return _LEN.pack(len(key)) + key


def entry_key(key: bytes, offset: int) -> bytes:
    return _LEN.pack(len(key)) + key + _OFFSET.pack(offset)


def split_key(raw: bytes) -> tuple[bytes, int]:
    """``(context key, offset)`` of an index key."""
    n = _LEN.unpack_from(raw)[0]
    return raw[2 : 2 + n], _OFFSET.unpack_from(raw, 2 + n)[0]


def block_entries(raw: bytes, value: bytes) -> list[tuple[int, EntryStatus, int]]:
    """``[(offset, status, version)]`` of the block at index key ``raw``, in offset order.
    Raises ``ValueError`` for a value that is no block."""
    if len(value) < _VALUE.size or (len(value) - _VALUE.size) % _LATER.size:
        raise ValueError(f"a history block of {len(value)} bytes")
    status, version = _VALUE.unpack_from(value)
    out = [(split_key(raw)[1], EntryStatus(status), version)]
    for offset, status, version in _LATER.iter_unpack(memoryview(value)[_VALUE.size :]):
        out.append((offset, EntryStatus(status), version))
    return out


def rows(
    messages: Sequence[Any],
    first: int,
    entries: bytes | bytearray,
    tx_keys: Mapping[int, Sequence[bytes]] | None = None,
) -> list[tuple[bytes, bytes]]:
    """The index blocks of a round, ``[(key, value)]``: one per context, holding its entries in
    offset order. ``messages`` are the round's WAL records (those below ``first`` were folded
    before and have no journal entry in it), ``entries`` its journal entries, one per record
    from ``first`` on, in the same order. ``tx_keys``: the contexts of each transaction record
    (by offset), each of which gets the record's entry; any other record under a key that is
    no context id (a transaction record that did not decode, a barrier) gets none.
    ``_fastfold.history_blocks`` builds the same bytes in C (property-tested).

    The fold makes exactly one entry per record; should the two ever disagree in length, the
    entries are matched by offset instead (and it is logged), so the index is still right."""
    folded = [m for m in messages if m.offset >= first]
    unpacked = list(ENTRY.iter_unpack(entries))
    if len(folded) == len(unpacked) and all(
        m.offset == e[0] for m, e in zip(folded, unpacked, strict=True)
    ):
        pairs: Any = zip(folded, unpacked, strict=True)
    else:
        log.error("history: %d records and %d journal entries in one round; matched by offset",
                  len(folded), len(unpacked))  # fmt: skip
        by_offset = {m.offset: m for m in folded}
        pairs = ((by_offset[e[0]], e) for e in unpacked if e[0] in by_offset)
    blocks: dict[bytes, list[tuple[int, int, int]]] = {}
    for m, (offset, status, version, _event_id, _hash) in pairs:
        key = m.key
        keys = [key] if is_context_key(key) else []
        if tx_keys and offset in tx_keys:
            # a record of a context that also decided a transaction is listed under both
            keys = list(dict.fromkeys([*keys, *tx_keys[offset]]))
        for k in keys:
            blocks.setdefault(k, []).append((offset, status, version))
    return [block(k, entries) for k, entries in blocks.items()]


def block(key: bytes, entries: Sequence[tuple[int, int, int]]) -> tuple[bytes, bytes]:
    """The index row ``(key, value)`` of the context ``key``'s ``entries`` (in offset order,
    at least one)."""
    (offset, status, version), *later = entries
    value = bytearray(_VALUE.pack(status, version))
    for entry in later:
        value += _LATER.pack(*entry)
    return entry_key(key, offset), bytes(value)


def is_context_key(key: bytes | None) -> bool:
    """Whether a WAL record's key can be a context id (0xF5-0xFF never start UTF-8)."""
    return bool(key) and len(key) <= MAX_ID_BYTES and key[0] < 0xF5  # type: ignore[arg-type,index]
