"""The change-stream watcher without a broker: resume tokens, ``parse_start``, the record logic
of ``Watcher._take`` driven with fake records, and the native change decoder against the codec."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukhas_context.processors.fold import checksum as doc_checksum
from lukhas_context.schemas import binary as b
from lukhas_context.schemas.change import (
    TX_END_HEADER,
    FenceRecord,
    document_matches,
    fence_key,
)
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import ChangeKind, ContextChange
from lukhas_context.schemas.exceptions import CodecError
from lukhas_context.schemas.patch import apply_json_patch
from lukhas_context.streams.changes import (
    TOKEN_PREFIX,
    Change,
    Gap,
    ResumeToken,
    Start,
    parse_start,
)
from lukhas_context.streams.exceptions import (
    ChangeGapError,
    CorruptChangeError,
    InvalidResumeTokenError,
    ValidationError,
)
from lukhas_context.streams.topics import Topics
from lukhas_context.streams.watch import Watcher, aborted_only

TOPICS = Topics("unit")
TOPIC = TOPICS.changes
CODEC = ChangeCodec()
HEADER = CODEC.header
EVENT_HEADER = EventCodec().header
#: A tombstone's checksum (of a document it does not hold: not checked).
CHECKSUM = bytes(range(8))
EVENT_ID = bytes(range(16, 32))

LONG_MAX = 2**63 - 1
longs = st.integers(min_value=-(2**63), max_value=LONG_MAX)
# Any Unicode text but lone surrogates (which have no UTF-8 form).
unicode_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)

read_change: Any
try:  # the native decoder, when the extension is built (and not switched off)
    from lukhas_context.schemas._fastchange import read_change
except ImportError:
    read_change = None
#: The native decoder's tests; the pure-Python path runs without them (tests/conftest.py).
native = pytest.mark.skipif(read_change is None, reason="the native extension is not built")


# ---- fake records and watcher state ----


@dataclass
class Msg:
    """What ``_take`` reads of an aiokafka ``ConsumerRecord``."""

    key: bytes | None
    value: bytes | None
    offset: int
    partition: int = 0
    headers: tuple[tuple[str, bytes], ...] = ()
    timestamp: int = 1_700_000_000_000


def change_value(
    context_id: str,
    wal_offset: int,
    doc: Any = None,
    *,
    version: int = 1,
    kind: ChangeKind = ChangeKind.PUT,
    expires: int | None = None,
    log_time: int = 1_700_000_000_123,
    checksum: bytes | None = None,
) -> bytes:
    """A change record's value; ``checksum`` None: the document's own (``doc_checksum``)."""
    raw = orjson.dumps({"id": context_id} if doc is None else doc, option=orjson.OPT_SORT_KEYS)
    checksum = doc_checksum(raw) if checksum is None else checksum
    return CODEC.encode_fields(
        context_id.encode(), version, kind, raw, checksum, expires, wal_offset, EVENT_ID, log_time
    )


def put(
    context_id: str,
    offset: int,
    wal_offset: int,
    doc: Any = None,
    *,
    partition: int = 0,
    version: int = 1,
) -> Msg:
    value = change_value(context_id, wal_offset, doc, version=version)
    return Msg(context_id.encode(), value, offset, partition)


def tombstone(
    context_id: str,
    offset: int,
    wal_offset: int,
    kind: bytes = b"deleted",
    *,
    partition: int = 0,
    version: int = 2,
    log_time: bytes | None = b"1700000000999",
) -> Msg:
    headers = [
        ("kind", kind),
        ("version", b"%d" % version),
        ("wal_offset", b"%d" % wal_offset),
        ("event_id", EVENT_ID),
        ("checksum", CHECKSUM),
    ]
    if log_time is not None:
        headers.append(("log_time_ms", log_time))
    return Msg(context_id.encode(), None, offset, partition, tuple(headers))


def set_state(w: Watcher, positions: dict[int, tuple[int, int]]) -> None:
    """What ``_position`` leaves: partition, next offset, highest WAL offset, flat and sorted."""
    w._pos = []
    w._index = {}
    for p in sorted(positions):
        w._index[p] = len(w._pos) + 1
        w._pos += [p, *positions[p]]


def set_state_from_token(w: Watcher, token: str) -> None:
    parsed = ResumeToken.decode(token)
    assert parsed.topic == w.topic
    set_state(w, {p: (o, h) for p, o, h in parsed.positions})


def drain(w: Watcher, records: list[Msg]) -> list[Change | Gap]:
    """Feeds records to ``_take`` the way ``__anext__`` does (a record a gap puts back in the
    buffer is read next)."""
    w._buffer = list(reversed(records))
    out: list[Change | Gap] = []
    while w._buffer:
        item = w._take(w._buffer.pop())
        if item is not None:
            out.append(item)
    return out


def changes_only(items: list[Change | Gap]) -> list[Change]:
    assert all(isinstance(i, Change) for i in items), items
    return [i for i in items if isinstance(i, Change)]


def positions_of(token: str) -> dict[int, tuple[int, int]]:
    return {p: (o, h) for p, o, h in ResumeToken.decode(token).positions}


MakeWatcher = Callable[..., Watcher]


@pytest.fixture
async def make_watcher() -> AsyncIterator[MakeWatcher]:
    made: list[Watcher] = []

    def make(positions: dict[int, tuple[int, int]] | None = None, **kwargs: Any) -> Watcher:
        w = Watcher("localhost:1", TOPICS, **kwargs)  # never started: no broker is contacted
        made.append(w)
        set_state(w, positions if positions is not None else {0: (0, -1)})
        return w

    yield make
    for w in made:
        await w.close()


# ---- ResumeToken ----

position_lists = st.lists(
    st.tuples(st.integers(0, LONG_MAX), st.integers(0, LONG_MAX), st.integers(-1, LONG_MAX)),
    max_size=8,
).map(tuple)


@given(topic=unicode_text, positions=position_lists)
def test_token_round_trip(topic: str, positions: tuple[tuple[int, int, int], ...]) -> None:
    token = ResumeToken(topic, positions)
    text = token.encode()
    assert text.startswith(TOKEN_PREFIX)
    assert "=" not in text and "+" not in text and "/" not in text  # URL-safe, unpadded
    assert ResumeToken.decode(text) == token
    assert parse_start(text) == token


def _token_of(payload: Any) -> str:
    raw = orjson.dumps(payload)
    return TOKEN_PREFIX + base64.urlsafe_b64encode(raw).decode().rstrip("=")


@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "lk2." + ResumeToken("t", ((0, 1, 2),)).encode()[4:],  # wrong prefix
        ResumeToken("t", ((0, 1, 2),)).encode()[4:],  # no prefix
        "lk1.",  # nothing after the prefix
        "lk1.!!!not-base64!!!",
        "lk1.héllo",  # not ASCII
        "lk1." + base64.urlsafe_b64encode(b"not json").decode(),
        _token_of(["t", [[-1, 0, 0]]]),  # negative partition
        _token_of(["t", [[0, -5, 0]]]),  # negative offset
        _token_of(["t", [[0, 0, -2]]]),  # WAL offset below -1
        _token_of(["t", [[0, 0]]]),  # a position of two numbers
        _token_of(["t", [[0, "x", 0]]]),
        _token_of([7, [[0, 0, 0]]]),  # topic not a string
        _token_of(["t"]),
        _token_of(42),
        _token_of(None),
    ],
)
def test_token_garbage(token: str) -> None:
    with pytest.raises(InvalidResumeTokenError):
        ResumeToken.decode(token)


@pytest.mark.parametrize("value", [None, 7, b"lk1.abc", ["lk1."]])
def test_token_not_a_string(value: Any) -> None:
    with pytest.raises(InvalidResumeTokenError):
        ResumeToken.decode(value)


def test_token_truncated() -> None:
    text = ResumeToken("lukhas.context.changes", ((0, 12, 11), (1, 400, 399))).encode()
    for cut in range(len(TOKEN_PREFIX), len(text)):
        with pytest.raises(InvalidResumeTokenError):
            ResumeToken.decode(text[:cut])


def test_invalid_token_is_a_validation_error() -> None:
    with pytest.raises(ValidationError):
        parse_start("lk1.garbage")


# ---- parse_start ----


def test_parse_start_named() -> None:
    assert parse_start("latest") is Start.LATEST
    assert parse_start("earliest") is Start.EARLIEST
    assert parse_start(Start.EARLIEST) is Start.EARLIEST


@given(st.integers(0, LONG_MAX))
def test_parse_start_epoch_ms(ms: int) -> None:
    assert parse_start(ms) == ms
    assert parse_start(str(ms)) == ms


def test_parse_start_times() -> None:
    when = datetime(2024, 5, 17, 12, 30, 15, 250_000, tzinfo=UTC)
    ms = 1_715_949_015_250
    assert parse_start(when) == ms
    assert parse_start(when.astimezone(timezone(timedelta(hours=-7)))) == ms
    assert parse_start("2024-05-17T12:30:15.250+00:00") == ms
    assert parse_start("2024-05-17T12:30:15.250Z") == ms
    assert parse_start("2024-05-17T14:30:15.250+02:00") == ms
    assert parse_start("2024-05-17T00:00:00+00:00") == 1_715_904_000_000


def test_parse_start_token() -> None:
    token = ResumeToken(TOPIC, ((0, 3, 2), (1, 0, -1)))
    assert parse_start(token) is token
    assert parse_start(token.encode()) == token


@pytest.mark.parametrize(
    "start",
    ["yesterday", "", "Latest", " latest", "-1", "1.5", "12abc", -1, True, False, 1.5, None,
     b"latest", [0]],
)  # fmt: skip
def test_parse_start_rejects(start: object) -> None:
    with pytest.raises(ValidationError):
        parse_start(start)


def test_parse_start_rejects_non_decimal_digits() -> None:
    with pytest.raises(ValidationError):
        parse_start("²")


@pytest.mark.parametrize("start", [LONG_MAX + 1, str(LONG_MAX + 1), "9" * 23, "9" * 100_000])
def test_parse_start_rejects_timestamps_kafka_cannot_carry(start: object) -> None:
    """Over 2^63-1 ms: a ValidationError here, not a struct.error in the consumer."""
    with pytest.raises(ValidationError, match="2\\^63-1"):
        parse_start(start)


@pytest.mark.parametrize(
    "position", [[0, LONG_MAX + 1, 0], [0, 0, LONG_MAX + 1], [LONG_MAX + 1, 0, 0]]
)
def test_token_positions_over_a_long_are_refused(position: list[int]) -> None:
    with pytest.raises(InvalidResumeTokenError):
        ResumeToken.decode(_token_of(["t", [position]]))


async def test_watcher_rejects_bad_arguments() -> None:
    with pytest.raises(ValidationError):
        Watcher("localhost:1", TOPICS, context_id="a", prefix="a")
    with pytest.raises(ValidationError):
        Watcher("localhost:1", TOPICS, on_gap="ignore")
    with pytest.raises(ValidationError):
        Watcher("localhost:1", TOPICS, start="yesterday")


# ---- Watcher._take ----


async def test_in_order_delivery(make_watcher: MakeWatcher) -> None:
    w = make_watcher()
    docs = [{"n": 1}, {"n": 2, "s": "é"}, {"n": 3}]
    items = changes_only(
        drain(w, [put("a", 0, 10, docs[0]), put("b", 1, 11, docs[1]), put("a", 2, 12, docs[2])])
    )
    assert [(c.context_id, c.wal_offset, c.offset, c.doc) for c in items] == [
        ("a", 10, 0, docs[0]),
        ("b", 11, 1, docs[1]),
        ("a", 12, 2, docs[2]),
    ]
    first = items[0]
    assert (first.kind, first.version, first.partition) == ("put", 1, 0)
    assert first.checksum == doc_checksum(b'{"n":1}').hex() and first.event_id == EVENT_ID.hex()
    assert first.log_time_ms == 1_700_000_000_123 and first.expires_at_ms is None
    assert first.delta is None and first.position == "0:10"
    assert positions_of(first.token) == {0: (1, 10)}
    assert positions_of(items[-1].token) == {0: (3, 12)}
    assert w._pos == [0, 3, 12]
    assert w.token() == items[-1].token
    as_dict = first.to_dict()
    assert as_dict["position"] == "0:10" and as_dict["token"] == first.token
    assert orjson.loads(orjson.dumps(as_dict))["doc"] == docs[0]


async def test_expiry_and_kinds_decode(make_watcher: MakeWatcher) -> None:
    w = make_watcher()
    records = [
        Msg(b"a", change_value("a", 5, {"x": 1}, kind=ChangeKind.PUT, expires=99), 0),
        Msg(b"a", change_value("a", 6, {"x": 2}, kind=ChangeKind.PATCH, expires=99), 1),
        Msg(b"a", change_value("a", 7, {"x": 2}, kind=ChangeKind.TOUCH, expires=123), 2),
    ]
    items = changes_only(drain(w, records))
    assert [(c.kind, c.expires_at_ms) for c in items] == [
        ("put", 99),
        ("patch", 99),
        ("touch", 123),
    ]


async def test_partitions_are_independent(make_watcher: MakeWatcher) -> None:
    w = make_watcher({0: (4, 3), 1: (10, 50), 2: (0, -1)})
    records = [
        put("a", 4, 4, partition=0),
        put("b", 10, 51, partition=1),
        put("c", 5, 5, partition=0),
        put("d", 11, 50, partition=1),  # a repeat in partition 1 only
        put("e", 12, 52, partition=1),
    ]
    items = changes_only(drain(w, records))
    assert [(c.partition, c.wal_offset) for c in items] == [(0, 4), (1, 51), (0, 5), (1, 52)]
    assert positions_of(items[0].token) == {0: (5, 4), 1: (10, 50), 2: (0, -1)}
    assert positions_of(items[-1].token) == {0: (6, 5), 1: (13, 52), 2: (0, -1)}
    assert w._pos == [0, 6, 5, 1, 13, 52, 2, 0, -1]


async def test_republished_changes_are_dropped(make_watcher: MakeWatcher) -> None:
    w = make_watcher()
    records = [
        put("a", 0, 10),
        put("b", 1, 11),
        put("b", 2, 11),  # the same change again (processor crashed before committing)
        put("a", 3, 10),
        put("c", 4, 9),  # lower than anything delivered
        put("c", 5, 12),
    ]
    items = changes_only(drain(w, records))
    assert [(c.context_id, c.wal_offset, c.offset) for c in items] == [
        ("a", 10, 0),
        ("b", 11, 1),
        ("c", 12, 5),
    ]
    assert w._pos == [0, 6, 12]


async def test_republished_relative_to_start_state(make_watcher: MakeWatcher) -> None:
    w = make_watcher({0: (100, 40)})
    items = changes_only(drain(w, [put("a", 100, 40), put("a", 101, 39), put("a", 102, 41)]))
    assert [c.wal_offset for c in items] == [41]


async def test_record_before_position_is_ignored(make_watcher: MakeWatcher) -> None:
    w = make_watcher({0: (5, 7)})
    assert w._take(put("a", 3, 100)) is None  # fetched before a seek
    assert w._pos == [0, 5, 7]


async def test_offset_hole_yields_gap(make_watcher: MakeWatcher) -> None:
    w = make_watcher({0: (0, -1), 1: (0, -1)})
    items = drain(
        w, [put("a", 0, 10), put("b", 3, 11), put("c", 4, 12), put("d", 2, 3, partition=1)]
    )
    assert [type(i) for i in items] == [Change, Gap, Change, Change, Gap, Change]
    gap = items[1]
    assert isinstance(gap, Gap)
    assert (gap.partition, gap.first_offset, gap.end_offset) == (0, 1, 3)
    assert gap.reason == "compacted or deleted"
    # The gap's token resumes at the record after the hole: that record is not lost.
    assert positions_of(gap.token) == {0: (3, 10), 1: (0, -1)}
    assert gap.to_dict()["gap"] == {
        "partition": 0, "first_offset": 1, "end_offset": 3, "reason": "compacted or deleted",
        "kind": "gone",
    }  # fmt: skip
    assert [(c.context_id, c.offset) for c in items if isinstance(c, Change)] == [
        ("a", 0),
        ("b", 3),
        ("c", 4),
        ("d", 2),
    ]
    assert (items[4].partition, items[4].first_offset, items[4].end_offset) == (1, 0, 2)


def ends_tx(m: Msg) -> Msg:
    """``m`` as the last change of a worker's Kafka transaction in its partition."""
    m.headers = (*m.headers, (TX_END_HEADER, b"1"))
    return m


