"""The commit protocol of a transaction across partitions, in the log.

A client's transaction whose events live in several WAL partitions sends, in one Kafka
transaction, one ``SCOPE_VOTED`` transaction record to each (``schemas.txrecord``), naming
every partition; the lowest is the **coordinator**. Then, all as records of the WAL, each
decided by the fold from the log alone (``processors.round``), so every replay decides alike:

1. **prepare** — each participant folds its record: its events evaluated in order as a
   one-partition transaction would be, nothing applied. Yes when all would apply (and none of
   its contexts or fence locks is held by another prepared transaction), else no. A yes
   *holds* the record's contexts and fence locks: until the decision, any other event on
   them is a ``conflict`` ("held by transaction ..."), so the vote stays true. A part whose
   contexts or locks are held (or waited for) by an earlier transaction when it is prepared
   *waits*: it is evaluated and voted on, in prepare order, once they are free — so
   transactions one after another on the same contexts apply one after another. The state of a
   prepared transaction (``PreparedTx``) is kept in the store (column family ``txns``, in the
   round's WriteBatch and the digest) and on the change topic (``TX_STATE_PREFIX`` records),
   so every restore path has it.
2. **vote** — a participant other than the coordinator appends its vote to the coordinator's
   partition (published like a change, before the round commits: a crash sends it again,
   and the copy is a duplicate by its id, derived from the transaction and the voter).
3. **decision** — the coordinator decides once every vote is in: commit if all are yes,
   abort at the first no. Or, when its partition's log time passes the prepare's plus
   ``Limits.tx_timeout_ms`` without every vote (a participant that never answered, a
   coordinator that died meanwhile): abort. The worker appends a *tick* to the coordinator's
   partition once that time has passed by the clock, so its log time moves even when nothing
   else is written there. The decision is applied to the coordinator's own part at once and
   appended to every other participant's partition.
4. **apply** — at the decision's record, a participant applies its events (at the prepare's
   log time, so the evaluation is the one it voted on) or drops them, and releases what it
   held. The journal entry of that record says which (``applied``, ``aborted``) and the
   prepare record's outcome resolves to it (``txres`` in the store).

A transaction is seen whole by a read at or after its decision in each partition: until
then its contexts show their state before it, and a read that asks for a position at or
after a prepare record of a context it holds waits for the decision.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

import orjson
import xxhash

#: A change-topic record of a prepared transaction's state: key ``0xFE "txs" | tx id``; its
#: value ``WAL offset (8, BE) | state`` while prepared, ``WAL offset`` alone once decided.
TX_STATE_PREFIX = b"\xfetxs"
_OFFSET = struct.Struct(">q")
_LEN = struct.Struct(">I")


@dataclass(slots=True)
class PreparedTx:
    """A transaction prepared in this partition and not yet decided here."""

    tx_id: bytes
    prepare_offset: int
    log_time_ms: int
    partitions: tuple[int, ...]
    #: This partition's vote and its reason.
    yes: bool
    reason: str
    #: The transaction record's bytes (its events are applied from them at the decision).
    record: bytes
    #: Contexts and fence locks held until the decision.
    keys: list[bytes] = field(default_factory=list)
    locks: list[bytes] = field(default_factory=list)
    #: The votes received (the coordinator's own included), by partition.
    votes: dict[int, tuple[bool, str]] = field(default_factory=dict)
    #: Not evaluated yet: one of its contexts or locks was held (or waited for) by an
    #: earlier transaction when it was prepared; it is evaluated, in prepare order, once
    #: they are free. It holds nothing meanwhile.
    waiting: bool = False

    @property
    def coordinator(self) -> int:
        return self.partitions[0]

    def encode(self) -> bytes:
        head = orjson.dumps(
            {
                "o": self.prepare_offset,
                "t": self.log_time_ms,
                "p": list(self.partitions),
                "y": self.yes,
                "r": self.reason,
                "k": [k.hex() for k in self.keys],
                "l": [lock.hex() for lock in self.locks],
                "v": {str(p): [y, r] for p, (y, r) in sorted(self.votes.items())},
                "w": self.waiting,
            },
            option=orjson.OPT_SORT_KEYS,
        )
        return _LEN.pack(len(head)) + head + self.record

    @classmethod
    def decode(cls, tx_id: bytes, raw: bytes) -> PreparedTx:
        (n,) = _LEN.unpack_from(raw)
        h = orjson.loads(raw[_LEN.size : _LEN.size + n])
        return cls(
            tx_id, h["o"], h["t"], tuple(h["p"]), h["y"], h["r"], raw[_LEN.size + n :],
            [bytes.fromhex(k) for k in h["k"]], [bytes.fromhex(lock) for lock in h["l"]],
            {int(p): (bool(y), str(r)) for p, (y, r) in h["v"].items()}, bool(h["w"]),
        )  # fmt: skip


def control_id(tx_id: bytes, what: bytes, partition: int) -> bytes:
    """The event id of a vote (``what`` b"vote", the voter) or a decision (b"decision", the
    partition it goes to): derived, so a copy sent again is a duplicate of the first."""
    return xxhash.xxh3_128_digest(tx_id + what + partition.to_bytes(4, "big"))


def state_record(tx_id: bytes, wal_offset: int, state: PreparedTx | None) -> tuple[bytes, bytes]:
    """The change-topic record of a transaction's state here as of ``wal_offset`` (None:
    decided)."""
    value = _OFFSET.pack(wal_offset) + (b"" if state is None else state.encode())
    return TX_STATE_PREFIX + tx_id, value


def read_state_record(key: bytes, value: bytes | None) -> tuple[bytes, int, bytes | None]:
    """``(tx id, WAL offset, state or None)`` of a change-topic state record; ``ValueError``
    when it is not one."""
    tx_id = key[len(TX_STATE_PREFIX) :]
    if not key.startswith(TX_STATE_PREFIX) or len(tx_id) != 16:
        raise ValueError(f"key {key!r:.60} is not a transaction state's")
    if value is None or len(value) < _OFFSET.size:
        raise ValueError("a transaction state record without its WAL offset")
    (offset,) = _OFFSET.unpack_from(value)
    state = value[_OFFSET.size :] or None
    if state is not None:
        try:
            PreparedTx.decode(tx_id, state)
        except (struct.error, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"a transaction state that does not read: {exc}") from None
    return tx_id, offset, state
