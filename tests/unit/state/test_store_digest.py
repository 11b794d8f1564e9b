"""The partition store's digest and counts, its expiry index, and how it refuses to open.

The digest is the sum mod 2^64 of ``record_hash(id, stored bytes)`` over every stored record:
``summary()`` keeps it in O(1) per commit, ``verify()`` recomputes it, and any two stores that
hold the same records have the same digest however they got there.
"""

from __future__ import annotations

import os
import tempfile
import time
import types
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest
import xxhash
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rocksdict import Options, Rdict

import lukhas_context.state.store as store_module
from lukhas_context.state.exceptions import StoreCorruptError, StoreLockedError, StoreOpenError
from lukhas_context.state.manifest import Summary
from lukhas_context.state.record import NO_CHECKSUM, ContextRecord, encode_record
from lukhas_context.state.store import (
    CF_EXPIRY,
    FAMILIES,
    HASH_MASK,
    NEXT_OFFSET_KEY,
    SUMMARY_KEY,
    PartitionStore,
    StoreOptions,
    quarantine,
    record_hash,
)

T0 = 1_700_000_000_000


def rec(
    version: int,
    doc: bytes | None = b'{"a":1}',
    expires: int | None = None,
    offset: int | None = None,
) -> ContextRecord:
    """A record as the fold would make it (offset and log time follow the version)."""
    checksum = NO_CHECKSUM if doc is None else xxhash.xxh3_64_digest(doc)
    at = version if offset is None else offset
    return ContextRecord(version, doc, checksum, expires, at, T0 + at)


def expected_summary(records: Mapping[bytes, ContextRecord], next_offset: int) -> Summary:
    """The summary of a store that holds exactly ``records``, computed without the store."""
    digest = sum(record_hash(k, encode_record(r)) for k, r in records.items()) & HASH_MASK
    documents = sum(r.doc is not None for r in records.values())
    return Summary(next_offset, digest, len(records), documents)


def expected_index(records: Mapping[bytes, ContextRecord]) -> list[tuple[bytes, int, int]]:
    """The expiry index a store holding ``records`` must have: live records with a TTL."""
    due = [
        (r.expires_at_ms, k, r.version)
        for k, r in records.items()
        if r.doc is not None and r.expires_at_ms is not None
    ]
    return [(k, version, at) for at, k, version in sorted(due)]


def check_consistent(store: PartitionStore, records: Mapping[bytes, ContextRecord]) -> None:
    """The store holds ``records``; its summary, recomputed digest and index all agree."""
    summary = store.summary()
    assert summary == store.verify()
    assert summary == expected_summary(records, store.next_offset)
    assert dict(store.items()) == dict(records)
    assert list(store.expiry_index()) == expected_index(records)


def fold(log: Iterable[tuple[bytes, ContextRecord]]) -> dict[bytes, ContextRecord]:
    """The final state of a log: the last record of each key."""
    state: dict[bytes, ContextRecord] = {}
    for key, record in log:
        state[key] = record
    return state


def commit_in_rounds(
    store: PartitionStore, log: list[tuple[bytes, ContextRecord]], cuts: Iterable[int]
) -> None:
    """Commits ``log`` as a fold would: one commit per round ``[start, cut)``, each holding the
    last record per key of that round, with ``next_offset`` one past the round."""
    start = 0
    for cut in [*sorted(set(cuts)), len(log)]:
        if cut <= start:
            continue
        store.commit(fold(log[start:cut]), cut)
        start = cut


def sample_log(n: int = 60, keys: int = 7) -> list[tuple[bytes, ContextRecord]]:
    """A log over a few keys with overwrites, tombstones, re-creates and TTL changes."""
    log: list[tuple[bytes, ContextRecord]] = []
    versions: dict[bytes, int] = {}
    for offset in range(n):
        key = b"ctx-%d" % ((offset * 5) % keys)
        version = versions.get(key, 0) + 1
        versions[key] = version
        doc = None if offset % 9 == 4 else b'{"n":%d}' % offset
        expires = None if offset % 3 == 0 else T0 + 1000 * ((offset * 7) % 11)
        log.append((key, rec(version, doc, expires, offset)))
    return log


@contextmanager
def raw_db(path: Path) -> Iterator[Rdict]:
    """The store's RocksDB opened directly (to write what the store itself never would)."""
    families = {name: Options(raw_mode=True) for name in FAMILIES}
    db = Rdict(str(path), Options(raw_mode=True), column_families=families)
    try:
        yield db
    finally:
        db.close()


# --- record_hash and Summary -------------------------------------------------------------------


