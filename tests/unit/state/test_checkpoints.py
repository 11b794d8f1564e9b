"""Checkpoints of partition stores (``state.checkpoints``) and the events that mark and expire
(``streams.barriers``): layout, manifests and their checksum, the life cycle, and installs."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest
import xxhash
from hypothesis import given
from hypothesis import strategies as st

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import BARRIER_CONTEXT_ID, CheckpointBarrier, Expire
from lukhas_context.state.checkpoints import MANIFEST_NAME, PARTIAL_PREFIX, CheckpointDir
from lukhas_context.state.exceptions import CheckpointError, InvalidCheckpointError
from lukhas_context.state.journal import ENTRY, EntryStatus, encode_block
from lukhas_context.state.manifest import Manifest, Summary, check_checkpoint_id
from lukhas_context.state.record import NO_CHECKSUM, ContextRecord
from lukhas_context.state.store import PartitionStore
from lukhas_context.streams.barriers import (
    barrier_event,
    checkpoint_id_for_slot,
    expire_event,
    published_manifest,
)

TOPIC = "lukhas.wal"
T0 = 1_700_000_000_000


def rec(
    version: int, doc: bytes | None = b'{"a":1}', expires: int | None = None, offset: int = 0
) -> ContextRecord:
    checksum = NO_CHECKSUM if doc is None else xxhash.xxh3_64_digest(doc)
    return ContextRecord(version, doc, checksum, expires, offset, T0 + offset)


def journal_block(first: int, end: int) -> tuple[int, bytes]:
    entries = b"".join(
        ENTRY.pack(o, EntryStatus.APPLIED, 1, o.to_bytes(16, "big"), o) for o in range(first, end)
    )
    return first, encode_block(entries, {})


def fill(store: PartitionStore, start: int, end: int) -> None:
    """Commits offsets ``[start, end)`` in rounds of 10: documents, TTLs, tombstones and the
    journal, so a checkpoint has all of the store's column families to carry."""
    for first in range(start, end, 10):
        last = min(first + 10, end)
        records = {
            b"ctx-%d" % (o % 13): rec(
                o + 1,
                None if o % 7 == 3 else b'{"o":%d}' % o,
                None if o % 2 else T0 + 1000 * o,
                o,
            )
            for o in range(first, last)
        }
        store.commit(records, last, journal_block(first, last))


def snapshot(store: PartitionStore) -> tuple[object, ...]:
    """Everything a store holds that a restore must reproduce."""
    return (
        store.summary(),
        store.verify(),
        list(store.items()),
        list(store.expiry_index()),
        list(store.journal_since(0)),
    )


def file_contents(path: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(path.iterdir()) if p.is_file()}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[PartitionStore]:
    with PartitionStore(tmp_path / "live" / "p3") as store:
        fill(store, 0, 40)
        yield store


@pytest.fixture
def checkpoints(tmp_path: Path) -> CheckpointDir:
    return CheckpointDir(tmp_path / "checkpoints", TOPIC)


# --- ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["", "../x", "a/b", "x" * 65, ".hidden", ".partial-x", "..", "a b", "a\n", "é", "/abs"],
)
def test_check_checkpoint_id_rejects_what_cannot_name_a_directory(bad: str) -> None:
    with pytest.raises(InvalidCheckpointError, match="must be 1-64 characters"):
        check_checkpoint_id(bad)


@pytest.mark.parametrize("good", ["ck-2026.11_28", "a", "9", "x" * 64, "auto-123", "A.b-C_d"])
def test_check_checkpoint_id_accepts_and_returns_valid_ids(good: str) -> None:
    assert check_checkpoint_id(good) == good


def test_paths_refuse_invalid_ids(checkpoints: CheckpointDir, store: PartitionStore) -> None:
    for bad in ("../escape", "a/b", ""):
        with pytest.raises(InvalidCheckpointError):
            checkpoints.path(3, bad)
        with pytest.raises(InvalidCheckpointError):
            checkpoints.create(store, 3, bad)
    assert not (checkpoints.root.parent / "escape").exists()
    assert not checkpoints.root.exists()  # nothing was written


