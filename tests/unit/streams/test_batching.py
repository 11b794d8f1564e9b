"""fill_batch builds byte-identical batches to aiokafka's public append, and splits correctly."""

from __future__ import annotations

from aiokafka.producer.message_accumulator import BatchBuilder

from lukhas_context.streams.batching import _fill_public, fill_batch


def _records(n: int, size: int = 50) -> list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]:
    out: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]] = []
    for i in range(n):
        headers = [("kind", b"delete"), ("version", b"%d" % i)] if i % 7 == 0 else []
        out.append((b"k%d" % i, None if i % 7 == 0 else bytes([i % 256]) * size, headers))
    return out


def _batch(size: int = 16384) -> BatchBuilder:
    return BatchBuilder(batch_size=size, compression_type=0)


def test_direct_and_public_fill_build_the_same_bytes() -> None:
    records = _records(100)
    fast, slow = _batch(1 << 20), _batch(1 << 20)
    # The record timestamps come from the clock: pin it by giving both the same records at once.
    assert fill_batch(fast, records, 0) == _fill_public(slow, records, 0) == 100
    assert fast.record_count() == slow.record_count() == 100
    strip = _strip_timestamps
    assert strip(fast._build()) == strip(slow._build())


def test_sequence_numbers_follow_the_record_index_across_batches() -> None:
    from aiokafka.record.default_records import DefaultRecordBatch

    records = _records(300, size=200)
    first, second = _batch(16384), _batch(1 << 20)
    stop = fill_batch(first, records, 0, ("seq", 1000))
    assert fill_batch(second, records, stop, ("seq", 1000)) == 300
    slow = _batch(1 << 20)
    assert _fill_public(slow, records, stop, ("seq", 1000)) == 300
    seqs = []
    for built in (first, second):
        for r in DefaultRecordBatch(bytes(built._build())):
            assert r.headers[: len(records[len(seqs)][2])] == records[len(seqs)][2]
            seqs.append(int(dict(r.headers)["seq"]))
    assert seqs == list(range(1000, 1300))
    assert _strip_timestamps(slow._build()) == _strip_timestamps(second._build())


def test_a_full_batch_stops_and_the_rest_goes_to_the_next() -> None:
    records = _records(500, size=200)
    first = _batch(16384)
    stop = fill_batch(first, records, 0)
    assert 0 < stop < 500 and first.record_count() == stop
    second = _batch(1 << 20)
    assert fill_batch(second, records, stop) == 500
    assert second.record_count() == 500 - stop


def test_a_used_batch_takes_the_public_path() -> None:
    batch = _batch(1 << 20)
    batch.append(key=b"x", value=b"y", timestamp=None)
    assert fill_batch(batch, _records(3), 0) == 3
    assert batch.record_count() == 4


def _strip_timestamps(buffer: bytes | bytearray) -> bytes:
    """Reads the batch back and returns its records without their timestamps."""
    from aiokafka.record.default_records import DefaultRecordBatch

    batch = DefaultRecordBatch(bytes(buffer))
    return repr([(r.offset, r.key, r.value, r.headers) for r in batch]).encode()