def test_record_hash_is_xxh3_of_the_length_prefixed_id_and_the_stored_bytes() -> None:
    assert record_hash(b"ab", b"xyz") == xxhash.xxh3_64_intdigest(b"\x02\x00abxyz")
    # The length prefix keeps the id/value boundary: same concatenation, different terms.
    assert record_hash(b"ab", b"cd") != record_hash(b"a", b"bcd")
    assert 0 <= record_hash(b"k" * 300, b"") <= HASH_MASK


def test_a_new_store_has_an_empty_summary(tmp_path: Path) -> None:
    with PartitionStore(tmp_path / "p0") as store:
        assert store.summary() == Summary(0, 0, 0, 0) == store.verify()
        assert store.summary().digest_hex == "0" * 16
    assert Summary(1, 0xAB, 1, 1).digest_hex == "00000000000000ab"


# --- digest ------------------------------------------------------------------------------------


def test_summary_equals_verify_after_every_commit(tmp_path: Path) -> None:
    log = sample_log()
    with PartitionStore(tmp_path / "p0") as store:
        for offset, (key, record) in enumerate(log):
            store.commit({key: record}, offset + 1)
            check_consistent(store, fold(log[: offset + 1]))
        assert store.summary().next_offset == len(log)


def test_digest_does_not_depend_on_how_the_log_was_split_into_rounds(tmp_path: Path) -> None:
    log = sample_log()
    final = fold(log)
    groupings = {
        "one round": [],
        "singletons": range(len(log)),
        "rounds of 3": range(0, len(log), 3),
        "rounds of 7": range(0, len(log), 7),
        "uneven": [1, 2, 10, 11, 40],
    }
    summaries = {}
    for name, cuts in groupings.items():
        with PartitionStore(tmp_path / name.replace(" ", "-")) as store:
            commit_in_rounds(store, log, cuts)
            check_consistent(store, final)
            summaries[name] = store.summary()
    assert len(set(summaries.values())) == 1, summaries
    assert summaries["one round"] == expected_summary(final, len(log))


def test_digest_does_not_depend_on_the_order_records_were_committed_in(tmp_path: Path) -> None:
    final = fold(sample_log())
    with PartitionStore(tmp_path / "forward") as forward:
        for key in sorted(final):
            forward.commit({key: final[key]}, 60)
        with PartitionStore(tmp_path / "backward") as backward:
            for key in sorted(final, reverse=True):
                backward.commit({key: final[key]}, 60)
            assert forward.summary() == backward.summary() == expected_summary(final, 60)


def test_overwriting_a_record_subtracts_its_old_term(tmp_path: Path) -> None:
    a, a2 = rec(1, b'{"v":1}', T0 + 5), rec(2, b'{"v":2}')
    with PartitionStore(tmp_path / "twice") as twice, PartitionStore(tmp_path / "once") as once:
        twice.commit({b"a": a}, 1)
        before = twice.summary()
        twice.commit({b"a": a2}, 2)
        once.commit({b"a": a2}, 2)
        assert twice.summary() == once.summary() == twice.verify()
        assert twice.summary().records == 1 and twice.summary().documents == 1
        assert twice.summary().digest == record_hash(b"a", encode_record(a2))
        assert twice.summary().digest != before.digest
        twice.commit({b"a": a2}, 3)  # the same bytes again: the digest does not move
        assert twice.summary().digest == once.summary().digest
        assert twice.summary().next_offset == 3


@pytest.mark.parametrize("reopen", [False, True], ids=["evicted-from-cache", "after-reopen"])
def test_overwrites_of_records_not_in_the_cache_subtract_the_stored_term(
    tmp_path: Path, reopen: bool
) -> None:
    """The previous bytes come from RocksDB (a multi-get), not from the read cache."""
    first = {b"k%02d" % i: rec(1, b'{"i":%d}' % i, T0 + i) for i in range(20)}
    second = {b"k%02d" % i: rec(2, None if i % 2 else b"{}", T0 + 100 - i) for i in range(20)}
    options = StoreOptions(cache_records=2)
    path = tmp_path / "p0"
    store = PartitionStore(path, options)
    try:
        store.commit(first, 20)
        if reopen:
            store.close()
            store = PartitionStore(path, options)
        assert len(store._cache) <= 2
        store.commit(second, 40)
        check_consistent(store, second)
        assert store.summary().documents == 10
    finally:
        store.close()
    with PartitionStore(tmp_path / "fresh") as fresh:
        fresh.commit(second, 40)
        assert fresh.summary() == expected_summary(second, 40)