# --- create ------------------------------------------------------------------------------------


def test_create_writes_a_checkpoint_with_a_matching_manifest(
    checkpoints: CheckpointDir, store: PartitionStore
) -> None:
    summary = store.summary()
    manifest = checkpoints.create(store, 3, "ck-1")
    path = checkpoints.root / "partition-3" / "ck-1"
    assert checkpoints.path(3, "ck-1") == path and path.is_dir()
    assert (path / MANIFEST_NAME).is_file() and (path / "CURRENT").is_file()
    assert manifest.matches(summary) and manifest.matches(store.summary())
    assert (manifest.checkpoint_id, manifest.partition, manifest.topic) == ("ck-1", 3, TOPIC)
    assert (manifest.next_offset, manifest.records, manifest.documents) == (40, 13, 11)
    assert manifest.digest == summary.digest
    assert abs(manifest.created_at_ms - T0) < 10 * 365 * 86_400_000  # a wall time in ms
    assert checkpoints.load(path) == manifest
    assert checkpoints.find(3, "ck-1") == manifest
    assert checkpoints.valid(3) == [manifest]
    assert [p.name for p in (checkpoints.root / "partition-3").iterdir()] == ["ck-1"]


def test_manifest_json_holds_its_fields_and_checksum(
    checkpoints: CheckpointDir, store: PartitionStore
) -> None:
    manifest = checkpoints.create(store, 3, "ck-1")
    raw = (checkpoints.path(3, "ck-1") / MANIFEST_NAME).read_bytes()
    assert raw == manifest.to_json()
    fields = orjson.loads(raw)
    assert fields["format"] == 1 and fields["digest"] == store.summary().digest_hex
    assert len(fields["digest"]) == 16 and isinstance(fields["checksum"], str)
    assert Manifest.from_json(raw, "here") == manifest


def test_manifest_matches_compares_offset_digest_and_counts() -> None:
    manifest = Manifest("c", 0, TOPIC, 10, 3, 2, 0xABC, T0)
    assert manifest.matches(Summary(10, 0xABC, 3, 2))
    for other in (
        Summary(11, 0xABC, 3, 2),
        Summary(10, 0xABD, 3, 2),
        Summary(10, 0xABC, 4, 2),
        Summary(10, 0xABC, 3, 1),
    ):
        assert not manifest.matches(other)


def test_create_again_with_equal_state_returns_the_existing_checkpoint(
    checkpoints: CheckpointDir, store: PartitionStore
) -> None:
    first = checkpoints.create(store, 3, "ck-1")
    before = file_contents(checkpoints.path(3, "ck-1"))
    again = checkpoints.create(store, 3, "ck-1")
    assert again == first  # same created_at_ms: the manifest was not rewritten
    assert file_contents(checkpoints.path(3, "ck-1")) == before


def test_create_again_with_a_different_state_is_corruption(
    checkpoints: CheckpointDir, store: PartitionStore, tmp_path: Path
) -> None:
    first = checkpoints.create(store, 3, "ck-1")
    fill(store, 40, 45)
    # Another offset: the id was reused for another barrier, which is said as such.
    with pytest.raises(CheckpointError, match="give each checkpoint a new id") as info:
        checkpoints.create(store, 3, "ck-1")
    assert not isinstance(info.value, InvalidCheckpointError)
    # Same offset, different records: the digest alone tells them apart.
    with PartitionStore(tmp_path / "other") as other:
        fill(other, 0, 39)
        other.commit({b"ctx-0": rec(999, b'{"odd":1}', None, 39)}, 40)
        assert other.summary().next_offset == first.next_offset
        with pytest.raises(CheckpointError, match="corrupt") as corrupt:
            checkpoints.create(other, 3, "ck-1")
        assert first.digest.to_bytes(8, "big").hex() in str(corrupt.value)
    assert checkpoints.load(checkpoints.path(3, "ck-1")) == first


