"""Opening a partition's store by the restore order, restoring it when the local one is unusable.

``StoreOpener.open`` is what a worker does when it is assigned a partition; ``restore`` is
steps 2-4 alone, and ``processors.offline`` (``lukhas restore``) takes one chosen source. The
order (DESIGN.md, "Restore"):

1. **local**: the store directory opens, and its digest recomputed from its records equals the
   digest it keeps (``verify``). A store that fails to open or to verify is *quarantined*:
   moved to ``STATE_DIR/quarantine/`` with an error naming both paths, never deleted.
2. **checkpoint**: the newest valid local checkpoint whose ``next_offset`` the WAL still holds
   is installed (hard links) and verified against its manifest; the fold goes on from its
   ``next_offset``. A checkpoint that fails verification is skipped (and left in place).
3. **changes**: the compacted change topic holds the latest change of every context, whose
   records carry everything a stored record holds (tombstones included: their headers carry
   version, checksum, offset and log time, and the topic keeps tombstones). It is read up to
   its end; ``next_offset`` is one past the highest WAL offset it names, since changes are
   published in WAL order and a round commits only after its changes are acknowledged. The
   dedupe window is rebuilt from the WAL records of the last ``dedupe_window`` offsets
   (journaled as ``RESTORED``: their ids are known, their outcomes are not kept). The
   topic's fence records (``schemas.change``) give the highest fencing token of every lock,
   and count in ``next_offset`` like changes.
4. **replay**: an empty store, folded from offset 0.

Whatever the path, the WAL must still hold the offset the store needs: otherwise
``WalTruncatedError``, never a silent skip. A restored store is built in a sibling directory
and renamed into place only when complete, so a crash during a restore leaves nothing that
could be taken for a consistent store.

Over 450 lines, for one job: half of it is the change-topic path's checked reads of both
topics (the coverage, the latest changes, the WAL's dedupe window). They are the part to split
out, left for when the change model and its readers move to ``schemas/`` (issue 10), which
rewrites them.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import shutil
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import xxhash
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.processors.change_record import (
    CheckedChange,
    TxStateRecord,
    check_change_record,
    read_change_topic_record,
)
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import (
    ChangesUnusableError,
    ProcessorError,
    UnusableChangeError,
    WalTruncatedError,
)
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.round import window_id
from lukhas_context.processors.twophase import TX_STATE_PREFIX
from lukhas_context.schemas.change import FenceRecord, is_fence_key, seq_of
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.exceptions import CodecError
from lukhas_context.schemas.txrecord import TxRecord, decode_control, is_tx_key
from lukhas_context.state.checkpoints import CheckpointDir
from lukhas_context.state.dedupe import DedupeWindow
from lukhas_context.state.exceptions import (
    CheckpointError,
    StateError,
    StoreCorruptError,
    StoreOpenError,
)
from lukhas_context.state.journal import ENTRY, EntryStatus, encode_block
from lukhas_context.state.manifest import Manifest
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import PartitionStore, free_path, quarantine
from lukhas_context.streams import kafka

log = logging.getLogger(__name__)

#: Records per WriteBatch when a store is written from the change topic.
_CHUNK = 50_000
#: How far back from its end the coverage reads a change partition for a usable change
#: before it calls the coverage unknown (a flood of bad records costs repeats, not a start).
COVERAGE_LOOKBACK = 10_000
#: How many usable-looking changes the coverage checks against the WAL, at most.
COVERAGE_CHECKS = 4
#: Unusable records logged one by one per read (the rest are counted in the summary line).
_LOGGED_RECORDS = 5
#: For ``_unusable``: not logged on its own (the ERROR line of the path set aside names it).
_QUIET = _LOGGED_RECORDS
#: How long the restore reader's fetch waits for records that are not there yet (ms).
RESTORE_FETCH_WAIT_MS = 20
#: Records a scan hands to its ``take`` between two yields to the event loop (``_scan``).
_YIELD_EVERY = 500


class Source(enum.Enum):
    LOCAL = "local"
    CHECKPOINT = "checkpoint"
    CHANGES = "changes"
    REPLAY = "replay"
    #: The local store was a standby copy (``processors.standby``), promoted.
    STANDBY = "standby"


@dataclass(slots=True)
class RestoreReport:
    """What opening one partition took, for logs, ``lukhas restore --json`` and metrics."""

    partition: int
    source: Source
    next_offset: int = 0
    digest: str = ""
    records: int = 0
    documents: int = 0
    checkpoint_id: str | None = None
    quarantined: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.partition,
            "source": self.source.value,
            "next_offset": self.next_offset,
            "digest": self.digest,
            "records": self.records,
            "documents": self.documents,
            "checkpoint_id": self.checkpoint_id,
            "quarantined": self.quarantined,
            "skipped": self.skipped,
            "seconds": round(self.seconds, 3),
        }

    def finish(self, store: PartitionStore, started: float) -> None:
        summary = store.summary()
        self.next_offset, self.digest = summary.next_offset, summary.digest_hex
        self.records, self.documents = summary.records, summary.documents
        self.seconds = time.monotonic() - started


@dataclass(slots=True)
class Coverage:
    """Which WAL offsets of a partition have their changes on the change topic already.

    ``offset``: one past the WAL offset of the newest usable change, 0 when there is none, or
    when none could be found (``known`` False): the worker then publishes again the changes
    of what it folds, which costs repeats on the change topic (subscribers drop them by WAL
    offset), never a lost change. ``skipped``: what was set aside on the way, and why."""

    offset: int = 0
    known: bool = True
    skipped: list[str] = field(default_factory=list)
    #: ``(seq, WAL offset named)`` of the numbered records read (the newest committed records
    #: of the partition, from the end back to the window of the newest usable change) that
    #: could be read; ``next_seq_for`` tells from them where the numbering goes on.
    numbered: list[tuple[int, int]] = field(default_factory=list)

    def next_seq_for(self, next_offset: int) -> int | None:
        """The number of the next record a store at ``next_offset`` publishes: one past the
        highest ``seq`` of the records made by events below ``max(offset, next_offset)``
        (``offset`` 0, the coverage unknown: of all of them). The records of the events from
        there on are published again by the fold from the store (a store below the coverage
        re-folds up to it quietly), under the same numbers: a number is never used for two
        records, and a store's count is never more than what the topic has for what it
        folded. None: no such numbered record (an empty topic, one written before the
        numbers)."""
        bounded = self.known and self.offset > 0
        bound = max(self.offset, next_offset)
        below = [seq for seq, wal in self.numbered if not bounded or wal < bound]
        return max(below) + 1 if below else None


class StoreOpener:
    """Opens or restores partition stores under one worker's state directory."""

    def __init__(
        self, config: WorkerConfig, metrics: WorkerMetrics | None = None,
        leave_checkpoints: bool = False,
    ) -> None:  # fmt: skip
        self.config = config
        self.metrics = metrics
        self.checkpoints = CheckpointDir(config.checkpoint_root, config.topics.events)
        #: One codec for the checks of changes against the WAL (building one reads the
        #: shipped schemas: once per record made a restore take seconds per 10,000 changes).
        self._event_codec = EventCodec()
        #: A checkpoint that fails verification is left where it is (a tool that builds a
        #: state aside changes nothing live), instead of renamed ``.corrupt-ID``.
        self.leave_checkpoints = leave_checkpoints

    def store_path(self, partition: int) -> Path:
        return self.config.state_dir / f"partition-{partition}"

    @property
    def quarantine_dir(self) -> Path:
        return self.config.state_dir / "quarantine"

    # ---- the whole order ----

    async def open(
        self, partition: int, watermarks: tuple[int, int] | None = None
    ) -> tuple[PartitionStore, RestoreReport]:
        """The partition's store by the first usable path of the module doc's order.
        ``watermarks``: the WAL partition's ``(low, end)`` offsets, when the caller has them.
        The dedupe window is rebuilt from the store's journal by the ``PartitionFolder``
        that folds it (``processors.round``)."""
        started = time.monotonic()
        low, high = watermarks or await self.watermarks(partition)
        quarantined: list[str] = []
        store = await asyncio.to_thread(self.open_local, partition, quarantined)
        report = RestoreReport(partition, Source.LOCAL, quarantined=quarantined)
        if store is not None and store.next_offset < low:
            # A copy left from an earlier assignment, behind records deleted since (retention,
            # `lukhas wal prune`): set aside, and the partition restored like one never held.
            path, behind = store.path, store.next_offset
            store.close()
            reason = f"needs WAL offset {behind}, the log now starts at {low}"
            quarantined.append(str(quarantine(path, self.quarantine_dir, reason)))
            store = None
        if store is not None and store.standby_at is not None:
            try:
                await self.promote(partition, store, low)
            except BaseException:
                store.close()
                raise
            report.source = Source.STANDBY
        if store is None:
            store, report = await self.restore(partition, low, high, quarantined)
        if store.next_offset < low:
            store.close()
            raise WalTruncatedError(partition, store.next_offset, low)
        if store.next_offset > high:
            store.close()
            raise ProcessorError(
                f"the store of partition {partition} needs offset {store.next_offset} but the "
                f"WAL ends at {high}: the state dir belongs to another log"
            )
        report.finish(store, started)
        return store, report

    async def promote(self, partition: int, store: PartitionStore, low: int) -> None:
        """Makes a standby copy (opened and verified like any local store) a store to fold:
        its dedupe window read from the WAL's last ``dedupe_window`` offsets before its
        ``next_offset``, as a change-topic restore reads it (a standby keeps no journal)."""
        end = store.next_offset
        start = max(low, end - self.config.limits.dedupe_window)
        window = await self.read_window(partition, start, end)
        block = (ENTRY.unpack_from(window)[0], encode_block(window, {})) if window else None
        await asyncio.to_thread(store.promote, block)

    async def restore(
        self, partition: int, low: int, high: int, quarantined: list[str] | None = None
    ) -> tuple[PartitionStore, RestoreReport]:
        """Steps 2-4 of the order (the local store is absent or was quarantined): the store
        restored from a checkpoint, else the change topic, else empty (replayed from 0)."""
        report = RestoreReport(partition, Source.CHECKPOINT, quarantined=quarantined or [])
        for manifest in self.checkpoints.valid(partition):
            if manifest.next_offset < low:
                report.skipped.append(
                    f"checkpoint {manifest.checkpoint_id}: needs WAL offset "
                    f"{manifest.next_offset}, the log starts at {low}"
                )
                continue
            if manifest.next_offset > high:
                report.skipped.append(
                    f"checkpoint {manifest.checkpoint_id}: at offset {manifest.next_offset}, "
                    f"past the WAL's end {high}"
                )
                continue
            try:
                store = await asyncio.to_thread(self.from_checkpoint, manifest)
            except StateError as exc:
                self._skip(
                    report.skipped, partition, "checkpoint", f"{manifest.checkpoint_id}: {exc}"
                )
                continue
            report.checkpoint_id = manifest.checkpoint_id
            return store, report
        unusable = ""
        try:
            restored = await self.from_changes(partition, low)
        except ChangesUnusableError as exc:
            self._skip(report.skipped, partition, "changes", str(exc))
            restored, unusable = None, f"and the change topic cannot restore it: {exc}"
        if restored is not None:
            report.source = Source.CHANGES
            return restored, report
        if low > 0:
            raise WalTruncatedError(partition, 0, low, unusable)
        report.source = Source.REPLAY
        return await asyncio.to_thread(self.empty, partition), report

    def _skip(self, skipped: list[str], partition: int, path: str, reason: str) -> None:
        """Sets a restore path (or records the coverage read passed over) of a partition
        aside, loudly: an ERROR line, the report's ``skipped`` and
        ``lukhas_restore_paths_skipped{path}`` (``checkpoint``, ``changes``, ``coverage``)."""
        log.error("partition %d, %s: %s", partition, path, reason)
        skipped.append(f"{path}: {reason}")
        if self.metrics is not None:
            self.metrics.restore_skipped.labels(path.split(" ", 1)[0]).inc()

    def _unusable(self, partition: int, offset: int, exc: UnusableChangeError, n: int) -> str:
        """Reports one unusable change-topic record, the ``n``-th of this read (the first
        few logged at ERROR, every one counted in ``lukhas_unusable_records{topic="changes"}``);
        returns its description."""
        what = f"{self.config.topics.changes}[{partition}]@{offset}: {exc}"
        if n < _LOGGED_RECORDS:
            log.error("unusable change-topic record %s", what)
        if self.metrics is not None:
            self.metrics.unusable_records.labels("changes").inc()
        return what

    # ---- the paths ----

    def open_local(self, partition: int, quarantined: list[str]) -> PartitionStore | None:
        """The local store if it opens and verifies; None (after quarantining what was there)
        otherwise, or when there is none."""
        path = self.store_path(partition)
        if not path.is_dir() or not any(path.iterdir()):
            return None
        try:
            store = PartitionStore(path, self.config.store)
        except StoreCorruptError as exc:
            quarantined.append(str(quarantine(path, self.quarantine_dir, exc)))
            return None
        # Any other StoreOpenError (locked by another process, out of file handles, disk
        # full) is not the store's fault: it propagates, and the store stays where it is.
        if self.config.verify_on_open:
            try:
                store.check()
            except StoreCorruptError as exc:
                store.close()
                quarantined.append(str(quarantine(path, self.quarantine_dir, exc)))
                return None
            except StoreOpenError:
                store.close()
                raise
        return store

    def from_checkpoint(self, manifest: Manifest) -> PartitionStore:
        """Installs a checkpoint as the partition's store and verifies it against its
        manifest; ``CheckpointError`` (with nothing left behind) when it does not match."""
        path = self.store_path(manifest.partition)
        if path.is_dir() and not any(path.iterdir()):
            path.rmdir()
        self.checkpoints.install(manifest, path)
        try:
            store = PartitionStore(path, self.config.store)
        except StoreOpenError as exc:
            shutil.rmtree(path)
            self._set_aside(manifest, f"does not open: {exc}")
        try:
            summary = store.check()
        except StoreOpenError as exc:  # unreadable, or records unlike the kept digest
            store.close()
            shutil.rmtree(path)
            self._set_aside(manifest, f"does not verify: {exc}")
        if not manifest.matches(summary):
            store.close()
            shutil.rmtree(path)
            self._set_aside(
                manifest,
                f"holds digest {summary.digest_hex} over {summary.records} records, its "
                f"manifest says {manifest.digest:016x} over {manifest.records}",
            )
        return store

    def _set_aside(self, manifest: Manifest, problem: str) -> NoReturn:
        """Renames a checkpoint that failed verification to ``.corrupt-ID`` (kept for
        inspection, never listed again) and raises ``CheckpointError`` saying why."""
        path = self.checkpoints.path(manifest.partition, manifest.checkpoint_id)
        if self.leave_checkpoints:
            raise CheckpointError(
                f"checkpoint {manifest.checkpoint_id} of partition {manifest.partition} "
                f"{problem}; left in {path} (nothing live is changed here: a worker that "
                "restores from it sets it aside)"
            )
        aside = free_path(path.with_name(f".corrupt-{path.name}"))
        path.rename(aside)
        raise CheckpointError(
            f"checkpoint {manifest.checkpoint_id} of partition {manifest.partition} {problem}; "
            f"moved to {aside}"
        )

    def empty(self, partition: int) -> PartitionStore:
        path = self.store_path(partition)
        if path.exists():  # an empty directory, or one the caller has moved aside
            shutil.rmtree(path)
        return PartitionStore(path, self.config.store)

    async def from_changes(self, partition: int, low: int) -> PartitionStore | None:
        """The store rebuilt from the change topic; None when the topic holds nothing for the
        partition; ``ChangesUnusableError`` when it holds a record it cannot restore from.

        Checked against the WAL: the newest change names an offset below the WAL's end, and
        every change that names an offset in the dedupe window (the WAL records read anyway
        to rebuild it) names the very event the WAL holds there, by key and event id.
        Changes older than the window are taken as they are (see the trust model in
        docs/architecture.md)."""
        latest, fences, txns, seq = await self.read_changes(partition)
        if not latest and not fences and not txns:
            return None
        named = [(c.record.offset, c.key, c.position) for c in latest.values()]
        named += [(f.wal_offset, f.key, position) for f, position in fences.values()]
        named += [(o, TX_STATE_PREFIX + t, position) for t, (o, _, position) in txns.items()]
        newest_offset, newest_key, newest_position = max(named)
        next_offset = newest_offset + 1
        wal_end = (await self.watermarks(partition))[1]  # read after the change topic was
        if next_offset > wal_end:
            error = UnusableChangeError(
                f"the change of {newest_key!r} names WAL offset {newest_offset}, past "
                f"the WAL's end {wal_end}"
            )
            what = self._unusable(partition, newest_position, error, _QUIET)
            raise ChangesUnusableError(f"{what}: not restoring from that topic")
        if next_offset < low:
            raise WalTruncatedError(partition, next_offset, low)
        start = max(low, next_offset - self.config.limits.dedupe_window)
        expected = {c.record.offset: c for c in latest.values() if c.record.offset >= start}
        window = await self.read_window(partition, start, next_offset, expected)
        records = {key: c.record for key, c in latest.items()}
        raised = {
            f.lock.encode(): (f.token, f.wal_offset, f.log_time_ms) for f, _ in fences.values()
        }
        prepared: dict[bytes, bytes | None] = {
            t: state for t, (_, state, _) in txns.items() if state is not None
        }
        return await asyncio.to_thread(
            self._write_restored, partition, records, next_offset, window, raised, prepared, seq
        )

    def _write_restored(
        self,
        partition: int,
        latest: dict[bytes, ContextRecord],
        next_offset: int,
        window: bytearray,
        fences: dict[bytes, tuple[int, int, int]],
        txns: dict[bytes, bytes | None],
        change_seq: int,
    ) -> PartitionStore:
        path = self.store_path(partition)
        building = path.with_name(f"{path.name}.restoring")
        if building.exists():
            shutil.rmtree(building)
        with PartitionStore(building, self.config.store) as store:
            items = list(latest.items())
            for i in range(0, len(items), _CHUNK):
                store.commit(dict(items[i : i + _CHUNK]), 0)
            block = (ENTRY.unpack_from(window)[0], encode_block(window, {})) if window else None
            store.commit({}, next_offset, block, fences=fences, txns=txns, change_seq=change_seq)
        if path.exists():
            shutil.rmtree(path)
        building.rename(path)
        return PartitionStore(path, self.config.store)

    # ---- Kafka reads ----

    def consumer(self) -> AIOKafkaConsumer:
        return kafka.consumer(
            self.config.bootstrap,
            f"{self.config.client_id}-restore",
            isolation="read_committed",
            security=self.config.kafka_security,
            fetch_max_bytes=16 * 1024 * 1024,
            # Short long-polls: a broker answers one request of a connection at a time, so
            # the watermark requests (ListOffsets) that follow a read of a range waited
            # behind the reader's next fetch, up to aiokafka's 500 ms, several times per open.
            fetch_max_wait_ms=RESTORE_FETCH_WAIT_MS,
        )

    async def watermarks(self, partition: int) -> tuple[int, int]:
        """The WAL partition's low watermark and end offset."""
        async with self._reader() as consumer:
            return await self._watermarks(consumer, self.config.topics.events, partition)

    @staticmethod
    async def _watermarks(
        consumer: AIOKafkaConsumer, topic: str, partition: int
    ) -> tuple[int, int]:
        tp = TopicPartition(topic, partition)
        low = (await consumer.beginning_offsets([tp]))[tp]
        high = (await consumer.end_offsets([tp]))[tp]
        return low, high

    async def changes_coverage(self, partition: int) -> Coverage:
        """One past the WAL offset of the newest usable change of the partition (see
        ``Coverage``): every event before it has had its change published, since changes are
        published in WAL order and a round commits only once they are acknowledged.

        Read back from the end of the change partition in growing windows, up to
        ``COVERAGE_LOOKBACK`` records: records that are not usable changes
        (``check_change_record``: unreadable, or naming an offset at or past the WAL's end as
        read after them) are set aside and reported. The highest WAL offset among a window's
        usable changes counts once the WAL holds that very event there (key and event id),
        at most ``COVERAGE_CHECKS`` tries; a forged change naming another event is set aside
        like garbage. No usable change found: coverage unknown (0), reported."""
        topic = self.config.topics.changes
        coverage = Coverage()
        bad: list[str] = []
        checks = COVERAGE_CHECKS
        async with self._reader() as consumer:
            low, end = await self._watermarks(consumer, topic, partition)
            floor = max(low, end - COVERAGE_LOOKBACK)
            upto, size = end, 64
            found: CheckedChange | None = None
            numbered: list[tuple[int, int]] = []  # (seq, WAL offset named) of readable records
            codec = ChangeCodec()
            while found is None and upto > floor and checks > 0:
                start = max(floor, upto - size)
                records = await self._fetch(consumer, topic, partition, start, upto)
                numbered.extend(numbered_records(records, codec))
                wal_end = await self._wal_end(consumer, partition)  # after the records
                usable = self._usable_changes(partition, records, wal_end, bad)
                usable.sort(key=lambda u: (-u[1].record.offset, -u[0]))  # ties: newest first
                for position, change in usable[:checks]:
                    checks -= 1
                    mismatch = await self._wal_mismatch(consumer, partition, change)
                    if mismatch is None:
                        found = change
                        break
                    error = UnusableChangeError(mismatch)
                    bad.append(self._unusable(partition, position, error, len(bad)))
                upto, size = start, size * 4
        coverage.numbered = numbered
        if found is not None:
            coverage.offset = found.record.offset + 1
        if not bad:
            return coverage
        first = bad[0] + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
        if found is not None:
            reason = f"passed over {first}"
        else:
            coverage.known = False
            reason = (
                f"coverage unknown, so the changes of what is folded are published again: no "
                f"usable change among the last {end - upto} records; {first}"
            )
        self._skip(coverage.skipped, partition, f"coverage of {topic}", reason)
        return coverage

    def _usable_changes(
        self, partition: int, records: list[Any], wal_end: int, bad: list[str]
    ) -> list[tuple[int, CheckedChange]]:
        """``(change-topic offset, change)`` of the usable records; the others go to ``bad``."""
        codec = ChangeCodec()
        usable = []
        for m in records:
            if is_fence_key(m.key) or (isinstance(m.key, bytes) and m.key[:1] == b"\xfe"):
                continue  # no change of a context: covers nothing by itself
            try:
                change = check_change_record(m.key, m.value, m.headers, codec, wal_end, m.offset)
            except UnusableChangeError as exc:
                bad.append(self._unusable(partition, m.offset, exc, len(bad)))
                continue
            usable.append((m.offset, change))
        return usable

    async def _wal_mismatch(
        self, consumer: AIOKafkaConsumer, partition: int, change: CheckedChange
    ) -> str | None:
        """None when the WAL holds the event that made ``change`` at the offset it names (or
        no longer holds that offset: a change below the log start covers nothing a store
        needs); else what it holds there instead."""
        offset = change.record.offset
        topic = self.config.topics.events
        if offset < (await self._watermarks(consumer, topic, partition))[0]:
            return None
        found = await self._fetch(consumer, topic, partition, offset, offset + 1)
        return _wal_disagrees(change, found[0] if found else None, self._event_codec)

    async def _wal_end(self, consumer: AIOKafkaConsumer, partition: int) -> int:
        return (await self._watermarks(consumer, self.config.topics.events, partition))[1]

    async def read_changes(self, partition: int) -> tuple[
        dict[bytes, CheckedChange],
        dict[bytes, tuple[FenceRecord, int]],
        dict[bytes, tuple[int, bytes | None, int]],
        int,
    ]:  # fmt: skip
        """The latest change of every context in the change partition (by WAL offset, not
        position: changes published again after a crash, or by a zombie, may follow newer
        ones), and the highest fence record of every lock with its position;
        ``ChangesUnusableError`` naming the first record that is not a usable change
        (``check_change_record``) or fence record (``read_fence_record``): a restore without
        it would lose or misstate its context, or let a stale token through. And the newest
        state of every transaction prepared here (``processors.twophase``): tx id ->
        ``(WAL offset, state or None once decided, position)``. And the sequence number of
        the partition's next change: one past the highest ``seq`` header read (the newest
        record; compaction keeps it, as it keeps the newest change), 0 when none has one."""
        codec = ChangeCodec()
        latest: dict[bytes, CheckedChange] = {}
        fences: dict[bytes, tuple[FenceRecord, int]] = {}
        txns: dict[bytes, tuple[int, bytes | None, int]] = {}
        topic = self.config.topics.changes
        next_seq = 0

        def take(message: Any) -> bool:
            nonlocal next_seq
            restorable(message)  # raises for a record it cannot restore from
            seq = seq_of(message.headers)
            if seq is not None and seq >= next_seq:
                next_seq = seq + 1
            return True

        def restorable(message: Any) -> bool:
            try:
                item = read_change_topic_record(
                    message.key, message.value, message.headers, codec, message.offset
                )
            except UnusableChangeError as exc:
                what = self._unusable(partition, message.offset, exc, _QUIET)
                raise ChangesUnusableError(f"{what}: not restoring from that topic") from exc
            if isinstance(item, TxStateRecord):
                newest = txns.get(item.tx_id)
                if newest is None or item.wal_offset >= newest[0]:
                    txns[item.tx_id] = (item.wal_offset, item.state, message.offset)
                return True
            if isinstance(item, FenceRecord):
                kept = fences.get(message.key)
                if kept is None or item.token >= kept[0].token:
                    fences[message.key] = (item, message.offset)
                return True
            change = item
            held = latest.get(message.key)
            if held is None or change.record.offset >= held.record.offset:
                latest[message.key] = change
            return True

        await self._scan(topic, partition, 0, None, take)
        return latest, fences, txns, next_seq

    async def read_window(
        self, partition: int, start: int, end: int,
        expected: dict[int, CheckedChange] | None = None,
    ) -> bytearray:  # fmt: skip
        """Journal entries (``RESTORED``) for the event ids of WAL offsets ``[start, end)``,
        deduplicated as the fold would. ``expected``: changes naming offsets in that range,
        each checked to name the event the WAL holds there (``ChangesUnusableError``
        otherwise)."""
        codec = EventCodec()
        window = DedupeWindow(self.config.limits.dedupe_window)
        entries = bytearray()
        unchecked = dict(expected or {})

        def take(message: Any) -> bool:
            value = message.value or b""
            change = unchecked.pop(message.offset, None)
            if change is not None:
                self._check_named(partition, change, message)
            event_id = window_id(message.key, value, partition, codec)
            if event_id is None:
                return True  # the fold dead-lettered it: not in its window either
            h = xxhash.xxh3_64_intdigest(value)
            if window.admit(event_id, message.offset, h) is not None:
                return True  # a retry or a reused id: the fold does not remember it either
            entries.extend(ENTRY.pack(message.offset, EntryStatus.RESTORED, 0, event_id, h))
            return True

        if start < end:
            await self._scan(self.config.topics.events, partition, start, end, take)
        for change in unchecked.values():  # aborted, or a transaction marker: no event there
            self._check_named(partition, change, None)
        return entries

    def _check_named(self, partition: int, change: CheckedChange, message: Any) -> None:
        mismatch = _wal_disagrees(change, message, self._event_codec)
        if mismatch is not None:
            error = UnusableChangeError(f"the change of {change.key!r} {mismatch}")
            what = self._unusable(partition, change.position, error, _QUIET)
            raise ChangesUnusableError(f"{what}: not restoring from that topic")

    @contextlib.asynccontextmanager
    async def _reader(self) -> AsyncIterator[AIOKafkaConsumer]:
        consumer = self.consumer()
        await consumer.start()
        try:
            yield consumer
        finally:
            await consumer.stop()

    async def _fetch(
        self, consumer: AIOKafkaConsumer, topic: str, partition: int, start: int, end: int
    ) -> list[Any]:
        """The records of ``[start, end)`` (those the topic still has)."""
        records: list[Any] = []

        def take(message: Any) -> bool:
            records.append(message)
            return True

        await self._scan(topic, partition, start, end, take, consumer)
        return records

    async def _scan(
        self, topic: str, partition: int, start: int, end: int | None,
        take: Callable[[Any], bool], consumer: AIOKafkaConsumer | None = None,
    ) -> bool:  # fmt: skip
        """Feeds ``take`` the records of ``[start, end)`` (``end`` None: the end offset at
        the start of the scan; a negative ``start`` counts back from that end) until it
        returns False (then False). ``consumer``: a started one to use, else its own. An
        ``end`` past the partition's end stops where the partition ends, never waits."""
        if consumer is None:
            async with self._reader() as own:
                return await self._scan(topic, partition, start, end, take, own)
        tp = TopicPartition(topic, partition)
        consumer.assign([tp])
        if end is None:
            end = (await consumer.end_offsets([tp]))[tp]
        if start < 0:
            start += end
        low = (await consumer.beginning_offsets([tp]))[tp]
        position = max(start, low)
        if position >= end:
            return True
        consumer.seek(tp, position)
        while position < end:
            # Short: a range that ends with transaction markers returns no record for them;
            # the position moves past them, and the loop ends without a long empty wait.
            batch = await consumer.getmany(tp, timeout_ms=100, max_records=10_000)
            for n, message in enumerate(batch.get(tp, ()), 1):
                if message.offset >= end:
                    return True
                if not take(message):
                    return False
                if n % _YIELD_EVERY == 0:
                    # A restore shares the event loop with the fold of the partitions this
                    # worker serves: 10,000 records in one go held their rounds (and reads
                    # waiting on them) for hundreds of milliseconds a batch.
                    await asyncio.sleep(0)
            position = await consumer.position(tp)
            high = consumer.highwater(tp)  # the log's end, not the last stable offset
            if not batch and high is not None and position >= high:
                return True  # asked for more than there is (an offset someone made up)
        return True