def test_tombstones_count_as_records_but_not_documents(tmp_path: Path) -> None:
    with PartitionStore(tmp_path / "p0") as store:
        store.commit({b"a": rec(1), b"b": rec(1)}, 2)
        assert (store.summary().records, store.summary().documents) == (2, 2)
        store.commit({b"a": rec(2, None)}, 3)
        summary = store.summary()
        assert (summary.records, summary.documents) == (2, 1)
        assert summary == store.verify()
        assert summary.digest != 0  # a tombstone has a term of its own
        store.commit({b"b": rec(2, None), b"c": rec(1, None)}, 5)  # a key deleted unseen
        assert (store.summary().records, store.summary().documents) == (3, 0)
        assert store.summary() == store.verify()
        store.commit({b"a": rec(3)}, 6)  # re-created: a document again
        assert (store.summary().records, store.summary().documents) == (3, 1)
        check_consistent(store, {b"a": rec(3), b"b": rec(2, None), b"c": rec(1, None)})


def test_summary_survives_close_and_reopen(tmp_path: Path) -> None:
    log = sample_log()
    path = tmp_path / "p0"
    with PartitionStore(path) as store:
        commit_in_rounds(store, log, range(0, len(log), 4))
        before = store.summary()
    with PartitionStore(path) as store:
        assert store.summary() == before == store.verify()
        check_consistent(store, fold(log))
        store.commit({b"ctx-0": rec(99, b"{}")}, len(log) + 1)  # keeps counting from there
        after = {**fold(log), b"ctx-0": rec(99, b"{}")}
        check_consistent(store, after)
    with PartitionStore(path) as store:
        assert store.summary() == expected_summary(after, len(log) + 1)


def test_a_store_written_before_the_summary_existed_derives_it_once(tmp_path: Path) -> None:
    """Stores from before the digest (and the expiry index) have neither: both are derived
    from the records when such a store is opened, and written back."""
    path = tmp_path / "p0"
    log = sample_log()
    with PartitionStore(path) as store:
        commit_in_rounds(store, log, range(0, len(log), 5))
        before, index = store.summary(), list(store.expiry_index())
    assert index  # the sample has live records with a TTL
    with raw_db(path) as db:
        db.delete(SUMMARY_KEY)
        expiry = db.get_column_family(CF_EXPIRY)
        for key in list(expiry.keys()):
            expiry.delete(key)
        del expiry
    with PartitionStore(path) as store:
        assert store.summary() == before == store.verify()
        assert list(store.expiry_index()) == index
    with raw_db(path) as db:
        assert db.get(SUMMARY_KEY) is not None  # written back, not derived on every open
    with PartitionStore(path) as store:
        assert store.summary() == before


keys = st.sampled_from([b"a", b"b", b"c", b"d", b"e\xc3\xa9", b"f" * 40])
docs = st.one_of(st.none(), st.binary(max_size=24))
expiries = st.one_of(st.none(), st.integers(min_value=0, max_value=2**40))
steps = st.lists(st.tuples(keys, docs, expiries), max_size=40)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(steps=steps, cuts=st.lists(st.integers(0, 40)), other_cuts=st.lists(st.integers(0, 40)))
def test_digest_property_over_random_commits_in_random_rounds(
    steps: list[tuple[bytes, bytes | None, int | None]], cuts: list[int], other_cuts: list[int]
) -> None:
    log = [(key, rec(i + 1, doc, expires, i)) for i, (key, doc, expires) in enumerate(steps)]
    final = fold(log)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        with PartitionStore(root / "a", StoreOptions(cache_records=2)) as a:
            start = 0
            for cut in [*sorted(set(cuts)), len(log)]:
                if start < cut <= len(log):
                    a.commit(fold(log[start:cut]), cut)
                    assert a.summary() == a.verify()
                    assert list(a.expiry_index()) == expected_index(fold(log[:cut]))
                    start = cut
            with PartitionStore(root / "b") as b:
                commit_in_rounds(b, log, [c for c in other_cuts if c <= len(log)])
                with PartitionStore(root / "c") as c:
                    c.commit(final, len(log))
                    assert a.summary() == b.summary() == c.summary()
            check_consistent(a, final)
            assert a.summary() == expected_summary(final, len(log))
        with PartitionStore(root / "a") as a:
            assert a.summary() == expected_summary(final, len(log)) == a.verify()


# --- expiry index ------------------------------------------------------------------------------