def test_a_checkpoint_interrupted_before_its_manifest_is_never_listed(
    checkpoints: CheckpointDir, store: PartitionStore
) -> None:
    def crash() -> None:
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError, match="killed"):
        checkpoints.create(store, 3, "ck-1", before_manifest=crash)
    parent = checkpoints.partition_dir(3)
    partial = parent / f"{PARTIAL_PREFIX}ck-1"
    assert partial.is_dir() and (partial / "CURRENT").is_file()
    assert not (partial / MANIFEST_NAME).exists()
    assert not checkpoints.path(3, "ck-1").exists()
    assert checkpoints.valid(3) == []
    with pytest.raises(InvalidCheckpointError):
        checkpoints.find(3, "ck-1")
    manifest = checkpoints.create(store, 3, "ck-1")  # the next create clears it
    assert not partial.exists()
    assert checkpoints.valid(3) == [manifest]


def test_remove_partial_removes_hidden_partials_only(
    checkpoints: CheckpointDir, store: PartitionStore
) -> None:
    assert checkpoints.remove_partial(3) == []  # no partition directory yet
    kept = checkpoints.create(store, 3, "ck-1")
    parent = checkpoints.partition_dir(3)
    partials = [parent / f"{PARTIAL_PREFIX}a", parent / f"{PARTIAL_PREFIX}b"]
    for partial in partials:
        partial.mkdir()
        (partial / "000001.sst").write_bytes(b"half")
    (parent / ".other-hidden").mkdir()
    assert sorted(checkpoints.remove_partial(3)) == sorted(partials)
    assert sorted(p.name for p in parent.iterdir()) == [".other-hidden", "ck-1"]
    assert checkpoints.valid(3) == [kept]
    (parent / f"{PARTIAL_PREFIX}c").mkdir()
    checkpoints.create(store, 3, "ck-2")  # any later create of the partition clears them
    assert not (parent / f"{PARTIAL_PREFIX}c").exists()


def test_checkpoints_of_different_partitions_are_apart(
    checkpoints: CheckpointDir, store: PartitionStore
) -> None:
    three = checkpoints.create(store, 3, "ck-1")
    four = checkpoints.create(store, 4, "ck-1")
    assert checkpoints.valid(3) == [three] and checkpoints.valid(4) == [four]
    assert checkpoints.valid(5) == []
    assert four.partition == 4 and four.digest == three.digest


# --- load and valid ----------------------------------------------------------------------------


def edit_offset(raw: bytes) -> bytes:
    fields = orjson.loads(raw)
    edited = raw.replace(b'"next_offset": %d' % fields["next_offset"], b'"next_offset": %d' % 7)
    assert edited != raw
    return edited


def resign(fields: dict[str, object]) -> bytes:
    """Manifest bytes with a correct checksum over whatever ``fields`` say."""
    fields = {k: v for k, v in fields.items() if k != "checksum"}
    fields["checksum"] = xxhash.xxh3_64_hexdigest(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))
    return orjson.dumps(fields)


