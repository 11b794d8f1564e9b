"""One tombstone rule (issue 10): the change-topic restore (``check_change_record``), faust
and the subscription (``ChangeRecord.from_tombstone``) and the coverage scan
(``wal_offset_of``) accept and refuse the same tombstones, whatever the headers hold."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lukhas_context.processors.change_record import check_change_record
from lukhas_context.processors.exceptions import UnusableChangeError
from lukhas_context.schemas.change import ChangeRecord, tombstone_headers, wal_offset_of
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind
from lukhas_context.schemas.exceptions import BadTombstoneError

CODEC = ChangeCodec()
NAMES = ["kind", "version", "wal_offset", "event_id", "checksum", "log_time_ms", "expires_at_ms"]
VALUES = (
    st.none()  # drop the header
    | st.binary(max_size=24)
    | st.sampled_from([b"deleted", b"expired", b"0", b"1", b"-1", b"9" * 19, b"9" * 20, b" 7"])
    | st.text(max_size=4)
)


def _valid() -> dict[str, Any]:
    return dict(tombstone_headers(ChangeKind.EXPIRE, 3, 7, b"\x01" * 16, b"\x02" * 8, 1700, 1699))


@given(st.dictionaries(st.sampled_from(NAMES), VALUES, max_size=3))
def test_every_reader_applies_the_one_rule(changes: dict[str, Any]) -> None:
    headers = _valid()
    for name, value in changes.items():
        if value is None:
            headers.pop(name, None)
        else:
            headers[name] = value
    try:
        read = ChangeRecord.from_tombstone(b"ctx", headers)
    except BadTombstoneError as exc:
        read, why = None, exc
    try:
        checked = check_change_record(b"ctx", None, list(headers.items()), CODEC)
    except UnusableChangeError as exc:
        checked, refused = None, str(exc)
    if read is None:
        assert checked is None and why.header is not None
        assert f"header {why.header}" in refused  # the restore names the same header
    else:
        record = checked.record if checked is not None else None
        if record is not None:  # the restore builds a stored record from the same fields
            assert (record.version, record.offset, record.log_time_ms) == (
                read.version, read.wal_offset, read.log_time_ms,
            )  # fmt: skip
            assert (record.checksum, checked.event_id) == (read.checksum, read.event_id)
        else:  # it refused only what a stored record cannot hold: a range
            assert "out of range" in refused, refused
    # The coverage scan reads the WAL offset by the same rule.
    try:
        offset = wal_offset_of(None, headers, CODEC)
    except BadTombstoneError:
        offset = None
    if read is not None:
        assert offset == read.wal_offset


def test_a_missing_log_time_is_filled_only_where_the_caller_says() -> None:
    headers = _valid()
    del headers["log_time_ms"]
    assert ChangeRecord.from_tombstone(b"ctx", headers, log_time_ms=5).log_time_ms == 5
    try:
        ChangeRecord.from_tombstone(b"ctx", headers)
    except BadTombstoneError as exc:
        assert exc.header == "log_time_ms"
    else:
        raise AssertionError("a tombstone without log_time_ms was read without a stand-in")
