"""``streams.deadletters``' pure part: a dead letter's line and its decoded detail, whatever
its bytes, key and headers (a hostile record never makes them fail), and the filters."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import ContextEvent, Patch, PatchFormat, Put
from lukhas_context.streams.deadletters import Filters, letter_detail, letter_line


@dataclass
class Record:
    value: bytes | None
    key: bytes | None
    headers: tuple[tuple[str, bytes], ...] = ()
    partition: int = 2
    offset: int = 7
    timestamp: int = 1_780_000_000_000


HEADERS = (
    ("error.class", b"UnknownSchemaError"),
    ("error.message", b"no writer schema 0x1234"),
    ("source.partition", b"2"),
    ("source.offset", b"41"),
)


def test_a_garbage_letter_is_listed_and_shown_with_why_it_does_not_decode() -> None:
    m = Record(b"\x00junk", b"junk:1", HEADERS)
    line = letter_line(m)
    assert line == {
        "position": "2:7",
        "log_time": "2026-05-28T20:26:40.000Z",
        "reason": "UnknownSchemaError: no writer schema 0x1234",
        "source": "2:41",
        "context_id": "junk:1",
        "event": "does not decode (BadMagicError)",
    }
    detail = letter_detail(m)
    assert detail["headers"]["source.offset"] == "41"
    assert detail["value_bytes"] == 5 and detail["value_head"] == "006a756e6b"
    assert detail["undecodable"].startswith("BadMagicError: ")
    assert "decoded" not in detail


def test_an_event_that_decodes_is_shown_whole() -> None:
    codec = EventCodec()
    event_id = uuid.uuid4().bytes
    put = ContextEvent(event_id, "c:1", Put(b'{"a": "<script>"}', 5000), expected_version=3,
                       metadata={"by": "me"})  # fmt: skip
    detail = letter_detail(Record(codec.encode(put), b"other", HEADERS))
    assert detail["event_id"] == event_id.hex() and detail["kind"] == "put"
    assert detail["decoded"] == {
        "event_id": event_id.hex(), "context_id": "c:1", "kind": "put", "if_version": 3,
        "doc": {"a": "<script>"}, "ttl_ms": 5000, "metadata": {"by": "me"},
    }  # fmt: skip
    patch = ContextEvent(event_id, "c:1", Patch(PatchFormat.JSON_PATCH, b"not json"))
    decoded = letter_detail(Record(codec.encode(patch), b"c:1"))["decoded"]
    assert decoded["patch"] == "not json" and decoded["patch_format"] == "json_patch"


def test_a_document_nested_too_deep_to_write_back_is_shown_as_text() -> None:
    deep = b"[" * 1000 + b"]" * 1000  # JSON, but deeper than any answer may nest
    event = ContextEvent(uuid.uuid4().bytes, "c:1", Put(deep))
    decoded = letter_detail(Record(EventCodec().encode(event), b"c:1"))["decoded"]
    assert decoded["doc"] == deep.decode()
    json.dumps(decoded)  # what the API's answer does with it


def test_a_record_without_value_key_or_headers_still_has_a_line() -> None:
    line = letter_line(Record(None, None))
    assert line["reason"] == "?: " and line["source"] == "?:?" and line["context_id"] is None
    assert line["event"] == "does not decode (ValueError)"
    assert letter_detail(Record(None, None))["value_bytes"] == 0


@settings(max_examples=300, deadline=None)
@given(
    value=st.one_of(st.none(), st.binary(max_size=300)),
    key=st.one_of(st.none(), st.binary(max_size=40)),
    headers=st.lists(st.tuples(st.text(max_size=20), st.binary(max_size=40)), max_size=6),
)
def test_any_bytes_key_and_headers_give_a_line_and_a_detail(
    value: bytes | None, key: bytes | None, headers: list[tuple[str, bytes]]
) -> None:
    m = Record(value, key, tuple(headers))
    line = letter_line(m)
    detail = letter_detail(m)
    assert detail["position"] == line["position"] == "2:7"
    assert ("decoded" in detail) != ("undecodable" in detail)


@pytest.mark.parametrize(
    ("f", "kept"),
    [
        (Filters(), True),
        (Filters(reason="unknownschema"), True),
        (Filters(reason="BadMagic"), False),
        (Filters(context_id="c:1"), True),
        (Filters(context_id="c:2"), False),
    ],
)
def test_filters(f: Filters, kept: bool) -> None:
    assert f.keep({"reason": "UnknownSchemaError: x", "context_id": "c:1"}) is kept