async def test_a_transactions_commit_marker_is_no_gap(make_watcher: MakeWatcher) -> None:
    """Read committed, the offset after the last change of a transaction is its commit
    marker, never delivered: not a gap, and a token taken there resumes past it. A hole after
    a marker is a gap again (compacted, or an aborted round of a zombie)."""
    w = make_watcher()
    items = drain(
        w,
        [
            put("a", 0, 10),
            ends_tx(put("b", 1, 11)),  # marker at 2
            ends_tx(tombstone("a", 3, 12)),  # a tombstone can end one too; marker at 4
            put("c", 5, 13),
            ends_tx(put("d", 6, 14)),  # marker at 7
            put("e", 10, 15),  # 8 and 9 are gone
        ],
    )
    kinds = [type(i).__name__ for i in items]
    assert kinds == ["Change"] * 5 + ["Gap", "Change"], items
    gap = items[5]
    assert isinstance(gap, Gap) and (gap.first_offset, gap.end_offset) == (8, 10)
    # At the marker: reading from there skips it (read committed), and the hole after the
    # last change read before (the token's record) is that marker.
    assert positions_of(items[1].token) == {0: (2, 11)}
    assert positions_of(items[4].token) == {0: (7, 14)}


async def test_a_record_at_a_marker_offset_is_read_never_skipped(
    make_watcher: MakeWatcher,
) -> None:
    """The offset after a change marked ``txend`` is the commit marker only when the change
    was written in a transaction: a copy of it written without one (republished by hand, or
    forged) is followed by a real record there, which is read like any other."""
    w = make_watcher()
    items = drain(w, [ends_tx(put("a", 0, 10)), put("b", 1, 11), ends_tx(put("c", 2, 12)),
                      put("d", 4, 13)])  # fmt: skip
    assert [(type(i).__name__, getattr(i, "context_id", None)) for i in items] == [
        ("Change", "a"), ("Change", "b"), ("Change", "c"), ("Change", "d"),
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("found", "first", "end", "aborted"),
    [
        ({5, 6, 7}, 5, 9, True),  # three aborted records, their marker at 8
        ({5, 7, 8}, 5, 10, True),  # two transactions: 5 + marker 6, 7-8 + marker 9
        (set(), 5, 6, False),  # nothing there read uncommitted either: compacted
        ({5, 6}, 5, 9, False),  # 7 is their marker; 8 is neither a record nor after one
        ({5, 6, 7}, 5, 8, False),  # ends with a record: no marker closes it
        ({6}, 5, 8, False),  # 5 comes after nothing in the hole
    ],
)
def test_aborted_only(found: set[int], first: int, end: int, aborted: bool) -> None:
    assert aborted_only(found, first, end) is aborted


