"""``GET /v1/contexts?prefix=&after=&limit=``: a listing of the live contexts, in id order,
a page at a time, merged from every partition's store.

Each source (one store here, or the worker that owns other partitions) gives a page in key
order and, when it stopped early, the last key it looked at (``resume``). A source looks at
a bounded number of records per page (``SCAN_PER_PAGE``): a prefix of a million tombstones
costs many short pages, never one long stall of the worker's loop. ``merge`` keeps only
keys every source has looked past, so a page never skips a context that a source has not
reached yet, and says where the next page starts.
"""

from __future__ import annotations

import heapq
from collections.abc import Container, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: Contexts one page holds unless ``limit`` says otherwise, and at most.
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
#: Records one store looks at for one page, live or not.
SCAN_PER_PAGE = 10_000


@dataclass(frozen=True, slots=True)
class SourcePage:
    """One source's page: ``(key, entry)`` in key order, and the last key it looked at
    when it stopped early (None: nothing after these matches)."""

    entries: Sequence[tuple[bytes, Any]]
    resume: bytes | None


#: A page from another worker, and the partitions it answered for.
RemotePage = tuple[SourcePage, list[int]]


def merge(pages: Sequence[SourcePage], limit: int) -> tuple[list[Any], bytes | None]:
    """The first ``limit`` entries of the sources' pages in key order, those up to the
    lowest ``resume`` only; and the key the next page starts after (None: the listing is
    complete)."""
    bounds = [page.resume for page in pages if page.resume is not None]
    bound = min(bounds) if bounds else None
    merged = heapq.merge(*(page.entries for page in pages), key=lambda entry: entry[0])
    taken: list[tuple[bytes, Any]] = []
    for key, entry in merged:
        if bound is not None and key > bound:
            break
        if taken and taken[-1][0] == key:
            continue  # two sources for one partition (a rebalance under way): the same context
        if len(taken) == limit:  # one more than the page holds: the next page starts here
            return [entry for _, entry in taken], taken[-1][0]
        taken.append((key, entry))
    return [entry for _, entry in taken], bound


def start_after(after: bytes | None) -> bytes:
    """The smallest key above ``after`` (b"" when there is none)."""
    return b"" if after is None else after + b"\x00"


def remote_page(data: Mapping[str, Any], covered: Container[int], count: int) -> RemotePage | None:
    """Another worker's answer to the same listing request (its JSON) as a source page, with
    the partitions it answered for that are not ``covered`` already; None when the answer
    is not of that shape, or names a partition that is not one of the ``count`` (its
    partitions then stay incomplete: an odd answer never marks one complete)."""
    try:
        listed = [(c["context_id"].encode(), c) for c in data["contexts"]]
        resume = data["next_after"]
        page = SourcePage(listed, None if resume is None else resume.encode())
        partitions = data["partitions"]
        if not all(type(p) is int and 0 <= p < count for p in partitions):
            return None
        return page, [p for p in partitions if p not in covered]
    except (KeyError, TypeError, AttributeError):
        return None
