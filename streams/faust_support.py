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

Errors: bytes that are not a ``ContextChange`` raise a ``CodecError`` from the codec, a change
whose document does not match its checksum raises ``ChangeChecksumError``, and a tombstone
whose headers are missing or malformed raises ``BadTombstoneError`` (both ``CodecError``s).
Inside a worker faust wraps each in ``faust.exceptions.ValueDecodeError``, **acks the record**
and raises the error in the agent's ``async for`` (the agent crashes, is logged, and its
supervisor restarts it after the record, with a back-off of up to seconds): a record that does
not decode, or does not match its checksum, is skipped by faust,
loudly, never handed over half-read.

Delivery is at least once, twice over: faust commits offsets after the agent has seen them,
and the processor publishes some changes again if it crashed between publishing and committing.
A change's identity is ``(context_id, wal_offset)``; a consumer that must see each change once
drops a change whose ``wal_offset`` is not above the highest it has seen in that partition
(``event.message.partition``), as ``lukhas watch`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import faust
from faust.exceptions import ValueDecodeError
from faust.serializers import codecs

from lukhas_context.schemas.change import ChangeRecord, check_document
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ContextChange
from lukhas_context.schemas.exceptions import BadTombstoneError, CodecError
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


def tombstone_headers(change: ChangeRecord) -> list[tuple[str, bytes]]:
    """The headers the processor writes on the tombstone of ``change`` (the inverse of
    ``ChangeRecord.from_tombstone``); ``ValueError`` if ``change`` is not a tombstone."""
    return change.headers()


@functools.cache
def _codec() -> ChangeCodec:
    return ChangeCodec()


class ChangeAvroCodec(codecs.Codec):
    """faust codec: Avro single-object bytes <-> ``ContextChange``.

    ``loads`` raises the ``CodecError`` of ``ChangeCodec.decode`` for bytes that are not one,
    and ``ChangeChecksumError`` (a ``CodecError``) for one whose document does not match its
    checksum;
    ``dumps`` takes a ``ContextChange`` (or a ``ChangeRecord`` that is not a tombstone).
    """

    def _loads(self, s: bytes) -> ContextChange:
        return check_document(_codec().decode(bytes(s)))

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
    and headers), or raw bytes (decoded here). ``CodecError`` if it is none of these,
    ``ChangeChecksumError`` if its document does not match its checksum."""
    value = event.value
    if isinstance(value, ChangeRecord):
        return value
    if isinstance(value, ContextChange):
        return ChangeRecord.from_change(check_document(value))
    if value is None:
        return ChangeRecord.from_tombstone(event.message.key, event.message.headers or ())
    if isinstance(value, bytes | bytearray):
        return ChangeRecord.from_change(check_document(_codec().decode(bytes(value))))
    raise CodecError(f"not a change topic value: {type(value).__name__}")