async def test_a_zombies_aborted_round_is_no_gap(make_watcher: MakeWatcher) -> None:
    """A hole that, read uncommitted, holds only records and the markers after them is a
    zombie's aborted round (fenced by the partition's next owner): passed over. One that does
    not is reported."""
    w = make_watcher()
    w._started = True  # positioned by set_state: nothing to connect to
    probed: list[tuple[int, int]] = []

    async def uncommitted(partition: int, first: int, end: int) -> set[int]:
        probed.append((first, end))
        return {1, 2} if first == 1 else set()  # 1-2 aborted, marker at 3; 7 compacted

    w._uncommitted_offsets = uncommitted  # type: ignore[method-assign]
    w._buffer = list(reversed([put("a", 0, 10), put("b", 4, 11), put("c", 5, 12), put("d", 8, 13)]))
    items = []
    while w._buffer:
        items.append(await w.__anext__())
    assert [type(i).__name__ for i in items] == ["Change", "Change", "Change", "Gap", "Change"]
    assert probed == [(1, 4), (6, 8)]
    assert (items[3].first_offset, items[3].end_offset) == (6, 8)


async def test_offset_hole_raises(make_watcher: MakeWatcher) -> None:
    w = make_watcher({0: (0, -1)}, on_gap="raise")
    assert isinstance(w._take(put("a", 0, 10)), Change)
    with pytest.raises(ChangeGapError) as info:
        w._take(put("b", 5, 11))
    message = str(info.value)
    assert "1..4" in message
    token = message.rsplit("resume with token ", 1)[1].split()[0]
    assert positions_of(token) == {0: (5, 10)}
    assert info.value.retriable  # a ReadError


