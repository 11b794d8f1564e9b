"""The native hot loop folds exactly like the general path: same records, same change bytes,
same counts, same dead letters, for generated logs of every shape of record."""

from __future__ import annotations

import json
import tempfile
from collections import namedtuple
from pathlib import Path
from typing import Any

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukhas_context.processors import round as rnd
from lukhas_context.processors.fold import Limits
from lukhas_context.processors.round import PartitionFolder
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import (
    ChangeKind,
    ContextEvent,
    Delete,
    Fence,
    Patch,
    PatchFormat,
    Put,
)
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import PartitionStore

pytestmark = pytest.mark.skipif(rnd.native_fold is None, reason="the native extension is not built")

Message = namedtuple("Message", "topic partition offset key value timestamp headers")
CODEC = EventCodec()
KEYS = ["a", "b", "ctx-1", "é-non-ascii", "x" * 63, "y" * 64]
DOCS = [
    b"{}",
    b'{"a":1}',
    b'{"b": 2, "a": [1, 2]}',  # valid, not canonical
    b"[1]",
    b"nope",
    b'{"big":"' + b"z" * 300 + b'"}',  # over the 256-byte limit of these tests
    b'{"n":' + b"1" * 70 + b"}",
    b'{"d":' + b"[" * 9 + b"]" * 9 + b"}",  # deeper than the max_depth of these tests
    b'{"n":123456789012345678901}',  # outside 64 bits: refused, never rounded (issue 9)
    b'{"n":18446744073709551615,"m":-9223372036854775808}',  # the edges, kept exactly
    b'{"s":"1234567890123456789012"}',  # digits in a string are text
]


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)  # big integers too: refused by both paths alike
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=6,
)


@st.composite
def documents(draw: Any) -> bytes:
    """JSON text as writers send it: any key order and spacing, escaped or raw Unicode, long
    Unicode strings, floats and exponents, integers near and past 64 bits, duplicate keys."""
    doc = draw(st.dictionaries(st.text(max_size=4), JSON_VALUES, max_size=4))
    if draw(st.booleans()):
        doc["long"] = draw(st.text(min_size=10, max_size=40))  # often multi-byte
    spacing = draw(st.sampled_from([(",", ":"), (", ", ": ")]))
    text = json.dumps(doc, ensure_ascii=draw(st.booleans()), separators=spacing)
    if draw(st.booleans()) and text != "{}":
        text = '{"dup":1,"dup":' + draw(st.sampled_from(["2", "2.5e3", '"x"'])) + "," + text[1:]
    return text.encode()


POINTERS = ["/a", "/b", "/a/0", "/a/1", "/a/-", "/n", "/s", "/long", "/dup", "/new", "/a/0/x", ""]


@st.composite
def patches(draw: Any) -> bytes:
    """JSON Patch text: add, replace, remove and test on the documents' members (the
    native loop's), now and then move or a malformed operation (the general path's)."""
    ops: list[dict[str, Any]] = []
    for _ in range(draw(st.integers(0, 3))):
        name = draw(st.sampled_from(["add", "add", "replace", "remove", "test", "move", "x"]))
        op: dict[str, Any] = {"op": name, "path": draw(st.sampled_from(POINTERS))}
        if name == "move":
            op["from"] = draw(st.sampled_from(POINTERS))
        elif name != "remove":
            op["value"] = draw(JSON_VALUES)
        ops.append(op)
    return json.dumps(ops).encode()