EDITS = {
    "value edited": edit_offset,
    "digest edited": lambda raw: raw.replace(b'"digest": "', b'"digest": "f', 1),
    "checksum edited": lambda raw: resign(orjson.loads(raw)).replace(
        b'"checksum":"', b'"checksum":"0'
    ),
    "checksum missing": lambda raw: orjson.dumps(
        {k: v for k, v in orjson.loads(raw).items() if k != "checksum"}
    ),
    "truncated": lambda raw: raw[: len(raw) // 2],
    "empty": lambda raw: b"",
    "not an object": lambda raw: b"[1, 2]",
    "not utf-8": lambda raw: b"\xff\xfe" + raw,
    "unknown format": lambda raw: resign({**orjson.loads(raw), "format": 2}),
    "unknown field": lambda raw: resign({**orjson.loads(raw), "extra": 1}),
    "field missing": lambda raw: resign(
        {k: v for k, v in orjson.loads(raw).items() if k != "records"}
    ),
    "digest not hex": lambda raw: resign({**orjson.loads(raw), "digest": "xyz"}),
    "bad id inside": lambda raw: resign({**orjson.loads(raw), "checkpoint_id": "../x"}),
}


@pytest.mark.parametrize("edit", EDITS.values(), ids=EDITS.keys())
def test_an_edited_manifest_is_rejected_and_skipped_but_kept(
    checkpoints: CheckpointDir, store: PartitionStore, edit: Callable[[bytes], bytes]
) -> None:
    good = checkpoints.create(store, 3, "good")
    checkpoints.create(store, 3, "ck-1")
    path = checkpoints.path(3, "ck-1")
    manifest_file = path / MANIFEST_NAME
    manifest_file.write_bytes(edit(manifest_file.read_bytes()))
    with pytest.raises(InvalidCheckpointError) as info:
        checkpoints.load(path)
    if edit is not EDITS["bad id inside"]:  # that one is refused for the id it names
        assert str(manifest_file) in str(info.value)
    with pytest.raises(InvalidCheckpointError):
        checkpoints.find(3, "ck-1")
    assert checkpoints.valid(3) == [good]
    assert checkpoints.prune(3, 0) == [checkpoints.path(3, "good")]  # prunes valid ones only
    assert path.is_dir() and manifest_file.is_file()  # never deleted


def test_a_value_edit_fails_the_checksum(checkpoints: CheckpointDir, store: PartitionStore) -> None:
    checkpoints.create(store, 3, "ck-1")
    manifest_file = checkpoints.path(3, "ck-1") / MANIFEST_NAME
    manifest_file.write_bytes(edit_offset(manifest_file.read_bytes()))
    with pytest.raises(InvalidCheckpointError, match="checksum"):
        checkpoints.load(checkpoints.path(3, "ck-1"))


def test_a_checkpoint_without_manifest_is_rejected(
    checkpoints: CheckpointDir, store: PartitionStore
) -> None:
    checkpoints.create(store, 3, "ck-1")
    path = checkpoints.path(3, "ck-1")
    (path / MANIFEST_NAME).unlink()
    with pytest.raises(InvalidCheckpointError, match="no manifest"):
        checkpoints.load(path)
    (checkpoints.partition_dir(3) / "empty").mkdir()
    (checkpoints.partition_dir(3) / "a-file").write_text("not a checkpoint")
    assert checkpoints.valid(3) == []
    assert path.is_dir()


def test_a_checkpoint_that_is_not_where_its_manifest_says_is_rejected(
    checkpoints: CheckpointDir, store: PartitionStore, tmp_path: Path
) -> None:
    checkpoints.create(store, 3, "ck-1")
    source = checkpoints.path(3, "ck-1")
    renamed = checkpoints.partition_dir(3) / "ck-2"
    os.rename(source, renamed)
    with pytest.raises(InvalidCheckpointError, match="holds ck-1"):
        checkpoints.load(renamed)
    moved = checkpoints.partition_dir(4) / "ck-1"
    moved.parent.mkdir()
    os.rename(renamed, moved)
    with pytest.raises(InvalidCheckpointError, match="partition 3"):
        checkpoints.load(moved)
    assert checkpoints.valid(4) == []
    os.rename(moved, source)
    other_topic = CheckpointDir(checkpoints.root, "another.topic")
    with pytest.raises(InvalidCheckpointError, match=TOPIC):
        other_topic.load(source)
    assert other_topic.valid(3) == []
    assert checkpoints.load(source).checkpoint_id == "ck-1"


# --- valid and prune ---------------------------------------------------------------------------


def test_valid_lists_newest_first_and_prune_keeps_the_newest(
    checkpoints: CheckpointDir, store: PartitionStore
) -> None:
    # Names sort the other way round from offsets: order must come from next_offset.
    made = {}
    for checkpoint_id, end in (("z", 50), ("m", 60), ("b", 70), ("a", 80)):
        fill(store, store.next_offset, end)
        made[checkpoint_id] = checkpoints.create(store, 3, checkpoint_id)
    assert [m.next_offset for m in checkpoints.valid(3)] == [80, 70, 60, 50]
    assert [m.checkpoint_id for m in checkpoints.valid(3)] == ["a", "b", "m", "z"]
    assert checkpoints.prune(3, 5) == []
    removed = checkpoints.prune(3, 2)
    assert sorted(removed) == sorted([checkpoints.path(3, "m"), checkpoints.path(3, "z")])
    assert not any(p.exists() for p in removed)
    assert checkpoints.valid(3) == [made["a"], made["b"]]
    assert checkpoints.prune(3, 2) == []
    assert checkpoints.prune(3, 1) == [checkpoints.path(3, "b")]
    assert checkpoints.valid(3) == [made["a"]]


# --- install -----------------------------------------------------------------------------------


def test_install_gives_a_store_equal_to_the_one_checkpointed(
    checkpoints: CheckpointDir, store: PartitionStore, tmp_path: Path
) -> None:
    before = snapshot(store)
    manifest = checkpoints.create(store, 3, "ck-1")
    dest = tmp_path / "restored" / "p3"
    checkpoints.install(manifest, dest)
    assert not (dest / MANIFEST_NAME).exists()
    assert not dest.with_name("p3.installing").exists()
    with PartitionStore(dest) as restored:
        assert snapshot(restored) == before
        assert manifest.matches(restored.summary()) and manifest.matches(restored.verify())
        assert restored.outcome(17) == store.outcome(17) is not None
    source = checkpoints.path(3, "ck-1")
    ssts = [p.name for p in source.iterdir() if p.name.endswith(".sst")]
    assert ssts  # the checkpoint flushed the memtables
    for name in ssts:  # immutable: hard-linked, not copied
        assert (source / name).stat().st_ino == (dest / name).stat().st_ino


def test_changes_after_a_checkpoint_never_reach_it(
    checkpoints: CheckpointDir, store: PartitionStore, tmp_path: Path
) -> None:
    before = snapshot(store)
    manifest = checkpoints.create(store, 3, "ck-1")
    source = checkpoints.path(3, "ck-1")
    files = file_contents(source)
    first = tmp_path / "first"
    checkpoints.install(manifest, first)
    with PartitionStore(first) as restored:  # change the installed copy...
        fill(restored, 40, 200)
        restored.commit({b"ctx-%d" % i: rec(1000 + i, None) for i in range(13)}, 201)
        assert not manifest.matches(restored.summary())
    fill(store, 40, 120)  # ...and the live store
    assert file_contents(source) == files
    second = tmp_path / "second"
    checkpoints.install(checkpoints.find(3, "ck-1"), second)
    with PartitionStore(second) as again:
        assert snapshot(again) == before
        assert manifest.matches(again.summary())


def test_install_refuses_an_existing_destination_and_replaces_a_stale_partial(
    checkpoints: CheckpointDir, store: PartitionStore, tmp_path: Path
) -> None:
    manifest = checkpoints.create(store, 3, "ck-1")
    dest = tmp_path / "p3"
    dest.mkdir()
    (dest / "keep").write_text("mine")
    with pytest.raises(CheckpointError, match="exists"):
        checkpoints.install(manifest, dest)
    assert [p.name for p in dest.iterdir()] == ["keep"]
    dest = tmp_path / "fresh"
    stale = tmp_path / "fresh.installing"
    stale.mkdir()
    (stale / "junk").write_text("left by a crash")
    checkpoints.install(manifest, dest)
    assert not stale.exists() and not (dest / "junk").exists()
    with PartitionStore(dest) as restored:
        assert manifest.matches(restored.verify())


# --- barriers and expiries ---------------------------------------------------------------------


def test_barrier_events_have_deterministic_ids() -> None:
    event = barrier_event("ck-1", 2)
    assert barrier_event("ck-1", 2) == event
    assert len(event.event_id) == 16
    assert event.context_id == BARRIER_CONTEXT_ID
    assert event.op == CheckpointBarrier("ck-1")
    assert barrier_event("ck-1", 3).event_id != event.event_id
    assert barrier_event("ck-2", 2).event_id != event.event_id
    assert barrier_event("ck-12", 1).event_id != barrier_event("ck-1", 21).event_id
    ids = {barrier_event(f"ck-{c}", p).event_id for c in range(20) for p in range(20)}
    assert len(ids) == 400
    codec = EventCodec()
    assert codec.encode(barrier_event("ck-1", 2)) == codec.encode(event)  # identical bytes
    assert codec.decode(codec.encode(event)) == event


def test_barrier_events_refuse_invalid_checkpoint_ids() -> None:
    for bad in ("", "../x", "a/b"):
        with pytest.raises(InvalidCheckpointError):
            barrier_event(bad, 0)


def test_expire_events_have_deterministic_ids() -> None:
    event = expire_event(b"user:42", 7)
    assert expire_event(b"user:42", 7) == event
    assert len(event.event_id) == 16
    assert event.context_id == "user:42" and event.op == Expire(7)
    assert expire_event(b"user:42", 8).event_id != event.event_id
    assert expire_event(b"user:43", 7).event_id != event.event_id
    assert expire_event(b"1", 23).event_id != expire_event(b"31", 2).event_id
    assert expire_event(b"x", 1).event_id != barrier_event("x", 1).event_id
    assert expire_event("é".encode(), 1).context_id == "é"
    ids = {expire_event(b"k%d" % k, v).event_id for k in range(20) for v in range(20)}
    assert len(ids) == 400
    codec = EventCodec()
    assert codec.encode(expire_event(b"user:42", 7)) == codec.encode(event)
    assert codec.decode(codec.encode(event)) == event


def test_checkpoint_id_for_slot_names_each_interval_once() -> None:
    assert checkpoint_id_for_slot(300, 600.0) == checkpoint_id_for_slot(300, 899.999) == "auto-2"
    assert checkpoint_id_for_slot(300, 900.0) == "auto-3"
    assert checkpoint_id_for_slot(300, 599.999) == "auto-1"
    now = 1_795_832_094.5
    assert checkpoint_id_for_slot(60, now) == checkpoint_id_for_slot(60, now - now % 60)
    assert checkpoint_id_for_slot(60, now) != checkpoint_id_for_slot(60, now + 60)
    assert check_checkpoint_id(checkpoint_id_for_slot(60, now)) == "auto-29930534"


@given(
    interval=st.integers(1, 86_400),
    slot=st.integers(0, 10**8),
    a=st.floats(0, 1, exclude_max=True),
    b=st.floats(0, 1, exclude_max=True),
)
def test_checkpoint_id_for_slot_property(interval: int, slot: int, a: float, b: float) -> None:
    start = slot * interval
    # Whole seconds inside one interval: exact in floating point.
    t1, t2 = start + int(a * interval), start + int(b * interval)
    same = checkpoint_id_for_slot(interval, t1)
    assert same == checkpoint_id_for_slot(interval, t2) == f"auto-{slot}"
    assert checkpoint_id_for_slot(interval, t1 + interval) != same
    assert checkpoint_id_for_slot(interval, start - 1) != same
    check_checkpoint_id(same)


# ---- manifests published on the checkpoints topic (issue 9: anyone may write there) ----


def published(manifest: Manifest, **override: object) -> bytes:
    """A manifest's bytes, fields overridden and the checksum recomputed (as a forger can)."""
    fields = manifest.fields()
    fields.update(override)
    fields["checksum"] = xxhash.xxh3_64_hexdigest(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))
    return orjson.dumps(fields)


