"""Where a read ``after`` a receipt waits: its own partition, or the transaction's record in
the context's partition (no broker: a recording router)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
import xxhash

from lukhas_context.streams.reader import Reader
from lukhas_context.streams.results import Receipt
from lukhas_context.streams.routing import COUNT_RETRY_S, Router
from lukhas_context.streams.topics import partition_for

PARTITIONS = 3


class RecordingRouter:
    """Answers every read with one context and records what was asked."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, str], int | None]] = []

    async def partition_of(self, context_id: str, timeout: float = 5.0) -> int:
        return partition_for(context_id.encode(), PARTITIONS)

    async def request(
        self, method: str, path: str, params: dict[str, str], timeout: float,
        partition: int | None = None, stale: bool = False,
    ) -> tuple[int, bytes]:  # fmt: skip
        self.calls.append((path, dict(params), partition))
        if path.startswith("/v1/outcomes/"):
            return 200, orjson.dumps({"status": "applied", "version": 1})
        doc = {"n": 1}
        checksum = xxhash.xxh3_64_hexdigest(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS))
        body = {"context_id": "x", "version": 1, "doc": doc, "checksum": checksum,
                "offset": 7, "partition": partition}  # fmt: skip
        return 200, orjson.dumps(body)


def _name_in(partition: int) -> str:
    names = (f"c{i}" for i in range(1000))
    return next(n for n in names if partition_for(n.encode(), PARTITIONS) == partition)


async def test_a_receipt_of_the_same_partition_reads_at_its_offset() -> None:
    router = RecordingRouter()
    name = _name_in(1)
    await Reader(router).context(name, Receipt(name, 1, 40, "e"), 5.0)  # type: ignore[arg-type]
    ((_, params, partition),) = router.calls
    assert params["min_offset"] == "1:40" and partition == 1


async def test_a_receipt_of_another_partition_waits_there_then_reads_here() -> None:
    router = RecordingRouter()
    name = _name_in(1)
    await Reader(router).context(name, Receipt("other", 2, 40, "e"), 5.0)  # type: ignore[arg-type]
    (wait, read) = router.calls
    assert wait[0] == "/v1/outcomes/2/40" and wait[2] == 2
    assert "min_offset" not in read[1] and read[2] == 1


async def test_a_transaction_receipt_reads_at_the_record_in_the_contexts_partition() -> None:
    router = RecordingRouter()
    name = _name_in(0)
    receipt = Receipt("other", 2, 40, "e", None, ((0, 11), (2, 40)))
    await Reader(router).context(name, receipt, 5.0)  # type: ignore[arg-type]
    ((_, params, partition),) = router.calls
    assert params["min_offset"] == "0:11" and partition == 0


async def test_the_partition_count_is_asked_for_again_while_unknown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A worker asked before it had its partitions answers a count of 0; the router asks
    again (at most every ``COUNT_RETRY_S``) instead of routing without partitions forever."""
    router = Router("http://127.0.0.1:1")
    answers = [0, 3]
    now = [100.0]

    async def send(*_: Any) -> tuple[int, bytes]:
        count = answers.pop(0)
        return 200, orjson.dumps({"partition_count": count, "owners": {}})

    monkeypatch.setattr(router, "send", send)
    monkeypatch.setattr("lukhas_context.streams.routing.time.monotonic", lambda: now[0])
    assert await router.partition_of("x") is None
    assert await router.partition_of("x") is None  # within COUNT_RETRY_S: not asked again
    assert answers == [3]
    now[0] += COUNT_RETRY_S
    assert await router.partition_of("x") == partition_for(b"x", 3)
    assert await router.partition_of("y") == partition_for(b"y", 3) and answers == []


async def test_a_transaction_receipt_waits_for_every_part_when_the_partition_is_unknown() -> None:
    router = RecordingRouter()

    async def unknown(context_id: str, timeout: float = 5.0) -> None:
        return None

    router.partition_of = unknown  # type: ignore[method-assign,assignment]
    receipt = Receipt("other", 2, 40, "e", None, ((0, 11), (2, 40)))
    await Reader(router).context(_name_in(0), receipt, 5.0)  # type: ignore[arg-type]
    paths = [path for path, _, _ in router.calls]
    assert paths[:2] == ["/v1/outcomes/0/11", "/v1/outcomes/2/40"]
    assert paths[2].startswith("/v1/contexts/")