@st.composite
def records(draw: Any) -> tuple[bytes | None, bytes | None]:
    key = draw(st.sampled_from(KEYS))
    eid = draw(st.binary(min_size=16, max_size=16))
    kind = draw(st.integers(0, 12))
    doc = draw(st.sampled_from(DOCS) | documents())
    if kind >= 10:  # JSON Patches: plain; with a checksum; a TTL, clear_ttl, expected version
        checksum = draw(st.none() | st.binary(min_size=8, max_size=8)) if kind == 11 else None
        ttl = clear = expected = None
        if kind == 12:
            ttl = draw(st.sampled_from([None, None, 1000, 0, -5, 2**62]))
            clear = draw(st.booleans())
            expected = draw(st.none() | st.integers(0, 4))
        op = Patch(PatchFormat.JSON_PATCH, draw(patches()), checksum, ttl, bool(clear))
        return key.encode(), CODEC.encode(ContextEvent(eid, key, op, expected))
    if kind <= 4:  # the commonest shape: the native loop's own
        return key.encode(), CODEC.encode(ContextEvent(eid, key, Put(doc)))
    if kind == 5:
        ttl = draw(st.integers(-1, 10**6))
        return key.encode(), CODEC.encode(ContextEvent(eid, key, Put(doc, ttl)))
    if kind == 6:
        expected = draw(st.integers(0, 4))
        op = draw(st.sampled_from([Put(doc), Delete()]))
        return key.encode(), CODEC.encode(ContextEvent(eid, key, op, expected))
    if kind == 7:
        fence = draw(st.none() | st.just(Fence("l", 1)))
        meta = draw(st.dictionaries(st.text(max_size=2), st.text(max_size=2), max_size=1))
        return key.encode(), CODEC.encode(ContextEvent(eid, key, Put(doc), None, fence, meta))
    if kind == 8:  # a valid event under another key, or no key
        other = draw(st.sampled_from([*KEYS, None]))
        return (None if other is None else other.encode()), CODEC.encode(
            ContextEvent(eid, key, Put(doc))
        )
    good = CODEC.encode(ContextEvent(eid, key, Put(doc)))
    if draw(st.booleans()):  # the document's length as an over-long, overflowing varint
        n = len(key.encode())
        if n < 64 and len(doc) < 64:
            varint = bytes([(len(doc) << 1) | 0x80]) + b"\x80" * 8 + b"\x02"
            return key.encode(), good[: 28 + n] + varint + good[29 + n :]
    cut = draw(st.integers(0, len(good)))
    noise = draw(st.binary(max_size=6))
    return key.encode(), draw(st.sampled_from([good[:cut] + noise, noise, None]))  # type: ignore[list-item]


def fold(log: list[Message], native: bool, window: int = 20) -> tuple[Any, ...]:
    with tempfile.TemporaryDirectory() as tmp:
        limits = Limits(max_document_bytes=256, max_depth=8, dedupe_window=window)
        with PartitionStore(Path(tmp) / "p") as store:
            store.commit({b"a": ContextRecord(7, None, bytes(8), None, 0, 0)}, 0)  # a tombstone
            folder = PartitionFolder(0, store, limits, native=native)
            assert folder.native is native
            r = folder.fold(log)
            assert r is not None
            dead = [(msg.offset, type(err).__name__, str(err)) for msg, err in r.dead]
            return (r.records, r.changes, r.applied, r.conflicts, r.rejected, dead,
                    r.next_offset, r.duplicates, bytes(r.entries), r.reasons,
                    dict(folder.window.ids))  # fmt: skip


