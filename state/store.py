"""The per-partition RocksDB store (rocksdict, raw bytes mode).

Column families: ``default`` holds the partition's metadata (``next_offset``), ``contexts``
holds one ``ContextRecord`` per context id (UTF-8 key), ``journal`` one block of outcomes per
round (see ``state.journal``).

**Offset convention, the one of the whole code base:** ``next_offset`` is the offset of the
next WAL record to read, i.e. one past the last record folded in. It is written in the *same*
WriteBatch as the state changes of the records before it, so after a crash at any point the
store equals the fold of the WAL prefix ``[0, next_offset)``: nothing lost, nothing twice. A new
store has ``next_offset`` 0.

RocksDB's own WAL is written without fsync per batch: a killed process loses nothing (the
page cache survives it), and after a power loss RocksDB recovers a consistent prefix, which the
fold then completes from the Kafka log.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from rocksdict import Options, Rdict, WriteBatch

from lukhas_context.state import journal
from lukhas_context.state.exceptions import StoreOpenError
from lukhas_context.state.record import ContextRecord, decode_record, encode_record

CF_CONTEXTS = "contexts"
CF_JOURNAL = "journal"
HASH_MASK = (1 << 64) - 1
NEXT_OFFSET_KEY = b"meta/next_offset"
_OFFSET = struct.Struct("<q")


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Sizing of one partition's store. ``cache_records`` bounds the in-process read cache."""

    cache_records: int = 100_000
    write_buffer_bytes: int = 32 * 1024 * 1024


def _options(options: StoreOptions) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    opts.set_write_buffer_size(options.write_buffer_bytes)
    return opts


