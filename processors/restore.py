"""Opening a partition's store, or restoring it when it cannot be used.

The order (DESIGN.md, "Restore"):

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
   (journaled as ``RESTORED``: their ids are known, their outcomes are not kept).
4. **replay**: an empty store, folded from offset 0.

Whatever the path, the WAL must still hold the offset the store needs: otherwise
``WalTruncatedError``, never a silent skip. A restored store is built in a sibling directory
and renamed into place only when complete, so a crash during a restore leaves nothing that
could be taken for a consistent store.
"""

from __future__ import annotations

import asyncio
import enum
import logging
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import xxhash
from aiokafka import AIOKafkaConsumer, TopicPartition

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import ProcessorError, WalTruncatedError
from lukhas_context.processors.fold import remembered_by_fold
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.exceptions import CodecError
from lukhas_context.schemas.tombstone import wal_offset_of
from lukhas_context.state.checkpoints import CheckpointDir, Manifest
from lukhas_context.state.exceptions import (
    CheckpointError,
    StateError,
    StoreCorruptError,
    StoreOpenError,
)
from lukhas_context.state.journal import ENTRY, EntryStatus, encode_block
from lukhas_context.state.record import ContextRecord
from lukhas_context.state.store import PartitionStore, free_path, quarantine

log = logging.getLogger(__name__)

#: Records per WriteBatch when a store is written from the change topic.
_CHUNK = 50_000


class Source(enum.Enum):
    LOCAL = "local"
    CHECKPOINT = "checkpoint"
    CHANGES = "changes"
    REPLAY = "replay"


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