@given(st.lists(records(), min_size=1, max_size=60), st.integers(0, 2**41))
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_native_and_general_paths_fold_identically(
    log: list[tuple[bytes | None, bytes | None]], t0: int
) -> None:
    records = list(log)
    # Retries (the same bytes again) and reused ids (other bytes): some inside the dedupe
    # window of 20 offsets, some beyond it.
    for i, (k, v) in enumerate(log[: len(log) // 3]):
        if v is not None and len(v) > 30 and i % 2 == 0:
            records.insert(min(len(records), i + 3 + i * 4), (k, v))
            records.append((k, v[:-5] + b"\x00\x00\x00\x00\x00"))
    messages = [Message("t", 0, i, k, v, t0 + i // 3, []) for i, (k, v) in enumerate(records)]
    assert fold(messages, native=True) == fold(messages, native=False)


def test_the_native_loop_takes_the_commonest_event() -> None:
    """Guards against a native loop that silently hands everything to the slow path."""
    handed: list[Any] = []
    log = [
        Message("t", 0, i, b"k", CODEC.encode(ContextEvent(bytes(16), "k", Put(b"{}"))), 5, [])
        for i in range(10)
    ]
    records: dict[bytes, Any] = {}
    changes: list[Any] = []
    recent: dict[bytes, Any] = {}
    entries = bytearray()
    log = [
        m._replace(value=m.value[:10] + bytes([i]) * 16 + m.value[26:]) for i, m in enumerate(log)
    ]
    assert rnd.native_fold is not None
    applied = rnd.native_fold(
        log, 0, CODEC.header, ChangeCodec().header, records, lambda k: None,
        ContextRecord, 1000, 64, 1000, 1 << 21, recent, entries, changes, [], handed.append,
    )  # fmt: skip
    assert applied == 10 and handed == [] and records[b"k"].version == 10
    assert len(recent) == 10 and len(entries) == 10 * 41


def test_the_native_loop_takes_plain_patches() -> None:
    """A conversation growing by appends, with an expected checksum now and then: the
    native loop folds every event and the general path gets none."""
    handed: list[Any] = []
    log = [
        Message(
            "t", 0, 0, b"k", CODEC.encode(ContextEvent(bytes(16), "k", Put(b'{"m":[]}'))), 5, []
        )
    ]
    for i in range(1, 10):
        body = json.dumps([{"op": "add", "path": "/m/-", "value": {"n": i}}]).encode()
        op = Patch(
            PatchFormat.JSON_PATCH, body, xxhash.xxh3_64_digest(expected(i)) if i % 2 else None
        )
        log.append(
            Message("t", 0, i, b"k", CODEC.encode(ContextEvent(bytes([i]) * 16, "k", op)), 5, [])
        )
    records: dict[bytes, Any] = {}
    changes: list[Any] = []
    assert rnd.native_fold is not None
    applied = rnd.native_fold(
        log, 0, CODEC.header, ChangeCodec().header, records, lambda k: None,
        ContextRecord, 1000, 64, 1000, 1 << 21, {}, bytearray(), changes, [], handed.append,
    )  # fmt: skip
    assert applied == 10 and handed == []
    assert records[b"k"].version == 10 and records[b"k"].doc == expected(9)
    change = ChangeCodec().decode(changes[-1][1])
    assert change.kind is ChangeKind.PATCH and change.doc == expected(9) and change.version == 10


def expected(n: int) -> bytes:
    return json.dumps({"m": [{"n": i} for i in range(1, n + 1)]}, separators=(",", ":")).encode()


@given(st.lists(records(), min_size=1, max_size=40), st.data())
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_a_log_with_retried_events_folds_to_the_same_state(
    log: list[tuple[bytes | None, bytes | None]], data: Any
) -> None:
    """fold(log) == fold(log with duplicates): every retry (the same bytes again, within the
    dedupe window) changes no record and publishes no change."""
    plain = [Message("t", 0, i, k, v, 1000 + i, []) for i, (k, v) in enumerate(log)]
    with_retries: list[tuple[bytes | None, bytes | None, int]] = []
    for i, (k, v) in enumerate(log):
        with_retries.append((k, v, 1000 + i))  # each original keeps its own log time
        if v is not None and data.draw(st.booleans()):
            with_retries.append((k, v, 1000 + i))  # the client's retry, right after
    retried = [Message("t", 0, i, k, v, t, []) for i, (k, v, t) in enumerate(with_retries)]
    # A window longer than either log: inserted retries shift offsets, and with a short
    # window an id repeated in the log itself could fall out of it in one log and not the
    # other (a different, correct fold, not the property under test).
    window = 2 * len(with_retries) + 1
    for native in (True, False):
        a, b = fold(plain, native, window), fold(retried, native, window)
        strip = _without_positions
        assert strip(a[0]) == strip(b[0])  # the same state
        assert len(a[1]) == len(b[1])  # the same number of changes: retries publish none


def _without_positions(records: dict[bytes, Any]) -> dict[bytes, Any]:
    """Records without the WAL offset and log time of their last event, which a retry shifts."""
    return {k: r._replace(offset=0, log_time_ms=0) for k, r in records.items()}
