"""The event-id dedupe window of one partition: exactly once per event id.

An event whose id was used within the ``size`` offsets before its own offset
(``Limits.dedupe_window``) is not folded again: with the same bytes it is a retry (journaled
``DUPLICATE``, its version field naming the original's offset), with other bytes a reuse of
the id (dead-lettered). Otherwise its id enters the window at its offset. The window is in
offsets, not time or rounds, so every replay of the log decides alike.

Which records enter the window: every record the fold decodes and does not dead-letter
(``processors.fold.remembered_by_fold``: checkpoint barriers too), i.e. the ones journaled
``APPLIED``, ``CONFLICT``, ``REJECTED`` — or ``RESTORED`` by a restore from the change topic,
which knows the ids but not the outcomes. ``DUPLICATE`` and ``DEAD_LETTERED`` never do.

It is rebuilt from the store's journal whenever a store opens (``from_journal``), so retries
are recognised across restarts, checkpoints and restores exactly as in an uninterrupted fold;
the journal must hold at least the window (``WorkerConfig`` checks it).

Every decision of the window is made here. The one exception is the native hot loop
(``processors._fastfold.fold_simple``), which reads and extends ``ids`` in place: it folds only
an id *not* in the dict, where this module would remember it just as the loop does.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from lukhas_context.state.journal import EntryStatus

if TYPE_CHECKING:
    from lukhas_context.state.store import PartitionStore

#: The journal statuses whose events are in the window.
REMEMBERED = frozenset(
    (
        EntryStatus.APPLIED,
        EntryStatus.CONFLICT,
        EntryStatus.REJECTED,
        EntryStatus.RESTORED,
        EntryStatus.FENCED,
        EntryStatus.PREPARED,
        EntryStatus.ABORTED,
    )
)
_HASH_MASK = (1 << 64) - 1

#: ``{k: v for k, v in ids.items() if v >= floor}`` in C (``processors._fastfold.window_trim``),
#: given by the caller: state is a layer below processors and does not import it.
Trim = Callable[[dict[bytes, int], int], dict[bytes, int]]
#: ``forget_below`` rebuilds the dict past this many times the window's size.
TRIM_AT = 1.5


class DedupeWindow:
    """The event ids of one partition's last ``size`` offsets."""

    __slots__ = ("ids", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        #: event id -> ``offset << 64 | payload hash`` (one int, which the garbage collector
        #: does not track, unlike a tuple), in offset order: an id is re-inserted at the end.
        #: May hold ids older than the window until ``forget_below`` trims it.
        self.ids: dict[bytes, int] = {}

    @classmethod
    def from_journal(cls, store: PartitionStore, size: int) -> DedupeWindow:
        """The window as the uninterrupted fold holds it at the store's ``next_offset``,
        rebuilt from the store's journal of the last ``size`` offsets."""
        window = cls(size)
        ids = window.ids
        for entry in store.journal_since(max(0, store.next_offset - size)):
            if entry.status in REMEMBERED:
                ids.pop(entry.event_id, None)
                ids[entry.event_id] = (entry.offset << 64) | entry.payload_hash
        return window

    def prior_use(self, event_id: bytes, offset: int) -> tuple[int, int] | None:
        """``(offset, payload hash)`` of the event that used ``event_id`` within the window
        before ``offset``, or None: what decides whether an event at ``offset`` is a retry
        (same hash) or a reuse of the id for other bytes."""
        seen = self.ids.get(event_id)
        if seen is None or (seen >> 64) < offset - self.size:
            return None
        return seen >> 64, seen & _HASH_MASK

    def admit(self, event_id: bytes, offset: int, payload_hash: int) -> tuple[int, int] | None:
        """``prior_use``; when there is none, the id enters the window at ``offset`` (and
        None is returned). A retry or a reuse leaves the window as it was."""
        prior = self.prior_use(event_id, offset)
        if prior is None:
            ids = self.ids
            ids.pop(event_id, None)  # re-inserted at the end: the dict stays in offset order
            ids[event_id] = (offset << 64) | payload_hash
        return prior

    def forget_below(self, offset: int, trim: Trim | None = None) -> None:
        """Drops ids used before ``offset`` (they no longer decide anything).

        In bulk, once the dict holds more than ``TRIM_AT`` times ``size`` ids: one rebuild
        then costs O(1) per insert amortised (two entries copied per id inserted), where
        evicting one by one from the front of a dict rescans its deleted slots each time. Not
        at twice the size: the windows are most of a worker's memory outside RocksDB (about
        125 bytes an id), and 1.5 holds a third less at the peak."""
        if len(self.ids) > TRIM_AT * self.size:
            floor = max(offset, 0) << 64
            if trim is not None:  # the same, in C
                self.ids = trim(self.ids, floor)
            else:
                self.ids = {k: v for k, v in self.ids.items() if v >= floor}