class Restorer:
    """Opens or restores partition stores under one worker's state directory."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.checkpoints = CheckpointDir(config.checkpoint_root, config.topics.events)

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
        ``watermarks``: the WAL partition's ``(low, end)`` offsets, when the caller has them."""
        started = time.monotonic()
        low, high = watermarks or await self.watermarks(partition)
        quarantined: list[str] = []
        store = await asyncio.to_thread(self.open_local, partition, quarantined)
        report = RestoreReport(partition, Source.LOCAL, quarantined=quarantined)
        if store is None:
            store, report = await self.rebuild(partition, low, high, quarantined)
        if store.next_offset < low:
            store.close()
            raise WalTruncatedError(partition, store.next_offset, low)
        if store.next_offset > high:
            store.close()
            raise ProcessorError(
                f"the store of partition {partition} needs offset {store.next_offset} but the "
                f"WAL ends at {high}: the state dir belongs to another log"
            )
        store.load_recent(self.config.limits.dedupe_window)
        report.finish(store, started)
        return store, report

    async def rebuild(
        self, partition: int, low: int, high: int, quarantined: list[str] | None = None
    ) -> tuple[PartitionStore, RestoreReport]:
        """Steps 2-4 of the order (the local store is absent or was quarantined)."""
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
                log.error("partition %d: %s", partition, exc)
                report.skipped.append(f"checkpoint {manifest.checkpoint_id}: {exc}")
                continue
            report.checkpoint_id = manifest.checkpoint_id
            return store, report
        restored = await self.from_changes(partition, low)
        if restored is not None:
            report.source = Source.CHANGES
            return restored, report
        if low > 0:
            raise WalTruncatedError(partition, 0, low)
        report.source = Source.REPLAY
        return await asyncio.to_thread(self.empty, partition), report

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
        """The store rebuilt from the change topic, or None when the topic holds nothing for
        the partition or holds records this version cannot restore from."""
        latest = await self.read_changes(partition)
        if latest is None:
            return None
        next_offset = 1 + max((r.offset for r in latest.values()), default=-1)
        if next_offset < low:
            raise WalTruncatedError(partition, next_offset, low)
        start = max(low, next_offset - self.config.limits.dedupe_window)
        window = await self.read_window(partition, start, next_offset)
        return await asyncio.to_thread(self._write_restored, partition, latest, next_offset, window)

    def _write_restored(
        self,
        partition: int,
        latest: dict[bytes, ContextRecord],
        next_offset: int,
        window: bytearray,
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
            store.commit({}, next_offset, block)
        if path.exists():
            shutil.rmtree(path)
        building.rename(path)
        return PartitionStore(path, self.config.store)

    # ---- Kafka reads ----

    def consumer(self) -> AIOKafkaConsumer:
        return AIOKafkaConsumer(
            bootstrap_servers=self.config.bootstrap,
            client_id=f"{self.config.client_id}-restore",
            enable_auto_commit=False,
            isolation_level="read_committed",
            max_partition_fetch_bytes=4 * 1024 * 1024,
            fetch_max_bytes=16 * 1024 * 1024,
        )

    async def watermarks(self, partition: int) -> tuple[int, int]:
        """The WAL partition's low watermark and end offset."""
        consumer = self.consumer()
        await consumer.start()
        try:
            tp = TopicPartition(self.config.topics.events, partition)
            low = (await consumer.beginning_offsets([tp]))[tp]
            high = (await consumer.end_offsets([tp]))[tp]
            return low, high
        finally:
            await consumer.stop()

    async def changes_coverage(self, partition: int) -> int:
        """One past the WAL offset of the newest change of the partition (0 when there is
        none): every event before it has had its change published, since changes are
        published in WAL order and a round commits only once they are acknowledged."""
        newest: list[int] = []
        codec = ChangeCodec()

        def take(message: Any) -> bool:
            try:
                newest.append(wal_offset_of(message.value, message.headers, codec))
            except (KeyError, ValueError, CodecError) as exc:
                raise ProcessorError(
                    f"the newest change of {self.config.topics.changes}[{partition}] does not "
                    f"say which WAL offset made it ({type(exc).__name__}: {exc})"
                ) from exc
            return True

        await self._scan(self.config.topics.changes, partition, -1, None, take)
        return newest[-1] + 1 if newest else 0

    async def read_changes(self, partition: int) -> dict[bytes, ContextRecord] | None:
        """The latest change of every context in the change partition, as stored records."""
        codec = ChangeCodec()
        latest: dict[bytes, ContextRecord] = {}

        def take(message: Any) -> bool:
            record = _record_of(message)
            if record is None:
                return False
            held = latest.get(message.key)
            # The newest by WAL offset, not by position: changes published again (after a
            # crash, or by a zombie) may follow newer ones.
            if held is None or record.offset >= held.offset:
                latest[message.key] = record
            return True

        def _record_of(message: Any) -> ContextRecord | None:
            """The stored record a change stands for; None when it cannot be restored."""
            if message.value is None:
                headers = dict(message.headers or ())
                try:
                    return ContextRecord(
                        int(headers["version"]), None, headers["checksum"], None,
                        int(headers["wal_offset"]), int(headers["log_time_ms"]),
                    )  # fmt: skip
                except (KeyError, ValueError):
                    log.warning(
                        "partition %d: a tombstone in the change topic lacks the headers a "
                        "restore needs (written by an older version); not restoring from it",
                        partition,
                    )
                    return None
            try:
                c = codec.decode(message.value)
            except CodecError as exc:
                log.warning("partition %d: undecodable change, not restoring from the change "
                            "topic: %s", partition, exc)  # fmt: skip
                return None
            return ContextRecord(
                c.version, c.doc, c.checksum, c.expires_at_ms, c.wal_offset, c.log_time_ms
            )

        ok = await self._scan(self.config.topics.changes, partition, 0, None, take)
        return latest if ok and latest else None

    async def read_window(self, partition: int, start: int, end: int) -> bytearray:
        """Journal entries (``RESTORED``) for the event ids of WAL offsets ``[start, end)``,
        deduplicated as the fold would."""
        codec = EventCodec()
        seen: dict[bytes, int] = {}  # event id -> offset of its last non-retry occurrence
        entries = bytearray()
        window = self.config.limits.dedupe_window

        def take(message: Any) -> bool:
            value = message.value or b""
            try:
                event = codec.decode(value)
            except CodecError:
                return True
            if not remembered_by_fold(message.key, event):
                return True  # the fold dead-lettered it: not in its window either
            event_id = event.event_id
            h = xxhash.xxh3_64_intdigest(value)
            prior = seen.get(event_id)
            if prior is not None and prior >= message.offset - window:
                return True  # a retry: the fold journaled it as a duplicate
            seen[event_id] = message.offset
            entries.extend(ENTRY.pack(message.offset, EntryStatus.RESTORED, 0, event_id, h))
            return True

        if start < end:
            await self._scan(self.config.topics.events, partition, start, end, take)
        return entries

    async def _scan(
        self, topic: str, partition: int, start: int, end: int | None,
        take: Callable[[Any], bool],
    ) -> bool:  # fmt: skip
        """Feeds ``take`` the records of ``[start, end)`` (``end`` None: the end offset at
        the start of the scan; a negative ``start`` counts back from that end) until it
        returns False (then False)."""
        consumer = self.consumer()
        await consumer.start()
        try:
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
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=10_000)
                for message in batch.get(tp, ()):
                    if message.offset >= end:
                        return True
                    if not take(message):
                        return False
                position = await consumer.position(tp)
            return True
        finally:
            await consumer.stop()
