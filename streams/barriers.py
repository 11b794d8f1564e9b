"""Events the system appends itself: checkpoint barriers and expiries.

Both have **deterministic event ids** derived from what they mean, so appending the same one
twice (a worker restarted within a checkpoint interval, a zombie worker that still sweeps after
a rebalance) produces identical bytes: the fold's dedupe window journals the second as a
duplicate, and an Expire that does slip through the window is still refused by its version
condition. A sweeper's retry of an Expire carries its attempt number in the id.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import orjson
import xxhash

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import (
    BARRIER_CONTEXT_ID,
    BARRIER_KEY,
    CheckpointBarrier,
    ContextEvent,
    Expire,
)
from lukhas_context.state.exceptions import InvalidCheckpointError
from lukhas_context.state.manifest import Manifest, check_checkpoint_id

log = logging.getLogger(__name__)


def barrier_event(checkpoint_id: str, partition: int) -> ContextEvent:
    """The barrier of ``checkpoint_id`` for one partition."""
    check_checkpoint_id(checkpoint_id)
    event_id = xxhash.xxh3_128_digest(b"checkpoint\0%d\0%s" % (partition, checkpoint_id.encode()))
    return ContextEvent(event_id, BARRIER_CONTEXT_ID, CheckpointBarrier(checkpoint_id))


def expire_event(key: bytes, version: int, attempt: int = 0) -> ContextEvent:
    """The Expire of one version of a context. ``attempt`` counts the sweeper's retries: an
    Expire the fold refused as early (the broker's clock behind the sweeper's) sits in the
    dedupe window, and a retry with the same id would be taken for a duplicate of it."""
    event_id = xxhash.xxh3_128_digest(b"expire\0%d\0%d\0%s" % (version, attempt, key))
    return ContextEvent(event_id, key.decode(), Expire(version))


def checkpoint_id_for_slot(interval_s: float, now_s: float) -> str:
    """The id of the periodic checkpoint of the interval that holds ``now_s``: every worker
    names the same interval the same way."""
    return f"auto-{int(now_s // interval_s)}"


async def append_barriers(
    producer: Any, codec: EventCodec, topic: str, checkpoint_id: str, partitions: int
) -> dict[int, int]:
    """Appends the barrier of ``checkpoint_id`` to every partition of the WAL ``topic``;
    returns the offset of each (acknowledged, ``acks=all``)."""
    sends = []
    for p in range(partitions):
        value = codec.encode(barrier_event(checkpoint_id, p))
        sends.append(await producer.send(topic, value=value, key=BARRIER_KEY, partition=p))
    metadata = await asyncio.gather(*sends)
    return {m.partition: m.offset for m in metadata}


def published_manifest(
    key: bytes | None, value: bytes | None, checkpoint_id: str, offsets: dict[int, int],
    topic: str,
) -> dict[str, Any] | None:  # fmt: skip
    """The manifest a checkpoints-topic record publishes for the barriers of
    ``checkpoint_id`` at ``offsets`` (partition -> barrier offset) of the WAL ``topic``, as
    its JSON fields; None when the record is not one (another checkpoint, an older barrier
    of the same id). A record keyed for this checkpoint that is not a valid manifest — it
    does not parse, its checksum or fields disagree, its key names another partition — is
    passed over with a warning: anyone who can write to the topic can put garbage there,
    and the topic is a report, never a restore source (docs/architecture.md, trust model)."""
    prefix = f"{checkpoint_id}/".encode()
    if key is None or not key.startswith(prefix) or value is None:
        return None
    where = f"{key[:80]!r}"
    try:
        manifest = Manifest.from_json(value, where)
    except InvalidCheckpointError as exc:
        log.warning("passing over a checkpoints-topic record: %s", exc)
        return None
    if (
        manifest.checkpoint_id != checkpoint_id
        or key != f"{checkpoint_id}/{manifest.partition}".encode()
        or manifest.topic != topic
    ):
        log.warning("passing over a checkpoints-topic record %s: its manifest is for "
                    "%s/%d of %s", where, manifest.checkpoint_id, manifest.partition,
                    manifest.topic)  # fmt: skip
        return None
    if manifest.next_offset != offsets.get(manifest.partition, -2) + 1:
        return None  # an older barrier of the same id
    fields: dict[str, Any] = orjson.loads(value)
    return fields