async def test_undecodable_change_yields_gap(make_watcher: MakeWatcher) -> None:
    w = make_watcher()
    bad = b"{not json"
    not_json = CODEC.encode_fields(b"b", 1, 0, bad, doc_checksum(bad), None, 11, EVENT_ID, 0)
    records = [
        put("a", 0, 10),
        Msg(b"b", b"\x00garbage", 1),
        Msg(b"b", not_json, 2),
        Msg(b"b", change_value("b", 11)[:-3], 3),  # truncated
        Msg(b"b", None, 4),  # a tombstone without headers
        tombstone("b", 5, 11, kind=b"vanished"),
        Msg(b"\xff", None, 6, headers=tombstone("x", 6, 11).headers),  # key is not UTF-8
        put("c", 7, 11),
        # A fence record (the fold's highest token of a lock): no change, no gap either.
        Msg(fence_key("L"), FenceRecord("L", 5, 11, 0).encode(), 8),
    ]
    items = drain(w, records)
    gaps = [i for i in items if isinstance(i, Gap)]
    assert [(g.first_offset, g.end_offset, g.kind) for g in gaps] == [
        (o, o + 1, "undecodable") for o in range(1, 7)
    ]
    assert all(g.reason.startswith("undecodable") for g in gaps), gaps
    assert "not JSON" in gaps[1].reason and "tombstone" in gaps[3].reason
    assert positions_of(gaps[0].token) == {0: (2, 10)}
    changes = [i for i in items if isinstance(i, Change)]
    assert [(c.context_id, c.wal_offset) for c in changes] == [("a", 10), ("c", 11)]


