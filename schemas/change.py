"""The change stream's one model and its wire form: a ``ChangeRecord`` is any record of the
change topic — a ``ContextChange`` value, or a Kafka tombstone (null value) for a delete or an
expiry whose headers carry what the stored tombstone holds. One writer of those headers
(``tombstone_headers``, used by the processor) and one reader (``ChangeRecord.from_tombstone``,
used by the subscription, the change-topic restore and faust), so every reader applies the
same rules:

* the key is the context id, UTF-8;
* ``kind`` is ``deleted`` or ``expired``; ``event_id`` is 16 bytes, ``checksum`` 8;
* ``version``, ``wal_offset``, ``log_time_ms`` and, when present, ``expires_at_ms`` are
  decimal integers of at most 19 digits with an optional ``-`` (ranges are the caller's:
  what a stored record may hold is decided where one is built);
* nothing is defaulted, except ``log_time_ms`` where the caller says what stands in for it
  (the subscription uses the record's Kafka timestamp for tombstones written without one).

A value is decoded by ``ChangeCodec``; ``read_change_record`` reads either kind of record.
Every change with a document carries the checksum of its canonical bytes (xxh3-64, the
store's): ``check_document`` is the one check of it, done by every reader (the subscription
and so SSE, the faust codec, the change-topic restore). A tombstone's checksum is the last
document's, which it does not hold: nothing to check.

A third kind of record carries no change of a context: a **fence record** (``FenceRecord``)
holds the highest fencing token the fold has taken for one lock name in that partition, so a
store restored from the change topic refuses the same stale tokens as the store that published
it. Its key is ``FENCE_KEY_PREFIX`` (the byte 0xFF, which UTF-8 text never holds, so no context
id can be one) followed by the lock name; its value is never null (compaction keeps the
newest of each lock). Subscribers pass over these records (``is_fence_key``).
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from typing import Any

import orjson
import xxhash

from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind, ContextChange
from lukhas_context.schemas.exceptions import (
    BadFenceRecordError,
    BadTombstoneError,
    ChangeChecksumError,
)

#: Header ``kind`` of a tombstone -> the change kind.
TOMBSTONE_KINDS: Mapping[bytes, ChangeKind] = {
    b"deleted": ChangeKind.DELETE,
    b"expired": ChangeKind.EXPIRE,
}
KIND_HEADERS: Mapping[ChangeKind, bytes] = {kind: name for name, kind in TOMBSTONE_KINDS.items()}
#: A tombstone's integer header: what ``b"%d"`` writes for a 64-bit integer.
_DECIMAL = re.compile(rb"-?[0-9]{1,19}")

Headers = Mapping[str, Any] | Iterable[tuple[str, Any]] | None

#: Header of the last change of a Kafka transaction in its change partition: the commit
#: marker takes the offset after it (``processors.publisher``; ``streams.watch``).
TX_END_HEADER = "txend"
#: Header of the last change of a round published at least once (no transaction, so no
#: marker after it): where a standby copy may write (``processors.standby``).
ROUND_END_HEADER = "rend"

#: Header of every record a worker publishes on a change partition: its sequence number
#: there, counted by the fold from the partition's first change (0, 1, 2, ...), so the same
#: WAL gives the same numbers whoever folds it and however its store was restored. A
#: subscriber that finds an offset hole between two records numbered ``n`` and ``n + 1``
#: lost nothing (the hole held transaction markers or a zombie's aborted records); any other
#: hole is a gap (``streams.watch``).
SEQ_HEADER = "seq"
#: Sequence numbers are below this (a header past it is not one: kept in a signed 64-bit
#: store field with room to count on).
MAX_SEQ = 1 << 62


def seq_of(headers: Any) -> int | None:
    """The ``seq`` header of a change record (None: none, or not a decimal number)."""
    if headers:
        for name, value in headers:
            if name == SEQ_HEADER:
                if isinstance(value, bytes) and _DECIMAL.fullmatch(value):
                    n = int(value)
                    return n if 0 <= n < MAX_SEQ else None
                return None
    return None


#: The first byte of a fence record's key. 0xFF never occurs in UTF-8 text: no context id
#: (a non-empty UTF-8 string) can start with it.
FENCE_KEY_PREFIX = b"\xff"
_FENCE_MAGIC = b"LKF1"
#: token, WAL offset of the event that raised it, that event's log time.
_FENCE = struct.Struct(">qqq")


@dataclass(frozen=True, slots=True)
class FenceRecord:
    """The highest fencing token folded for ``lock`` in a partition, raised by the event at
    ``wal_offset`` (logged at ``log_time_ms``)."""

    lock: str
    token: int
    wal_offset: int
    log_time_ms: int

    @property
    def key(self) -> bytes:
        return fence_key(self.lock)

    def encode(self) -> bytes:
        return _FENCE_MAGIC + _FENCE.pack(self.token, self.wal_offset, self.log_time_ms)


def fence_key(lock: str) -> bytes:
    """The change-topic key of a lock's fence record."""
    return FENCE_KEY_PREFIX + lock.encode()


