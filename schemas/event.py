"""The event model as plain frozen dataclasses: what the Avro schemas carry, in Python.

Persisted names come from the schemas (``lukhas.context.Put``), never from these class names.
Checksums are 8 bytes: xxh3-64 of the canonical document, big-endian.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

EMPTY_METADATA: Mapping[str, str] = MappingProxyType({})


class PatchFormat(enum.IntEnum):
    """Symbols of the ``PatchFormat`` enum, in schema order (the index is the wire value)."""

    JSON_PATCH = 0
    MERGE_PATCH = 1


class ChangeKind(enum.IntEnum):
    """Symbols of the ``ChangeKind`` enum, in schema order (the index is the wire value)."""

    PUT = 0
    PATCH = 1
    TOUCH = 2
    DELETE = 3
    EXPIRE = 4


@dataclass(frozen=True, slots=True)
class Put:
    doc: bytes
    ttl_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Delete:
    pass


@dataclass(frozen=True, slots=True)
class Patch:
    format: PatchFormat
    patch: bytes
    expected_checksum: bytes | None = None
    ttl_ms: int | None = None
    clear_ttl: bool = False


@dataclass(frozen=True, slots=True)
class Touch:
    ttl_ms: int | None = None


@dataclass(frozen=True, slots=True)
class Expire:
    version: int


@dataclass(frozen=True, slots=True)
class CheckpointBarrier:
    """Appended to every WAL partition; its ``context_id`` is ``BARRIER_CONTEXT_ID`` and its
    record key is empty, which no context can have (context ids are 1..256 bytes)."""

    checkpoint_id: str


BARRIER_CONTEXT_ID = ""
BARRIER_KEY = b""


Op = Put | Delete | Patch | Touch | Expire | CheckpointBarrier
#: Union branch order of ``ContextEvent.op``: the index is the wire value.
OP_TYPES: tuple[type, ...] = (Put, Delete, Patch, Touch, Expire, CheckpointBarrier)


@dataclass(frozen=True, slots=True)
class Fence:
    lock: str
    token: int


@dataclass(frozen=True, slots=True)
class ContextEvent:
    event_id: bytes
    context_id: str
    op: Op
    expected_version: int | None = None
    fence: Fence | None = None
    metadata: Mapping[str, str] = field(default_factory=lambda: EMPTY_METADATA)


@dataclass(frozen=True, slots=True)
class ContextChange:
    """A context after one applied mutation, as published on the change topic."""

    context_id: str
    version: int
    kind: ChangeKind
    doc: bytes
    checksum: bytes
    expires_at_ms: int | None
    wal_offset: int
    event_id: bytes
    log_time_ms: int
