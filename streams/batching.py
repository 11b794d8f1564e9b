"""Filling aiokafka producer batches fast.

``BatchBuilder.append`` (aiokafka 0.14) is a Python frame around the C record builder's
``append``; for the change stream, one record per applied event, that frame costs about as
much as folding the event. ``fill_batch`` calls the C builder directly when the batch has the
known shape, and keeps ``record_count()`` right, else it uses the public ``append``. A test
builds the same records both ways and compares the bytes, so an aiokafka upgrade that changes
the internals fails that test instead of corrupting batches.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]


def fill_batch(
    batch: Any, records: Sequence[Record], start: int, seq: tuple[str, int] | None = None
) -> int:
    """Appends ``records[start:]`` (key, value, headers) to ``batch`` until it is full.

    ``seq``: ``(header name, n)``: record ``i`` gets one more header, that name with the
    decimal ``n + i`` (its sequence number). Returns the index of the first record not
    appended (``len(records)`` when all fit). Timestamps are left to the producer (current
    time).
    """
    builder = getattr(batch, "_builder", None)
    if builder is None or getattr(batch, "_closed", True) or batch.record_count() != 0:
        return _fill_public(batch, records, start, seq)
    append = builder.append
    relative = 0
    end = len(records)
    i = start
    name, first = seq if seq is not None else ("", 0)
    while i < end:
        key, value, headers = records[i]
        if seq is not None:
            headers = [*headers, (name, b"%d" % (first + i))]
        if append(relative, None, key=key, value=value, headers=headers) is None:
            break
        relative += 1
        i += 1
    batch._relative_offset = relative
    if i < end:
        batch.close()
    return i


def _fill_public(
    batch: Any, records: Sequence[Record], start: int, seq: tuple[str, int] | None = None
) -> int:
    i = start
    for key, value, headers in records[start:]:
        if seq is not None:
            headers = [*headers, (seq[0], b"%d" % (seq[1] + i))]
        if batch.append(key=key, value=value, timestamp=None, headers=headers) is None:
            break
        i += 1
    return i