MANIFEST = Manifest("ck-9", 1, TOPIC, 42, 3, 2, 0xABC, T0)
OFFSETS = {0: 10, 1: 41, 2: 7}


def test_a_published_manifest_of_the_request_is_taken() -> None:
    got = published_manifest(b"ck-9/1", MANIFEST.to_json(), "ck-9", OFFSETS, TOPIC)
    assert got is not None and got["partition"] == 1 and got["next_offset"] == 42
    assert got["digest"] == f"{0xABC:016x}"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        (b"ck-9/1", b"\xff garbage"),
        (b"ck-9/1", b"[]"),
        (b"ck-9/1", b"{}"),
        (b"ck-9/1", b"null"),
        (b"ck-9/1", b'{"partition": 99999999999999999999999}'),
        (b"ck-9/1", None),
        (b"ck-9/1", MANIFEST.to_json().replace(b'"records"', b'"recordz"')),
        (b"ck-9/1", published(MANIFEST, partition="1")),
        (b"ck-9/1", published(MANIFEST, next_offset=42.0)),
        (b"ck-9/1", published(MANIFEST, next_offset=True)),
        (b"ck-9/1", published(MANIFEST, next_offset=-1)),
        (b"ck-9/1", published(MANIFEST, records=-5)),
        (b"ck-9/1", published(MANIFEST, checkpoint_id="ck-8")),
        (b"ck-9/1", published(MANIFEST, topic="other.wal")),
        (b"ck-9/1", published(MANIFEST, next_offset=41)),  # an older barrier of the id
        (b"ck-9/2", MANIFEST.to_json()),  # its key names another partition
        (b"ck-9/1x", MANIFEST.to_json()),
        (b"ck-90/1", MANIFEST.to_json()),
        (None, MANIFEST.to_json()),
    ],
)
def test_anything_else_on_the_checkpoints_topic_is_passed_over(
    key: bytes | None, value: bytes | None
) -> None:
    assert published_manifest(key, value, "ck-9", OFFSETS, TOPIC) is None