def is_fence_key(key: object) -> bool:
    """True for the key of a fence record (no context's change has such a key)."""
    return isinstance(key, bytes) and key[:1] == FENCE_KEY_PREFIX


def read_fence_record(key: bytes | None, value: bytes | None) -> FenceRecord:
    """The fence record of a change-topic record with a fence key; ``BadFenceRecordError``
    when it is not exactly what the processor writes (a lock name of UTF-8 after the prefix,
    a value of the magic and three non-negative 64-bit integers)."""
    if not is_fence_key(key):
        raise BadFenceRecordError(f"key {key!r:.60} is not a fence record's")
    assert isinstance(key, bytes)
    try:
        lock = key[1:].decode()
    except UnicodeDecodeError:
        raise BadFenceRecordError("the lock name in the key is not UTF-8") from None
    if not lock:
        raise BadFenceRecordError("a fence record without a lock name")
    if value is None or len(value) != len(_FENCE_MAGIC) + _FENCE.size:
        size = "no" if value is None else f"a {len(value)}-byte"
        raise BadFenceRecordError(f"{size} value, not a fence record's")
    if not value.startswith(_FENCE_MAGIC):
        raise BadFenceRecordError(f"value starts {value[:4]!r}, not {_FENCE_MAGIC!r}")
    token, wal_offset, log_time_ms = _FENCE.unpack_from(value, len(_FENCE_MAGIC))
    if min(token, wal_offset, log_time_ms) < 0:
        raise BadFenceRecordError(
            f"negative field in fence record of {lock!r}: token {token}, offset {wal_offset}"
        )
    return FenceRecord(lock, token, wal_offset, log_time_ms)


def tombstone_headers(
    kind: ChangeKind,
    version: int,
    wal_offset: int,
    event_id: bytes,
    checksum: bytes,
    log_time_ms: int,
    expires_at_ms: int | None,
) -> list[tuple[str, bytes]]:
    """The headers of the tombstone of a delete or an expiry. ``expires_at_ms`` is the expiry
    the removed version had (None: it had none)."""
    headers = [
        ("kind", KIND_HEADERS[kind]),
        ("version", b"%d" % version),
        ("wal_offset", b"%d" % wal_offset),
        ("event_id", event_id),
        ("checksum", checksum),
        ("log_time_ms", b"%d" % log_time_ms),
    ]
    if expires_at_ms is not None:
        headers.append(("expires_at_ms", b"%d" % expires_at_ms))
    return headers


@dataclass(frozen=True, slots=True)
class ChangeRecord:
    """One record of the change topic: a ``ContextChange``, or a tombstone with ``doc`` None.

    The fields are those of ``ContextChange``. For a tombstone ``kind`` is ``DELETE`` or
    ``EXPIRE``, ``checksum`` is the checksum of the last document, and ``expires_at_ms`` is
    the expiry of the version an ``EXPIRE`` removed (None for a ``DELETE``).
    """

    context_id: str
    version: int
    kind: ChangeKind
    doc: bytes | None
    checksum: bytes
    expires_at_ms: int | None
    wal_offset: int
    event_id: bytes
    log_time_ms: int

    @property
    def tombstone(self) -> bool:
        """True for a deletion or an expiry (a null value on the topic)."""
        return self.doc is None

    def document(self) -> Any:
        """The document as JSON (dicts, lists, ...), None for a tombstone."""
        return None if self.doc is None else orjson.loads(self.doc)

    @classmethod
    def from_change(cls, change: ContextChange) -> ChangeRecord:
        return cls(*(getattr(change, name) for name in _FIELDS))

    def to_change(self) -> ContextChange:
        """The ``ContextChange`` of a record that is not a tombstone (``ValueError`` else)."""
        if self.doc is None:
            raise ValueError(f"a tombstone ({self.kind.name}) is not a ContextChange value")
        return ContextChange(*(getattr(self, name) for name in _FIELDS))

    def headers(self) -> list[tuple[str, bytes]]:
        """The headers the processor writes on this tombstone (the inverse of
        ``from_tombstone``); ``ValueError`` if this is not a tombstone."""
        if self.doc is not None or self.kind not in KIND_HEADERS:
            raise ValueError(f"not a tombstone: {self.kind.name} with a document")
        return tombstone_headers(
            self.kind, self.version, self.wal_offset, self.event_id, self.checksum,
            self.log_time_ms, self.expires_at_ms,
        )  # fmt: skip

    @classmethod
    def from_tombstone(
        cls, key: bytes | str | None, headers: Headers, log_time_ms: int | None = None
    ) -> ChangeRecord:
        """The change a tombstone stands for: the context id is the record key, the rest comes
        from the headers (see the module doc for the rules). ``log_time_ms``: what stands in
        for a missing ``log_time_ms`` header (None: it must be there). ``BadTombstoneError``
        naming the key or header that is missing or bad."""
        found = _header_dict(headers)
        try:
            context_id = key if isinstance(key, str) else (key or b"").decode()
        except UnicodeDecodeError as exc:
            raise BadTombstoneError(f"tombstone key is not UTF-8: {key!r}") from exc
        if not context_id:
            raise BadTombstoneError("tombstone without a key (context id)")
        kind_name = _header(found, "kind")
        kind = TOMBSTONE_KINDS.get(kind_name)
        if kind is None:
            raise BadTombstoneError(
                f"tombstone header kind={kind_name!r} is not deleted/expired", "kind"
            )
        if log_time_ms is None or "log_time_ms" in found:
            log_time_ms = _int_header(found, "log_time_ms")
        expires = None if "expires_at_ms" not in found else _int_header(found, "expires_at_ms")
        return cls(
            context_id,
            _int_header(found, "version"),
            kind,
            None,
            _fixed_header(found, "checksum", 8),
            expires,
            _int_header(found, "wal_offset"),
            _fixed_header(found, "event_id", 16),
            log_time_ms,
        )


