"""``lukhas replay --as-of``: the state at a point of the log, built aside and read-only.

The point is a time (the log's time: the brokers' append time of the WAL records, so every
replay finds the same offsets) or WAL positions. Per partition, the state *as of* it is the
fold of the WAL up to it:

- as of a time T: every record logged before T (``[0, first offset logged at or after T)``).
  A T past the partition's last record means the whole partition, once T is at least
  ``SETTLED_S`` in the past by this machine's clock (a record appended later gets a later log
  time, as long as the brokers' clocks are within that of this one); a later T is refused,
  since the answer could still change;
- as of ``P:O``: every record up to and including offset O of partition P (the state a
  ``get --after P:O`` sees at the least); only the partitions named are built.

Each partition starts from the newest valid checkpoint at or below its point (when the
checkpoint directory is known), else from offset 0, and folds the WAL on with the worker's
own fold into ``DIR/partition-P``, writing nothing anywhere else (``processors.offline.
replay_aside``). ``DIR/as-of.json`` records the point and each partition's offset, digest and
source. ``lukhas get ID --as-of DIR`` then reads a context from those stores, opened
read-only; a context whose TTL had run out at the point reads as absent, as the live API would
have answered then.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiokafka import TopicPartition
from rocksdict import AccessType, Options, Rdict

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import ProcessorError
from lukhas_context.state.checkpoints import CheckpointDir
from lukhas_context.state.exceptions import CheckpointError
from lukhas_context.state.record import ContextRecord, decode_record
from lukhas_context.state.store import CF_CONTEXTS, CF_EXPIRY, CF_JOURNAL
from lukhas_context.streams import kafka
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.position import parse_bound
from lukhas_context.streams.topics import partition_for

__all__ = ["MANIFEST", "AsOf", "PointInTimeError", "build", "parse_as_of", "read_context"]

log = logging.getLogger(__name__)

MANIFEST = "as-of.json"
#: Seconds a time must lie in the past before the state as of it is final.
SETTLED_S = 60.0


class PointInTimeError(ProcessorError):
    """The state at that point cannot be built or read (the reason says why)."""


@dataclass(frozen=True)
class AsOf:
    """A time (``time_ms``) or WAL positions (``positions``: partition -> offset)."""

    raw: str
    time_ms: int | None = None
    positions: dict[int, int] | None = None


def parse_as_of(raw: str) -> AsOf:
    """``P:O[,P:O...]`` or a time (ISO 8601, or ``ms:EPOCH_MS``); ``ValueError`` else."""
    if raw and all(":" in part and part.split(":", 1)[0].isdigit() for part in raw.split(",")):
        positions: dict[int, int] = {}
        for part in raw.split(","):
            p, o = part.split(":", 1)
            if not (o.isascii() and o.isdigit() and len(o) <= 19 and len(p) <= 6):
                raise ValueError(f"{part!r} is not a WAL position PARTITION:OFFSET")
            if int(p) in positions:
                raise ValueError(f"partition {p} is named twice")
            positions[int(p)] = int(o)
        return AsOf(raw, positions=positions)
    bound = parse_bound(raw)
    if bound.time_ms is None:
        raise ValueError(f"{raw!r}: a time (ISO 8601, or ms:EPOCH_MS) or PARTITION:OFFSET,...")
    return AsOf(raw, time_ms=bound.time_ms)


async def build(config: WorkerConfig, into: Path, as_of: AsOf, partitions: list[int] | None,
                progress: bool) -> dict[str, Any]:  # fmt: skip
    """Builds the stores (see the module doc) and returns the manifest it wrote."""

    await asyncio.to_thread(_check_empty, into)
    topic = config.topics.events
    targets, count = await _targets(config, as_of, partitions)
    await asyncio.to_thread(into.mkdir, parents=True, exist_ok=True)
    manifest: dict[str, Any] = {
        "as_of": as_of.raw, "as_of_ms": as_of.time_ms, "topic": topic,
        "partition_count": count, "built_at_ms": int(time.time() * 1000), "partitions": {},
    }  # fmt: skip
    checkpoints = CheckpointDir(config.checkpoint_root, topic)
    for p, (until, point_ms) in sorted(targets.items()):
        found = [m for m in checkpoints.valid(p) if m.next_offset <= until]
        store, how = await _from_newest_valid(config, p, into, until, found, progress)
        try:
            s = store.summary()
        finally:
            store.close()
        manifest["partitions"][str(p)] = {
            "next_offset": s.next_offset, "digest": s.digest_hex, "records": s.records,
            "documents": s.documents, "source": how, "as_of_ms": point_ms,
        }  # fmt: skip
    await asyncio.to_thread((into / MANIFEST).write_text, json.dumps(manifest, indent=2) + "\n")
    return manifest


async def _from_newest_valid(config: WorkerConfig, p: int, into: Path, until: int,
                             found: list[Any], progress: bool) -> tuple[Any, str]:  # fmt: skip
    """``replay_aside`` from the newest of ``found`` (newest first) that installs and
    verifies; one that does not is passed over (and left where it is) for the next, and
    after the last the WAL is replayed from its start."""
    from lukhas_context.processors.offline import replay_aside

    for manifest in found:
        try:
            return await replay_aside(config, p, into, until, manifest.checkpoint_id, progress)
        except CheckpointError as exc:
            log.warning("partition %d: %s; trying an older checkpoint", p, exc)
            await asyncio.to_thread(shutil.rmtree, into / f"partition-{p}", True)
    return await replay_aside(config, p, into, until, None, progress)


def _check_empty(into: Path) -> None:
    if (into / MANIFEST).exists() or any(into.glob("partition-*")):
        raise PointInTimeError(f"{into} already holds a state; choose an empty directory")


async def _targets(config: WorkerConfig, as_of: AsOf, partitions: list[int] | None
                   ) -> tuple[dict[int, tuple[int, int | None]], int]:  # fmt: skip
    """partition -> (offset to fold up to, the point's time), and the partition count."""
    topic = config.topics.events
    consumer = kafka.consumer(
        config.bootstrap, "lukhas-as-of", isolation="read_committed",
        security=config.kafka_security,
    )  # fmt: skip
    try:
        with kafka_errors(PointInTimeError, f"cannot reach Kafka at {config.bootstrap}"):
            await consumer.start()
            metadata = await consumer._client.fetch_all_metadata()
        count = len(metadata.partitions_for_topic(topic) or ())
        if not count:
            raise PointInTimeError(f"no topic {topic}")
        if as_of.positions is not None:
            chosen = sorted(as_of.positions)
            if partitions and sorted(set(partitions)) != chosen:
                raise PointInTimeError("-p and the positions of --as-of name other partitions")
        else:
            chosen = sorted(set(partitions)) if partitions else list(range(count))
        bad = [p for p in chosen if p >= count]
        if bad:
            raise PointInTimeError(f"no partition {bad[0]}: {topic} has {count}")
        tps = [TopicPartition(topic, p) for p in chosen]
        with kafka_errors(PointInTimeError, f"cannot read the offsets of {topic}"):
            lows = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            times = None if as_of.time_ms is None else await consumer.offsets_for_times(
                {tp: as_of.time_ms for tp in tps})  # fmt: skip
        targets: dict[int, tuple[int, int | None]] = {}
        for tp in tps:
            p, low, end = tp.partition, lows[tp], ends[tp]
            if as_of.positions is not None:
                offset = as_of.positions[p]
                if offset >= end:
                    raise PointInTimeError(f"no offset {offset} in partition {p}: it ends at {end}")
                targets[p] = (offset + 1, await _log_time(consumer, tp, offset))
                continue
            assert times is not None
            hit = times[tp]
            if hit is None:
                assert as_of.time_ms is not None
                if as_of.time_ms > (time.time() - SETTLED_S) * 1000:
                    raise PointInTimeError(
                        f"{_iso(as_of.time_ms)} is past the last record of partition {p} and not "
                        f"{SETTLED_S:g} s in the past yet: records logged from now on could "
                        "still come before it; choose an earlier time, or wait"
                    )
                targets[p] = (end, as_of.time_ms)
                continue
            if hit.offset <= low and low > 0:
                raise PointInTimeError(
                    f"{_iso(as_of.time_ms)} is before the first record partition {p} still "
                    f"holds (offset {low}): retention has deleted what came before"
                )
            targets[p] = (hit.offset, as_of.time_ms)
        return targets, count
    finally:
        await consumer.stop()


async def _log_time(consumer: Any, tp: TopicPartition, offset: int) -> int | None:
    """The log time of the record at ``offset`` (None: a transaction marker, or aborted)."""
    consumer.assign([tp])
    consumer.seek(tp, offset)
    with kafka_errors(PointInTimeError, f"cannot read {tp.topic}[{tp.partition}]"):
        batch = await consumer.getmany(tp, timeout_ms=10_000, max_records=1)
    records = batch.get(tp, [])
    return records[0].timestamp if records and records[0].offset == offset else None


def _iso(ms: int | None) -> str:
    return dt.datetime.fromtimestamp((ms or 0) / 1000, dt.UTC).isoformat(timespec="seconds")


def read_context(into: Path, context_id: str) -> tuple[ContextRecord | None, dict[str, Any], int]:
    """A context's record in the state built in ``into`` (None: it did not exist, was
    deleted, or had expired at the point), the manifest, and its partition."""
    try:
        manifest = json.loads((into / MANIFEST).read_text())
    except FileNotFoundError:
        raise PointInTimeError(f"{into} holds no state built by `lukhas replay --as-of`") from None
    except ValueError as exc:
        raise PointInTimeError(f"{into / MANIFEST} does not parse: {exc}") from None
    p = partition_for(context_id.encode(), int(manifest["partition_count"]))
    built = manifest["partitions"].get(str(p))
    if built is None:
        raise PointInTimeError(
            f"{context_id!r} is in partition {p}, which {into} does not hold (built: "
            f"{', '.join(sorted(manifest['partitions'])) or 'none'})"
        )
    options = Options(raw_mode=True)
    families = {name: Options(raw_mode=True) for name in (CF_CONTEXTS, CF_JOURNAL, CF_EXPIRY)}
    try:
        db = Rdict(str(into / f"partition-{p}"), options, column_families=families,
                   access_type=AccessType.read_only())  # fmt: skip
    except Exception as exc:  # rocksdict raises plain Exception
        raise PointInTimeError(f"cannot open {into / f'partition-{p}'}: {exc}") from None
    try:
        raw = db.get_column_family(CF_CONTEXTS).get(context_id.encode())
    finally:
        db.close()
    if raw is None:
        return None, manifest, p
    record = decode_record(raw)
    point_ms = built.get("as_of_ms")
    expired = (record.expires_at_ms is not None and point_ms is not None
               and record.expires_at_ms <= point_ms)  # fmt: skip
    if record.doc is None or expired:
        return None, manifest, p
    return record, manifest, p
