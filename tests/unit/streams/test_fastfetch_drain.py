"""``streams.fastfetch``'s C loop over a fetch (``_fastrecords.Unpacker``, ``drain``) against
aiokafka's own (``_unpack_records``, ``getall``), without a broker: the same fetched bytes
(plain, transactional and lz4-compressed batches, an aborted transaction, records below the
fetch offset, a bad CRC) taken in parts of every size give the same records in the same parts
and the same positions after each."""

from __future__ import annotations

from typing import Any

import pytest
from aiokafka.consumer.fetcher import FetchResult, PartitionRecords
from aiokafka.errors import CorruptRecordException
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from aiokafka.record.memory_records import MemoryRecords
from aiokafka.structs import TopicPartition

from lukhas_context.streams import fastfetch

try:
    from lukhas_context.streams import _fastrecords
except ImportError:  # pure-Python run
    _fastrecords = None  # type: ignore[assignment]

pytestmark = pytest.mark.skipif(_fastrecords is None, reason="the native extension is not built")

TP = TopicPartition("wal", 3)
FIELDS = ("topic", "partition", "offset", "timestamp", "timestamp_type", "key", "value",
          "checksum", "serialized_key_size", "serialized_value_size", "headers")  # fmt: skip


class _State:
    paused = False

    def __init__(self, position: int) -> None:
        self.position = position

    def consumed_to(self, offset: int) -> None:
        self.position = offset


class _Assignment:
    active = True

    def __init__(self, position: int) -> None:
        self.state = _State(position)

    def state_value(self, tp: TopicPartition) -> _State:
        return self.state


def _batch(
    base: int, n: int, producer_id: int = -1, transactional: bool = False, codec: int = 0
) -> bytes:
    builder = DefaultRecordBatchBuilder(
        2, codec, transactional, producer_id, 0 if producer_id >= 0 else -1, 0, 1 << 20
    )
    for i in range(n):
        headers = [("h", b"%d" % i)] if i % 2 else []
        key = None if i % 3 == 0 else b"k%d" % (base + i)
        builder.append(i, 1_700_000_000_000 + i, key, b"v" * (i % 5) if i % 4 else None, headers)
    buffer = builder.build()
    buffer[0:8] = base.to_bytes(8, "big")  # the base offset the broker would have given it
    return bytes(buffer)


def _fetch(buffer: bytes, fetch_offset: int, aborted: list[tuple[int, int]], isolation: int):
    records = PartitionRecords(
        TP, MemoryRecords(buffer), aborted, fetch_offset, None, None, True, isolation
    )
    return FetchResult(
        TP, assignment=_Assignment(fetch_offset), partition_records=records, backoff=0
    )


def _parts(buffer: bytes, fetch_offset: int, aborted: list[tuple[int, int]], isolation: int,
           max_records: int | None) -> list[Any]:  # fmt: skip
    result = _fetch(buffer, fetch_offset, aborted, isolation)
    parts: list[Any] = []
    for _ in range(100):
        if not result.has_more():
            break
        got = result.getall(max_records)
        parts.append(([[getattr(m, f) for f in FIELDS] for m in got],
                      result._assignment.state.position))  # fmt: skip
    return parts


def _both(*args: Any) -> tuple[list[Any], list[Any]]:
    fastfetch.uninstall()
    plain = _parts(*args)
    assert fastfetch.install()
    try:
        fast = _parts(*args)
    finally:
        fastfetch.uninstall()
    return fast, plain


FETCH = (
    _batch(0, 7)
    + _batch(7, 5, producer_id=9, transactional=True)  # aborted below (read_committed)
    + _batch(12, 1)
    + _batch(13, 6, producer_id=4, transactional=True, codec=3)  # lz4, as the change stream
)


@pytest.mark.parametrize("max_records", [None, 1, 2, 3, 5, 7, 100])
@pytest.mark.parametrize("fetch_offset", [0, 3, 6])  # within the first batch, as a broker sends
@pytest.mark.parametrize("isolation", [0, 1])
def test_drain_takes_the_same_parts_as_getall(
    max_records: int | None, fetch_offset: int, isolation: int
) -> None:
    fast, plain = _both(FETCH, fetch_offset, [(9, 7)], isolation, max_records)
    assert fast == plain
    assert fast[-1][1] == 19  # past the last batch
    offsets = [r[2] for part, _ in fast for r in part]
    skipped = set(range(7, 12)) if isolation == 1 else set()
    assert offsets == [o for o in range(fetch_offset, 19) if o not in skipped]


def test_a_bad_crc_raises_and_ends_the_fetch_alike() -> None:
    good = _batch(0, 4)
    bad = bytearray(_batch(4, 4))
    bad[-1] ^= 0xFF
    buffer = good + bytes(bad) + _batch(8, 2)
    for install in (False, True):
        fastfetch.uninstall()
        if install:
            assert fastfetch.install()
        try:
            result = _fetch(buffer, 0, [], 0)
            assert len(result.getall(4)) == 4
            with pytest.raises(CorruptRecordException):
                result.getall(4)
            assert result.getall(4) == []  # done, as aiokafka's generator after raising
        finally:
            fastfetch.uninstall()
