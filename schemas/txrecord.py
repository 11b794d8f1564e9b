"""The transaction record: a transaction's events of one WAL partition, in one record, so the
fold applies them all or none (``processors.round``).

A client's transaction (``streams.transaction``) sends, for each partition its events live
in, one record keyed ``TX_KEY`` (0xFE and ``tx``: 0xFE never occurs in UTF-8, so no context
id is that key) to that partition, all of them in one Kafka transaction. The value::

    b"LKT1" | tx id (16) | scope (1) | count (u16 BE) | count x (length u32 BE | event)

Each event is a ``ContextEvent`` in the codec's single-object encoding, as one write would
send it. ``scope`` says how the record is decided: ``SCOPE_PARTITION`` (0), by its own
partition alone — all its events apply, in order, at the record's offset, or none does;
``SCOPE_VOTED`` (1), as one part of a transaction across partitions, whose partitions follow
the header (``count u16 | partition u32...``, ascending, the first coordinating): prepared,
voted on, and applied or dropped by the coordinator's decision (``processors.twophase``).
Votes (``LKV1``), decisions (``LKD1``) and ticks (``LKK1``) travel under the same key
(``decode_control`` reads any of them); the fold rejects any other scope.

A transaction holds at most ``MAX_TX_EVENTS`` events (a raw producer's record of more
decodes, and the fold rejects it), and its record must fit the WAL's ``max.message.bytes``
(``streams.topics.WAL_MAX_MESSAGE_BYTES``). ``decode_tx`` checks every
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
#: One part of a transaction across partitions: prepared, voted on, and applied or dropped by
#: the coordinator's decision (``processors.twophase``).
SCOPE_VOTED = 1
#: Most partitions one transaction spans.
MAX_TX_PARTITIONS = 1024
VOTE_MAGIC = b"LKV1"
DECISION_MAGIC = b"LKD1"
TICK_MAGIC = b"LKK1"
#: Longest reason a vote or a decision carries (UTF-8 bytes).
MAX_REASON_BYTES = 1000
#: Most events in one transaction.
MAX_TX_EVENTS = 1000
_HEAD = struct.Struct(">16sBH")
_LEN = struct.Struct(">I")
_COUNT = struct.Struct(">H")


@dataclass(frozen=True, slots=True)
class TxRecord:
    tx_id: bytes
    scope: int
    events: tuple[bytes, ...]
    #: The partitions of a ``SCOPE_VOTED`` transaction, ascending: the first coordinates.
    partitions: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class Vote:
    """A participant's vote on a transaction, appended to the coordinator's partition."""

    tx_id: bytes
    partition: int
    yes: bool
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Decision:
    """The coordinator's decision, appended to every other participant's partition."""

    tx_id: bytes
    commit: bool
    reason: str = ""


_CONTROL = struct.Struct(">16sIB")
_DECISION = struct.Struct(">16sB")


def encode_vote(vote: Vote) -> bytes:
    reason = vote.reason.encode()[:MAX_REASON_BYTES]
    return VOTE_MAGIC + _CONTROL.pack(vote.tx_id, vote.partition, vote.yes) + reason


def encode_decision(decision: Decision) -> bytes:
    reason = decision.reason.encode()[:MAX_REASON_BYTES]
    return DECISION_MAGIC + _DECISION.pack(decision.tx_id, decision.commit) + reason


def encode_tick() -> bytes:
    return TICK_MAGIC


def decode_control(value: bytes | None) -> TxRecord | Vote | Decision | None:
    """Any record under ``TX_KEY``: a transaction record, a vote, a decision, or None for a
    tick (a record whose only use is its log time); ``MalformedTransactionError`` for
    anything else."""
    value = value or b""
    head = value[:4]
    if head == MAGIC:
        return decode_tx(value)
    if head == TICK_MAGIC and len(value) == 4:
        return None
    body = value[4:]
    if head == VOTE_MAGIC and _CONTROL.size <= len(body) <= _CONTROL.size + MAX_REASON_BYTES:
        tx_id, partition, yes = _CONTROL.unpack_from(body)
        if yes in (0, 1) and partition < 2**31:
            return Vote(tx_id, partition, bool(yes), _text(body[_CONTROL.size :]))
    if head == DECISION_MAGIC and _DECISION.size <= len(body) <= _DECISION.size + MAX_REASON_BYTES:
        tx_id, commit = _DECISION.unpack_from(body)
        if commit in (0, 1):
            return Decision(tx_id, bool(commit), _text(body[_DECISION.size :]))
    raise MalformedTransactionError(
        f"a record under the transaction key that is no transaction, vote, decision or tick "
        f"(starts {head!r}, {len(value)} bytes)"
    )


def _text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise MalformedTransactionError("a reason that is not UTF-8") from None


def is_tx_key(key: object) -> bool:
    return key == TX_KEY


def encode_tx(
    tx_id: bytes, events: list[bytes], scope: int = SCOPE_PARTITION,
    partitions: tuple[int, ...] = (),
) -> bytes:  # fmt: skip
    """The value of a transaction record (``ValueError`` for an empty or oversized list, or
    an id that is not 16 bytes: the client checks before). ``partitions``: every partition
    of a ``SCOPE_VOTED`` transaction."""
    if len(tx_id) != 16 or not 0 < len(events) <= MAX_TX_EVENTS:
        raise ValueError(f"a transaction record of {len(events)} events, id {tx_id!r:.40}")
    parts = [MAGIC, _HEAD.pack(tx_id, scope, len(events))]
    if scope == SCOPE_VOTED:
        parts.append(_COUNT.pack(len(partitions)))
        parts += [_LEN.pack(p) for p in sorted(partitions)]
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
    if count == 0:  # more than MAX_TX_EVENTS reads, and is the fold's to reject
        raise MalformedTransactionError("a transaction record of no events")
    pos = len(MAGIC) + _HEAD.size
    partitions: tuple[int, ...] = ()
    if scope == SCOPE_VOTED:
        if pos + _COUNT.size > len(value):
            raise MalformedTransactionError("truncated before its partitions")
        (n,) = _COUNT.unpack_from(value, pos)
        pos += _COUNT.size
        if not 2 <= n <= MAX_TX_PARTITIONS or pos + n * _LEN.size > len(value):
            raise MalformedTransactionError(f"{n} partitions: 2-{MAX_TX_PARTITIONS}, in full")
        partitions = tuple(_LEN.unpack_from(value, pos + i * _LEN.size)[0] for i in range(n))
        pos += n * _LEN.size
        if list(partitions) != sorted(set(partitions)) or partitions[-1] >= 2**31:
            raise MalformedTransactionError(f"partitions {partitions[:8]} not ascending")
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
    return TxRecord(tx_id, scope, tuple(events), partitions)
