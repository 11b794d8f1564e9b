"""``lukhas inspect``: the records of the WAL, the change topic, the dead-letter queue and the
checkpoints topic, decoded, one line each.

A read is bounded before it starts: per partition, from ``--from`` (an offset, or a time: the
first record logged at or after it) to ``--until`` (exclusive; the end of the partition as it
is when the read starts, at most), and ``--limit`` lines in all. It reads committed records,
as the fold does. A record that does not decode is shown as such, with the reason: inspecting
a topic never fails on its contents. The WAL's outcome column comes from the read API's
journal (``GET /v1/outcomes/P/O``), when one is given; ``-`` when the journal no longer has
it or no API answers.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator
from typing import Any

import aiohttp
import orjson
from aiokafka import TopicPartition

from lukhas_context.ops.auth import api_headers
from lukhas_context.ops.exceptions import OpsError
from lukhas_context.processors.twophase import TX_STATE_PREFIX, read_state_record
from lukhas_context.schemas.change import (
    ChangeRecord,
    check_document,
    is_fence_key,
    read_fence_record,
)
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import (
    CheckpointBarrier,
    ContextEvent,
    Delete,
    Expire,
    Patch,
    Put,
    Touch,
)
from lukhas_context.schemas.exceptions import BadTombstoneError, CodecError
from lukhas_context.schemas.txrecord import Decision, Vote, decode_control, is_tx_key
from lukhas_context.state.exceptions import InvalidCheckpointError
from lukhas_context.state.manifest import Manifest
from lukhas_context.streams import kafka
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.position import Bound, parse_bound
from lukhas_context.streams.security import KafkaSecurity
from lukhas_context.streams.topics import Topics, partition_for

__all__ = [
    "TOPICS",
    "Bound",
    "InspectError",
    "NoSuchOffsetError",
    "dlq_line",
    "parse_bound",
    "read",
    "records",
    "wal_line",
]

TOPICS = ("wal", "changes", "dlq", "checkpoints")
#: Seconds one fetch may return nothing before the read gives up on a partition.
FETCH_TIMEOUT_S = 10.0


class InspectError(OpsError):
    """``lukhas inspect`` cannot read what it was asked for."""


class NoSuchOffsetError(InspectError):
    """An offset past the end of a topic's partition."""


def _iso(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    )


def topic_name(topics: Topics, which: str) -> str:
    return {"wal": topics.events, "changes": topics.changes, "dlq": topics.dlq,
            "checkpoints": topics.checkpoints}[which]  # fmt: skip


async def read(
    bootstrap: str, topics: Topics, which: str, partitions: list[int] | None,
    start: Bound | None, until: Bound | None, context_id: str | None, limit: int,
    api: str | None = None, *, security: KafkaSecurity,
) -> AsyncIterator[dict[str, Any]]:  # fmt: skip
    """The decoded records (see the module doc), as dicts, partition by partition."""
    http = (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), headers=api_headers())
        if api
        else None
    )
    codec = _Decoder(which)
    left = limit
    try:
        found = records(
            bootstrap, topics, which, partitions, start, until, context_id, security=security
        )
        async with contextlib.aclosing(found) as found:
            async for m in found:
                item = codec.line(m)
                if context_id is not None and context_id not in (item.get("context_id"),
                                                                 item.get("key")):  # fmt: skip
                    continue
                if which == "wal" and http is not None:
                    item["outcome"] = await _outcome(http, api, m.partition, m.offset)
                yield item
                left -= 1
                if left == 0:
                    return
    finally:
        if http is not None:
            await http.close()


async def records(
    bootstrap: str, topics: Topics, which: str, partitions: list[int] | None,
    start: Bound | None, until: Bound | None, context_id: str | None = None, *,
    security: KafkaSecurity,
) -> AsyncGenerator[Any, None]:  # fmt: skip
    """The raw records of a topic (aiokafka's ``ConsumerRecord``) within the bounds,
    partition by partition: the chosen ones, else the context's (``context_id``), else all.
    Close it (``contextlib.aclosing``) when not read to the end."""
    topic = topic_name(topics, which)
    consumer = kafka.consumer(
        bootstrap, "lukhas-inspect", isolation="read_committed", security=security
    )
    try:
        with kafka_errors(InspectError, f"cannot reach Kafka at {bootstrap}"):
            await consumer.start()
        with kafka_errors(InspectError, f"cannot read the partitions of {topic}"):
            metadata = await consumer._client.fetch_all_metadata()
        count = len(metadata.partitions_for_topic(topic) or ())
        if not count:
            raise InspectError(f"no topic {topic} (is this the right cluster and prefix?)")
        for p in _partitions(partitions, count, topic, context_id, which):
            async for m in _partition(consumer, topic, p, start, until):
                yield m
    finally:
        await consumer.stop()


