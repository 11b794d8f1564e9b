"""``lukhas restore``: replace one partition's store offline, from a chosen source.

``restore_offline`` opens a new store from the source (``processors.opener``: a checkpoint,
the change topic, or empty) in ``STATE_DIR/.rebuild/``, and ``replay_wal`` folds the WAL on
from its ``next_offset`` with the worker's own fold (``processors.round``), without
publishing, up to the WAL offset the change topic covers: every event before it already has
its change published, and the worker, when it starts, folds (and publishes) the rest.
Barriers passed on the way make their checkpoints again; one that exists already is compared,
and a different digest is reported as corruption. Only then is the current store, if any,
moved to ``STATE_DIR/quarantine/`` (never deleted) and the new one renamed into its place.
The worker must not be serving the partition (RocksDB's lock says so: ``StoreInUseError``).
"""

from __future__ import annotations

import bisect
import dataclasses
import enum
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from tqdm import tqdm

from lukhas_context.processors.checkpointer import Checkpointer
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import ProcessorError, StoreInUseError, WalTruncatedError
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.opener import Coverage, RestoreReport, Source, StoreOpener
from lukhas_context.processors.round import PartitionFolder, segment_end
from lukhas_context.state.exceptions import StoreLockedError, StoreOpenError
from lukhas_context.state.store import PartitionStore, move_aside
from lukhas_context.streams import kafka
from lukhas_context.streams.kafka import kafka_errors

log = logging.getLogger(__name__)


class From(enum.Enum):
    LATEST_CHECKPOINT = "latest-checkpoint"
    CHECKPOINT = "checkpoint"
    CHANGES = "changes"
    SCRATCH = "scratch"


@dataclass(frozen=True, slots=True)
class OfflineRestoreReport:
    restore: RestoreReport
    from_offset: int
    to_offset: int
    events_folded: int
    fold_seconds: float
    moved_aside: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.restore.to_dict(),
            "from_offset": self.from_offset,
            "to_offset": self.to_offset,
            "events_folded": self.events_folded,
            "fold_seconds": round(self.fold_seconds, 3),
            "moved_aside": self.moved_aside,
        }


async def restore_offline(
    config: WorkerConfig,
    partition: int,
    source: From,
    checkpoint_id: str | None = None,
    progress: bool = True,
    until: int | None = None,
) -> OfflineRestoreReport:
    """Replaces ``partition``'s store by one from ``source`` and folds the WAL on to the change
    topic's coverage (or to offset ``until``, capped at the WAL's end: for benchmarks and
    tests, since the events past the coverage then never get their changes published).
    ``checkpoint_id`` names the checkpoint when ``source`` is CHECKPOINT."""
    started = time.monotonic()
    await _check_partition(config, partition)
    opener = StoreOpener(config)
    path = opener.store_path(partition)
    low, high = await opener.watermarks(partition)
    # Check the source before anything is moved.
    manifest = None
    if source is From.CHECKPOINT:
        assert checkpoint_id is not None
        manifest = opener.checkpoints.find(partition, checkpoint_id)
    elif source is From.LATEST_CHECKPOINT:
        found = [m for m in opener.checkpoints.valid(partition) if m.next_offset >= low]
        if not found:
            raise ProcessorError(
                f"no valid checkpoint of partition {partition} in {opener.checkpoints.root} "
                f"that the WAL (starting at offset {low}) can continue"
            )
        manifest = found[0]
    if manifest is not None and manifest.next_offset < low:
        raise WalTruncatedError(partition, manifest.next_offset, low)
    if source is From.SCRATCH and low > 0:
        raise _scratch_truncated(opener, partition, low, high)
    _check_not_in_use(opener, path)
    # Built beside the live store, which is moved aside only once the new one is complete:
    # a source that turns out unusable, or a failure on the way, leaves the live store as is.
    build_root = config.state_dir / ".rebuild"
    builder = StoreOpener(
        dataclasses.replace(config, state_dir=build_root, checkpoint_dir=config.checkpoint_root)
    )
    building = builder.store_path(partition)
    if building.exists():
        shutil.rmtree(building)
    report = RestoreReport(partition, Source.REPLAY)
    if manifest is not None:
        store = builder.from_checkpoint(manifest)
        report.source, report.checkpoint_id = Source.CHECKPOINT, manifest.checkpoint_id
    elif source is From.CHANGES:
        restored = await builder.from_changes(partition, low)
        if restored is None:
            raise ProcessorError(f"the change topic holds nothing to restore partition {partition}")
        store, report.source = restored, Source.CHANGES
    else:
        store = builder.empty(partition)
    # The coverage is read only when it is the target. With ``until`` given, the replay
    # counts no change (``replay_wal``): a lower bound, which the worker that opens the store
    # raises to the topic's number from the coverage it reads itself; and a change topic that
    # cannot be read stops nothing that does not need it.
    coverage = None
    if until is None:
        coverage = await opener.changes_coverage(partition)
        report.skipped += coverage.skipped
        until = coverage.offset
    target = min(high, until)
    start = store.next_offset
    fold_started = time.monotonic()
    try:
        folded = await replay_wal(builder, store, partition, target, progress, coverage=coverage)
    finally:
        report.finish(store, started)
        store.close()
    fold_seconds = time.monotonic() - fold_started
    moved = None
    if path.exists():
        # Asked for, not a failure: INFO, and it says what it did.
        moved = str(move_aside(path, opener.quarantine_dir))
        log.info("partition %d: store rebuilt from %s; the previous store %s is kept in %s",
                 partition, report.source.value, path, moved)  # fmt: skip
        report.quarantined.append(moved)
    building.rename(path)
    return OfflineRestoreReport(report, start, max(start, target), folded, fold_seconds, moved)


