"""The listing (``GET /v1/contexts``): a store's page is bounded in what it looks at, and
pages merged from several sources, followed to the end, give every live context exactly
once, in id order, whatever the page sizes and scan bounds."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from lukhas_context.processors.listing import SourcePage, merge, start_after
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import PartitionStore, _prefix_end


def rec(version: int, live: bool = True) -> ContextRecord:
    return ContextRecord(version, b"{}" if live else None, b"\x01" * 8, None, version, 0)


def is_live(record: ContextRecord) -> bool:
    return record.doc is not None


def test_prefix_end_bounds_every_key_with_the_prefix() -> None:
    assert _prefix_end(b"") is None
    assert _prefix_end(b"ab") == b"ac"
    assert _prefix_end(b"a\xff") == b"b"
    assert _prefix_end(b"\xff\xff") is None


def test_a_store_page_is_bounded_by_limit_prefix_and_scan(tmp_path: Path) -> None:
    with PartitionStore(tmp_path / "p0") as store:
        records = {f"a:{i:03d}".encode(): rec(1, live=i % 3 != 0) for i in range(30)}
        records.update({b"b:1": rec(1), b"a": rec(1), b"a\xff": rec(1)})
        store.commit(records, 40)
        everything, resume = store.page(b"", b"a:", 100, 1000, is_live)
        assert resume is None
        assert [k for k, _ in everything] == sorted(
            k for k, r in records.items() if k.startswith(b"a:") and r.doc is not None
        )
        page, resume = store.page(b"", b"a:", 5, 1000, is_live)
        assert [k for k, _ in page] == [k for k, _ in everything[:5]] and resume == page[-1][0]
        # Ten records looked at, tombstones among them: fewer found, and where to go on.
        page, resume = store.page(b"", b"a:", 100, 10, is_live)
        assert resume == b"a:009" and [k for k, _ in page] == [
            k for k, _ in everything if k <= b"a:009"
        ]
        page, resume = store.page(start_after(b"a:027"), b"a:", 100, 1000, is_live)
        assert [k for k, _ in page] == [b"a:028", b"a:029"] and resume is None
        page, _ = store.page(b"", b"", 100, 1000, is_live)
        assert [k for k, _ in page][:2] == [b"a", b"a:001"] and page[-1][0] == b"b:1"


class Source:
    """A store stand-in: sorted keys, some dead, paged as ``PartitionStore.page`` pages."""

    def __init__(self, keys: dict[bytes, bool]) -> None:
        self.keys = sorted(keys.items())

    def page(self, start: bytes, limit: int, scan: int) -> SourcePage:
        found: list[tuple[bytes, bytes]] = []
        looked = 0
        for key, live in self.keys:
            if key < start:
                continue
            looked += 1
            if live:
                found.append((key, key))
            if len(found) >= limit or looked >= scan:
                return SourcePage(found, key)
        return SourcePage(found, None)


@settings(max_examples=300, deadline=None)
@given(
    sources=st.lists(
        st.dictionaries(st.binary(min_size=1, max_size=3), st.booleans(), max_size=40),
        min_size=1,
        max_size=5,
    ),
    limit=st.integers(1, 12),
    scan=st.integers(1, 15),
)
def test_pages_followed_to_the_end_give_each_live_key_once_in_order(
    sources: list[dict[bytes, bool]], limit: int, scan: int
) -> None:
    # Several sources may hold one key (two owners of a partition during a rebalance).
    stores = [Source(keys) for keys in sources]
    expected = sorted({k for keys in sources for k, live in keys.items() if live})
    got: list[bytes] = []
    after: bytes | None = None
    for _ in range(10_000):
        start = start_after(after)
        entries, after = merge([s.page(start, limit, scan) for s in stores], limit)
        assert len(entries) <= limit
        got.extend(entries)
        if after is None:
            break
    assert got == expected


def test_another_owners_page_is_taken_with_the_partitions_not_covered_here() -> None:
    from lukhas_context.processors.listing import remote_page

    entry = {"context_id": "a", "version": 1}
    data = {"contexts": [entry], "next_after": "a", "partitions": [0, 2]}
    assert remote_page(data, {0}, 3) == (SourcePage([(b"a", entry)], b"a"), [2])
    assert remote_page({**data, "next_after": None}, set(), 3) == (
        SourcePage([(b"a", entry)], None), [0, 2],
    )  # fmt: skip
    # An answer of another shape is left out (its partitions stay incomplete), not a 500.
    # Partitions that are not the WAL's (a string, a bool, past the count, negative) never
    # mark one complete.
    for odd in ({}, {**data, "contexts": [{"context_id": 1}]}, {**data, "partitions": None},
                {**data, "next_after": 5}, {**data, "contexts": None},
                {**data, "partitions": ["0"]}, {**data, "partitions": [True]},
                {**data, "partitions": [99]}, {**data, "partitions": [-1]}):  # fmt: skip
        assert remote_page(odd, set(), 3) is None
