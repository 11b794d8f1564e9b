"""One memory budget for a worker (``lukhas worker --memory-budget``).

Without it, memory grew with the events folded, not with the contexts: each partition's
RocksDB had its own 32 MiB write buffers per column family, its own default block cache, and
nothing capped the total; the read cache was bounded by a count of records, not bytes, and a
hit did not keep a record in it. A ``MemoryBudget`` is created once per worker and shared by
every store it opens (owned partitions, standby copies, restores):

* **RocksDB:** one LRU block cache for all of them (``block_cache_bytes``), holding data,
  index and filter blocks, with the memtables charged to it as well: one write buffer
  manager (``write_buffer_bytes``) makes RocksDB flush memtables early when their total
  reaches it;
* **read cache:** the decoded records each store keeps (``ReadCache``), bounded by bytes,
  least recently *used* dropped first; the share is split evenly among the open stores;
* the rest is headroom: the interpreter, rounds in flight, the Kafka clients' buffers, and
  up to 64 MiB of freed heap the worker keeps for the next round (``processors.worker``).

The worker compares its resident memory with the budget before every round and applies
backpressure (``Materializer``: smaller rounds near it, a pause in fetching over it), and
reports both in ``/metrics``.
"""

from __future__ import annotations

import os
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Callable
from typing import Final

from rocksdict import BlockBasedOptions, Cache, Options, WriteBufferManager

from lukhas_context.state.record import ContextRecord

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "MIN_MEMORY_BUDGET",
    "MemoryBudget",
    "ReadCache",
    "parse_bytes",
    "resident_bytes",
]

#: The worker's budget when none is given.
DEFAULT_MEMORY_BUDGET: Final = 1024 * 1024 * 1024
#: The least budget a worker runs with: below it the headroom alone does not fit.
MIN_MEMORY_BUDGET: Final = 128 * 1024 * 1024
#: Largest memtable of one column family under a budget (RocksDB's default is 64 MiB).
MAX_MEMTABLE_BYTES: Final = 16 * 1024 * 1024
#: What a cached record costs besides its document and key: the record's tuple, its bytes
#: objects, integers and the cache's own entry (measured with sys.getsizeof, rounded up).
RECORD_OVERHEAD: Final = 320

_UNITS: Final = {
    "": 1, "b": 1,
    "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3, "gb": 1000**3,
    "ki": 1024, "kib": 1024, "mi": 1024**2, "mib": 1024**2, "gi": 1024**3, "gib": 1024**3,
    "t": 1000**4, "tb": 1000**4, "ti": 1024**4, "tib": 1024**4,
}  # fmt: skip
_SIZE: Final = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*")


def parse_bytes(text: str) -> int:
    """``512MiB``, ``1GiB``, ``800MB``, ``2g`` or a number of bytes; ``ValueError`` naming
    what is wrong otherwise."""
    match = _SIZE.fullmatch(text)
    if match is None:
        raise ValueError(f"{text!r} is not a size (e.g. 512MiB, 1GiB, 800MB)")
    unit = match.group(2).lower()
    if unit not in _UNITS:
        raise ValueError(
            f"{text!r}: unknown unit {match.group(2)!r} (B, KB, MB, GB, KiB, MiB, GiB)"
        )
    return int(float(match.group(1)) * _UNITS[unit])