async def _check_partition(config: WorkerConfig, partition: int) -> None:
    """``ProcessorError`` naming the cause when Kafka cannot be reached or the WAL has no
    such partition (aiokafka would wait for ever for its offsets)."""
    topic = config.topics.events
    consumer = kafka.consumer(
        config.bootstrap, f"{config.client_id}-restore", isolation="read_uncommitted",
        security=config.kafka_security,
    )  # fmt: skip
    try:
        with kafka_errors(ProcessorError, f"cannot reach Kafka at {config.bootstrap}"):
            await consumer.start()
            metadata = await consumer._client.fetch_all_metadata()
        count = len(metadata.partitions_for_topic(topic) or ())
    finally:
        await consumer.stop()
    if partition >= count:
        raise ProcessorError(
            f"no partition {partition}: {topic} has {count}" if count else f"no topic {topic}"
        )


def _check_not_in_use(opener: StoreOpener, path: Path) -> None:
    """``StoreInUseError`` when a worker holds the store open (RocksDB's lock)."""
    if not path.is_dir():
        return
    try:
        PartitionStore(path, opener.config.store).close()
    except StoreLockedError as exc:
        raise StoreInUseError(
            f"{path} is open in a running worker; stop it first "
            "(`lukhas down --processor-only` for the local cluster)"
        ) from exc
    except StoreOpenError:
        pass  # unusable: it will be moved aside all the same


async def replay_aside(
    config: WorkerConfig, partition: int, scratch: Path, until: int,
    checkpoint_id: str | None = None, progress: bool = True,
) -> tuple[PartitionStore, str]:  # fmt: skip
    """A store of the fold of WAL ``[0, until)`` in ``scratch`` (``lukhas verify``), from
    scratch or from checkpoint ``checkpoint_id`` of ``config``'s checkpoint root, open (the
    caller closes it), and a phrase saying how it was made. It touches no live state: no
    store, no checkpoint is written outside ``scratch``. ``ProcessorError`` when it cannot be
    made: the WAL no longer starts low enough (``WalTruncatedError``), the checkpoint is past
    ``until``, or the WAL ends before it."""
    await _check_partition(config, partition)
    builder = StoreOpener(dataclasses.replace(
        config, state_dir=scratch, checkpoint_dir=config.checkpoint_root,
    ), leave_checkpoints=True)  # fmt: skip
    low, high = await builder.watermarks(partition)
    if until > high:
        raise ProcessorError(f"WAL partition {partition} ends at offset {high}, before {until}")
    if checkpoint_id is not None:
        manifest = builder.checkpoints.find(partition, checkpoint_id)
        if manifest.next_offset > until:
            raise ProcessorError(
                f"checkpoint {checkpoint_id} of partition {partition} is at offset "
                f"{manifest.next_offset}, past {until}: it cannot be folded back to it"
            )
        if manifest.next_offset < low and manifest.next_offset < until:
            raise WalTruncatedError(partition, manifest.next_offset, low)
        store = builder.from_checkpoint(manifest)
        how = f"checkpoint {checkpoint_id} (offset {manifest.next_offset}) and the WAL on"
    else:
        if low > 0 and until > 0:
            raise _scratch_truncated(builder, partition, low, until)
        store = builder.empty(partition)
        how = "a replay of the WAL"
    try:
        await replay_wal(builder, store, partition, until, progress, take_checkpoints=False)
    except BaseException:
        store.close()
        raise
    return store, how