def _partitions(asked: list[int] | None, count: int, topic: str, context_id: str | None,
                which: str) -> list[int]:  # fmt: skip
    if asked:
        bad = [p for p in asked if p >= count]
        if bad:
            raise InspectError(f"no partition {bad[0]}: {topic} has {count} (0 to {count - 1})")
        return sorted(set(asked))
    if context_id is not None and which != "checkpoints":
        return [partition_for(context_id.encode(), count)]
    return list(range(count))


async def _partition(
    consumer: Any, topic: str, p: int, start: Bound | None, until: Bound | None
) -> AsyncIterator[Any]:
    tp = TopicPartition(topic, p)
    consumer.assign([tp])
    with kafka_errors(InspectError, f"cannot read {topic}[{p}]"):
        low = (await consumer.beginning_offsets([tp]))[tp]
        end = (await consumer.end_offsets([tp]))[tp]
        first = await _offset(consumer, tp, start, low, end)
        stop = end if until is None else min(end, await _offset(consumer, tp, until, low, end))
    if first >= stop:
        return
    consumer.seek(tp, first)
    while True:
        with kafka_errors(InspectError, f"cannot read {topic}[{p}]"):
            batch = await consumer.getmany(tp, timeout_ms=int(FETCH_TIMEOUT_S * 1000))
            position = await consumer.position(tp)
        records = batch.get(tp, [])
        for m in records:
            if m.offset >= stop:
                return
            yield m
        if position >= stop:
            return
        if not records:
            raise InspectError(f"{topic}[{p}] sent nothing for {FETCH_TIMEOUT_S:g} s at offset "
                               f"{position} (before {stop})")  # fmt: skip


async def _offset(consumer: Any, tp: TopicPartition, bound: Bound | None, low: int, end: int
                  ) -> int:  # fmt: skip
    if bound is None:
        return low
    if bound.offset is not None:
        if bound.offset > end:
            raise NoSuchOffsetError(f"no offset {bound.offset} in {tp.topic}[{tp.partition}]: "
                                    f"it ends at {end}")  # fmt: skip
        return max(bound.offset, low)
    found = (await consumer.offsets_for_times({tp: bound.time_ms}))[tp]
    return end if found is None else max(found.offset, low)


async def _outcome(http: aiohttp.ClientSession, api: str | None, p: int, offset: int) -> str:
    try:
        async with http.get(f"{api}/v1/outcomes/{p}/{offset}?timeout=0") as response:
            data = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return "-"
    if response.status != 200 or not isinstance(data, dict):
        return "-"
    status = str(data.get("status"))
    if data.get("reason"):
        status += f" ({data['reason']})"
    return status


def wal_line(m: Any) -> dict[str, Any]:
    """One WAL record decoded as ``lukhas inspect wal`` shows it: ``position``, ``log_time``,
    ``event_id``, ``context_id``, ``kind``, ``key`` (and ``if_version``, ...), or
    ``undecodable`` with the reason."""
    global _wal_decoder
    if _wal_decoder is None:
        _wal_decoder = _Decoder("wal")
    return _wal_decoder.line(m)


_KINDS = {Put: "put", Patch: "patch", Delete: "delete", Touch: "touch", Expire: "expire",
          CheckpointBarrier: "checkpoint-barrier"}  # fmt: skip


def dlq_line(m: Any) -> dict[str, Any]:
    """One dead letter decoded as ``lukhas inspect dlq`` shows it: ``position``,
    ``log_time``, ``reason``, ``source`` (its WAL position), ``context_id`` and the event's
    ``event_id`` and ``kind`` (or ``event``: why it does not decode)."""
    global _dlq_decoder
    if _dlq_decoder is None:
        _dlq_decoder = _Decoder("dlq")
    return _dlq_decoder.line(m)


_wal_decoder: _Decoder | None = None
_dlq_decoder: _Decoder | None = None