def test_due_returns_live_records_due_at_now_earliest_first_up_to_limit(tmp_path: Path) -> None:
    records = {
        b"a": rec(3, expires=300),
        b"b": rec(1, expires=100),
        b"c": rec(2, expires=200),
        b"d": rec(4),  # no TTL
        b"e": rec(5, None, expires=50),  # a tombstone keeps no index entry
        b"f": rec(6, expires=1000),
        b"g": rec(7, expires=100),  # same due time as b: key order
    }
    with PartitionStore(tmp_path / "p0") as store:
        store.commit(records, 7)
        assert store.due(200, 10) == [(b"b", 1, 100), (b"g", 7, 100), (b"c", 2, 200)]
        assert store.due(200, 2) == [(b"b", 1, 100), (b"g", 7, 100)]
        assert store.due(100, 10) == [(b"b", 1, 100), (b"g", 7, 100)]  # due at, not after
        assert store.due(99, 10) == []
        assert store.due(10**15, 0) == []
        everything = [(b"b", 1, 100), (b"g", 7, 100), (b"c", 2, 200), (b"a", 3, 300)]
        assert store.due(10**15, 10) == [*everything, (b"f", 6, 1000)]
        assert list(store.expiry_index()) == store.due(10**15, 100)
        assert all(store.get(k) is not None and store.get(k).doc for k, _, _ in everything)


