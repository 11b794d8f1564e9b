"""The faust codec and schema without a broker: bytes <-> change, tombstones, typed errors."""

from __future__ import annotations

import dataclasses
from typing import Any

import faust
import pytest
from faust.exceptions import ValueDecodeError
from faust.serializers import codecs
from faust.types.tuples import Message

from lukhas_context.processors.fold import checksum
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind, ContextChange
from lukhas_context.schemas.exceptions import (
    BadMagicError,
    ChangeChecksumError,
    CodecError,
    MalformedPayloadError,
)
from lukhas_context.streams.faust_support import (
    CHANGE_CODEC,
    BadTombstoneError,
    ChangeRecord,
    ChangeSchema,
    change_from_event,
    change_topic,
    tombstone_headers,
)
from lukhas_context.streams.topics import Topics

CHANGE = ContextChange(
    "ctx/ü", 7, ChangeKind.PATCH, b'{"a":1}', checksum(b'{"a":1}'), 1_700_000_000_000, 42,
    bytes(range(16)), 1_690_000_000_000,
)  # fmt: skip
#: The same change with another document under the first one's checksum: forged or corrupted.
FORGED = dataclasses.replace(CHANGE, doc=b'{"a":2}')
DELETED = ChangeRecord(
    "ctx/ü", 8, ChangeKind.DELETE, None, bytes(range(8)), None, 43, bytes(range(16, 32)), 5
)
EXPIRED = ChangeRecord(
    "ctx", 3, ChangeKind.EXPIRE, None, b"\xff" * 8, 1_000, 9, b"\x01" * 16, 1_001
)
TOPIC = "p.context.changes"


def message(key: bytes | None, value: bytes | None, headers: Any = ()) -> Message:
    return Message(TOPIC, 1, 10, 0.0, 0, list(headers), key, value, None)


@pytest.fixture(scope="module")
def app() -> faust.App:
    return faust.App("unit-faust-support", broker="kafka://127.0.0.1:1")


def test_codec_is_registered_and_round_trips_bytes() -> None:
    data = ChangeCodec().encode(CHANGE)
    assert codecs.dumps(CHANGE_CODEC, CHANGE) == data
    assert codecs.loads(CHANGE_CODEC, data) == CHANGE
    record = ChangeRecord.from_change(CHANGE)
    assert codecs.dumps(CHANGE_CODEC, record) == data  # a non-tombstone record encodes too
    assert record.to_change() == CHANGE
    assert record.document() == {"a": 1} and not record.tombstone


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", BadMagicError),
        (b"not avro at all", BadMagicError),
        (ChangeCodec().encode(CHANGE)[:-3], MalformedPayloadError),
        (ChangeCodec().encode(CHANGE) + b"\x00", MalformedPayloadError),
    ],
)
def test_bad_bytes_give_a_codec_error(data: bytes, error: type[CodecError]) -> None:
    with pytest.raises(error):
        codecs.loads(CHANGE_CODEC, data)


def test_a_change_whose_document_does_not_match_its_checksum_is_refused(app: faust.App) -> None:
    """By the codec, the schema (faust then acks it and raises in the agent, as for any
    record that does not decode) and ``change_from_event``, whatever the topic's schema."""
    data = ChangeCodec().encode(FORGED)
    with pytest.raises(ChangeChecksumError, match="does not match its checksum"):
        codecs.loads(CHANGE_CODEC, data)
    with pytest.raises(ValueDecodeError, match="does not match its checksum"):
        ChangeSchema().loads_value(app, message(b"ctx/\xc3\xbc", data))
    for value in (data, FORGED):
        event = type("Event", (), {"value": value, "message": message(b"k", None)})()
        with pytest.raises(ChangeChecksumError):
            change_from_event(event)


def test_codec_refuses_what_is_not_a_change() -> None:
    with pytest.raises(TypeError):
        codecs.dumps(CHANGE_CODEC, {"context_id": "x"})
    with pytest.raises(ValueError, match="tombstone"):
        codecs.dumps(CHANGE_CODEC, DELETED)


@pytest.mark.parametrize("tombstone", [DELETED, EXPIRED])
def test_tombstone_headers_round_trip(tombstone: ChangeRecord) -> None:
    headers = tombstone_headers(tombstone)
    assert dict(headers)["kind"] == (
        b"deleted" if tombstone.kind is ChangeKind.DELETE else b"expired"
    )
    assert ChangeRecord.from_tombstone(tombstone.context_id.encode(), headers) == tombstone
    assert ChangeRecord.from_tombstone(tombstone.context_id, dict(headers)) == tombstone
    assert tombstone.tombstone and tombstone.document() is None
    with pytest.raises(ValueError):
        tombstone.to_change()