def _scratch_truncated(opener: StoreOpener, partition: int, low: int, until: int
                       ) -> WalTruncatedError:  # fmt: skip
    """A replay from offset 0 cannot be made: the error names the newest checkpoint the WAL
    can still continue (at or below ``until``), if any."""
    valid = [m.checkpoint_id for m in opener.checkpoints.valid(partition)
             if low <= m.next_offset <= until]  # fmt: skip
    hint = f"start from checkpoint {valid[0]}" if valid else "no checkpoint can replace it"
    return WalTruncatedError(partition, 0, low, hint)


async def replay_wal(
    opener: StoreOpener, store: PartitionStore, partition: int, target: int, progress: bool,
    take_checkpoints: bool = True, coverage: Coverage | None = None,
) -> int:  # fmt: skip
    """Folds WAL records ``[store.next_offset, target)`` into ``store`` with the worker's fold,
    unpublished, and returns how many records it read: the commit order of
    ``Materializer.fold_segment`` without its step 2 (nothing is published offline), one
    round per barrier, whose checkpoint is taken (not announced) unless
    ``take_checkpoints`` is false.

    Nothing is published, so the store's change count (``store.change_seq``) does not grow,
    except that a round ending at the change topic's ``coverage`` (rounds are cut there)
    takes the topic's number (``Coverage.next_seq_for``): the count stays at most what the topic
    has for ``[0, next_offset)``, as a standby built on the store needs (counting every
    change would overstate a coalesced topic's)."""
    start = store.next_offset
    if start >= target:
        return 0
    config = opener.config
    folder = PartitionFolder(
        partition, store, config.limits, events=config.event_codec(),
        index_history=config.history_index,
    )  # fmt: skip
    if coverage is not None:
        folder.resume_seq = coverage.next_seq_for(store.next_offset)
        folder.resume_below = coverage.offset
    checkpointer = Checkpointer(config, WorkerMetrics()) if take_checkpoints else None
    consumer = opener.consumer()
    await consumer.start()
    tp = TopicPartition(config.topics.events, partition)
    folded = 0
    try:
        consumer.assign([tp])
        consumer.seek(tp, start)
        with tqdm(
            total=target - start, unit="ev", unit_scale=True, disable=not progress,
            desc=f"partition {partition}",
        ) as bar:  # fmt: skip
            while store.next_offset < target:
                batch = await consumer.getmany(tp, timeout_ms=1000, max_records=50_000)
                records = [m for m in batch.get(tp, ()) if m.offset < target]
                if records:
                    before = store.next_offset
                    await _fold_rounds(folder, checkpointer, records, config.journal_offsets)
                    folded += len(records)
                    bar.update(store.next_offset - before)
                elif await consumer.position(tp) >= target:
                    # Only transaction markers or aborted records were left: nothing to fold.
                    store.commit({}, target)
    finally:
        await consumer.stop()
    return folded


def _offset(message: Any) -> int:
    return int(message.offset)


async def _fold_rounds(
    folder: PartitionFolder, checkpointer: Checkpointer | None, records: list[Any],
    journal_offsets: int,
) -> None:  # fmt: skip
    """Folds and commits ``records`` a round at a time, each ending at a barrier at most and
    at the change topic's coverage (``PartitionFolder.resume_below``), counting no change
    (see ``replay_wal``)."""
    while records:
        end = segment_end(records)
        if folder.resume_seq is not None and records[0].offset < folder.resume_below:
            end = min(end, bisect.bisect_left(records, folder.resume_below, key=_offset))
        r = folder.fold(records[:end])
        if r is not None:
            if folder.resume_seq is None or r.next_offset > folder.resume_below:
                r.end_seq = r.first_seq  # unpublished: not counted
            folder.commit(r, journal_offsets)
            if r.barrier is not None and checkpointer is not None:
                await checkpointer.take(folder.store, folder.partition, r.barrier[1], None)
        records = records[end:]
