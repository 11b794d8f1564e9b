"""The per-partition RocksDB store (rocksdict, raw bytes mode).

Column families: ``default`` holds the partition's metadata (``next_offset``, the digest and the
counts), ``contexts`` holds one ``ContextRecord`` per context id (UTF-8 key), ``journal`` one
block of outcomes per round (see ``state.journal``), ``expiry`` the expiry index: one key
``expires_at_ms (8, big-endian) | context id`` per live context with a TTL, value its version,
so the sweeper reads the contexts due first, in order; ``history`` the history index (one
entry per folded record, keyed by context then offset: ``state.history``); ``fences`` the
highest fencing token folded for each lock name (key the name, UTF-8; value ``token | WAL
offset | log time`` of the event that raised it, 8 bytes each, big-endian).

**Digest:** the sum mod 2^64 of ``xxh3_64(len(id) | id | stored record bytes)`` over every
stored record, tombstones included, plus the same hash of every fence (its key prefixed with
the byte 0xFF, which no context id holds). It is order-independent, updated with each commit in the
same WriteBatch (subtract the old record's hash, add the new one's), so it costs O(1) at a
checkpoint, and any two stores holding the fold of the same WAL prefix have the same digest —
across replicas, replays and restore paths. ``verify()`` recomputes it from the records.

**Offset convention, the one of the whole code base:** ``next_offset`` is the offset of the
next WAL record to read, i.e. one past the last record folded in. It is written in the *same*
WriteBatch as the state changes of the records before it, so after a crash at any point the
store equals the fold of the WAL prefix ``[0, next_offset)``: nothing lost, nothing twice. A new
store has ``next_offset`` 0.

RocksDB's own WAL is written without fsync per batch: a killed process loses nothing (the
page cache survives it), and after a power loss RocksDB recovers a consistent prefix, which the
fold then completes from the Kafka log.

Over 450 lines, for one job: the partition's RocksDB and the invariants of what it holds.
The digest, the counts, the expiry index and the journal change in one ``WriteBatch`` per
round; the code that writes them and the code that verifies them (``verify``) must agree line
by line, so they are kept side by side.
"""

from __future__ import annotations

import bisect
import contextlib
import logging
import os
import struct
import time
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import xxhash
from rocksdict import Checkpoint, Options, Rdict, ReadOptions, WriteBatch

from lukhas_context.state import history, journal
from lukhas_context.state.exceptions import (
    CheckpointError,
    StoreCorruptError,
    StoreLockedError,
    StoreOpenError,
)
from lukhas_context.state.manifest import Summary as Summary
from lukhas_context.state.memory import MemoryBudget, ReadCache
from lukhas_context.state.record import ContextRecord, decode_record, encode_record

log = logging.getLogger(__name__)

CF_CONTEXTS = "contexts"
CF_JOURNAL = "journal"
CF_EXPIRY = "expiry"
CF_HISTORY = "history"
CF_FENCES = "fences"
CF_TXNS = "txns"
#: Every column family of a store, in the order they are opened.
FAMILIES = (CF_CONTEXTS, CF_JOURNAL, CF_EXPIRY, CF_HISTORY, CF_FENCES, CF_TXNS)
#: A fence's value: token, WAL offset and log time of the event that raised it.
FENCE_VALUE = struct.Struct(">qqq")
#: Fences cached in memory (the cache is dropped whole past it).
_FENCE_CACHE = 65_536
HASH_MASK = (1 << 64) - 1
NEXT_OFFSET_KEY = b"meta/next_offset"
#: The sequence number the next change of this partition gets (``schemas.change.SEQ_HEADER``):
#: how many change records the fold of ``[0, next_offset)`` produced. Not in the digest (it
#: numbers what is published, not state); a store written before it existed has none (0).
CHANGE_SEQ_KEY = b"meta/change_seq"
#: A standby copy's place in the change topic (``processors.standby``): the change-topic offset
#: it reads on from. Present only while the store is a standby: it has no journal of its own
#: (the dedupe window is read from the WAL when it is promoted: ``promote``).
STANDBY_AT_KEY = b"meta/standby_at"
#: Digest, stored records and stored documents (records that are not tombstones), as one value.
SUMMARY_KEY = b"meta/summary"
#: ``barrier offset (8) | checkpoint id`` of a barrier committed whose checkpoint is not made
#: yet: written in the barrier's WriteBatch, cleared once the checkpoint is published.
PENDING_CHECKPOINT_KEY = b"meta/pending_checkpoint"
#: The store's ``next_offset`` when its first history entries were written: the index holds
#: every record from there on (a store restored from the change topic, or written before the
#: index existed, has none before it).
HISTORY_FROM_KEY = b"meta/history_from"
#: ``TXRES_PREFIX | prepare offset (8, BE)``: how the transaction prepared there was decided
#: here (``processors.twophase``): ``decided at (8) | status (1) | version (8) | reason``.
TXRES_PREFIX = b"txres/"
_TXRES = struct.Struct(">qBq")
#: History entries below this offset were trimmed (the WAL no longer holds their records).
HISTORY_FLOOR_KEY = b"meta/history_floor"
#: ``floor (8) | index key``: where a trim that ran out of time stopped.
HISTORY_TRIM_KEY = b"meta/history_trim"
_OFFSET = struct.Struct("<q")
_MAX_OFFSET = (1 << 63) - 1
_SUMMARY = struct.Struct("<Qqq")
_EXPIRES = struct.Struct(">q")
_KEY_LEN = struct.Struct("<H")


