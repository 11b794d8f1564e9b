"""fill_batch builds byte-identical batches to aiokafka's public append, and splits correctly."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.producer.message_accumulator import BatchBuilder
from aiokafka.record.default_records import DefaultRecordBatch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lukhas_context.streams.batching import COMPRESSIONS, _fill_public, fill_batch, next_batch


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


# ---- the native batch (streams._fastrecords.ChangeBatch) --------------------------------

try:
    from lukhas_context.streams._fastrecords import ChangeBatch
except ImportError:  # pure-Python run
    ChangeBatch = None  # type: ignore[assignment,misc]

native = pytest.mark.skipif(ChangeBatch is None, reason="the native extension is not built")
STAMP = 1_700_000_000_123
HEADER = st.tuples(
    st.text(max_size=8) | st.sampled_from(["seq", "txend", "ü\U0001f600", ""]),
    st.none() | st.binary(max_size=40),
)
RECORD = st.tuples(
    st.none() | st.binary(max_size=30),
    st.none() | st.binary(max_size=3000),
    st.lists(HEADER, max_size=4),
)


def _aiokafka_batch(
    records: list[Any], start: int, seq: tuple[str, int] | None, size: int, tx: bool
) -> tuple[int, bytes]:
    """What aiokafka's own builder makes of ``records[start:]``, one public append a record,
    with the timestamp pinned."""
    batch = BatchBuilder(size, 0, is_transactional=tx)
    i = start
    for key, value, headers in records[start:]:
        if seq is not None:
            headers = [*headers, (seq[0], b"%d" % (seq[1] + i))]
        if batch.append(timestamp=STAMP, key=key, value=value, headers=headers) is None:
            break
        i += 1
    batch._set_producer_state(4242, 7, 99)
    return i, bytes(batch._build())


@native
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    records=st.lists(RECORD, min_size=1, max_size=40),
    data=st.data(),
    seq=st.none() | st.tuples(st.sampled_from(["seq", "ß"]), st.integers(-(2**40), 2**62)),
    size=st.sampled_from([0, 100, 700, 4096, 1 << 20]),
    tx=st.booleans(),
)
def test_the_native_batch_is_byte_for_byte_aiokafkas(
    records: list[Any], data: st.DataObject, seq: tuple[str, int] | None, size: int, tx: bool
) -> None:
    start = data.draw(st.integers(0, len(records) - 1))
    end, want = _aiokafka_batch(records, start, seq, size, tx)
    batch = ChangeBatch(
        records, start, None if seq is None else seq[0], 0 if seq is None else seq[1],
        size, tx, STAMP,
    )  # fmt: skip
    assert batch.end == end and batch.record_count() == end - start
    batch._set_producer_state(4242, 7, 99)
    built = batch._build()
    assert bytes(built) == want and batch.size() == len(want)
    assert batch._build() is built  # the sender may ask again (a retry)
    assert DefaultRecordBatch(bytes(built)).validate_crc()


@native
def test_the_native_batch_takes_no_other_record() -> None:
    assert ChangeBatch([(b"k", b"v", [])], 0, None, 0, 100, False, STAMP).closed()
    batch = ChangeBatch([(b"k", b"v", [])], 0, None, 0, 100, False, STAMP)
    assert batch.append(timestamp=None, key=b"x", value=b"y") is None
    assert batch.record_count() == 1
    for bad in (
        [(b"k", "text", [])],  # a str value
        [(b"k", b"v", [("h", "text")])],  # a str header value
        [(b"k", b"v", [(b"h", b"v")])],  # a bytes header name
        [(b"k", b"v")],  # not three fields
        [[b"k", b"v", []]],  # not a tuple
        [(b"k", b"v", None)],  # no header list
    ):
        with pytest.raises(TypeError):
            ChangeBatch(bad, 0, None, 0, 1 << 20, False, STAMP)
    with pytest.raises(ValueError):
        ChangeBatch([(b"k", b"v", [])], 2, None, 0, 1 << 20, False, STAMP)


@native
def test_one_record_over_the_batch_size_goes_alone() -> None:
    records = [(b"k", b"x" * 5000, []), (b"k", b"y", [])]
    batch = ChangeBatch(records, 0, "seq", 7, 1000, False, STAMP)
    assert batch.end == 1
    assert _aiokafka_batch(records, 0, ("seq", 7), 1000, False)[0] == 1


def test_next_batch_falls_back_to_the_producers_builder() -> None:
    class Producer:
        _key_serializer = None
        _value_serializer = None

        def __init__(self, compression: int) -> None:
            self._message_accumulator = type(
                "Acc", (), {"_compression_type": compression, "_batch_size": 1 << 20,
                            "_txn_manager": None},
            )()  # fmt: skip

        def create_batch(self) -> BatchBuilder:
            return _batch(1 << 20)

    records = _records(50)
    batch, end = next_batch(Producer(1), records, 0)  # compresses: the producer's own builder
    assert isinstance(batch, BatchBuilder) and end == 50
    batch, end = next_batch(Producer(0), records, 10, ("seq", 5))
    assert end == 50 and batch.record_count() == 40
    assert isinstance(batch, BatchBuilder) == (ChangeBatch is None)
    batch._set_producer_state(-1, -1, 0)
    seqs = [int(dict(r.headers)["seq"]) for r in DefaultRecordBatch(bytes(batch._build()))]
    assert seqs == list(range(15, 55))


@native
@settings(max_examples=100, deadline=None)
@given(
    records=st.lists(RECORD, min_size=1, max_size=30),
    compression=st.sampled_from(["lz4", "zstd"]),
    tx=st.booleans(),
)
def test_a_compressed_native_batch_reads_back_as_its_records(
    records: list[Any], compression: str, tx: bool
) -> None:
    codec = COMPRESSIONS[compression]
    assert codec is not None
    batch = ChangeBatch(records, 0, "seq", 10, 1 << 20, tx, STAMP, *codec)
    plain = ChangeBatch(records, 0, "seq", 10, 1 << 20, tx, STAMP)
    assert batch.end == plain.end == len(records)
    batch._set_producer_state(4242, 7, 99)
    built = bytes(batch._build())
    batch._set_producer_state(4242, 8, 99)  # a rebuild does not compress twice
    rebuilt = bytes(batch._build())
    assert rebuilt[:51] != built[:51] and rebuilt[61:] == built[61:]
    read = DefaultRecordBatch(rebuilt)
    assert read.validate_crc() and read.compression_type == codec[0]
    assert read.is_transactional == tx and read.producer_epoch == 8
    want = [
        (key, value, [*headers, ("seq", b"%d" % (10 + i))])
        for i, (key, value, headers) in enumerate(records)
    ]
    assert [(r.key, r.value, list(r.headers)) for r in read] == want


@pytest.mark.parametrize("compression", ["lz4", "zstd"])
def test_next_batch_compresses_either_way(compression: str) -> None:
    class Producer:
        _key_serializer = None
        _value_serializer = None
        _message_accumulator = type(
            "Acc", (), {"_compression_type": 0, "_batch_size": 1 << 20, "_txn_manager": None}
        )()

    records = _records(40)
    batch, end = next_batch(Producer(), records, 0, ("seq", 0), compression)
    assert end == 40
    batch._set_producer_state(-1, -1, 0)
    read = DefaultRecordBatch(bytes(batch._build()))
    assert read.compression_type == COMPRESSIONS[compression][0]  # type: ignore[index]
    assert [r.key for r in read] == [key for key, _, _ in records]


def test_a_bad_codec_is_refused() -> None:
    if ChangeBatch is None:
        pytest.skip("the native extension is not built")
    with pytest.raises(ValueError):
        ChangeBatch([(b"k", b"v", [])], 0, None, 0, 100, False, STAMP, 3, None)
    with pytest.raises(ValueError):
        ChangeBatch([(b"k", b"v", [])], 0, None, 0, 100, False, STAMP, 9, bytes)