def test_the_index_follows_ttl_changes_deletes_and_recreates(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    with PartitionStore(path) as store:
        store.commit({b"a": rec(1, expires=100), b"b": rec(1, expires=100)}, 1)
        assert list(store.expiry_index()) == [(b"a", 1, 100), (b"b", 1, 100)]
        store.commit({b"a": rec(2, expires=500)}, 2)  # TTL moved later
        assert list(store.expiry_index()) == [(b"b", 1, 100), (b"a", 2, 500)]
        assert store.due(200, 10) == [(b"b", 1, 100)]
        store.commit({b"a": rec(3, expires=500)}, 3)  # same due time, new version
        assert list(store.expiry_index()) == [(b"b", 1, 100), (b"a", 3, 500)]
        store.commit({b"a": rec(4)}, 4)  # TTL cleared
        assert list(store.expiry_index()) == [(b"b", 1, 100)]
        store.commit({b"a": rec(5, expires=50)}, 5)  # TTL set again, earlier
        assert list(store.expiry_index()) == [(b"a", 5, 50), (b"b", 1, 100)]
        store.commit({b"b": rec(2, None, expires=100)}, 6)  # deleted: TTL kept, no entry
        assert list(store.expiry_index()) == [(b"a", 5, 50)]
        store.commit({b"b": rec(3, expires=70)}, 7)  # re-created with a TTL
        assert store.due(10**15, 10) == [(b"a", 5, 50), (b"b", 3, 70)]
        check_consistent(store, {b"a": rec(5, expires=50), b"b": rec(3, expires=70)})
    with PartitionStore(path) as store:  # survives reopen
        assert store.due(60, 10) == [(b"a", 5, 50)]
        # Previous records now come from RocksDB, not from the cache.
        store.commit({b"a": rec(6, None, expires=50), b"b": rec(4, expires=80)}, 8)
        assert list(store.expiry_index()) == [(b"b", 4, 80)]
    with PartitionStore(path) as store:
        assert list(store.expiry_index()) == [(b"b", 4, 80)]
        assert store.due(79, 10) == [] and store.due(80, 10) == [(b"b", 4, 80)]


# --- opening -----------------------------------------------------------------------------------


def test_a_directory_with_files_but_no_current_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    path.mkdir()
    (path / "000012.sst").write_bytes(b"remains of an older store")
    with pytest.raises(StoreOpenError) as info:
        PartitionStore(path)
    assert info.value.path == path and str(path) in str(info.value)
    assert not isinstance(info.value, StoreLockedError)
    assert [p.name for p in path.iterdir()] == ["000012.sst"]  # nothing created over it


def test_a_store_that_lost_current_is_refused_not_recreated(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    with PartitionStore(path) as store:
        store.commit({b"a": rec(1)}, 1)
    (path / "CURRENT").unlink()
    names = sorted(p.name for p in path.iterdir())
    with pytest.raises(StoreOpenError, match="CURRENT"):
        PartitionStore(path)
    assert sorted(p.name for p in path.iterdir()) == names
    assert not (path / "CURRENT").exists()


def test_an_empty_directory_opens_as_a_new_store(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    path.mkdir()
    with PartitionStore(path) as store:
        assert store.summary() == Summary(0, 0, 0, 0)
    assert (path / "CURRENT").is_file()


def test_an_empty_manifest_is_refused_and_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    with PartitionStore(path) as store:
        store.commit({b"a": rec(1)}, 1)
    manifests = list(path.glob("MANIFEST-*"))
    assert manifests
    for manifest in manifests:
        os.truncate(manifest, 0)
    for _ in range(2):  # the failed open released RocksDB's lock: the same error again
        with pytest.raises(StoreOpenError) as info:
            PartitionStore(path)
        assert type(info.value) is StoreCorruptError  # quarantined, not a transient error
        assert info.value.path == path and str(path) in str(info.value)


def test_an_undecodable_next_offset_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    with PartitionStore(path) as store:
        store.commit({b"a": rec(1)}, 1)
    with raw_db(path) as db:
        db.put(NEXT_OFFSET_KEY, b"\x01\x02")
    for _ in range(2):
        with pytest.raises(StoreOpenError, match="next_offset of 2 bytes") as info:
            PartitionStore(path)
        assert type(info.value) is StoreCorruptError  # quarantined, not a transient error


def test_an_undecodable_summary_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    with PartitionStore(path) as store:
        store.commit({b"a": rec(1)}, 1)
    with raw_db(path) as db:
        db.put(SUMMARY_KEY, b"\x00" * 5)
    for _ in range(2):
        with pytest.raises(StoreOpenError, match="summary of 5 bytes") as info:
            PartitionStore(path)
        assert type(info.value) is StoreCorruptError  # quarantined, not a transient error


def test_opening_a_store_twice_raises_store_locked(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    with PartitionStore(path) as first:
        first.commit({b"a": rec(1)}, 1)
        with pytest.raises(StoreLockedError) as info:
            PartitionStore(path)
        assert isinstance(info.value, StoreOpenError)
        assert info.value.path == path and str(path) in str(info.value)
        first.commit({b"b": rec(1)}, 2)  # the first handle is unaffected
        assert first.get(b"a") == rec(1)
    with PartitionStore(path) as again:  # and the lock is free once it is closed
        assert again.next_offset == 2 and again.summary() == again.verify()


def test_close_is_idempotent_and_releases_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "p0"
    store = PartitionStore(path)
    store.commit({b"a": rec(1)}, 1)
    store.close()
    store.close()
    with PartitionStore(path) as again:
        assert again.get(b"a") == rec(1)


# --- quarantine --------------------------------------------------------------------------------


def test_quarantine_moves_the_directory_and_keeps_every_file(tmp_path: Path) -> None:
    path, into = tmp_path / "p0", tmp_path / "quarantine" / "nested"
    with PartitionStore(path) as store:
        store.commit({b"a": rec(1), b"b": rec(1, None)}, 2)
        summary = store.summary()
    names = sorted(p.name for p in path.iterdir())
    dest = quarantine(path, into, "test")
    assert not path.exists()
    assert dest.parent == into and dest.name.startswith("p0-")
    assert sorted(p.name for p in dest.iterdir()) == names
    with PartitionStore(dest) as moved:  # still the same store, just elsewhere
        assert moved.summary() == summary == moved.verify()


def test_quarantine_names_are_unique_within_one_second(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frozen = time.gmtime(1_800_000_000)
    clock = types.SimpleNamespace(strftime=time.strftime, gmtime=lambda *_: frozen)
    monkeypatch.setattr(store_module, "time", clock)
    path, into = tmp_path / "p0", tmp_path / "q"
    dests = []
    for i in range(3):
        path.mkdir()
        (path / "marker").write_text(str(i))
        dests.append(quarantine(path, into, f"round {i}"))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", frozen)
    assert [d.name for d in dests] == [f"p0-{stamp}", f"p0-{stamp}-2", f"p0-{stamp}-3"]
    assert [(d / "marker").read_text() for d in dests] == ["0", "1", "2"]


def test_quarantine_twice_in_a_row_with_the_real_clock(tmp_path: Path) -> None:
    path, into = tmp_path / "p0", tmp_path / "q"
    dests = set()
    for _ in range(2):
        path.mkdir()
        (path / "CURRENT").write_text("x")
        dests.add(quarantine(path, into, "twice"))
    assert len(dests) == 2 and all(d.is_dir() for d in dests)


def test_a_corrupt_store_can_be_quarantined_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "p0"
    with PartitionStore(path) as store:
        store.commit({b"a": rec(1)}, 1)
    for manifest in path.glob("MANIFEST-*"):
        os.truncate(manifest, 0)
    with pytest.raises(StoreOpenError) as info:
        PartitionStore(path)
    with caplog.at_level("ERROR", logger=store_module.__name__):
        dest = quarantine(path, tmp_path / "q", info.value)
    assert str(path) in caplog.text and str(dest) in caplog.text
    assert any(p.name.startswith("MANIFEST-") for p in dest.iterdir())
    with PartitionStore(path) as fresh:
        assert fresh.summary() == Summary(0, 0, 0, 0) and fresh.get(b"a") is None