class _Decoder:
    def __init__(self, which: str) -> None:
        self.which = which
        self.events = EventCodec()
        self.changes = ChangeCodec()

    def line(self, m: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"position": f"{m.partition}:{m.offset}",
                                "log_time": _iso(m.timestamp)}  # fmt: skip
        key = None if m.key is None else m.key.decode("utf-8", "backslashreplace")
        try:
            if self.which == "wal" and is_tx_key(m.key):
                return {**base, **self._transaction(m.value), "key": key}
            if self.which == "wal":
                return {**base, **self._event(m.value), "key": key}
            if self.which == "changes" and (m.key or b"").startswith(TX_STATE_PREFIX):
                tx_id, offset, state = read_state_record(m.key, m.value)
                return {**base, "kind": "transaction-state", "event_id": tx_id.hex(),
                        "wal_offset": offset, "prepared": state is not None}  # fmt: skip
            if self.which == "changes" and is_fence_key(m.key):
                f = read_fence_record(m.key, m.value)
                return {**base, "kind": "fence", "lock": f.lock, "token": f.token,
                        "wal_offset": f.wal_offset}  # fmt: skip
            if self.which == "changes":
                return {**base, **self._change(m.key, m.value, m.headers)}
            if self.which == "dlq":
                return {**base, **self._dead(m)}
            return {**base, **self._manifest(m.value, key)}
        except (CodecError, BadTombstoneError, InvalidCheckpointError, ValueError) as exc:
            return {**base, "key": key, "undecodable": f"{type(exc).__name__}: {exc}"}

    def _event(self, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise ValueError("no value")
        e: ContextEvent = self.events.decode(value)
        kind = _KINDS.get(type(e.op), type(e.op).__name__.lower())
        out: dict[str, Any] = {"event_id": e.event_id.hex(), "context_id": e.context_id,
                               "kind": kind}  # fmt: skip
        if e.expected_version is not None:
            out["if_version"] = e.expected_version
        if isinstance(e.op, Expire):
            out["expires_version"] = e.op.version
        if isinstance(e.op, CheckpointBarrier):
            out["checkpoint_id"] = e.op.checkpoint_id
        return out

    def _transaction(self, value: bytes | None) -> dict[str, Any]:
        record = decode_control(value)
        if isinstance(record, Vote):
            return {"event_id": record.tx_id.hex(), "kind": "vote", "voter": record.partition,
                    "yes": record.yes, "reason": record.reason or None}  # fmt: skip
        if isinstance(record, Decision):
            return {"event_id": record.tx_id.hex(), "kind": "decision",
                    "commit": record.commit, "reason": record.reason or None}  # fmt: skip
        if record is None:
            return {"kind": "tick"}
        events = [self._event(e) for e in record.events]
        out: dict[str, Any] = {"event_id": record.tx_id.hex(), "kind": "transaction",
               "context_id": ",".join(dict.fromkeys(e["context_id"] for e in events)),
               "events": events}  # fmt: skip
        if record.partitions:
            out["partitions"] = list(record.partitions)
        return out

    def _change(self, key: bytes | None, value: bytes | None, headers: Any) -> dict[str, Any]:
        if value is None:
            c = ChangeRecord.from_tombstone(key, headers)
        else:
            c = ChangeRecord.from_change(check_document(self.changes.decode(value)))
        return {"context_id": c.context_id, "version": c.version, "kind": c.kind.name.lower(),
                "wal_offset": c.wal_offset, "event_id": c.event_id.hex(),
                "checksum": c.checksum.hex()}  # fmt: skip

    def _dead(self, m: Any) -> dict[str, Any]:
        h = {k: v.decode("utf-8", "replace") for k, v in (m.headers or ())}
        out: dict[str, Any] = {
            "reason": f"{h.get('error.class', '?')}: {h.get('error.message', '')}",
            "source": f"{h.get('source.partition', '?')}:{h.get('source.offset', '?')}",
            "context_id": None if m.key is None else m.key.decode("utf-8", "backslashreplace"),
        }
        try:
            out.update({k: v for k, v in self._event(m.value).items() if k != "context_id"})
        except (CodecError, ValueError) as exc:
            out["event"] = f"does not decode ({type(exc).__name__})"
        return out

    def _manifest(self, value: bytes | None, key: str | None) -> dict[str, Any]:
        if value is None:
            return {"key": key, "deleted": True}
        m = Manifest.from_json(value, f"checkpoints record {key}")
        data = orjson.loads(m.to_json())
        return {"checkpoint_id": m.checkpoint_id, "partition": m.partition,
                "next_offset": m.next_offset, "digest": data["digest"],
                "records": m.records, "documents": m.documents,
                "created": _iso(m.created_at_ms)}  # fmt: skip