def test_processor_tombstone_headers_decode() -> None:
    """The headers exactly as ``PartitionFolder._fold_one`` writes them."""
    headers = [
        ("kind", b"expired"), ("version", b"12"), ("wal_offset", b"345"),
        ("event_id", b"\x07" * 16), ("checksum", b"\x08" * 8), ("log_time_ms", b"1700"),
        ("expires_at_ms", b"1699"),
    ]  # fmt: skip
    assert ChangeRecord.from_tombstone(b"k", headers) == ChangeRecord(
        "k", 12, ChangeKind.EXPIRE, None, b"\x08" * 8, 1699, 345, b"\x07" * 16, 1700
    )


@pytest.mark.parametrize(
    ("key", "change", "match"),
    [
        (b"k", {"kind": None}, "without header 'kind'"),
        (b"k", {"kind": b"put"}, "not deleted/expired"),
        (b"k", {"version": b"x1"}, "not a decimal"),
        (b"k", {"wal_offset": None}, "without header 'wal_offset'"),
        (b"k", {"event_id": b"short"}, "has 5 bytes, not 16"),
        (b"k", {"checksum": b"\x00" * 9}, "has 9 bytes, not 8"),
        (b"k", {"log_time_ms": "12"}, "not bytes"),
        (None, {}, "without a key"),
        (b"\xff\xfe", {}, "not UTF-8"),
    ],
)
def test_bad_tombstones_give_a_typed_error(
    key: bytes | None, change: dict[str, Any], match: str
) -> None:
    headers: dict[str, Any] = dict(tombstone_headers(DELETED))
    for name, value in change.items():
        if value is None:
            del headers[name]
        else:
            headers[name] = value
    with pytest.raises(BadTombstoneError, match=match) as info:
        ChangeRecord.from_tombstone(key, headers)
    assert isinstance(info.value, CodecError)


async def test_schema_decodes_values_and_tombstones_to_records(app: faust.App) -> None:
    topic = change_topic(app, Topics("p"), partitions=3)
    assert (topic.get_topic_name(), topic.partitions, topic.internal) == (TOPIC, 3, False)
    assert isinstance(topic.schema, ChangeSchema)

    live = await topic.decode(message(b"ctx/\xc3\xbc", ChangeCodec().encode(CHANGE)))
    assert live.key == "ctx/ü"
    assert live.value == ChangeRecord.from_change(CHANGE)
    assert change_from_event(live) == live.value

    gone = await topic.decode(message(b"ctx/\xc3\xbc", None, tombstone_headers(DELETED)))
    assert gone.key == "ctx/ü" and gone.value == DELETED  # not dropped, not None
    assert change_from_event(gone) == DELETED


@pytest.mark.parametrize(
    ("value", "headers"),
    [(b"\xc3\x01 garbage", []), (None, [("kind", b"deleted")])],
)
async def test_schema_turns_bad_records_into_value_decode_errors(
    app: faust.App, value: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    topic = change_topic(app, Topics("p"))
    with pytest.raises(ValueDecodeError) as info:
        await topic.decode(message(b"k", value, headers), propagate=True)
    assert isinstance(info.value.__cause__, CodecError)


async def test_plain_serializer_topic_sees_tombstones_as_none(app: faust.App) -> None:
    """``value_serializer="lukhas-change"`` alone: faust hands a tombstone over as None;
    ``change_from_event`` builds the record from the key and headers."""
    topic = app.topic(TOPIC, key_type=str, value_serializer=CHANGE_CODEC)
    live = await topic.decode(message(b"ctx/\xc3\xbc", ChangeCodec().encode(CHANGE)))
    assert live.value == CHANGE
    assert change_from_event(live) == ChangeRecord.from_change(CHANGE)
    gone = await topic.decode(message(b"ctx/\xc3\xbc", None, tombstone_headers(DELETED)))
    assert gone.value is None
    assert change_from_event(gone) == DELETED


def test_schema_sends_tombstones_as_null_values_with_headers(app: faust.App) -> None:
    schema = ChangeSchema()
    value, headers = schema.dumps_value(app, DELETED, headers={"trace": b"1"})
    assert value is None
    assert headers == [("trace", b"1"), *tombstone_headers(DELETED)]
    value, headers = schema.dumps_value(app, ChangeRecord.from_change(CHANGE), headers=[])
    assert value == ChangeCodec().encode(CHANGE) and headers == []
