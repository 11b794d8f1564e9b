"""``check_change_record``: what a change-topic record must be before the coverage or a
restore takes it (issue 9, item 5). Every refusal is an ``UnusableChangeError``, never
another exception, whatever the bytes."""

from __future__ import annotations

import uuid

import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from lukhas_context.processors.change_record import (
    INT64_MAX,
    CheckedChange,
    TxStateRecord,
    check_change_record,
    read_change_topic_record,
)
from lukhas_context.processors.exceptions import UnusableChangeError
from lukhas_context.processors.twophase import TX_STATE_PREFIX, state_record
from lukhas_context.schemas.change import FenceRecord, fence_key, tombstone_headers
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind
from lukhas_context.state.record import ContextRecord

codec = ChangeCodec()
DOC = b'{"a":1}'
EVENT_ID = uuid.UUID(int=7).bytes
TX_ID = uuid.UUID(int=9).bytes


def change(
    key: bytes = b"ctx",
    version: int = 3,
    kind: ChangeKind = ChangeKind.PUT,
    doc: bytes = DOC,
    checksum: bytes | None = None,
    expires: int | None = None,
    offset: int = 41,
    log_time: int = 1_700_000_000_000,
) -> bytes:
    check = xxhash.xxh3_64_digest(doc) if checksum is None else checksum
    return codec.encode_fields(key, version, kind, doc, check, expires, offset, EVENT_ID, log_time)


def tombstone(**override: bytes) -> list[tuple[str, bytes]]:
    headers = dict(
        tombstone_headers(ChangeKind.DELETE, 4, 41, EVENT_ID, bytes(8), 1_700_000_000_000, None)
    )
    headers.update(override)
    return [(k, v) for k, v in headers.items() if v != b"<drop>"]


def test_a_change_is_its_stored_record() -> None:
    got = check_change_record(b"ctx", change(expires=99), [], codec, wal_end=42)
    assert got.key == b"ctx" and got.event_id == EVENT_ID
    assert got.record == ContextRecord(
        3, DOC, xxhash.xxh3_64_digest(DOC), 99, 41, 1_700_000_000_000
    )


def test_a_tombstone_is_its_stored_record() -> None:
    got = check_change_record(b"ctx", None, tombstone(), codec, wal_end=42)
    assert got.record == ContextRecord(4, None, bytes(8), None, 41, 1_700_000_000_000)
    assert got.event_id == EVENT_ID


def test_without_a_wal_end_the_offset_is_left_to_the_caller() -> None:
    assert check_change_record(b"ctx", change(offset=10**15), [], codec).record.offset == 10**15


@pytest.mark.parametrize(
    ("key", "value", "headers", "why"),
    [
        (b"ctx", b"", [], "does not decode"),
        (b"ctx", b"\x00\x01garbage", [], "does not decode"),
        (b"ctx", b"\xc3\x01" + bytes(8) + b"x", [], "does not decode"),
        (b"ctx", change()[:-3], [], "does not decode"),
        (b"ctx", change() + b"\x00", [], "does not decode"),
        (None, change(), [], "key"),
        (b"", change(key=b""), [], "key"),
        (b"x" * 257, change(key=b"x" * 257), [], "key"),
        (b"\xff", change(key=b"\xff"), [], "UTF-8"),
        (b"other", change(), [], "payload's context id"),
        (b"ctx", change(kind=ChangeKind.DELETE), [], "DELETE change with a document"),
        (b"ctx", change(checksum=bytes(8)), [], "does not match its checksum"),
        (b"ctx", change(version=0), [], "version 0"),
        (b"ctx", change(version=-5), [], "version -5"),
        (b"ctx", change(offset=-1), [], "WAL offset -1"),
        (b"ctx", change(offset=42), [], "past the WAL's end 42"),
        (b"ctx", change(offset=2**62), [], "past the WAL's end"),
        (b"ctx", change(log_time=-1), [], "log time"),
        (b"ctx", change(expires=-1), [], "expiry"),
        (b"ctx", None, [], "header kind"),
        (b"ctx", None, None, "header kind"),
        (b"ctx", None, tombstone(kind=b"vanished"), "header kind"),
        (b"ctx", None, tombstone(event_id=b"short"), "event_id"),
        (b"ctx", None, tombstone(checksum=b"<drop>"), "checksum"),
        (b"ctx", None, tombstone(version=b"99999999999999999999999"), "header version"),
        (b"ctx", None, tombstone(version=b"1_0"), "header version"),
        (b"ctx", None, tombstone(version=b" 1"), "header version"),
        (b"ctx", None, tombstone(version=b"<drop>"), "header version"),
        (b"ctx", None, tombstone(version=b"0"), "version 0"),
        (b"ctx", None, tombstone(wal_offset=b"-5"), "WAL offset -5"),
        (b"ctx", None, tombstone(wal_offset=b"42"), "past the WAL's end 42"),
        (b"ctx", None, tombstone(log_time_ms=b"nan"), "header log_time_ms"),
        (b"ctx", None, tombstone(expires_at_ms=b"soon"), "header expires_at_ms"),
        (b"ctx", None, tombstone(log_time_ms=b"9999999999999999999"), "log time"),
    ],
)
def test_what_cannot_be_a_change_is_refused_with_the_reason(
    key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]] | None, why: str
) -> None:
    with pytest.raises(UnusableChangeError, match=why.replace("(", r"\(")):
        check_change_record(key, value, headers, codec, wal_end=42)


