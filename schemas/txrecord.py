"""The transaction record: a transaction's events of one WAL partition, in one record, so the
fold applies them all or none (``processors.round``).

A client's transaction (``streams.transaction``) sends, for each partition its events live
in, one record keyed ``TX_KEY`` (0xFE and ``tx``: 0xFE never occurs in UTF-8, so no context
id is that key) to that partition, all of them in one Kafka transaction. The value::

    b"LKT1" | tx id (16) | scope (1) | count (u16 BE) | count x (length u32 BE | event)

Each event is a ``ContextEvent`` in the codec's single-object encoding, as one write would
send it. ``scope`` says how the record is decided: ``SCOPE_PARTITION`` (0), by its own
partition alone — all its events apply, in order, at the record's offset, or none does. (A
scope for a decision across partitions, by votes and a decision in the log, is for the
protocol that is not built yet: the fold rejects any other scope, so what this version wrote
keeps its meaning when that one is added.)

A transaction holds at most ``MAX_TX_EVENTS`` events, and its record must fit the WAL's
``max.message.bytes`` (``streams.topics.WAL_MAX_MESSAGE_BYTES``). ``decode_tx`` checks every
length before reading it: a record that is not exactly this is ``MalformedTransactionError``
(the fold dead-letters it); nothing in it can make the decoder allocate more than the record.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from lukhas_context.schemas.exceptions import MalformedTransactionError

#: The key of every transaction record.
TX_KEY = b"\xfetx"
MAGIC = b"LKT1"
#: Decided by its own partition: all its events apply, or none.
SCOPE_PARTITION = 0
#: Most events in one transaction.
MAX_TX_EVENTS = 1000
_HEAD = struct.Struct(">16sBH")
_LEN = struct.Struct(">I")


@dataclass(frozen=True, slots=True)
class TxRecord:
    tx_id: bytes
    scope: int
    events: tuple[bytes, ...]


def is_tx_key(key: object) -> bool:
    return key == TX_KEY


def encode_tx(tx_id: bytes, events: list[bytes], scope: int = SCOPE_PARTITION) -> bytes:
    """The value of a transaction record (``ValueError`` for an empty or oversized list, or
    an id that is not 16 bytes: the client checks before)."""
    if len(tx_id) != 16 or not 0 < len(events) <= MAX_TX_EVENTS:
        raise ValueError(f"a transaction record of {len(events)} events, id {tx_id!r:.40}")
    parts = [MAGIC, _HEAD.pack(tx_id, scope, len(events))]
    for event in events:
        parts += (_LEN.pack(len(event)), event)
    return b"".join(parts)


def decode_tx(value: bytes | None) -> TxRecord:
    """The transaction record in ``value``; ``MalformedTransactionError`` when it is not one
    (its scope is the caller's to judge)."""
    if value is None or not value.startswith(MAGIC):
        head = None if value is None else value[:4]
        raise MalformedTransactionError(f"a transaction record starts {MAGIC!r}, not {head!r}")
    if len(value) < len(MAGIC) + _HEAD.size:
        raise MalformedTransactionError(f"a transaction record of {len(value)} bytes")
    tx_id, scope, count = _HEAD.unpack_from(value, len(MAGIC))
    if not 0 < count <= MAX_TX_EVENTS:
        raise MalformedTransactionError(f"{count} events: a transaction holds 1-{MAX_TX_EVENTS}")
    pos = len(MAGIC) + _HEAD.size
    events = []
    for i in range(count):
        if pos + _LEN.size > len(value):
            raise MalformedTransactionError(f"truncated before event {i} of {count}")
        (size,) = _LEN.unpack_from(value, pos)
        pos += _LEN.size
        if size == 0 or pos + size > len(value):
            raise MalformedTransactionError(f"event {i} of {size} bytes runs past the record")
        events.append(value[pos : pos + size])
        pos += size
    if pos != len(value):
        raise MalformedTransactionError(f"{len(value) - pos} bytes after the last event")
    return TxRecord(tx_id, scope, tuple(events))
