"""What a subscriber of the change stream receives and where it starts: ``Change`` (one
applied mutation, as JSON), ``Gap`` (change-topic offsets that are gone), the ``ResumeToken``
that resumes a subscription after either, and ``parse_start`` (``latest``, ``earliest``, a
timestamp or a token). ``streams.watch.Watcher`` produces them; ``lukhas watch`` and the SSE
endpoint print their ``to_dict()``.

The token is text (``lk1.`` + base64url of JSON), safe in a URL, a header or a file. It holds,
per partition, the next change-topic offset and the highest WAL offset seen, and it resumes the
subscription it came from: the same topic, and the same ``context_id`` or ``prefix``.
"""

from __future__ import annotations

import base64
import enum
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from lukhas_context.schemas.event import ChangeKind
from lukhas_context.streams.exceptions import InvalidResumeTokenError, ValidationError

TOKEN_PREFIX = "lk1."
#: ``Change.kind`` of each ``ChangeKind`` (by its value).
KIND_NAMES = tuple(kind.name.lower() for kind in ChangeKind)
#: The largest offset or timestamp Kafka can carry (a signed 64-bit integer).
MAX_INT64 = 2**63 - 1


class Start(enum.Enum):
    LATEST = "latest"
    EARLIEST = "earliest"


@dataclass(frozen=True, slots=True)
class ResumeToken:
    """Where a subscription stands: per partition of ``topic``, the next change-topic offset
    to read and the highest WAL offset of a change delivered (-1: none)."""

    topic: str
    positions: tuple[tuple[int, int, int], ...]

    def encode(self) -> str:
        data = orjson.dumps([self.topic, [list(p) for p in self.positions]])
        return TOKEN_PREFIX + base64.urlsafe_b64encode(data).decode().rstrip("=")

    @classmethod
    def decode(cls, token: str) -> ResumeToken:
        """Parses a token; ``InvalidResumeTokenError`` says what is wrong with it."""
        if not isinstance(token, str) or not token.startswith(TOKEN_PREFIX):
            raise InvalidResumeTokenError(f"not a resume token (they start {TOKEN_PREFIX!r})")
        body = token[len(TOKEN_PREFIX) :]
        try:
            raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
            topic, positions = orjson.loads(raw)
            parsed = tuple((int(p), int(o), int(w)) for p, o, w in positions)
            if not isinstance(topic, str) or any(p < 0 or o < 0 or w < -1 for p, o, w in parsed):
                raise ValueError("negative position")
            if any(max(p, o, w) > MAX_INT64 for p, o, w in parsed):
                raise ValueError("a position over 2^63-1")
        except (ValueError, TypeError) as exc:
            raise InvalidResumeTokenError(f"resume token does not parse: {exc}") from None
        return cls(topic, parsed)


@dataclass(slots=True)
class Change:
    """One applied mutation as a subscriber sees it.

    ``kind``: put, patch, touch, delete or expire. ``doc``: the document after it (None for
    delete and expire; an expire's ``expires_at_ms`` says when the version expired), or None
    when ``delta`` is given: the RFC 6902 patch from the previous document this subscriber saw
    of the context (``watch(deltas=True)``; the first change of a context seen carries the
    whole ``doc``). ``position`` is ``PARTITION:WAL_OFFSET`` of the
    event that made the change (its identity with ``context_id``); ``token`` resumes after it.
    Read-only by convention (not frozen: a change is built for every record read).
    """

    context_id: str
    version: int
    kind: str
    doc: dict[str, Any] | None
    checksum: str
    partition: int
    wal_offset: int
    log_time_ms: int
    expires_at_ms: int | None
    event_id: str
    offset: int
    delta: list[dict[str, Any]] | None = None
    #: The W3C trace context of the fold that made the change, when its write was traced
    #: (``streams.tracing``); None otherwise.
    traceparent: str | None = None
    _token: tuple[str, tuple[int, ...]] = field(default=("", ()), repr=False, compare=False)
    #: The document's canonical JSON as the change record holds it (the watcher's deltas
    #: diff these bytes); None for a tombstone.
    _canonical: bytes | None = field(default=None, repr=False, compare=False)

    @property
    def position(self) -> str:
        return f"{self.partition}:{self.wal_offset}"

    @property
    def token(self) -> str:
        """The resume token of the subscription right after this change."""
        return token_text(*self._token)

    def to_dict(self) -> dict[str, Any]:
        """The JSON shape of ``lukhas watch`` and the SSE endpoint."""
        return {
            "context_id": self.context_id, "version": self.version, "kind": self.kind,
            "doc": self.doc, "delta": self.delta, "checksum": self.checksum,
            "position": self.position, "log_time_ms": self.log_time_ms,
            "expires_at_ms": self.expires_at_ms, "event_id": self.event_id,
            "token": self.token, "traceparent": self.traceparent,
        }  # fmt: skip