def resident_bytes() -> int:
    """This process's resident memory (Linux ``/proc/self/statm``); 0 where it is unknown."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def record_bytes(key: bytes, record: ContextRecord) -> int:
    """What ``ReadCache`` counts for one record."""
    return len(key) + (len(record.doc) if record.doc is not None else 0) + RECORD_OVERHEAD


class ReadCache:
    """Decoded records by key, bounded by bytes (``limit``) and by count (``max_entries``);
    a hit makes a record the most recently used, and the least recently used goes first."""

    __slots__ = ("__weakref__", "_entries", "bytes", "limit", "max_entries")

    def __init__(self, limit: int, max_entries: int) -> None:
        self._entries: OrderedDict[bytes, ContextRecord] = OrderedDict()
        self.bytes = 0
        self.limit = limit
        self.max_entries = max_entries

    def get(self, key: bytes) -> ContextRecord | None:
        record = self._entries.get(key)
        if record is not None:
            self._entries.move_to_end(key)
        return record

    def peek(self, key: bytes) -> ContextRecord | None:
        """The record without making it recently used (the commit's own lookups)."""
        return self._entries.get(key)

    def __contains__(self, key: bytes) -> bool:
        return key in self._entries

    def __len__(self) -> int:
        return len(self._entries)

    def put(self, key: bytes, record: ContextRecord) -> None:
        entries = self._entries
        old = entries.pop(key, None)
        if old is not None:
            self.bytes -= record_bytes(key, old)
        entries[key] = record
        self.bytes += record_bytes(key, record)
        self.trim()

    def trim(self) -> None:
        """Drops the least recently used records until both bounds hold."""
        entries = self._entries
        while entries and (self.bytes > self.limit or len(entries) > self.max_entries):
            key, old = entries.popitem(last=False)
            self.bytes -= record_bytes(key, old)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0


class MemoryBudget:
    """A worker's memory, split between the shared RocksDB block cache, the shared write
    buffer manager and the stores' read caches, with the rest as headroom (see the module
    docstring). ``ValueError`` below ``MIN_MEMORY_BUDGET``."""

    #: RocksDB as a whole: the block cache, which the memtables are charged to as well.
    BLOCK_CACHE_SHARE: Final = 0.40
    #: The memtables' part of it: RocksDB flushes early when their total reaches this.
    WRITE_BUFFER_SHARE: Final = 0.10
    READ_CACHE_SHARE: Final = 0.15

    def __init__(self, total: int = DEFAULT_MEMORY_BUDGET) -> None:
        if total < MIN_MEMORY_BUDGET:
            raise ValueError(
                f"a memory budget of {total} bytes is under the least a worker runs with "
                f"({MIN_MEMORY_BUDGET // 1024 // 1024} MiB)"
            )
        self.total = total
        self.block_cache_bytes = int(total * self.BLOCK_CACHE_SHARE)
        self.write_buffer_bytes = int(total * self.WRITE_BUFFER_SHARE)
        self.read_cache_bytes = int(total * self.READ_CACHE_SHARE)
        self.block_cache = Cache(self.block_cache_bytes)
        # Memtables charged to the block cache: RocksDB's memory (data, index and filter
        # blocks, memtables) under the one limit. allow_stall False: over the limit RocksDB
        # flushes harder instead of blocking a write in the middle of a round; the worker's
        # own backpressure slows the rounds.
        self.write_buffers = WriteBufferManager.new_write_buffer_manager_with_cache(
            self.write_buffer_bytes, False, self.block_cache
        )
        self._read_caches: weakref.WeakSet[ReadCache] = weakref.WeakSet()
        #: Stores open and close in worker threads (``asyncio.to_thread``) while the event
        #: loop's thread reads the set: every use of it holds this lock.
        self._caches_lock = threading.Lock()

    def configure(self, opts: Options) -> None:
        """Makes a store's (or column family's) options draw on the shared cache and write
        buffers."""
        table = BlockBasedOptions()
        table.set_block_cache(self.block_cache)
        # Index and filter blocks in the cache too: otherwise each open table file keeps its
        # own, and their memory grows with the files, i.e. with the events folded.
        table.set_cache_index_and_filter_blocks(True)
        table.set_pin_l0_filter_and_index_blocks_in_cache(True)
        opts.set_block_based_table_factory(table)
        opts.set_write_buffer_manager(self.write_buffers)
        memtable = min(MAX_MEMTABLE_BYTES, max(1 << 20, self.write_buffer_bytes // 16))
        opts.set_write_buffer_size(memtable)

    def read_cache(self, max_entries: int) -> ReadCache:
        """A read cache for one store, its share of the budget: the read caches' bytes split
        evenly among the open ones (each gets smaller as stores open, larger as they close)."""
        cache = ReadCache(self.read_cache_bytes, max_entries)
        with self._caches_lock:
            self._read_caches.add(cache)
        self._share(cache)
        return cache

    def release(self, cache: ReadCache) -> None:
        """A store closed: its cache's share goes back to the others."""
        cache.clear()
        with self._caches_lock:
            self._read_caches.discard(cache)
        self._share()

    def _caches(self) -> list[ReadCache]:
        with self._caches_lock:
            return list(self._read_caches)

    def _share(self, new: ReadCache | None = None) -> None:
        """Sets every cache's limit to its share. Only ``new`` (this thread's own, not in use
        yet) is trimmed here: the others belong to stores the event loop may be reading, and
        each trims itself to its new limit at its next put."""
        caches = self._caches()
        for cache in caches:
            cache.limit = self.read_cache_bytes // max(1, len(caches))
        if new is not None:
            new.trim()

    def shrink_read_caches(self) -> int:
        """Halves every read cache (backpressure over the budget); returns the bytes freed."""
        freed = 0
        for cache in self._caches():
            before = cache.bytes
            limit = cache.limit
            cache.limit = before // 2
            cache.trim()
            cache.limit = limit
            freed += before - cache.bytes
        return freed

    def parts(self) -> dict[str, Callable[[], int]]:
        """How to read each part's bytes in use (``/metrics`` reads one at a time), and the
        process's resident memory."""
        return {
            "budget": lambda: self.total,
            "resident": resident_bytes,
            "block_cache": lambda: int(self.block_cache.get_usage()),
            "write_buffers": lambda: int(self.write_buffers.get_usage()),
            "read_cache": lambda: sum(c.bytes for c in self._caches()),
        }

    def usage(self) -> dict[str, int]:
        """Bytes in use by part, and the process's resident memory."""
        return {name: read() for name, read in self.parts().items()}
