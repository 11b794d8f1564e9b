"""Where each WAL partition ends, so that the read API can tell an offset that is not folded
yet from one that does not exist (``GET /v1/outcomes/P/O`` past the end is a 404 at once, not
a wait that times out).

The end is the high watermark, read ``read_uncommitted``: a committed-only end (the last
stable offset) stops before an open transaction, and an acknowledged write after it would then
look as if it did not exist.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError

from lukhas_context.streams import kafka

log = logging.getLogger(__name__)

#: Seconds one end-offset query may take before the answer is "unknown".
QUERY_TIMEOUT_S = 5.0


class WalEnds:
    """``await ends.end(partition)``: the end offset of a WAL partition, fresh from the
    broker (one consumer, started on first use and shared by every request); ``seen``: the
    highest end a query returned (an end never moves back, so a lower offset exists)."""

    def __init__(self, bootstrap: str, topic: str, client_id: str) -> None:
        self._bootstrap = bootstrap
        self._topic = topic
        self._client_id = client_id
        self._consumer: AIOKafkaConsumer | None = None
        self._lock = asyncio.Lock()
        self._seen: dict[int, int] = {}

    def seen(self, partition: int) -> int:
        """The highest end of ``partition`` a query returned so far (0: none)."""
        return self._seen.get(partition, 0)

    async def end(self, partition: int) -> int | None:
        """The partition's end offset, None when the broker does not answer in time (the
        caller then cannot tell, and waits as before). The partition must exist: aiokafka
        waits for ever for one that does not."""
        tp = TopicPartition(self._topic, partition)
        try:
            consumer = await self._started()
            ends = await asyncio.wait_for(consumer.end_offsets([tp]), QUERY_TIMEOUT_S)
        except (KafkaError, OSError, TimeoutError) as exc:
            log.info("end offset of %s[%d] unknown: %s", self._topic, partition, exc)
            return None
        end = int(ends[tp])
        self._seen[partition] = max(end, self.seen(partition))
        return end

    async def _started(self) -> AIOKafkaConsumer:
        async with self._lock:  # one consumer, however many requests ask at once
            if self._consumer is None:
                consumer = kafka.consumer(
                    self._bootstrap, self._client_id, isolation="read_uncommitted",
                    request_timeout_s=QUERY_TIMEOUT_S,
                )  # fmt: skip
                try:
                    await asyncio.wait_for(consumer.start(), QUERY_TIMEOUT_S)
                except BaseException:
                    await consumer.stop()
                    raise
                self._consumer = consumer
            return self._consumer

    async def close(self) -> None:
        async with self._lock:
            if self._consumer is not None:
                await self._consumer.stop()
                self._consumer = None