@given(st.binary(max_size=300))
def test_any_bytes_on_the_checkpoints_topic_are_a_manifest_or_passed_over(value: bytes) -> None:
    got = published_manifest(b"ck-9/1", value, "ck-9", OFFSETS, TOPIC)
    assert got is None or got["next_offset"] == 42


def test_a_tool_building_aside_leaves_a_bad_checkpoint_where_it_is(
    store: PartitionStore, tmp_path: Path
) -> None:
    """A worker's restore renames a checkpoint that fails verification ``.corrupt-ID``; the
    builder of ``verify`` and ``replay --as-of`` (``leave_checkpoints``) changes nothing live."""
    from lukhas_context.processors.config import WorkerConfig
    from lukhas_context.processors.opener import StoreOpener
    from lukhas_context.state.exceptions import CheckpointError
    from lukhas_context.streams.topics import Topics

    topics = Topics()
    live = CheckpointDir(tmp_path / "ck", topics.events)
    manifest = live.create(store, 3, "ck-bad")
    with PartitionStore(live.path(3, "ck-bad")) as tampered:  # consistent, but not the manifest's
        tampered.commit({b"ctx-x": rec(1)}, tampered.next_offset)
    config = WorkerConfig("unused:1", tmp_path / "scratch", topics=topics,
                          checkpoint_dir=tmp_path / "ck")  # fmt: skip
    with pytest.raises(CheckpointError, match="left in"):
        StoreOpener(config, leave_checkpoints=True).from_checkpoint(manifest)
    assert live.path(3, "ck-bad").is_dir()
    assert not list((tmp_path / "ck").rglob(".corrupt-*"))
    with pytest.raises(CheckpointError, match="moved to"):
        StoreOpener(config).from_checkpoint(manifest)
    assert list((tmp_path / "ck").rglob(".corrupt-ck-bad*"))
