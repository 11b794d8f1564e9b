"""The per-partition RocksDB store (rocksdict, raw bytes mode).

Column families: ``default`` holds the partition's metadata (``next_offset``), ``contexts``
holds one ``ContextRecord`` per context id (UTF-8 key).

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

from lukhas_context.state.exceptions import StoreOpenError
from lukhas_context.state.record import ContextRecord, decode_record, encode_record

CF_CONTEXTS = "contexts"
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
            self._db = Rdict(
                str(path), opts, column_families={CF_CONTEXTS: _options(self._options)}
            )
            self._contexts = self._db.get_column_family(CF_CONTEXTS)
            self._cf = self._db.get_column_family_handle(CF_CONTEXTS)
        except Exception as exc:  # rocksdict raises plain Exception for corruption
            raise StoreOpenError(path, exc) from exc
        raw = self._db.get(NEXT_OFFSET_KEY)
        self._next_offset: int = 0 if raw is None else _OFFSET.unpack(raw)[0]
        self._cache: dict[bytes, ContextRecord] = {}

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

    def commit(self, records: Mapping[bytes, ContextRecord], next_offset: int) -> None:
        """Writes ``records`` and ``next_offset`` in one WriteBatch: all or nothing."""
        batch = WriteBatch(raw_mode=True)
        cf = self._cf
        for key, record in records.items():
            batch.put(key, encode_record(record), cf)
        batch.put(NEXT_OFFSET_KEY, _OFFSET.pack(next_offset))
        self._db.write(batch)
        self._next_offset = next_offset
        for key, record in records.items():
            self._remember(key, record)

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
        del self._contexts, self._cf
        self._db.close()

    def __enter__(self) -> PartitionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