def numbered_records(records: list[Any], codec: ChangeCodec) -> list[tuple[int, int]]:
    """``(seq, WAL offset)`` of each record of ``records`` that has a ``seq`` header and
    names the WAL offset of the event that made it; unreadable ones are left out (the
    coverage reports them)."""
    found = []
    for m in records:
        seq = seq_of(m.headers)
        if seq is None:
            continue
        try:
            item = read_change_topic_record(m.key, m.value, m.headers, codec, m.offset)
        except UnusableChangeError:
            continue
        found.append(
            (seq, item.record.offset if isinstance(item, CheckedChange) else item.wal_offset)
        )
    return found


def _wal_disagrees(change: CheckedChange, message: Any, codec: EventCodec) -> str | None:
    """None when ``message`` (the WAL record at the offset ``change`` names, None if there is
    none) is the event that made ``change``; else what is there instead."""
    offset = change.record.offset
    if message is None or message.offset != offset:
        return f"names WAL offset {offset}, which holds no committed event"
    if is_tx_key(message.key):  # a transaction's record: one of its events made the change
        try:
            control = decode_control(message.value)
        except CodecError:
            return f"names WAL offset {offset}, which holds no transaction (dead-lettered bytes)"
        if not isinstance(control, TxRecord):
            # A decision (or the vote or tick that made one) applied a transaction prepared
            # earlier: its events are at the prepare, which the change does not name. Taken
            # as it is, as changes older than the window are.
            return None
        try:
            events = [codec.decode(e) for e in control.events]
        except CodecError:
            return f"names WAL offset {offset}, which holds no transaction (dead-lettered bytes)"
        if any(
            e.event_id == change.event_id and e.context_id.encode() == change.key for e in events
        ):
            return None
        return (
            f"names WAL offset {offset} and event {change.event_id.hex()}, but the transaction "
            "there holds no such event of that context"
        )
    if message.key != change.key:
        return f"names WAL offset {offset}, which holds an event of {message.key!r}"
    try:
        event_id = codec.decode(message.value or b"").event_id
    except CodecError:
        return f"names WAL offset {offset}, which holds no event (dead-lettered bytes)"
    if event_id != change.event_id:
        return (
            f"names WAL offset {offset} and event {change.event_id.hex()}, but the WAL holds "
            f"event {event_id.hex()} there"
        )
    return None