async def test_undecodable_change_raises(make_watcher: MakeWatcher) -> None:
    w = make_watcher(on_gap="raise")
    with pytest.raises(ChangeGapError, match="undecodable change") as info:
        w._take(Msg(b"b", b"junk", 0))
    assert not isinstance(info.value, CorruptChangeError)
    assert w._pos == [0, 1, -1]  # the next read goes on past it


async def test_a_change_whose_document_does_not_match_its_checksum_is_never_delivered(
    make_watcher: MakeWatcher,
) -> None:
    """Corrupted on its way, or forged by someone who can write to the change topic: a gap of
    kind ``checksum``, and the WAL position does not move, so a good copy published after it
    (the processor publishing again) is still delivered."""
    w = make_watcher()
    forged = change_value("a", 10, {"v": "forged"}, checksum=doc_checksum(b'{"v":"real"}'))
    flipped = bytearray(change_value("b", 11, {"v": "abc"}))
    flipped[flipped.index(b"abc")] ^= 0x01  # one bit of the document: "`bc"
    records = [
        Msg(b"a", forged, 0),
        Msg(b"b", bytes(flipped), 1),
        put("a", 2, 10, {"v": "real"}),  # the good copy of the first
        put("b", 3, 11, {"v": "abc"}),
    ]
    items = drain(w, records)
    gaps = [i for i in items if isinstance(i, Gap)]
    assert [(g.first_offset, g.kind) for g in gaps] == [(0, "checksum"), (1, "checksum")]
    assert "'a' version 1 does not match its checksum" in gaps[0].reason
    assert gaps[0].to_dict()["gap"]["kind"] == "checksum"
    changes = [i for i in items if isinstance(i, Change)]
    assert [(c.context_id, c.doc) for c in changes] == [("a", {"v": "real"}), ("b", {"v": "abc"})]


async def test_a_checksum_mismatch_raises_its_own_error(make_watcher: MakeWatcher) -> None:
    w = make_watcher(on_gap="raise")
    forged = change_value("a", 10, {"v": 1}, checksum=b"\0" * 8)
    with pytest.raises(CorruptChangeError, match="does not match its checksum 0000000000000000"):
        w._take(Msg(b"a", forged, 0))
    assert w._pos == [0, 1, -1]  # past the record; its WAL offset not taken
    assert isinstance(w._take(put("a", 1, 10, {"v": 1})), Change)