#: The fields of both, in order (the model is ``ContextChange`` with an optional document).
_FIELDS = tuple(f.name for f in fields(ContextChange))
assert tuple(f.name for f in fields(ChangeRecord)) == _FIELDS, "ChangeRecord lost a field"


def document_matches(doc: bytes, checksum: bytes) -> bool:
    """True when ``checksum`` is the xxh3-64 (big-endian) of the document bytes ``doc``."""
    return xxhash.xxh3_64_digest(doc) == checksum


def check_document(change: ContextChange) -> ContextChange:
    """``change`` if its document matches its checksum, else ``ChangeChecksumError``."""
    if not document_matches(change.doc, change.checksum):
        raise ChangeChecksumError(
            f"the document of context {change.context_id!r} version {change.version} (WAL "
            f"offset {change.wal_offset}) does not match its checksum {change.checksum.hex()}"
        )
    return change


def read_change_record(
    key: bytes | None, value: bytes | None, headers: Headers, codec: ChangeCodec
) -> ChangeRecord:
    """Any record of the change topic as a ``ChangeRecord``: a value through ``codec`` (its
    ``CodecError`` if it is not a change; ``ChangeChecksumError`` if its document does not
    match its checksum), a tombstone through ``from_tombstone``."""
    if value is None:
        return ChangeRecord.from_tombstone(key, headers)
    return ChangeRecord.from_change(check_document(codec.decode(value)))


def wal_offset_of(value: bytes | None, headers: Headers, codec: ChangeCodec) -> int:
    """The WAL offset of the event that made a change-topic record: from the headers of a
    tombstone (by the same rule as ``from_tombstone``), else from the change itself.
    ``BadTombstoneError``/``CodecError`` when the record does not say."""
    if value is None:
        return _int_header(_header_dict(headers), "wal_offset")
    return codec.decode(value).wal_offset


def _header_dict(headers: Headers) -> dict[str, Any]:
    return dict(headers.items() if isinstance(headers, Mapping) else headers or ())


def _header(headers: Mapping[str, Any], name: str) -> bytes:
    value = headers.get(name)
    if value is None:
        raise BadTombstoneError(f"tombstone without header {name!r}", name)
    if not isinstance(value, bytes | bytearray):
        raise BadTombstoneError(
            f"tombstone header {name!r} is {type(value).__name__}, not bytes", name
        )
    return bytes(value)


def _int_header(headers: Mapping[str, Any], name: str) -> int:
    raw = _header(headers, name)
    if not _DECIMAL.fullmatch(raw):
        raise BadTombstoneError(
            f"tombstone header {name}={raw[:40]!r} is not a decimal integer of 1-19 digits", name
        )
    return int(raw)


def _fixed_header(headers: Mapping[str, Any], name: str, size: int) -> bytes:
    raw = _header(headers, name)
    if len(raw) != size:
        raise BadTombstoneError(f"tombstone header {name!r} has {len(raw)} bytes, not {size}", name)
    return raw
