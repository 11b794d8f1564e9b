"""Filling aiokafka producer batches fast.

``next_batch`` is what the publisher calls: with the native extension, a whole batch of the
round's changes is built in one C call (``streams._fastrecords.ChangeBatch``: Kafka's record
batch v2, byte for byte what aiokafka's builder writes, a test compares them), which the
producer sends as it sends a ``BatchBuilder``; compressed (lz4 or zstd, ``COMPRESSIONS``) when
the worker is told to (``--change-compression``). Without it, or for a producer that
compresses or serializes itself, ``fill_batch`` fills aiokafka's ``BatchBuilder``.

``BatchBuilder.append`` (aiokafka 0.14) is a Python frame around the C record builder's
``append``; for the change stream, one record per applied event, that frame costs about as
much as folding the event. ``fill_batch`` calls the C builder directly when the batch has the
known shape, and keeps ``record_count()`` right, else it uses the public ``append``. A test
builds the same records both ways and compares the bytes, so an aiokafka upgrade that changes
the internals fails that test instead of corrupting batches.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import cramjam
from aiokafka.producer.message_accumulator import BatchBuilder

try:
    from lukhas_context.streams._fastrecords import ChangeBatch
except ImportError:  # pure-Python install
    ChangeBatch = None  # type: ignore[assignment,misc]

Record = tuple[bytes, bytes | None, list[tuple[str, bytes]]]


def _lz4(data: Any) -> bytes:
    # Kafka reads LZ4 frames of independent blocks (KIP-57); the fast level, not aiokafka's 9
    compressor = cramjam.lz4.Compressor(level=1, content_checksum=False, block_linked=False)
    compressor.compress(bytes(data))
    return bytes(compressor.finish())


def _zstd(data: Any) -> bytes:
    return bytes(cramjam.zstd.compress(data, level=1))


#: The change stream's compressions: name -> (Kafka's codec attribute bits, compress).
COMPRESSIONS: dict[str, tuple[int, Any] | None] = {
    "none": None,
    "lz4": (3, _lz4),
    "zstd": (4, _zstd),
}


def next_batch(
    producer: Any,
    records: Sequence[Record],
    start: int,
    seq: tuple[str, int] | None = None,
    compression: str = "none",
) -> tuple[Any, int]:
    """A batch of ``records[start:]`` (as many as fit the producer's batch size, at least
    one) for ``producer.send_batch``, and the index of the first record left out. ``seq`` as
    in ``fill_batch``; ``compression``: one of ``COMPRESSIONS`` (the records compressed as one
    when the batch is built, ``batch_size`` bounding them before)."""
    codec = COMPRESSIONS[compression]
    accumulator = getattr(producer, "_message_accumulator", None)
    txn = None if accumulator is None else accumulator._txn_manager
    transactional = txn is not None and txn.transactional_id is not None
    if (
        ChangeBatch is not None
        and type(records) is list
        and start < len(records)
        and accumulator is not None
        and not getattr(accumulator, "_compression_type", 1)
        and getattr(producer, "_key_serializer", True) is None
        and getattr(producer, "_value_serializer", True) is None
    ):
        batch = ChangeBatch(
            records,
            start,
            None if seq is None else seq[0],
            0 if seq is None else seq[1],
            accumulator._batch_size,
            transactional,
            int(time.time() * 1000),
            *(codec or ()),
        )
        return batch, batch.end
    if codec is not None and accumulator is not None:  # aiokafka's builder compresses it
        batch = BatchBuilder(accumulator._batch_size, codec[0], is_transactional=transactional)
    else:
        batch = producer.create_batch()
    return batch, fill_batch(batch, records, start, seq)


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
