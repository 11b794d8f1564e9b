"""The event model as plain frozen dataclasses: what the Avro schemas carry, in Python.

Persisted names come from the schemas (``lukhas.context.Put``), never from these class names.
Checksums are 8 bytes: xxh3-64 of the canonical document, big-endian.
"""

from __future__ import annotations

import enum
import re
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


#: The longest name of a lock, and so of a fence's lock (UTF-8 bytes).
MAX_LOCK_NAME_BYTES = 200


@dataclass(frozen=True, slots=True)
class Fence:
    """A fencing token of a lock (``streams.locks``): the fold refuses a write whose token is
    below the highest it has folded for that lock in the partition."""

    lock: str
    token: int


def fence_problem(fence: Fence) -> str | None:
    """Why ``fence`` is not one a lock can issue (the fold rejects it, a client refuses to
    send it), or None. A lock name is a non-empty string of at most ``MAX_LOCK_NAME_BYTES``
    UTF-8 bytes without control characters; a token is a non-negative 64-bit integer."""
    name, token = fence.lock, fence.token
    if not isinstance(name, str) or not name:
        return f"a lock name is a non-empty string, got {name!r:.60}"
    # At most 4 UTF-8 bytes a character: a short name needs no encoding to be measured.
    if len(name) * 4 > MAX_LOCK_NAME_BYTES:
        size = len(name.encode("utf-8", "surrogatepass"))
        if size > MAX_LOCK_NAME_BYTES:
            return f"lock name of {size} bytes: at most {MAX_LOCK_NAME_BYTES}"
    bad = _NOT_IN_A_LOCK_NAME.search(name)
    if bad is not None:
        what = "is not valid Unicode" if ord(bad.group()) > 127 else "holds a control character"
        return f"lock name {name!r:.60} {what}"
    if type(token) is not int or not 0 <= token < 2**63:
        return f"fencing token {token!r:.40} is not an integer in [0, 2^63)"
    return None


#: Control characters, and lone surrogates (text that is not valid Unicode).
_NOT_IN_A_LOCK_NAME = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


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
