"""A WAL position, ``PARTITION:OFFSET`` (a receipt's ``position``): its bounds and its one
parser, shared by the client (which worker to wait on) and the read API (``min_offset``);
and a bound of a read (``Bound``: an offset or a log time), as the tools take it.

Numbers are ASCII digits only (``int()`` also takes "٣", " 3" and "1_0") and are bounded
before they are converted: a million digits would cost seconds to convert.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from lukhas_context.streams.exceptions import InvalidPositionError, ValidationError

__all__ = ["MAX_OFFSET", "MAX_PARTITION", "Bound", "parse_bound", "parse_natural", "parse_position"]

#: Kafka partition numbers are signed 32-bit.
MAX_PARTITION = 2**31 - 1
#: Kafka offsets (and timestamps) are signed 64-bit.
MAX_OFFSET = 2**63 - 1


def parse_natural(raw: str, what: str, high: int = MAX_OFFSET) -> int:
    """A decimal integer in ``[0, high]``; ``ValidationError`` naming ``what`` otherwise."""
    shown = raw if len(raw) <= 40 else f"{raw[:40]}... ({len(raw)} characters)"
    if not (raw.isascii() and raw.isdigit()):
        raise ValidationError(f"{what} must be a non-negative integer, got {shown!r}")
    digits = raw.lstrip("0") or "0"  # (int() refuses more than 4,300 digits, zeros too)
    if len(digits) > len(str(high)) or int(digits) > high:
        raise ValidationError(f"{what} {shown} is out of range: at most {high}")
    return int(digits)


def parse_position(text: str, what: str = "position") -> tuple[int, int]:
    """``(partition, offset)`` of ``PARTITION:OFFSET``; ``InvalidPositionError`` naming
    ``what`` (e.g. the query parameter that carried it) and the part that is wrong."""
    partition, colon, offset = text.partition(":")
    if not colon:
        raise InvalidPositionError(f"{what} must be PARTITION:OFFSET, got {text[:60]!r}")
    try:
        return parse_natural(partition, "partition", MAX_PARTITION), parse_natural(offset, "offset")
    except ValidationError as exc:
        raise InvalidPositionError(str(exc)) from None


@dataclass(frozen=True)
class Bound:
    """A position: an ``offset``, or a time (``time_ms``, the log's time)."""

    offset: int | None = None
    time_ms: int | None = None

    def __str__(self) -> str:
        if self.offset is not None:
            return f"offset {self.offset}"
        return f"time {_iso(self.time_ms or 0)}"


def parse_bound(raw: str) -> Bound:
    """An offset (decimal digits) or a time: ISO 8601 (``2026-12-02T14:02:00Z``; no zone:
    UTC) or ``ms:EPOCH_MS``. ``ValueError`` with the reason otherwise."""
    if raw.isascii() and raw.isdigit():
        if len(raw.lstrip("0")) > 19 or int(raw) > MAX_OFFSET:
            raise ValueError(f"offset {raw[:40]} is out of range: at most {MAX_OFFSET}")
        return Bound(offset=int(raw))
    if raw.startswith("ms:") and raw[3:].isascii() and raw[3:].isdigit():
        ms = raw[3:]
        if len(ms.lstrip("0")) > 19 or int(ms) > MAX_OFFSET:
            raise ValueError(f"time {raw[:40]} is out of range: at most ms:{MAX_OFFSET}")
        return Bound(time_ms=int(ms))
    try:
        when = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise ValueError(
            f"{raw!r} is neither an offset nor a time (ISO 8601 like 2026-12-02T14:02:00Z, or "
            "ms:EPOCH_MS)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    ms_since = int(when.timestamp() * 1000)
    if ms_since < 0:
        raise ValueError(f"{raw!r} is before 1970: the log holds no time before it")
    return Bound(time_ms=ms_since)


def _iso(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds")[:-6] + "Z"
    )