@given(
    doc=st.dictionaries(st.text(max_size=5), st.integers(-(2**63), 2**63 - 1), max_size=4),
    flip=st.integers(0, 63),
)
def test_any_changed_checksum_bit_is_caught(doc: dict[str, int], flip: int) -> None:
    """Whatever the document, a checksum off by one bit never lets it through (the one check
    every reader makes, ``document_matches``)."""
    raw = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    wrong = bytearray(doc_checksum(raw))
    wrong[flip // 8] ^= 1 << (flip % 8)
    assert document_matches(raw, doc_checksum(raw))
    assert not document_matches(raw, bytes(wrong))


async def test_tombstones(make_watcher: MakeWatcher) -> None:
    w = make_watcher()
    records = [
        put("a", 0, 10, {"v": 1}),
        tombstone("a", 1, 11, b"deleted", version=2),
        tombstone("b", 2, 12, b"expired", version=5, log_time=None),
        tombstone("b", 3, 12, b"expired", version=5),  # republished
    ]
    items = changes_only(drain(w, records))
    assert [(c.context_id, c.kind, c.version, c.doc, c.wal_offset) for c in items] == [
        ("a", "put", 1, {"v": 1}, 10),
        ("a", "delete", 2, None, 11),
        ("b", "expire", 5, None, 12),
    ]
    deleted, expired = items[1], items[2]
    assert deleted.checksum == CHECKSUM.hex() and deleted.event_id == EVENT_ID.hex()
    assert deleted.log_time_ms == 1_700_000_000_999
    assert expired.log_time_ms == records[2].timestamp  # no header: the record's timestamp
    assert deleted.expires_at_ms is None and deleted.offset == 1
    assert positions_of(expired.token) == {0: (3, 12)}
    assert w._pos == [0, 4, 12]


async def test_prefix_filter(make_watcher: MakeWatcher) -> None:
    w = make_watcher(prefix="user:")
    records = [
        put("user:1", 0, 10),
        put("org:1", 1, 11),
        Msg(None, b"junk", 2),  # filtered out before decoding: no gap
        put("user:2", 3, 12),
        put("users", 4, 13),
        tombstone("user:1", 5, 14),
        put("org:2", 6, 15),
    ]
    items = changes_only(drain(w, records))
    assert [(c.context_id, c.kind) for c in items] == [
        ("user:1", "put"),
        ("user:2", "put"),
        ("user:1", "delete"),
    ]
    # Every record moves the position; only delivered changes move the highest WAL offset.
    assert w._pos == [0, 7, 14]
    assert positions_of(items[1].token) == {0: (4, 12)}


async def test_context_id_filter(make_watcher: MakeWatcher) -> None:
    w = make_watcher({0: (0, -1), 1: (0, -1)}, context_id="ü-1")
    records = [
        put("ü-1", 0, 10, {"n": 1}),
        put("ü-10", 1, 11),
        put("a", 2, 12),
        tombstone("ü-1", 3, 13),
        put("ü-1", 4, 14, {"n": 2}),
    ]
    items = changes_only(drain(w, records))
    assert [(c.context_id, c.kind, c.doc) for c in items] == [
        ("ü-1", "put", {"n": 1}),
        ("ü-1", "delete", None),
        ("ü-1", "put", {"n": 2}),
    ]
    assert w._pos == [0, 5, 14, 1, 0, -1]


def _log() -> list[Msg]:
    """Two partitions with contexts interleaved, a hole, a bad record and republished changes."""
    p0 = [
        put("a", 0, 0, {"n": 0}),
        put("b", 1, 1, {"n": 1}),
        put("a", 2, 2, {"n": 2}),
        put("b", 3, 1, {"n": 1}),  # republished
        put("c", 4, 4, {"n": 4}),
        tombstone("a", 5, 5),
        put("b", 8, 6, {"n": 6}),  # after a hole
        Msg(b"c", b"bad", 9),
        put("a", 10, 5, {"n": 5}),  # republished after the hole
        put("c", 11, 9, {"n": 9}),
    ]
    p1 = [
        put("x", 0, 100, {"n": 100}, partition=1),
        put("y", 1, 101, {"n": 101}, partition=1),
        put("y", 2, 100, {"n": 100}, partition=1),
        tombstone("y", 3, 102, b"expired", partition=1),
        put("x", 4, 103, {"n": 103}, partition=1),
    ]
    merged: list[Msg] = []
    for i in range(max(len(p0), len(p1))):
        merged += p0[i : i + 1] + p1[i : i + 1]
    return merged


def _identity(item: Change | Gap) -> tuple[Any, ...]:
    if isinstance(item, Gap):
        return ("gap", item.partition, item.first_offset, item.end_offset, item.reason)
    return ("change", item.context_id, item.partition, item.wal_offset, item.kind, item.doc)


async def test_token_resumes_exactly_after_its_change(make_watcher: MakeWatcher) -> None:
    log = _log()
    first = make_watcher({0: (0, -1), 1: (0, -1)})
    items = drain(first, log)
    delivered = [i for i in items if isinstance(i, Change)]
    assert [(c.partition, c.wal_offset) for c in delivered if c.partition == 0] == [
        (0, w) for w in (0, 1, 2, 4, 5, 6, 9)
    ]
    assert [c.wal_offset for c in delivered if c.partition == 1] == [100, 101, 102, 103]
    assert [_identity(i) for i in items if isinstance(i, Gap)] == [
        ("gap", 0, 6, 8, "compacted or deleted"),
        ("gap", 0, 9, 10, "undecodable change: BadMagicError"),
    ]
    for k, item in enumerate(items):
        again = make_watcher({0: (0, -1), 1: (0, -1)})
        set_state_from_token(again, item.token)
        # The broker would seek each partition to its token offset: older records are skipped.
        resumed = drain(again, log)
        assert [_identity(i) for i in resumed] == [_identity(i) for i in items[k + 1 :]]


async def test_token_resumes_with_redelivered_batch(make_watcher: MakeWatcher) -> None:
    w = make_watcher()
    items = changes_only(drain(w, [put("a", 0, 1), put("b", 1, 2), put("c", 2, 3)]))
    again = make_watcher()
    set_state_from_token(again, items[1].token)
    # A crashed processor published b and c again after c: only c, once, is new to `again`.
    later = [put("c", 2, 3), put("b", 3, 2), put("c", 4, 3), put("d", 5, 4)]
    resumed = changes_only(drain(again, later))
    assert [(c.context_id, c.offset) for c in resumed] == [("c", 2), ("d", 5)]


async def test_deltas_rebuild_documents(make_watcher: MakeWatcher) -> None:
    w = make_watcher(deltas=True)
    docs_a = [
        {"msgs": ["hi"], "meta": {"lang": "en"}},
        {"msgs": ["hi", "there"], "meta": {"lang": "en"}},
        {"msgs": ["hi", "there"], "meta": {"lang": "fr", "n": 2}},
        {"msgs": [], "other": None},
    ]
    docs_b = [{"x": 1}, {"x": [1, {"y": 2}]}]
    records = [
        put("a", 0, 0, docs_a[0]),
        put("b", 1, 1, docs_b[0]),
        put("a", 2, 2, docs_a[1]),
        put("a", 3, 3, docs_a[2]),
        put("b", 4, 4, docs_b[1]),
        put("a", 5, 3, docs_a[2]),  # republished: no delta either
        put("a", 6, 6, docs_a[3]),
        tombstone("b", 7, 7),
        put("b", 8, 8, {"fresh": True}),
    ]
    items = changes_only(drain(w, records))
    current: dict[str, Any] = {}
    for c in items:
        if c.kind == "delete":
            assert c.doc is None and c.delta is None
            current.pop(c.context_id)
        elif c.context_id not in current:
            assert c.delta is None and c.doc is not None  # first seen: the whole document
            current[c.context_id] = c.doc
        else:
            assert c.doc is None and isinstance(c.delta, list)
            current[c.context_id] = apply_json_patch(current[c.context_id], c.delta)
        if c.context_id == "a":
            assert current["a"] == docs_a[[0, 2, 3, 6].index(c.wal_offset)]
    assert [c.wal_offset for c in items] == [0, 1, 2, 3, 4, 6, 7, 8]
    assert current == {"a": docs_a[3], "b": {"fresh": True}}
    assert items[4].delta is not None and apply_json_patch(docs_b[0], items[4].delta) == docs_b[1]
    assert items[-1].doc == {"fresh": True} and items[-1].delta is None  # after the delete
    assert positions_of(items[2].token) == {0: (3, 2)}
    assert items[2].to_dict()["delta"] == items[2].delta


# ---- native decoder vs the Python codec ----

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), LONG_MAX) | unicode_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(unicode_text, inner, max_size=4),
    max_leaves=12,
)
changes = st.builds(
    ContextChange,
    context_id=unicode_text,
    version=longs,
    kind=st.sampled_from(ChangeKind),
    doc=st.dictionaries(unicode_text, json_values, max_size=5).map(orjson.dumps)
    | st.binary(max_size=64),
    checksum=st.binary(min_size=8, max_size=8),
    expires_at_ms=st.none() | longs,
    wal_offset=longs,
    event_id=st.binary(min_size=16, max_size=16),
    log_time_ms=longs,
)