@dataclass(frozen=True, slots=True)
class Gap:
    """Change-topic offsets ``[first_offset, end_offset)`` of ``partition`` that could not be
    read. ``kind``: ``gone`` (compacted away or deleted by retention before this subscriber
    got to them), ``undecodable`` (a record that is not a change), or ``checksum`` (a change
    whose document does not match its checksum: corrupted or forged, not delivered).
    ``reason`` says more. Changes in them are lost to this subscriber."""

    partition: int
    first_offset: int
    end_offset: int
    reason: str
    kind: str = "gone"
    _token: tuple[str, tuple[int, ...]] = field(default=("", ()), repr=False, compare=False)

    @property
    def token(self) -> str:
        return token_text(*self._token)

    def to_dict(self) -> dict[str, Any]:
        return {
            "gap": {"partition": self.partition, "first_offset": self.first_offset,
                    "end_offset": self.end_offset, "reason": self.reason,
                    "kind": self.kind},
            "token": self.token,
        }  # fmt: skip


def token_text(topic: str, flat: tuple[int, ...]) -> str:
    positions = tuple(flat[i : i + 3] for i in range(0, len(flat), 3))
    return ResumeToken(topic, positions).encode()  # type: ignore[arg-type]


def parse_start(start: object) -> Start | int | ResumeToken:
    """``latest``/``earliest``, a timestamp (``datetime``, or epoch milliseconds as int or
    digits, at most 2^63-1: Kafka's range), a ``ResumeToken`` or its text;
    ``ValidationError`` otherwise."""
    if isinstance(start, Start | ResumeToken):
        return start
    if isinstance(start, datetime) and start.timestamp() >= 0:
        return int(start.timestamp() * 1000)
    if isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        if start > MAX_INT64:
            raise ValidationError(  # not the number: str() of a huge int raises
                "start is not an epoch time in milliseconds: over 2^63-1"
            )
        return start
    if isinstance(start, str):
        if start in ("latest", "earliest"):
            return Start(start)
        if start.isascii() and start.isdigit():  # not "²": isdigit() alone accepts it
            # Bounded before int(): a million digits would cost seconds to convert.
            if len(start) <= len(str(MAX_INT64)) and int(start) <= MAX_INT64:
                return int(start)
            raise ValidationError(
                f"start {_shorten(start)} is not an epoch time in milliseconds: over 2^63-1"
            )
        if start.startswith(TOKEN_PREFIX):
            return ResumeToken.decode(start)
        try:
            ms = int(datetime.fromisoformat(start).timestamp() * 1000)
        except ValueError:
            pass
        else:
            if ms >= 0:
                return ms
    raise ValidationError(
        "start must be 'latest', 'earliest', a timestamp or a resume token, "
        f"not {_shorten(repr(start))}"
    )


def _shorten(text: str, limit: int = 40) -> str:
    """``text``, cut to ``limit`` characters for an error message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"
