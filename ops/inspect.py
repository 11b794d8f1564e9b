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
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import orjson

from lukhas_context.ops.auth import api_headers
from lukhas_context.processors.twophase import TX_STATE_PREFIX, read_state_record
from lukhas_context.schemas.change import (
    ChangeRecord,
    check_document,
    is_fence_key,
    read_fence_record,
)
from lukhas_context.schemas.codec import ChangeCodec, EventCodec
from lukhas_context.schemas.event import ContextEvent
from lukhas_context.schemas.exceptions import BadTombstoneError, CodecError
from lukhas_context.schemas.txrecord import Decision, Vote, decode_control, is_tx_key
from lukhas_context.state.exceptions import InvalidCheckpointError
from lukhas_context.state.manifest import Manifest
from lukhas_context.streams.deadletters import event_summary, iso_ms, letter_line
from lukhas_context.streams.position import Bound
from lukhas_context.streams.records import records
from lukhas_context.streams.security import KafkaSecurity
from lukhas_context.streams.topics import Topics

__all__ = ["TOPICS", "read", "wal_line"]

TOPICS = ("wal", "changes", "dlq", "checkpoints")


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
        # A context's partition is its key's, but in the checkpoints topic (keyed otherwise).
        found = records(
            bootstrap, topic_name(topics, which), partitions, start, until, context_id,
            security=security, keyed=which != "checkpoints",
        )  # fmt: skip
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


_wal_decoder: _Decoder | None = None


class _Decoder:
    def __init__(self, which: str) -> None:
        self.which = which
        self.events = EventCodec()
        self.changes = ChangeCodec()

    def line(self, m: Any) -> dict[str, Any]:
        base: dict[str, Any] = {"position": f"{m.partition}:{m.offset}",
                                "log_time": iso_ms(m.timestamp)}  # fmt: skip
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
                return letter_line(m)
            return {**base, **self._manifest(m.value, key)}
        except (CodecError, BadTombstoneError, InvalidCheckpointError, ValueError) as exc:
            return {**base, "key": key, "undecodable": f"{type(exc).__name__}: {exc}"}

    def _event(self, value: bytes | None) -> dict[str, Any]:
        if value is None:
            raise ValueError("no value")
        e: ContextEvent = self.events.decode(value)
        return event_summary(e)

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

    def _manifest(self, value: bytes | None, key: str | None) -> dict[str, Any]:
        if value is None:
            return {"key": key, "deleted": True}
        m = Manifest.from_json(value, f"checkpoints record {key}")
        data = orjson.loads(m.to_json())
        return {"checkpoint_id": m.checkpoint_id, "partition": m.partition,
                "next_offset": m.next_offset, "digest": data["digest"],
                "records": m.records, "documents": m.documents,
                "created": iso_ms(m.created_at_ms)}  # fmt: skip