def _prefix_end(prefix: bytes) -> bytes | None:
    """The smallest key above every key that starts with ``prefix`` (None: no bound)."""
    trimmed = prefix.rstrip(b"\xff")
    if not trimmed:
        return None
    return trimmed[:-1] + bytes([trimmed[-1] + 1])


def _once() -> ReadOptions:
    """Read options for a read whose blocks are not read again soon: the journal (a block is
    a whole round's entries, hundreds of KiB: outcome lookups, the dedupe window's rebuild,
    the trim bound's seek just after opening) and whole-family scans. Their blocks do not go
    into the block cache, which filled with journal blocks as the events folded grew, when
    every commit sought the trim bound (``_journal_floor``)."""
    opts = ReadOptions()
    opts.fill_cache(False)  # type: ignore[call-arg]  # the stub omits the flag it takes
    return opts


def _is_lock_error(exc: BaseException) -> bool:
    """RocksDB's ``LOCK`` is held: by this process ("lock hold by current process") or by
    another ("While lock file: ...LOCK: Resource temporarily unavailable"). Matched on these
    phrases, not on "LOCK" alone, which any path may contain."""
    message = str(exc)
    return "lock hold by current process" in message or "While lock file" in message


def record_hash(key: bytes, value: bytes) -> int:
    """The digest term of one stored record: xxh3-64 of its id (length-prefixed) and bytes."""
    return xxhash.xxh3_64_intdigest(_KEY_LEN.pack(len(key)) + key + value)


def txn_hash(tx_id: bytes, value: bytes) -> int:
    """The digest term of one prepared transaction: ``record_hash`` of its id prefixed with
    0xFE (no context id, nor fence, holds that byte first)."""
    return record_hash(b"\xfe" + tx_id, value)


def fence_hash(lock: bytes, value: bytes) -> int:
    """The digest term of one fence: ``record_hash`` of its name prefixed with 0xFF."""
    return record_hash(b"\xff" + lock, value)


def expiry_key(expires_at_ms: int, key: bytes) -> bytes:
    """The expiry index key of a context: due time first, so the index sorts by it."""
    return _EXPIRES.pack(expires_at_ms) + key


def split_expiry_key(raw: bytes) -> tuple[int, bytes]:
    """``(expires_at_ms, context key)`` of an expiry index key."""
    return _EXPIRES.unpack_from(raw)[0], raw[_EXPIRES.size :]


@dataclass(frozen=True, slots=True)
class StoreOptions:
    """Sizing of one partition's store. ``cache_records`` bounds the in-process read cache by
    count; ``memory``, the worker's budget (``state.memory``), bounds it by bytes and gives the
    store the worker's shared block cache and write buffers. Without one (tools, tests) the
    store has RocksDB's own cache and ``write_buffer_bytes`` per column family."""

    cache_records: int = 100_000
    write_buffer_bytes: int = 32 * 1024 * 1024
    memory: MemoryBudget | None = field(default=None, compare=False)


def _options(options: StoreOptions, create: bool = True) -> Options:
    opts = Options(raw_mode=True)
    opts.create_if_missing(create)
    opts.create_missing_column_families(True)
    if options.memory is not None:
        options.memory.configure(opts)
    else:
        opts.set_write_buffer_size(options.write_buffer_bytes)
    return opts


