"""The codec: fast path == fastavro reference, golden bytes, evolution, every kind of bad bytes."""

from __future__ import annotations

import io
import random

import pytest
from fastavro import schemaless_writer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import (
    ChangeKind,
    CheckpointBarrier,
    ContextChange,
    ContextEvent,
    Delete,
    Expire,
    Fence,
    Patch,
    PatchFormat,
    Put,
    Touch,
)
from lukhas_context.schemas.exceptions import (
    BadMagicError,
    CodecError,
    IncompatibleSchemaError,
    MalformedPayloadError,
    UnknownSchemaError,
)
from lukhas_context.schemas.registry import SchemaRegistry, crc64_avro, schema_version

EVENTS = EventCodec()
CHANGES = ChangeCodec()
EID = bytes(range(16))

longs = st.integers(min_value=-(2**63), max_value=2**63 - 1)
opt_longs = st.none() | longs
text = st.text(max_size=40)
ops = st.one_of(
    st.builds(Put, st.binary(max_size=64), opt_longs),
    st.just(Delete()),
    st.builds(
        Patch,
        st.sampled_from(PatchFormat),
        st.binary(max_size=64),
        st.none() | st.binary(min_size=8, max_size=8),
        opt_longs,
        st.booleans(),
    ),
    st.builds(Touch, opt_longs),
    st.builds(Expire, longs),
    st.builds(CheckpointBarrier, text),
)
events = st.builds(
    ContextEvent,
    st.binary(min_size=16, max_size=16),
    text,
    ops,
    opt_longs,
    st.none() | st.builds(Fence, text, longs),
    st.dictionaries(text, text, max_size=3),
)
changes = st.builds(
    ContextChange,
    text,
    longs,
    st.sampled_from(ChangeKind),
    st.binary(max_size=64),
    st.binary(min_size=8, max_size=8),
    opt_longs,
    longs,
    st.binary(min_size=16, max_size=16),
    longs,
)


@given(events)
@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
def test_event_fast_path_equals_fastavro_and_round_trips(event: ContextEvent) -> None:
    data = EVENTS.encode(event)
    assert data == EVENTS.encode_reference(event)
    assert EVENTS.decode(data) == event
    assert EVENTS.decode_reference(data) == event


@given(changes)
@settings(max_examples=300)
def test_change_fast_path_equals_fastavro_and_round_trips(change: ContextChange) -> None:
    data = CHANGES.encode(change)
    assert data == CHANGES.encode_reference(change)
    assert CHANGES.decode(data) == change
    assert CHANGES.decode_reference(data) == change


# Golden vectors: these bytes are in logs that outlive the code. A change here breaks every
# WAL ever written, so it must be a new schema version instead.
GOLDEN_EVENTS = {
    "c30141beda8c9d4e344f000102030405060708090a0b0c0d0e0f0a6374782d31000e7b2261223a317d00000000": (
        ContextEvent(EID, "ctx-1", Put(b'{"a":1}'))
    ),
    "c30141beda8c9d4e344f000102030405060708090a0b0c0d0e0f0a6374782d3102020602026c0e020268027700": (
        ContextEvent(EID, "ctx-1", Delete(), 3, Fence("l", 7), {"h": "w"})
    ),
}


def test_golden_event_vectors() -> None:
    for hex_bytes, event in GOLDEN_EVENTS.items():
        data = bytes.fromhex(hex_bytes)
        assert EVENTS.decode(data) == event
        assert EVENTS.encode(event) == data


def test_golden_fingerprints() -> None:
    # CRC-64-AVRO of the canonical forms, little-endian, as they appear after C3 01.
    assert EVENTS.current.fingerprint.hex() == "41beda8c9d4e344f"
    assert CHANGES.current.fingerprint.hex() == "4f6481463e450a52"
    # Vectors of the Avro project's own schema test data: fingerprints of "int" and "null".
    assert crc64_avro(b'"int"') == 8247732601305521295
    assert crc64_avro(b'"null"') == 7195948357588979594


V2_EVENT = {
    "type": "record",
    "name": "ContextEvent",
    "namespace": "lukhas.context",
    "fields": [
        {"name": "event_id", "type": {"type": "fixed", "name": "EventId", "size": 16}},
        {"name": "context_id", "type": "string"},
        {
            "name": "op",
            "type": [
                {
                    "type": "record",
                    "name": "Put",
                    "fields": [
                        {"name": "doc", "type": "bytes"},
                        {"name": "ttl_ms", "type": ["null", "long"], "default": None},
                    ],
                },
                {"type": "record", "name": "Delete", "fields": []},
            ],
        },
        {"name": "expected_version", "type": ["null", "long"], "default": None},
        {"name": "trace_id", "type": "string", "default": ""},
    ],
}


