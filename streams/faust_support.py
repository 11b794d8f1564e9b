"""faust-streaming support: read the change topic ``<prefix>.context.changes`` from a faust app.

Three parts:

* the **codec** ``lukhas-change`` (``CHANGE_CODEC``), registered with faust when this module is
  imported: the Avro single-object encoding of ``ContextChange``, bytes <-> ``ContextChange``.
  ``value_serializer="lukhas-change"`` on any topic gives ``ContextChange`` values. faust never
  hands a null value to a codec, so on such a topic a deletion arrives as ``event.value is
  None``; ``change_from_event(event)`` turns either into a ``ChangeRecord``.
* the **schema** ``ChangeSchema``: decodes every record of the change topic, tombstones
  included, into a ``ChangeRecord``. A tombstone (null value: a delete or an expiry) becomes a
  ``ChangeRecord`` with ``doc=None``, built from the record key and its headers (``kind``
  ``deleted``/``expired``, ``version``, ``wal_offset``, ``event_id``, ``checksum``,
  ``log_time_ms`` and, for an expiry, ``expires_at_ms``), so no change is dropped and an agent
  needs no second code path: ``async for change in stream`` yields one ``ChangeRecord`` per
  record, in partition order.
* ``change_topic(app, topics)``: declares the change topic in an app with that schema; faust
  does not create it (``internal=False``), ``lukhas up``/``ensure_topics`` did.

    app = faust.App("my-app", broker="kafka://127.0.0.1:19092")
    changes = change_topic(app, Topics("lukhas"), partitions=6)

    @app.agent(changes)
    async def handle(stream):
        async for change in stream:          # ChangeRecord, tombstones included
            if change.tombstone: ...         # change.kind is DELETE or EXPIRE, change.doc None
            else: ...                        # change.document() is the parsed JSON document

Errors: bytes that are not a ``ContextChange`` raise a ``CodecError`` from the codec, and a
tombstone whose headers are missing or malformed raises ``BadTombstoneError`` (a
``CodecError``). Inside a worker faust wraps either in ``faust.exceptions.ValueDecodeError``,
**acks the record** and raises the error in the agent's ``async for`` (the agent crashes, is
logged, and its supervisor restarts it after the record, with a back-off of up to seconds): a
record that does not decode is skipped by faust, loudly, never handed over half-read.

Delivery is at least once, twice over: faust commits offsets after the agent has seen them,
and the processor publishes some changes again if it crashed between publishing and committing.
A change's identity is ``(context_id, wal_offset)``; a consumer that must see each change once
drops a change whose ``wal_offset`` is not above the highest it has seen in that partition
(``event.message.partition``), as ``lukhas watch`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import faust
import orjson
from faust.exceptions import ValueDecodeError
from faust.serializers import codecs

from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind, ContextChange
from lukhas_context.schemas.exceptions import CodecError
from lukhas_context.schemas.tombstone import KIND_HEADERS, TOMBSTONE_KINDS
from lukhas_context.schemas.tombstone import tombstone_headers as _tombstone_headers
from lukhas_context.streams.topics import Topics

__all__ = [
    "CHANGE_CODEC",
    "BadTombstoneError",
    "ChangeAvroCodec",
    "ChangeRecord",
    "ChangeSchema",
    "change_from_event",
    "change_topic",
    "register_codec",
    "tombstone_headers",
]

#: The faust codec name: ``value_serializer="lukhas-change"``.
CHANGE_CODEC = "lukhas-change"


class BadTombstoneError(CodecError):
    """A tombstone (null value) on the change topic lacks a header or has a malformed one."""


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
        return cls(
            change.context_id,
            change.version,
            change.kind,
            change.doc,
            change.checksum,
            change.expires_at_ms,
            change.wal_offset,
            change.event_id,
            change.log_time_ms,
        )

    def to_change(self) -> ContextChange:
        """The ``ContextChange`` of a record that is not a tombstone (``ValueError`` else)."""
        if self.doc is None:
            raise ValueError(f"a tombstone ({self.kind.name}) is not a ContextChange value")
        return ContextChange(
            self.context_id,
            self.version,
            self.kind,
            self.doc,
            self.checksum,
            self.expires_at_ms,
            self.wal_offset,
            self.event_id,
            self.log_time_ms,
        )

    @classmethod
    def from_tombstone(
        cls, key: bytes | str | None, headers: Mapping[str, bytes] | Iterable[tuple[str, bytes]]
    ) -> ChangeRecord:
        """The change a tombstone stands for: the context id is the record key, the rest comes
        from the headers. ``BadTombstoneError`` if the key or a header is missing or bad."""
        found = dict(headers.items() if isinstance(headers, Mapping) else headers)
        try:
            context_id = key if isinstance(key, str) else (key or b"").decode()
        except UnicodeDecodeError as exc:
            raise BadTombstoneError(f"tombstone key is not UTF-8: {key!r}") from exc
        if not context_id:
            raise BadTombstoneError("tombstone without a key (context id)")
        kind_name = _header(found, "kind")
        kind = TOMBSTONE_KINDS.get(kind_name)
        if kind is None:
            raise BadTombstoneError(f"tombstone header kind={kind_name!r} is not deleted/expired")
        expires = found.get("expires_at_ms")
        return cls(
            context_id,
            _int_header(found, "version"),
            kind,
            None,
            _fixed_header(found, "checksum", 8),
            None if expires is None else _int_header(found, "expires_at_ms"),
            _int_header(found, "wal_offset"),
            _fixed_header(found, "event_id", 16),
            _int_header(found, "log_time_ms"),
        )


def tombstone_headers(change: ChangeRecord) -> list[tuple[str, bytes]]:
    """The headers the processor writes on the tombstone of ``change`` (the inverse of
    ``ChangeRecord.from_tombstone``); ``ValueError`` if ``change`` is not a tombstone."""
    if change.doc is not None or change.kind not in KIND_HEADERS:
        raise ValueError(f"not a tombstone: {change.kind.name} with a document")
    return _tombstone_headers(
        change.kind, change.version, change.wal_offset, change.event_id, change.checksum,
        change.log_time_ms, change.expires_at_ms,
    )  # fmt: skip


def _header(headers: Mapping[str, Any], name: str) -> bytes:
    value = headers.get(name)
    if value is None:
        raise BadTombstoneError(f"tombstone without header {name!r}")
    if not isinstance(value, bytes | bytearray):
        raise BadTombstoneError(f"tombstone header {name!r} is {type(value).__name__}, not bytes")
    return bytes(value)


def _int_header(headers: Mapping[str, Any], name: str) -> int:
    raw = _header(headers, name)
    if not (raw.isdigit() or (raw[:1] == b"-" and raw[1:].isdigit())):
        raise BadTombstoneError(f"tombstone header {name}={raw!r} is not a decimal integer")
    return int(raw)


def _fixed_header(headers: Mapping[str, Any], name: str, size: int) -> bytes:
    raw = _header(headers, name)
    if len(raw) != size:
        raise BadTombstoneError(f"tombstone header {name!r} has {len(raw)} bytes, not {size}")
    return raw


@functools.cache
def _codec() -> ChangeCodec:
    return ChangeCodec()


class ChangeAvroCodec(codecs.Codec):
    """faust codec: Avro single-object bytes <-> ``ContextChange``.

    ``loads`` raises the ``CodecError`` of ``ChangeCodec.decode`` for bytes that are not one;
    ``dumps`` takes a ``ContextChange`` (or a ``ChangeRecord`` that is not a tombstone).
    """

    def _loads(self, s: bytes) -> ContextChange:
        return _codec().decode(bytes(s))

    def _dumps(self, s: Any) -> bytes:
        if isinstance(s, ChangeRecord):
            s = s.to_change()
        if not isinstance(s, ContextChange):
            raise TypeError(f"{CHANGE_CODEC} encodes ContextChange, not {type(s).__name__}")
        return _codec().encode(s)


def register_codec() -> None:
    """Registers ``CHANGE_CODEC`` with faust (done on import; calling it again is harmless)."""
    codecs.register(CHANGE_CODEC, ChangeAvroCodec())


register_codec()


class ChangeSchema(faust.Schema[str, ChangeRecord]):
    """Key: the context id (``str``). Value: a ``ChangeRecord`` for every record, tombstones
    included (``doc`` None, fields from the headers).

    A null value never reaches faust's ``allow_empty`` shortcut (it stays False), so it comes
    to ``loads_value`` with its message, which is where the headers are.
    """

    def __init__(self) -> None:
        super().__init__(
            key_type=str, key_serializer="raw", value_serializer=CHANGE_CODEC, allow_empty=False
        )

    def loads_value(
        self, app: Any, message: Any, *, loads: Any = None, serializer: Any = None
    ) -> ChangeRecord:
        if message.value is None:
            try:
                return ChangeRecord.from_tombstone(message.key, message.headers or ())
            except BadTombstoneError as exc:
                raise ValueDecodeError(str(exc)) from exc
        value: Any = super().loads_value(app, message, loads=loads, serializer=serializer)
        if isinstance(value, ChangeRecord):
            return value
        if not isinstance(value, ContextChange):
            # Another value_serializer was forced on this schema's topic.
            raise ValueDecodeError(f"change topic value decoded to {type(value).__name__}")
        return ChangeRecord.from_change(value)

    def dumps_value(
        self, app: Any, value: Any, *, serializer: Any = None, headers: Any
    ) -> tuple[Any, Any]:
        """A ``ChangeRecord`` tombstone is sent as the processor sends it: a null value with
        the tombstone headers. Everything else goes through the codec."""
        if isinstance(value, ChangeRecord) and value.tombstone:
            out = list(headers.items()) if isinstance(headers, Mapping) else list(headers or ())
            return None, out + tombstone_headers(value)
        return super().dumps_value(app, value, serializer=serializer, headers=headers)


def change_topic(
    app: faust.App,
    topics: Topics | None = None,
    *,
    partitions: int | None = None,
    **options: Any,
) -> faust.TopicT:
    """Declares ``topics.changes`` (default prefix ``lukhas``) in ``app`` with ``ChangeSchema``.

    ``partitions``: the topic's partition count (the WAL's; 6 by default for ``lukhas up``).
    faust uses it only for topics it derives from this one (``group_by``) and never creates
    or alters the change topic (``internal=False``); None leaves faust's default for those.
    ``options`` go to ``app.topic`` (e.g. ``acks``, ``maxsize``).
    """
    topics = topics or Topics()
    return app.topic(
        topics.changes,
        schema=ChangeSchema(),
        partitions=partitions,
        internal=False,
        **options,
    )


def change_from_event(event: Any) -> ChangeRecord:
    """The ``ChangeRecord`` of a faust event of the change topic, whatever schema the topic
    was declared with: ``ChangeSchema`` (the value already is one), ``value_serializer=
    "lukhas-change"`` (a ``ContextChange``, or None for a tombstone: built from the event's key
    and headers), or raw bytes (decoded here). ``CodecError`` if it is none of these."""
    value = event.value
    if isinstance(value, ChangeRecord):
        return value
    if isinstance(value, ContextChange):
        return ChangeRecord.from_change(value)
    if value is None:
        return ChangeRecord.from_tombstone(event.message.key, event.message.headers or ())
    if isinstance(value, bytes | bytearray):
        return ChangeRecord.from_change(_codec().decode(bytes(value)))
    raise CodecError(f"not a change topic value: {type(value).__name__}")
