"""Range digests, and finding where two stores differ without reading either twice over.

The store's digest is a sum of one hash per stored record (``state.store``), so it restricts
to any key range: the sum over the records in the range. Two stores that fold the same WAL
prefix have equal range digests for every range; where a range differs, a record in it
differs (or exists on one side only), up to a 2^-64 collision.

``differences(a, b)`` finds the first differing records in key order by descending only into
differing ranges. At each step one side (the one holding more records in the range) splits it
at ``parts - 1`` of its own keys, evenly spaced, computing its sub-range digests in the same
pass; the other side computes its digests over those same bounds; the differing sub-ranges are
visited in key order. A range with at most ``leaf`` records on both sides is compared record
by record. The cost, for ``d`` differing records among ``n``: each side reads about ``n``
records per level for the top levels (every range differs there only when ``d`` is large),
so about ``n * parts / (parts - 1)`` records for one difference, plus one leaf per difference,
in ``2 * log_parts(n / leaf)`` requests per difference; never a dump of the store.

A side is a ``RangeSource``: ``LocalRanges`` over a store opened here, or one over HTTP
(``ops.verify``) over a worker's frozen copy of its live store.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from lukhas_context.state.record import decode_record
from lukhas_context.state.store import HASH_MASK, PartitionStore, record_hash

__all__ = [
    "Bisection",
    "Difference",
    "LocalRanges",
    "RangeDigest",
    "RangeSource",
    "Row",
    "differences",
    "range_rows",
    "split_range",
    "summarize",
]

#: Upper bound of a range: a key, or None for the end of the key space.
Hi = bytes | None


@dataclass(frozen=True, slots=True)
class RangeDigest:
    """The digest (sum of record hashes mod 2^64) and record count of a key range."""

    digest: int
    records: int

    def to_dict(self) -> dict[str, Any]:
        return {"digest": f"{self.digest:016x}", "records": self.records}


@dataclass(frozen=True, slots=True)
class Row:
    """One stored record, as far as a comparison needs it."""

    key: bytes
    hash: int
    version: int
    deleted: bool
    offset: int


@dataclass(frozen=True, slots=True)
class Difference:
    """A context whose stored record differs between the two sides (None: absent there)."""

    key: bytes
    a: Row | None
    b: Row | None

    @property
    def context_id(self) -> str:
        return self.key.decode("utf-8", "backslashreplace")

    def to_dict(self, a_name: str = "a", b_name: str = "b") -> dict[str, Any]:
        def side(row: Row | None) -> dict[str, Any] | None:
            if row is None:
                return None
            return {"version": row.version, "deleted": row.deleted, "offset": row.offset,
                    "hash": f"{row.hash:016x}"}  # fmt: skip

        return {"context_id": self.context_id, a_name: side(self.a), b_name: side(self.b)}


def summarize(rows: Iterable[tuple[bytes, bytes]], bounds: list[bytes]) -> list[RangeDigest]:
    """The digests of the ``len(bounds) + 1`` ranges that ``bounds`` (increasing keys) cut
    ``rows`` (key order) into, in one pass."""
    digests = [0] * (len(bounds) + 1)
    counts = [0] * (len(bounds) + 1)
    i = 0
    for key, value in rows:
        while i < len(bounds) and key >= bounds[i]:
            i += 1
        digests[i] += record_hash(key, value)
        counts[i] += 1
    return [RangeDigest(d & HASH_MASK, n) for d, n in zip(digests, counts, strict=True)]


def split_range(
    rows: Iterable[tuple[bytes, bytes]], records: int, parts: int
) -> tuple[list[bytes], list[RangeDigest]]:
    """Bounds that cut ``rows`` (``records`` of them, about) into ``parts`` runs of equal
    length, at keys of the rows themselves, and the digests of those runs: one pass."""
    step = max(1, -(-records // parts))  # ceiling
    bounds: list[bytes] = []
    out: list[RangeDigest] = []
    digest = count = 0
    for key, value in rows:
        if count == step and len(bounds) < parts - 1:
            bounds.append(key)
            out.append(RangeDigest(digest & HASH_MASK, count))
            digest = count = 0
        digest += record_hash(key, value)
        count += 1
    out.append(RangeDigest(digest & HASH_MASK, count))
    return bounds, out


def range_rows(rows: Iterable[tuple[bytes, bytes]], limit: int) -> tuple[list[Row], bool]:
    """At most ``limit`` rows, and whether there were more."""
    out: list[Row] = []
    for key, value in rows:
        if len(out) == limit:
            return out, True
        record = decode_record(value)
        out.append(Row(key, record_hash(key, value), record.version, record.doc is None,
                       record.offset))  # fmt: skip
    return out, False


class RangeSource(Protocol):
    """One side of a comparison: a store, frozen while it is compared."""

    async def split(self, lo: bytes, hi: Hi, records: int, parts: int
                    ) -> tuple[list[bytes], list[RangeDigest]]: ...  # fmt: skip

    async def summarize(self, lo: bytes, hi: Hi, bounds: list[bytes]) -> list[RangeDigest]: ...

    async def rows(self, lo: bytes, hi: Hi, limit: int) -> tuple[list[Row], bool]: ...


class LocalRanges:
    """A store opened by this process (not written while compared); reads run in a thread."""

    def __init__(self, store: PartitionStore) -> None:
        self.store = store

    @contextlib.contextmanager
    def _rows(self, lo: bytes, hi: Hi) -> Iterator[Iterator[tuple[bytes, bytes]]]:
        with contextlib.closing(self.store.scan_contexts(lo, hi)) as rows:
            yield rows

    def split_now(self, lo: bytes, hi: Hi, records: int, parts: int
                  ) -> tuple[list[bytes], list[RangeDigest]]:  # fmt: skip
        with self._rows(lo, hi) as rows:
            return split_range(rows, records, parts)

    def summarize_now(self, lo: bytes, hi: Hi, bounds: list[bytes]) -> list[RangeDigest]:
        with self._rows(lo, hi) as rows:
            return summarize(rows, bounds)

    def rows_now(self, lo: bytes, hi: Hi, limit: int) -> tuple[list[Row], bool]:
        with self._rows(lo, hi) as rows:
            return range_rows(rows, limit)

    async def split(self, lo: bytes, hi: Hi, records: int, parts: int
                    ) -> tuple[list[bytes], list[RangeDigest]]:  # fmt: skip
        return await asyncio.to_thread(self.split_now, lo, hi, records, parts)

    async def summarize(self, lo: bytes, hi: Hi, bounds: list[bytes]) -> list[RangeDigest]:
        return await asyncio.to_thread(self.summarize_now, lo, hi, bounds)

    async def rows(self, lo: bytes, hi: Hi, limit: int) -> tuple[list[Row], bool]:
        return await asyncio.to_thread(self.rows_now, lo, hi, limit)


def _row_differences(a: list[Row], b: list[Row]) -> list[Difference]:
    by_key_a = {r.key: r for r in a}
    by_key_b = {r.key: r for r in b}
    out = []
    for key in sorted(by_key_a.keys() | by_key_b.keys()):
        ra, rb = by_key_a.get(key), by_key_b.get(key)
        if ra is None or rb is None or ra.hash != rb.hash:
            out.append(Difference(key, ra, rb))
    return out


@dataclass
class Bisection:
    """What a ``differences`` call found and what it cost."""

    differences: list[Difference]
    #: Requests made of each side (splits, summaries and leaf reads).
    requests: int = 0
    #: Whether the search stopped at ``limit`` with ranges left to look at.
    truncated: bool = False


async def differences(
    a: RangeSource, b: RangeSource, records_a: int, records_b: int, *, limit: int = 10,
    parts: int = 16, leaf: int = 64,
) -> Bisection:  # fmt: skip
    """The first ``limit`` records, in key order, that differ between ``a`` and ``b``
    (``records_*``: how many records each holds; see the module doc for the cost)."""
    if parts < 2 or leaf < 1 or limit < 1:
        raise ValueError("parts must be at least 2, leaf and limit at least 1")
    result = Bisection([])
    # Ranges still to look at, the next one last: (lo, hi, records in a, records in b).
    todo: list[tuple[bytes, Hi, int, int]] = [(b"", None, records_a, records_b)]
    while todo:
        if len(result.differences) >= limit:
            result.truncated = True
            break
        lo, hi, na, nb = todo.pop()
        if max(na, nb) <= leaf:
            rows_a, more_a = await a.rows(lo, hi, leaf)
            rows_b, more_b = await b.rows(lo, hi, leaf)
            result.requests += 2
            if not (more_a or more_b):  # else the counts were off: split it after all
                found = _row_differences(rows_a, rows_b)
                room = limit - len(result.differences)
                result.differences.extend(found[:room])
                result.truncated = result.truncated or len(found) > room
                continue
            na, nb = (na if not more_a else leaf + 1), (nb if not more_b else leaf + 1)
        if na >= nb:
            bounds, sums_a = await a.split(lo, hi, na, parts)
            sums_b = await b.summarize(lo, hi, bounds)
        else:
            bounds, sums_b = await b.split(lo, hi, nb, parts)
            sums_a = await a.summarize(lo, hi, bounds)
        result.requests += 2
        edges: list[bytes | None] = [lo, *bounds, hi]
        children = [
            (edges[i], edges[i + 1], sa.records, sb.records)
            for i, (sa, sb) in enumerate(zip(sums_a, sums_b, strict=True))
            if sa != sb
        ]
        if not bounds and children:
            # One run that cannot be cut (every record at one key: impossible in a store,
            # but a lying remote side must not loop us): compare it record by record.
            rows_a, more_a = await a.rows(lo, hi, leaf)
            rows_b, more_b = await b.rows(lo, hi, leaf)
            result.requests += 2
            found = _row_differences(rows_a, rows_b)
            room = limit - len(result.differences)
            result.differences.extend(found[:room])
            result.truncated = result.truncated or len(found) > room or more_a or more_b
            continue
        todo.extend((c[0] or b"", c[1], c[2], c[3]) for c in reversed(children))
    return result