def encode(c: ContextChange) -> bytes:
    return CODEC.encode_fields(
        c.context_id.encode(), c.version, c.kind, c.doc, c.checksum, c.expires_at_ms,
        c.wal_offset, c.event_id, c.log_time_ms,
    )  # fmt: skip


def fields_of(c: ContextChange) -> tuple[Any, ...]:
    return (
        c.context_id, c.version, int(c.kind), c.doc, c.checksum, c.expires_at_ms,
        c.wal_offset, c.event_id, c.log_time_ms,
    )  # fmt: skip


def assert_same_or_both_reject(data: bytes) -> None:
    """The native decoder agrees with the codec: the same fields, or None where it raises."""
    native = read_change(HEADER, data)
    try:
        expected = CODEC.decode(data)
    except CodecError:
        assert native is None
    else:
        assert native == fields_of(expected)


@native
@settings(max_examples=300)
@given(changes)
def test_native_decoder_matches_codec(change: ContextChange) -> None:
    data = encode(change)
    assert data == CODEC.encode(change)
    decoded = CODEC.decode(data)
    assert decoded == change
    native = read_change(HEADER, data)
    assert native == fields_of(decoded)
    assert native is not None and type(native[2]) is int


@native
@settings(max_examples=100, suppress_health_check=[HealthCheck.too_slow])
@given(changes)
def test_native_decoder_rejects_truncated_and_trailing(change: ContextChange) -> None:
    data = encode(change)
    for cut in range(len(data)):
        assert read_change(HEADER, data[:cut]) is None
        with pytest.raises(CodecError):
            CODEC.decode(data[:cut])
    for extra in (b"\x00", b"\x01\x02", data):
        assert read_change(HEADER, data + extra) is None
        with pytest.raises(CodecError):
            CODEC.decode(data + extra)


@native
@given(changes, st.binary(min_size=10, max_size=10))
def test_native_decoder_rejects_other_headers(change: ContextChange, header: bytes) -> None:
    data = encode(change)
    if header != HEADER:
        assert read_change(header, data) is None
        assert read_change(HEADER, header + data[10:]) is None
        with pytest.raises(CodecError):
            CODEC.decode(header + data[10:])
    other = EVENT_HEADER  # a known schema, but not ContextChange
    assert read_change(other, data) is None
    with pytest.raises(CodecError):
        CODEC.decode(other + data[10:])


@native
@settings(max_examples=500)
@given(st.binary(max_size=80))
def test_native_decoder_random_bodies(body: bytes) -> None:
    assert_same_or_both_reject(HEADER + body)
    assert read_change(HEADER, body) is None or body.startswith(HEADER)


@native
@settings(max_examples=300)
@given(changes, st.data())
def test_native_decoder_mutated_changes(change: ContextChange, data: st.DataObject) -> None:
    raw = bytearray(encode(change))
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.integers(10, len(raw) - 1))
        raw[i] = data.draw(st.integers(0, 255))
    assert_same_or_both_reject(bytes(raw))


