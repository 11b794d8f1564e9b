"""Deletions and expiries on the change topic: Kafka tombstones (null value) whose headers
carry what the stored tombstone holds. One place for the header names and the ``kind`` values,
written by the processor and read by the subscription, the change-topic restore and faust."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.event import ChangeKind

#: Header ``kind`` of a tombstone -> the change kind.
TOMBSTONE_KINDS: Mapping[bytes, ChangeKind] = {
    b"deleted": ChangeKind.DELETE,
    b"expired": ChangeKind.EXPIRE,
}
KIND_HEADERS: Mapping[ChangeKind, bytes] = {kind: name for name, kind in TOMBSTONE_KINDS.items()}


def tombstone_headers(
    kind: ChangeKind,
    version: int,
    wal_offset: int,
    event_id: bytes,
    checksum: bytes,
    log_time_ms: int,
    expires_at_ms: int | None,
) -> list[tuple[str, bytes]]:
    """The headers of the tombstone of a delete or an expiry. ``expires_at_ms`` is the expiry
    the removed version had (None: it had none)."""
    headers = [
        ("kind", KIND_HEADERS[kind]),
        ("version", b"%d" % version),
        ("wal_offset", b"%d" % wal_offset),
        ("event_id", event_id),
        ("checksum", checksum),
        ("log_time_ms", b"%d" % log_time_ms),
    ]
    if expires_at_ms is not None:
        headers.append(("expires_at_ms", b"%d" % expires_at_ms))
    return headers


def wal_offset_of(value: bytes | None, headers: Any, codec: ChangeCodec) -> int:
    """The WAL offset of the event that made a change-topic record: from the headers of a
    tombstone, else from the change itself. ``KeyError``/``ValueError``/``CodecError`` when
    the record does not say."""
    if value is None:
        return int(dict(headers or ())["wal_offset"])
    return codec.decode(value).wal_offset