class PartitionStore:
    """State of one WAL partition: context records plus ``next_offset``.

    Reads go through a bounded in-process cache of decoded records (oldest entry evicted
    first), filled by commits and by misses; the cache only ever holds committed records.

    A directory that holds files but no ``CURRENT`` is refused (``StoreOpenError``), never
    opened as a new, empty store: RocksDB would otherwise create a fresh database over the
    remains of the old one.
    """

    def __init__(self, path: Path, options: StoreOptions | None = None) -> None:
        self.path = path
        self._options = options or StoreOptions()
        existing = path.is_dir() and any(path.iterdir())
        if existing and not (path / "CURRENT").is_file():
            raise StoreCorruptError(path, FileNotFoundError("CURRENT is missing"))
        path.mkdir(parents=True, exist_ok=True)
        opts = _options(self._options, create=not existing)
        try:
            families = {name: _options(self._options) for name in FAMILIES}
            self._db = Rdict(str(path), opts, column_families=families)
            self._contexts = self._db.get_column_family(CF_CONTEXTS)
            self._cf = self._db.get_column_family_handle(CF_CONTEXTS)
            self._journal = self._db.get_column_family(CF_JOURNAL)
            self._journal_cf = self._db.get_column_family_handle(CF_JOURNAL)
            self._expiry = self._db.get_column_family(CF_EXPIRY)
            self._expiry_cf = self._db.get_column_family_handle(CF_EXPIRY)
            self._history = self._db.get_column_family(CF_HISTORY)
            self._history_cf = self._db.get_column_family_handle(CF_HISTORY)
            self._fences = self._db.get_column_family(CF_FENCES)
            self._fences_cf = self._db.get_column_family_handle(CF_FENCES)
            self._txns = self._db.get_column_family(CF_TXNS)
            self._txns_cf = self._db.get_column_family_handle(CF_TXNS)
            history_from = self._db.get(HISTORY_FROM_KEY)
            raw = self._db.get(NEXT_OFFSET_KEY)
            summary = self._db.get(SUMMARY_KEY)
            seq = self._db.get(CHANGE_SEQ_KEY)
            standby_at = self._db.get(STANDBY_AT_KEY)
        except Exception as exc:  # rocksdict raises plain Exception for corruption
            if hasattr(self, "_db"):
                self._close_db()
            if _is_lock_error(exc):
                raise StoreLockedError(path, exc) from exc
            if "Corruption" in str(exc):
                raise StoreCorruptError(path, exc) from exc
            raise StoreOpenError(path, exc) from exc
        if raw is not None and len(raw) != _OFFSET.size:
            self._close_db()
            raise StoreCorruptError(path, ValueError(f"next_offset of {len(raw)} bytes"))
        if summary is not None and len(summary) != _SUMMARY.size:
            self._close_db()
            raise StoreCorruptError(path, ValueError(f"summary of {len(summary)} bytes"))
        self._next_offset: int = 0 if raw is None else _OFFSET.unpack(raw)[0]
        if seq is not None and len(seq) != _OFFSET.size:
            self._close_db()
            raise StoreCorruptError(path, ValueError(f"change_seq of {len(seq)} bytes"))
        self._change_seq: int = 0 if seq is None else _OFFSET.unpack(seq)[0]
        if standby_at is not None and len(standby_at) != _OFFSET.size:
            self._close_db()
            raise StoreCorruptError(path, ValueError(f"standby_at of {len(standby_at)} bytes"))
        self._standby_at: int | None = None if standby_at is None else _OFFSET.unpack(standby_at)[0]
        memory = self._options.memory
        self._cache = (
            ReadCache(1 << 62, self._options.cache_records)
            if memory is None
            else memory.read_cache(self._options.cache_records)
        )
        #: Keys read and found absent since the last commit (bounded): the commit then knows
        #: they are new without looking them up again. Valid until the next write, and every
        #: write is a commit, which clears it.
        self._absent: set[bytes] = set()
        #: Lock name -> highest token (None: no fence), as committed.
        self._fence_cache: dict[bytes, int | None] = {}
        if summary is None and self._next_offset:
            # Written before the digest existed: derive it (and the expiry index) once.
            try:
                self._digest, self._records, self._documents = self._rebuild_derived()
            except Exception:
                self._close_db()
                raise
        elif summary is None:
            self._digest, self._records, self._documents = 0, 0, 0
        else:
            self._digest, self._records, self._documents = _SUMMARY.unpack(summary)
        #: Journal blocks below this offset are deleted (one range tombstone per move).
        self._trimmed_below = 0
        #: The first offsets of the journal blocks written since the store opened, ascending
        #: (``_journal_floor``); None once one was not above the last (never, as rounds go).
        self._journal_starts: list[int] | None = []
        self._history_from: int | None = (
            None if history_from is None else _OFFSET.unpack(history_from)[0]
        )

    @property
    def next_offset(self) -> int:
        """Offset of the next WAL record to fold (0 for a new store)."""
        return self._next_offset

    @property
    def change_seq(self) -> int:
        """The sequence number of the partition's next change (``CHANGE_SEQ_KEY``)."""
        return self._change_seq

    @property
    def standby_at(self) -> int | None:
        """The change-topic offset a standby copy reads on from (``STANDBY_AT_KEY``); None
        for a store that is not one."""
        return self._standby_at

    def promote(self, journal_block: tuple[int, bytes] | None) -> None:
        """Makes a standby copy a store to fold: its journal (left from an earlier time it was
        folded here, if any) replaced by ``journal_block`` (the dedupe window read from the
        WAL), and the standby mark dropped, in one WriteBatch."""
        batch = WriteBatch(raw_mode=True)
        batch.delete_range(journal.block_key(0), journal.block_key(_MAX_OFFSET), self._journal_cf)
        batch.delete_range(
            TXRES_PREFIX + _EXPIRES.pack(0), TXRES_PREFIX + _EXPIRES.pack(_MAX_OFFSET)
        )
        if journal_block is not None:
            batch.put(journal.block_key(journal_block[0]), journal_block[1], self._journal_cf)
        batch.delete(STANDBY_AT_KEY)
        self._db.write(batch)
        self._standby_at = None
        self._trimmed_below = 0
        self._journal_starts = [] if journal_block is None else [journal_block[0]]

    def _journal_started(self, start: int) -> None:
        starts = self._journal_starts
        if starts is None:
            return
        if starts and start <= starts[-1]:
            self._journal_starts = None  # out of order: leave it to the seek from now on
        else:
            starts.append(start)

    def summary(self) -> Summary:
        """The digest and counts as of ``next_offset`` (O(1): kept by every commit)."""
        return Summary(self._next_offset, self._digest, self._records, self._documents)

    def get(self, key: bytes) -> ContextRecord | None:
        """The committed record of a context id (UTF-8 bytes), tombstones included."""
        record = self._cache.get(key)
        if record is not None:
            return record
        raw = self._contexts.get(key)
        if raw is None:
            if len(self._absent) < self._options.cache_records:
                self._absent.add(key)
            return None
        record = decode_record(raw)
        self._remember(key, record)
        return record

    def fence(self, lock: bytes) -> int | None:
        """The highest fencing token committed for ``lock`` (UTF-8 name), None if none."""
        cache = self._fence_cache
        if lock in cache:
            return cache[lock]
        raw = self._fences.get(lock)
        token = None if raw is None else int(FENCE_VALUE.unpack_from(raw)[0])
        if len(cache) >= _FENCE_CACHE:
            cache.clear()
        cache[lock] = token
        return token

    def resolution(self, prepare_offset: int) -> tuple[int, int, int, str] | None:
        """How the transaction prepared at ``prepare_offset`` was decided here: ``(offset of
        the deciding record, status, version, reason)``; None while undecided (or trimmed)."""
        raw = self._db.get(TXRES_PREFIX + _EXPIRES.pack(prepare_offset))
        if raw is None:
            return None
        at, status, version = _TXRES.unpack_from(raw)
        return at, status, version, raw[_TXRES.size :].decode("utf-8", "replace")

    def prepared(self) -> list[tuple[bytes, bytes]]:
        """Every transaction prepared here and not yet decided: ``(tx id, state)``
        (``processors.twophase``)."""
        with contextlib.closing(self._scan(self._txns)) as rows:
            return list(rows)

    def fences(self) -> Iterator[tuple[bytes, tuple[int, int, int]]]:
        """Every fence, ``(lock name, (token, WAL offset, log time))``, in name order."""
        with contextlib.closing(self._scan(self._fences)) as rows:
            for key, value in rows:
                yield key, FENCE_VALUE.unpack(value)

    def commit(
        self,
        records: Mapping[bytes, ContextRecord],
        next_offset: int,
        journal_block: tuple[int, bytes] | None = None,
        forget_below: int = 0,
        pending_checkpoint: tuple[int, str] | None = None,
        history_rows: Sequence[tuple[bytes, bytes]] | None = (),
        fences: Mapping[bytes, tuple[int, int, int]] | None = None,
        txns: Mapping[bytes, bytes | None] | None = None,
        resolutions: Mapping[int, tuple[int, int, int, str]] | None = None,
        change_seq: int | None = None,
        standby_at: int | None = None,
    ) -> None:
        """Writes ``records``, ``next_offset``, the round's journal block ``(first offset,
        block)``, the expiry index entries, the history index entries (``history_rows``:
        ``state.history.rows``; None: the round is not indexed, so the index is no longer
        complete: ``history_from`` is cleared) and the new digest in one WriteBatch: all or
        nothing. Journal
        blocks that start below ``forget_below`` are deleted in the same batch (the journal's
        bound). ``fences``: lock name -> ``(token, WAL offset, log time)`` of each fence the
        round raised, counted in the digest too. ``txns``: tx id -> the state of a transaction
        prepared here (None: decided, deleted), counted in the digest; ``resolutions``:
        prepare offset -> how it was decided here (``resolution``), kept as long as the
        journal. ``change_seq``: the sequence number of the partition's next change
        (``CHANGE_SEQ_KEY``); ``standby_at``: a standby copy's change-topic offset
        (``STANDBY_AT_KEY``); None: unchanged."""
        batch = WriteBatch(raw_mode=True)
        cf, expiry_cf = self._cf, self._expiry_cf
        digest, count, documents = self._digest, self._records, self._documents
        for key, record, old, old_raw in self._with_previous(records):
            value = encode_record(record)
            batch.put(key, value, cf)
            digest += record_hash(key, value)
            documents += record.doc is not None
            old_due = None
            if old is None:
                count += 1
            else:
                digest -= record_hash(key, old_raw)
                documents -= old.doc is not None
                old_due = old.expires_at_ms if old.doc is not None else None
            due = record.expires_at_ms if record.doc is not None else None
            if old_due is not None and (old_due != due):
                batch.delete(expiry_key(old_due, key), expiry_cf)
            if due is not None:
                batch.put(expiry_key(due, key), _OFFSET.pack(record.version), expiry_cf)
        if fences:
            fences_cf = self._fences_cf
            for lock, fence in fences.items():
                old_fence = self._fences.get(lock)
                if old_fence is not None:
                    digest -= fence_hash(lock, old_fence)
                value = FENCE_VALUE.pack(*fence)
                batch.put(lock, value, fences_cf)
                digest += fence_hash(lock, value)
        if txns:
            txns_cf = self._txns_cf
            for tx_id, state in txns.items():
                old_state = self._txns.get(tx_id)
                if old_state is not None:
                    digest -= txn_hash(tx_id, old_state)
                if state is None:
                    batch.delete(tx_id, txns_cf)
                else:
                    batch.put(tx_id, state, txns_cf)
                    digest += txn_hash(tx_id, state)
        digest &= HASH_MASK
        if journal_block is not None:
            batch.put(journal.block_key(journal_block[0]), journal_block[1], self._journal_cf)
        if resolutions:
            for prepare, (at, status, version, reason) in resolutions.items():
                value = _TXRES.pack(at, status, version) + reason.encode()[:1000]
                batch.put(TXRES_PREFIX + _EXPIRES.pack(prepare), value)
        floor = self._journal_floor(forget_below)
        if floor > self._trimmed_below:
            batch.delete_range(journal.block_key(0), journal.block_key(floor), self._journal_cf)
            batch.delete_range(TXRES_PREFIX + _EXPIRES.pack(0), TXRES_PREFIX + _EXPIRES.pack(floor))
        history_from = self._history_from
        if history_rows is None:
            if history_from is not None:
                batch.delete(HISTORY_FROM_KEY)
                history_from = None
        elif history_rows:
            history_cf = self._history_cf
            for index_key, index_value in history_rows:
                batch.put(index_key, index_value, history_cf)
            if history_from is None:
                history_from = self._next_offset
                batch.put(HISTORY_FROM_KEY, _OFFSET.pack(history_from))
        batch.put(SUMMARY_KEY, _SUMMARY.pack(digest, count, documents))
        batch.put(NEXT_OFFSET_KEY, _OFFSET.pack(next_offset))
        if change_seq is not None and change_seq != self._change_seq:
            batch.put(CHANGE_SEQ_KEY, _OFFSET.pack(change_seq))
        if standby_at is not None:
            batch.put(STANDBY_AT_KEY, _OFFSET.pack(standby_at))
        if pending_checkpoint is not None:
            offset, checkpoint_id = pending_checkpoint
            batch.put(PENDING_CHECKPOINT_KEY, _OFFSET.pack(offset) + checkpoint_id.encode())
        self._db.write(batch)
        if journal_block is not None:
            self._journal_started(journal_block[0])
        self._next_offset = next_offset
        if change_seq is not None:
            self._change_seq = change_seq
        if standby_at is not None:
            self._standby_at = standby_at
        self._digest, self._records, self._documents = digest, count, documents
        self._trimmed_below = max(self._trimmed_below, floor)
        self._history_from = history_from
        self._absent.clear()
        for key, record in records.items():
            self._remember(key, record)
        if fences:
            for lock, fence in fences.items():
                self._fence_cache[lock] = fence[0]

    def _with_previous(
        self, records: Mapping[bytes, ContextRecord]
    ) -> Iterator[tuple[bytes, ContextRecord, ContextRecord | None, bytes]]:
        """Each new record with the record it replaces and that record's stored bytes (None
        and b"" for a new context). The fold read every one of these keys this round, so most
        come from the cache (their bytes re-encoded, never decoded again), or were found absent
        by it; the rest (evicted from the cache meanwhile) are looked up in one multi-get."""
        cache, absent = self._cache, self._absent
        missing = [key for key in records if key not in cache and key not in absent]
        stored: dict[bytes, bytes | None] = {}
        if missing:
            found: list[bytes | None] = self._contexts.get(missing)  # type: ignore[arg-type,assignment]
            stored = dict(zip(missing, found, strict=True))
        for key, record in records.items():
            cached = cache.peek(key)
            if cached is not None:
                yield key, record, cached, encode_record(cached)
            elif (raw := stored.get(key)) is not None:
                yield key, record, decode_record(raw), raw
            else:
                yield key, record, None, b""

    def pending_checkpoint(self) -> tuple[int, str] | None:
        """``(barrier offset, checkpoint id)`` of a barrier committed without its checkpoint
        made and published yet (the process died in between), else None."""
        raw = self._db.get(PENDING_CHECKPOINT_KEY)
        if raw is None or len(raw) <= _OFFSET.size:
            return None
        return _OFFSET.unpack_from(raw)[0], raw[_OFFSET.size :].decode()

    def clear_pending_checkpoint(self) -> None:
        self._db.delete(PENDING_CHECKPOINT_KEY)

    def due(self, now_ms: int, limit: int) -> list[tuple[bytes, int, int]]:
        """Up to ``limit`` entries of the expiry index due at ``now_ms``, earliest first:
        ``(context key, version, expires_at_ms)``."""
        out: list[tuple[bytes, int, int]] = []
        it = self._expiry.iter()
        it.seek_to_first()
        while it.valid() and len(out) < limit:
            due_ms, key = split_expiry_key(it.key())
            if due_ms > now_ms:
                break
            out.append((key, _OFFSET.unpack(it.value())[0], due_ms))
            it.next()
        return out

    def expiry_index(self) -> Iterator[tuple[bytes, int, int]]:
        """The whole expiry index in due order: ``(context key, version, expires_at_ms)``."""
        for raw, version in self._expiry.items():
            assert isinstance(raw, bytes) and isinstance(version, bytes)
            due_ms, key = split_expiry_key(raw)
            yield key, _OFFSET.unpack(version)[0], due_ms

    def verify(self) -> Summary:
        """Recomputes the digest and counts from the stored records, and reads every block
        of the journal and the expiry index too, each with its checksum verified. Compare
        with ``summary()``: they differ only when the store is corrupt. Raises
        ``StoreCorruptError`` when a block does not read."""
        digest = count = documents = 0
        # closing(): an error in between must not leave a RocksDB iterator alive in a
        # suspended generator (it would keep the database, and its lock, open). Every walk
        # here takes care that no frame an error can keep holds a RocksDB object.
        with contextlib.closing(self._scan(self._contexts)) as rows:
            for key, value in rows:
                digest += record_hash(key, value)
                count += 1
                documents += not value[1] & 1  # flags bit 0: tombstone
        with contextlib.closing(self._scan(self._fences)) as rows:
            for key, value in rows:
                if len(value) != FENCE_VALUE.size:
                    raise StoreCorruptError(
                        self.path, ValueError(f"fence {key!r:.60} of {len(value)} bytes")
                    )
                digest += fence_hash(key, value)
        with contextlib.closing(self._scan(self._txns)) as rows:
            for key, value in rows:
                digest += txn_hash(key, value)
        # By name, not `for family in (...)`: a loop variable holding a column family stays in
        # this frame, which the error's traceback keeps, and keeps the database (and its lock)
        # open after close() for as long as the error lives (a log handler that keeps records).
        for name in ("_journal", "_expiry", "_history"):
            with contextlib.closing(self._scan(getattr(self, name))) as rows:
                for _ in rows:
                    pass
        return Summary(self._next_offset, digest & HASH_MASK, count, documents)

    def check(self) -> Summary:
        """``verify()``, compared with ``summary()``: the summary, or ``StoreCorruptError``
        when the records disagree with the digest the store keeps."""
        found, kept = self.verify(), self.summary()
        if found != kept:
            raise StoreCorruptError(
                self.path,
                ValueError(
                    f"records give digest {found.digest_hex} over {found.records} records, "
                    f"the store says {kept.digest_hex} over {kept.records}"
                ),
            )
        return found

    def scan_contexts(
        self, lo: bytes = b"", hi: bytes | None = None
    ) -> Generator[tuple[bytes, bytes], None, None]:
        """The stored records with ``lo <= key < hi`` (``hi`` None: to the end), raw, in key
        order; a bad block raises ``StoreCorruptError``. Close it (``contextlib.closing``)
        when not read to the end."""
        return self._scan(self._contexts, lo, hi)

    def _scan(
        self, family: Rdict, lo: bytes = b"", hi: bytes | None = None
    ) -> Generator[tuple[bytes, bytes], None, None]:
        """The entries of a column family from ``lo`` up to ``hi`` (None: every one); an
        iterator that stops early on a bad block is caught by its status, which RocksDB sets
        (rocksdict raises it) instead of an error."""
        it = family.iter(_once())
        try:
            it.seek(lo) if lo else it.seek_to_first()
            while it.valid():
                key = it.key()
                if hi is not None and key >= hi:
                    break
                yield key, it.value()
                it.next()
            it.status()
        except Exception as exc:  # rocksdict raises plain Exception for a bad block
            failure = exc.with_traceback(None)
        else:
            return
        finally:
            # The error raised below keeps this frame, and its locals, alive in its traceback
            # (caught, logged, kept by a log handler): a column family or iterator left among
            # them keeps the database open after close(), and with it RocksDB's lock, so
            # opening the same path again (a checkpoint installed where a quarantined store
            # was) failed with "lock hold by current process".
            del it, family
        if "Corruption" in str(failure):
            raise StoreCorruptError(self.path, failure) from None
        raise StoreOpenError(self.path, failure) from None

    def _rebuild_derived(self) -> tuple[int, int, int]:
        """Derives the summary and the expiry index from the records (stores written before
        either existed), in one WriteBatch."""
        batch = WriteBatch(raw_mode=True)
        for key, record in self.items():
            if record.doc is not None and record.expires_at_ms is not None:
                value = _OFFSET.pack(record.version)
                batch.put(expiry_key(record.expires_at_ms, key), value, self._expiry_cf)
        summary = self.verify()
        batch.put(SUMMARY_KEY, _SUMMARY.pack(summary.digest, summary.records, summary.documents))
        self._db.write(batch)
        return summary.digest, summary.records, summary.documents

    def checkpoint(self, dest: Path) -> None:
        """A RocksDB checkpoint of the store as last committed, in ``dest`` (which must not
        exist): memtables flushed, SST files hard-linked, the rest copied."""
        try:
            Checkpoint(self._db).create_checkpoint(str(dest))
        except Exception as exc:  # rocksdict raises plain Exception (disk full, exists, ...)
            raise CheckpointError(f"cannot checkpoint {self.path} into {dest}: {exc}") from exc

    def _journal_floor(self, forget_below: int) -> int:
        """The first offset of the block that holds ``forget_below``: blocks below it can go.
        Deleting by block start alone would drop a block that straddles the bound, and with it
        entries the dedupe window may still need after a restart.

        Known without a read once a block this store wrote since it opened starts at or below
        the bound (``_journal_starts``: any block older than those starts lower still);
        otherwise (just after opening) a seek decides, which reads, and decompresses, a whole
        round's block."""
        if forget_below <= self._trimmed_below:
            return self._trimmed_below
        starts = self._journal_starts
        if starts and starts[0] <= forget_below:
            i = bisect.bisect_right(starts, forget_below) - 1
            del starts[:i]  # below the floor: deleted now, or already
            return starts[0]
        return self._journal_floor_by_seek(forget_below)

    def _journal_floor_by_seek(self, forget_below: int) -> int:
        it = self._journal.iter(_once())
        it.seek_for_prev(journal.block_key(forget_below))
        if not it.valid():
            return self._trimmed_below
        return int.from_bytes(it.key(), "big")

    def outcome(self, offset: int) -> journal.JournalEntry | None:
        """The journal entry of the record at ``offset``, or None when it is not folded yet,
        was forgotten (older than the journal's bound) or was a transaction marker."""
        it = self._journal.iter(_once())
        it.seek_for_prev(journal.block_key(offset))
        if not it.valid():
            return None
        return journal.find(it.value(), offset)

    def reasons(self, offsets: Iterable[int], budget: int = 8 << 20) -> dict[int, str]:
        """The journal's reasons for the entries at ``offsets`` (ascending) that were not
        applied, as far as the journal still holds them; each block is read once, and no more
        than ``budget`` bytes of blocks in all (the rest are left out: a caller on an event
        loop stays quick whatever the journal holds)."""
        out: dict[int, str] = {}
        block_start: bytes | None = None
        found: dict[str, str] = {}
        it = self._journal.iter(_once())
        try:
            for offset in offsets:
                it.seek_for_prev(journal.block_key(offset))
                if not it.valid():
                    continue
                if it.key() != block_start:
                    block = it.value()
                    budget -= len(block)
                    if budget < 0:
                        break
                    block_start, found = it.key(), journal.reasons(block)
                reason = found.get(str(offset))
                if reason is not None:
                    out[offset] = reason
        finally:
            del it  # no RocksDB object may outlive this call in an error's traceback
        return out

    def journal_since(self, offset: int) -> Iterator[journal.JournalEntry]:
        """Journal entries from ``offset`` on, in offset order (``state.dedupe`` rebuilds the
        dedupe window from them)."""
        it = self._journal.iter(_once())
        it.seek_for_prev(journal.block_key(offset))
        if not it.valid():
            it.seek_to_first()
        while it.valid():
            for entry in journal.entries(it.value()):
                if entry.offset >= offset:
                    yield entry
            it.next()

    def history(
        self, key: bytes, after: int = -1, limit: int = history.MAX_PAGE
    ) -> tuple[list[tuple[int, journal.EntryStatus, int]], bool]:
        """The history index entries of the context ``key`` with offsets above ``after``, in
        offset order, at most ``limit``: ``[(offset, status, version)]``, and whether more
        follow."""
        if after >= (1 << 63) - 1:
            return [], False  # no offset follows the largest one
        stop = history.prefix(key)
        start = stop
        if after >= 0:  # the block holding `after + 1`, if one does, starts at or before it
            it = self._history.iter()
            try:
                it.seek_for_prev(history.entry_key(key, after + 1))
                if it.valid() and it.key().startswith(stop):
                    start = it.key()
                it.status()
            finally:
                del it
        out: list[tuple[int, journal.EntryStatus, int]] = []
        with contextlib.closing(self._scan(self._history, start)) as found:
            for raw, value in found:
                if not raw.startswith(stop):
                    break
                for entry in history.block_entries(raw, value):
                    if entry[0] <= after:
                        continue
                    if len(out) == limit:
                        return out, True
                    out.append(entry)
        return out, False

    def history_from(self) -> int | None:
        """The offset from which the history index holds every record (None: no entry was
        ever written)."""
        return self._history_from

    def history_floor(self) -> int:
        """History entries below this offset were trimmed (``trim_history``); 0 if never."""
        raw = self._db.get(HISTORY_FLOOR_KEY)
        return 0 if raw is None else _OFFSET.unpack(raw)[0]

    def trim_history(
        self, below: int, chunk: int = 10_000, budget_s: float | None = None
    ) -> tuple[int, bool]:
        """Deletes the history entries of offsets below ``below`` (the WAL's start, once its
        records are gone), in WriteBatches of ``chunk`` blocks, and records the new floor.
        The index is keyed by context first, so this reads all of it: it runs where a store
        opens, not in the fold. With ``budget_s`` it stops after about that long and records
        where it got to, so the next call for the same ``below`` goes on from there. Returns
        how many entries went, and whether the trim is complete."""
        if below <= self.history_floor():
            return 0, True
        deadline = None if budget_s is None else time.monotonic() + budget_s
        cursor = self._db.get(HISTORY_TRIM_KEY)
        start = b""
        if cursor is not None and _OFFSET.unpack_from(cursor)[0] == below:
            start = cursor[_OFFSET.size :]  # the same trim, stopped there last time
        deleted = seen = pending = 0
        batch = WriteBatch(raw_mode=True)
        with contextlib.closing(self._scan(self._history, start)) as found:
            for raw, value in found:
                seen += 1
                if deadline is not None and seen % 1000 == 0 and time.monotonic() > deadline:
                    batch.put(HISTORY_TRIM_KEY, _OFFSET.pack(below) + raw)
                    self._db.write(batch)
                    return deleted, False
                if history.split_key(raw)[1] >= below:
                    continue  # a block starts with its lowest offset
                entries = history.block_entries(raw, value)
                kept = [e for e in entries if e[0] >= below]
                batch.delete(raw, self._history_cf)
                if kept:  # a block across the floor: its entries above it stay, re-keyed
                    key = history.split_key(raw)[0]
                    batch.put(*history.block(key, kept), self._history_cf)
                deleted += len(entries) - len(kept)
                pending += 1
                if pending == chunk:
                    self._db.write(batch)
                    batch = WriteBatch(raw_mode=True)
                    pending = 0
        batch.put(HISTORY_FLOOR_KEY, _OFFSET.pack(below))
        batch.delete(HISTORY_TRIM_KEY)
        self._db.write(batch)
        return deleted, True

    def _remember(self, key: bytes, record: ContextRecord) -> None:
        """Caches a record as the most recently used (``state.memory.ReadCache``)."""
        self._cache.put(key, record)

    def page(
        self,
        start: bytes,
        prefix: bytes,
        limit: int,
        scan: int,
        keep: Callable[[ContextRecord], bool],
    ) -> tuple[list[tuple[bytes, ContextRecord]], bytes | None]:
        """A page of a listing: the stored records whose key starts with ``prefix``, from
        ``start`` on, in key order, that ``keep`` accepts — at most ``limit`` of them, and
        at most ``scan`` records looked at (so a prefix of many tombstones costs a bounded
        amount per page). The second member is the last key looked at when the page stopped
        early (ask again after it), None when nothing after the page matches."""
        found: list[tuple[bytes, ContextRecord]] = []
        entries = self._scan(self._contexts, max(start, prefix), _prefix_end(prefix))
        try:
            for looked, (key, raw) in enumerate(entries, 1):
                record = decode_record(raw)
                if keep(record):
                    found.append((key, record))
                if len(found) >= limit or looked >= scan:
                    return found, key
        finally:
            entries.close()  # the iterator now, not when the generator is collected
        return found, None

    def items(self) -> Iterator[tuple[bytes, ContextRecord]]:
        """Every stored record in key order (tombstones included)."""
        for key, raw in self._contexts.items():
            assert isinstance(key, bytes)  # raw mode: keys are bytes
            yield key, decode_record(raw)

    def close(self) -> None:
        """Flushes and closes the database (the next open then replays no RocksDB WAL).
        RocksDB's lock is released only once the column family handles are gone too, so they
        are dropped first. Safe to call twice."""
        if not hasattr(self, "_db"):
            return
        if self._options.memory is not None:
            self._options.memory.release(self._cache)
        self._cache.clear()
        try:
            families = (self._contexts, self._journal, self._expiry, self._history, self._fences,
                        self._txns)  # fmt: skip
            for family in (*families, self._db):
                family.flush()
        finally:
            self._close_db()

    def _close_db(self) -> None:
        for name in ("_contexts", "_cf", "_journal", "_journal_cf", "_expiry", "_expiry_cf",
                     "_history", "_history_cf", "_fences", "_fences_cf", "_txns",
                     "_txns_cf"):  # fmt: skip
            if hasattr(self, name):
                delattr(self, name)
        self._db.close()
        del self._db

    def __enter__(self) -> PartitionStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def free_path(base: Path) -> Path:
    """``base``, else ``base-2``, ``base-3``, ...: the first that does not exist."""
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def quarantine(path: Path, into: Path, reason: object) -> Path:
    """Moves a store directory that cannot be used to ``into`` (never deletes it), logs it
    at ERROR and returns where it went: ``into/NAME-YYYYmmddTHHMMSSZ[-n]``."""
    dest = move_aside(path, into)
    log.error("state store %s is unusable (%s); moved it to %s", path, reason, dest)
    return dest


def move_aside(path: Path, into: Path) -> Path:
    """Moves a store directory to ``into`` (never deletes it), quietly: for a store an
    operator replaces on purpose. Returns ``into/NAME-YYYYmmddTHHMMSSZ[-n]``."""
    into.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    dest = free_path(into / f"{path.name}-{stamp}")
    os.rename(path, dest)
    return dest