@given(st.binary(max_size=200), st.binary(min_size=1, max_size=20), st.integers(0, 2**64))
def test_any_bytes_are_a_change_or_refused(value: bytes, key: bytes, wal_end: int) -> None:
    try:
        got = check_change_record(key, value, [], codec, wal_end)
    except UnusableChangeError:
        return
    assert 0 <= got.record.offset < wal_end and 1 <= got.record.version <= INT64_MAX


@given(
    st.dictionaries(
        st.sampled_from(["kind", "version", "wal_offset", "event_id", "checksum",
                         "log_time_ms", "expires_at_ms", "other"]),
        st.binary(max_size=24),
    )
)  # fmt: skip
def test_any_tombstone_headers_are_a_tombstone_or_refused(headers: dict[str, bytes]) -> None:
    try:
        got = check_change_record(b"ctx", None, list(headers.items()), codec, 2**63)
    except UnusableChangeError:
        return
    assert got.record.doc is None and len(got.record.checksum) == 8 and len(got.event_id) == 16


# ---- read_change_topic_record: what the restore and standby copies read ----


def test_each_kind_of_change_topic_record_is_told_apart() -> None:
    fence = FenceRecord("agent:7", 12, 40, 1_700_000_000_000)
    assert read_change_topic_record(fence.key, fence.encode(), [], codec) == fence
    key, value = state_record(TX_ID, 39, None)
    assert read_change_topic_record(key, value, [], codec) == TxStateRecord(TX_ID, 39, None)
    got = read_change_topic_record(b"ctx", change(), [], codec, position=5)
    assert isinstance(got, CheckedChange) and got.position == 5 and got.record.offset == 41


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        (TX_STATE_PREFIX + b"short", bytes(8), "not a transaction state"),
        (TX_STATE_PREFIX + TX_ID, b"\x00", "without its WAL offset"),
        (TX_STATE_PREFIX + TX_ID, bytes(8) + b"\xff" * 9, "does not read"),
        (fence_key("agent:7"), b"not a fence", "not a fence record's"),
        (fence_key("agent:7"), None, "no value"),
        (b"ctx", b"\x00garbage", "does not decode"),
    ],
)
def test_a_forged_record_of_any_kind_is_unusable(key: bytes, value: bytes | None, why: str) -> None:
    """One error type whatever the kind: the restore refuses the topic on it, a standby
    passes over the record."""
    with pytest.raises(UnusableChangeError, match=why):
        read_change_topic_record(key, value, [], codec)


@given(st.binary(max_size=40), st.binary(max_size=120))
def test_any_bytes_under_a_reserved_prefix_are_read_or_refused(tail: bytes, value: bytes) -> None:
    """Read as the kind its prefix names, or refused: never another exception."""
    for prefix, kind in ((TX_STATE_PREFIX, TxStateRecord), (fence_key(""), FenceRecord)):
        try:
            got = read_change_topic_record(prefix + tail, value, [], codec)
        except UnusableChangeError:
            continue
        assert isinstance(got, kind), (prefix, got)