@native
@pytest.mark.parametrize(
    "body",
    [
        b.write_long(-1),  # negative id length
        b.write_long(1000) + b"a",  # id runs past the end
        b"\xff" * 11,  # varint longer than 10 bytes
        b"\xff" * 9 + b"\x02",  # varint overflowing 64 bits
        b.write_bytes(b"\xff\xfe") + b"\x00" * 30,  # id is not UTF-8
        b.write_bytes(b"a") + b"\x02" + b.write_long(5) + b"\x00" * 30,  # kind 5
        b.write_bytes(b"a") + b"\x02\x00" + b.write_bytes(b"{}") + CHECKSUM + b"\x04",  # union 2
        b.write_bytes(b"a") + b"\x02\x00" + b.write_long(-4) + b"\x00" * 30,  # negative doc length
    ],
)
def test_native_decoder_rejects_malformed(body: bytes) -> None:
    data = HEADER + body
    assert read_change(HEADER, data) is None
    with pytest.raises(CodecError):
        CODEC.decode(data)


HUGE_LENGTH = b.write_long(LONG_MAX)


@native
@pytest.mark.parametrize(
    "body",
    [
        HUGE_LENGTH + b"abc",  # context id length
        b.write_bytes(b"a") + b"\x02\x00" + HUGE_LENGTH + b"{}",  # document length
    ],
)
def test_native_decoder_rejects_length_bombs(body: bytes) -> None:
    data = HEADER + body
    with pytest.raises(CodecError):
        CODEC.decode(data)
    assert read_change(HEADER, data) is None


async def test_length_bomb_record_is_a_gap(make_watcher: MakeWatcher) -> None:
    w = make_watcher()
    item = w._take(Msg(b"a", HEADER + HUGE_LENGTH + b"abc", 0))
    assert isinstance(item, Gap) and item.kind == "undecodable"


# ---- the idle timeout (issue 19: it ran from the Watcher's creation) ----


class _StubConsumer:
    """Hands out ``batches`` one per ``getmany`` (then nothing); ``start`` takes ``delay``."""

    def __init__(self, batches: list[list[Msg]], delay: float = 0.0) -> None:
        self.batches = batches
        self.delay = delay
        self.fetches = 0

    async def start(self) -> None:
        await asyncio.sleep(self.delay)

    async def stop(self) -> None:
        pass

    async def getmany(self, timeout_ms: int = 0, max_records: int = 0) -> dict[Any, list[Msg]]:
        self.fetches += 1
        if self.batches:
            return {0: self.batches.pop(0)}
        await asyncio.sleep(timeout_ms / 1000)
        return {}


def _stubbed(w: Watcher, consumer: _StubConsumer) -> None:
    w._consumer = consumer  # type: ignore[assignment]

    async def positioned() -> None:
        set_state(w, {0: (0, -1)})

    w._position = positioned  # type: ignore[method-assign]


async def test_the_idle_timeout_counts_from_when_the_watch_is_positioned(
    make_watcher: MakeWatcher,
) -> None:
    w = make_watcher(idle_timeout=0.3)
    # Connecting takes longer than the idle timeout: that is not idleness.
    _stubbed(w, _StubConsumer([[put("a", 0, 0)]], delay=0.6))
    item = await anext(w)
    assert isinstance(item, Change) and item.context_id == "a"


async def test_a_slow_consumer_is_not_idle_between_items(make_watcher: MakeWatcher) -> None:
    w = make_watcher(idle_timeout=0.3)
    consumer = _StubConsumer([[put("a", 0, 0)], [put("b", 1, 1)]])
    _stubbed(w, consumer)
    assert (await anext(w)).context_id == "a"  # type: ignore[union-attr]
    await asyncio.sleep(0.6)  # the subscriber handles "a" for longer than the idle timeout
    second = await anext(w)
    assert isinstance(second, Change) and second.context_id == "b"
    # With nothing more to read, it ends after the idle timeout, having fetched meanwhile.
    fetches = consumer.fetches
    with pytest.raises(StopAsyncIteration):
        await anext(w)
    assert consumer.fetches > fetches


async def test_a_transactions_changes_share_a_wal_offset_and_each_comes_once(
    make_watcher: MakeWatcher,
) -> None:
    w = make_watcher()
    records = [
        put("a", 0, 10),
        put("b", 1, 12),  # a transaction's record at WAL offset 12: one change per context
        put("c", 2, 12),
        put("b", 3, 12),  # published again after a processor crash: a repeat
        put("c", 4, 11),
        put("d", 5, 13),
    ]
    items = changes_only(drain(w, records))
    assert [(c.context_id, c.wal_offset) for c in items] == [
        ("a", 10), ("b", 12), ("c", 12), ("d", 13),
    ]  # fmt: skip


async def test_after_a_resume_a_change_at_the_last_wal_offset_is_a_repeat(
    make_watcher: MakeWatcher,
) -> None:
    """Without knowing which contexts were delivered at the token's WAL offset (a start
    looks them up), every change at it is taken for a repeat: none is delivered twice."""
    w = make_watcher({0: (100, 40)})
    items = changes_only(drain(w, [put("x", 100, 40), put("y", 101, 40), put("z", 102, 41)]))
    assert [c.context_id for c in items] == ["z"]