class PartitionStore:
    """State of one WAL partition: context records plus ``next_offset``.

    Reads go through a bounded in-process cache of decoded records (oldest entry evicted
    first), filled by commits and by misses; the cache only ever holds committed records.
    """

    def __init__(self, path: Path, options: StoreOptions | None = None) -> None:
        self.path = path
        self._options = options or StoreOptions()
        path.mkdir(parents=True, exist_ok=True)
        opts = _options(self._options)
        try:
            families = {name: _options(self._options) for name in (CF_CONTEXTS, CF_JOURNAL)}
            self._db = Rdict(str(path), opts, column_families=families)
            self._contexts = self._db.get_column_family(CF_CONTEXTS)
            self._cf = self._db.get_column_family_handle(CF_CONTEXTS)
            self._journal = self._db.get_column_family(CF_JOURNAL)
            self._journal_cf = self._db.get_column_family_handle(CF_JOURNAL)
        except Exception as exc:  # rocksdict raises plain Exception for corruption
            raise StoreOpenError(path, exc) from exc
        raw = self._db.get(NEXT_OFFSET_KEY)
        if raw is not None and len(raw) != _OFFSET.size:
            raise StoreOpenError(path, ValueError(f"next_offset of {len(raw)} bytes"))
        self._next_offset: int = 0 if raw is None else _OFFSET.unpack(raw)[0]
        self._cache: dict[bytes, ContextRecord] = {}
        #: The dedupe window: event id -> ``offset << 64 | payload hash`` (one int, which the
        #: garbage collector does not track, unlike a tuple), in offset order. Owned by the
        #: fold; rebuilt from the journal by ``load_recent``.
        self.recent: dict[bytes, int] = {}
        #: Journal blocks below this offset are deleted (one range tombstone per move).
        self._trimmed_below = 0

    @property
    def next_offset(self) -> int:
        """Offset of the next WAL record to fold (0 for a new store)."""
        return self._next_offset

    def get(self, key: bytes) -> ContextRecord | None:
        """The committed record of a context id (UTF-8 bytes), tombstones included."""
        record = self._cache.get(key)
        if record is not None:
            return record
        raw = self._contexts.get(key)
        if raw is None:
            return None
        record = decode_record(raw)
        self._remember(key, record)
        return record

    def commit(
        self,
        records: Mapping[bytes, ContextRecord],
        next_offset: int,
        journal_block: tuple[int, bytes] | None = None,
        forget_below: int = 0,
    ) -> None:
        """Writes ``records``, ``next_offset`` and the round's journal block ``(first offset,
        block)`` in one WriteBatch: all or nothing. Journal blocks that start below
        ``forget_below`` are deleted in the same batch (the journal's bound)."""
        batch = WriteBatch(raw_mode=True)
        cf = self._cf
        for key, record in records.items():
            batch.put(key, encode_record(record), cf)
        if journal_block is not None:
            batch.put(journal.block_key(journal_block[0]), journal_block[1], self._journal_cf)
        floor = self._journal_floor(forget_below)
        if floor > self._trimmed_below:
            batch.delete_range(journal.block_key(0), journal.block_key(floor), self._journal_cf)
        batch.put(NEXT_OFFSET_KEY, _OFFSET.pack(next_offset))
        self._db.write(batch)
        self._next_offset = next_offset
        self._trimmed_below = max(self._trimmed_below, floor)
        for key, record in records.items():
            self._remember(key, record)

    def _journal_floor(self, forget_below: int) -> int:
        """The first offset of the block that holds ``forget_below``: blocks below it can go.
        Deleting by block start alone would drop a block that straddles the bound, and with it
        entries the dedupe window may still need after a restart."""
        if forget_below <= self._trimmed_below:
            return self._trimmed_below
        it = self._journal.iter()
        it.seek_for_prev(journal.block_key(forget_below))
        if not it.valid():
            return self._trimmed_below
        return int.from_bytes(it.key(), "big")

    def outcome(self, offset: int) -> journal.JournalEntry | None:
        """The journal entry of the record at ``offset``, or None when it is not folded yet,
        was forgotten (older than the journal's bound) or was a transaction marker."""
        it = self._journal.iter()
        it.seek_for_prev(journal.block_key(offset))
        if not it.valid():
            return None
        return journal.find(it.value(), offset)

    def journal_since(self, offset: int) -> Iterator[journal.JournalEntry]:
        """Journal entries from ``offset`` on, in offset order (rebuilds the dedupe window)."""
        it = self._journal.iter()
        it.seek_for_prev(journal.block_key(offset))
        if not it.valid():
            it.seek_to_first()
        while it.valid():
            for entry in journal.entries(it.value()):
                if entry.offset >= offset:
                    yield entry
            it.next()

    def load_recent(self, window: int) -> None:
        """Rebuilds the dedupe window from the journal: the ids of the events folded in the
        last ``window`` offsets, as the uninterrupted fold would hold them."""
        self.recent.clear()
        remembered = (journal.EntryStatus.APPLIED, journal.EntryStatus.CONFLICT,
                      journal.EntryStatus.REJECTED)  # fmt: skip
        for entry in self.journal_since(max(0, self._next_offset - window)):
            if entry.status in remembered:
                self.recent.pop(entry.event_id, None)
                self.recent[entry.event_id] = (entry.offset << 64) | entry.payload_hash

    def forget_recent(self, below: int, window: int) -> None:
        """Drops window entries older than offset ``below`` (they no longer decide anything).

        In bulk, once the dict holds more than twice ``window`` entries: one rebuild then costs
        O(1) per insert amortised, where evicting one by one from the front of a dict rescans
        its deleted slots each time."""
        if len(self.recent) > 2 * window:
            floor = max(below, 0) << 64
            self.recent = {k: v for k, v in self.recent.items() if v >= floor}

    def _remember(self, key: bytes, record: ContextRecord) -> None:
        cache = self._cache
        cache.pop(key, None)
        cache[key] = record
        if len(cache) > self._options.cache_records:
            del cache[next(iter(cache))]

    def items(self) -> Iterator[tuple[bytes, ContextRecord]]:
        """Every stored record in key order (tombstones included)."""
        for key, raw in self._contexts.items():
            assert isinstance(key, bytes)  # raw mode: keys are bytes
            yield key, decode_record(raw)

    def close(self) -> None:
        """Closes the database; RocksDB's lock is released only once the column family
        handles are gone too, so they are dropped first."""
        self._cache.clear()
        del self._contexts, self._cf, self._journal, self._journal_cf
        self._db.close()

    def __enter__(self) -> PartitionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