def test_older_or_newer_writer_is_resolved_to_the_current_reader() -> None:
    """A writer schema with a field the reader lacks and without ones it has (with defaults)."""
    v2 = schema_version("ContextEvent", 2, V2_EVENT)
    codec = EventCodec(SchemaRegistry.shipped().with_version(v2))
    codec.current = EVENTS.current  # read with v1, as a not-yet-upgraded processor does
    codec.header, codec._fp = EVENTS.header, EVENTS.current.fingerprint
    record = {
        "event_id": EID,
        "context_id": "c",
        "op": ("lukhas.context.Put", {"doc": b"{}", "ttl_ms": 5}),
        "expected_version": 2,
        "trace_id": "t-1",
    }
    out = io.BytesIO()
    out.write(v2.header)
    schemaless_writer(out, v2.parsed, record)
    assert codec.decode(out.getvalue()) == ContextEvent(EID, "c", Put(b"{}", 5), 2)


def test_incompatible_writer_is_a_typed_error() -> None:
    bad = dict(V2_EVENT, fields=[{"name": "context_id", "type": "long"}])
    v_bad = schema_version("ContextEvent", 99, bad)
    codec = EventCodec(SchemaRegistry.shipped().with_version(v_bad))
    codec.current, codec.header, codec._fp = EVENTS.current, EVENTS.header, EVENTS._fp
    out = io.BytesIO()
    out.write(v_bad.header)
    schemaless_writer(out, v_bad.parsed, {"context_id": 5})
    with pytest.raises(IncompatibleSchemaError):
        codec.decode(out.getvalue())


def test_a_change_is_not_an_event() -> None:
    change = ContextChange("c", 1, ChangeKind.PUT, b"{}", bytes(8), None, 0, EID, 0)
    with pytest.raises(IncompatibleSchemaError):
        EVENTS.decode(CHANGES.encode(change))


GOOD = EVENTS.encode(ContextEvent(EID, "ctx-1", Put(b'{"a":1}', 1000), 1, None, {"k": "v"}))


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b"", BadMagicError),
        (b"\x00", BadMagicError),
        (b"\xc3\x02" + GOOD[2:], BadMagicError),
        (b"{}", BadMagicError),
        (b"\xc3\x01", MalformedPayloadError),
        (b"\xc3\x01" + b"\xff" * 8 + GOOD[10:], UnknownSchemaError),
        (GOOD[:-1], MalformedPayloadError),
        (GOOD[:20], MalformedPayloadError),
        (GOOD + b"\x00", MalformedPayloadError),
        # varint bomb: an 11-byte varint where the id's length should be
        (GOOD[:26] + b"\xff" * 10 + b"\x01", MalformedPayloadError),
        # length bomb: the id claims 2^62 bytes
        (GOOD[:26] + b"\xfe\xff\xff\xff\xff\xff\xff\xff\x7f", MalformedPayloadError),
        # negative length
        (GOOD[:26] + b"\x01" + GOOD[27:], MalformedPayloadError),
        # op union branch 9 does not exist
        (GOOD[:32] + b"\x12" + GOOD[33:], MalformedPayloadError),
        # invalid UTF-8 in the context id
        (GOOD[:27] + b"\xff" + GOOD[28:], MalformedPayloadError),
    ],
)
def test_bad_bytes_are_typed_errors(data: bytes, error: type[CodecError]) -> None:
    with pytest.raises(error):
        EVENTS.decode(data)


def _decoded_alike(data: bytes) -> ContextEvent | None:
    """Decodes ``data`` with the fast path; None when it is refused (a ``CodecError``: any
    other exception fails the test). What the fast path accepts, the reference (fastavro)
    decodes to the same event: the fast path is never more lenient, nor ever wrong."""
    try:
        event = EVENTS.decode(data)
    except CodecError:
        return None
    assert EVENTS.decode_reference(data) == event
    return event


@given(st.binary(max_size=200))
@settings(max_examples=500)
def test_decode_raises_only_codec_errors_for_any_bytes(data: bytes) -> None:
    for candidate in (data, EVENTS.header + data, GOOD[: len(data) % len(GOOD)] + data):
        _decoded_alike(candidate)


@given(st.binary(min_size=1, max_size=60), st.integers(min_value=10, max_value=60))
@settings(max_examples=300)
def test_corrupting_a_valid_event_never_raises_anything_else(noise: bytes, at: int) -> None:
    data = GOOD[:at] + noise + GOOD[at + len(noise) :]
    event = _decoded_alike(data)
    if data == GOOD:
        assert event == EVENTS.decode(GOOD)


def test_random_bodies_behind_a_valid_header() -> None:
    """Seeded, so a failure names its input: bodies of random bytes after the header, and
    random single-byte corruptions of a valid event."""
    rng = random.Random(20261202)
    accepted = 0
    for _ in range(2000):
        accepted += _decoded_alike(EVENTS.header + rng.randbytes(rng.randrange(0, 60))) is not None
    for _ in range(2000):
        at = rng.randrange(len(GOOD))
        data = GOOD[:at] + bytes([rng.randrange(256)]) + GOOD[at + 1 :]
        accepted += _decoded_alike(data) is not None
    # Some corruptions (of the id's bytes or the document's) still decode, to another event.
    assert accepted > 0
