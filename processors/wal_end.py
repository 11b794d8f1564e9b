"""Where each WAL partition ends, so that the read API can tell an offset that is not folded
yet from one that does not exist (``GET /v1/outcomes/P/O`` past the end is a 404 at once, not
a wait that times out).

The end is the high watermark, read ``read_uncommitted``: a committed-only end (the last
stable offset) stops before an open transaction, and an acknowledged write after it would then
look as if it did not exist. It is asked of the partition's current leader only
(``streams.leader_end``): a broker back from a network cut can still answer as the leader it
was, with an end below writes acknowledged since.
"""

from __future__ import annotations

import asyncio
import logging

from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from lukhas_context.streams import kafka
from lukhas_context.streams.leader_end import leader_end
from lukhas_context.streams.security import KafkaSecurity

log = logging.getLogger(__name__)

#: Seconds one end-offset query may take before the answer is "unknown".
QUERY_TIMEOUT_S = 5.0


class WalEnds:
    """``await ends.end(partition)``: the end offset of a WAL partition, fresh from the
    partition's leader (one client, started on first use and shared by every request); ``seen``: the
    highest end a query returned (an end never moves back, so a lower offset exists)."""

    def __init__(self, bootstrap: str, topic: str, client_id: str, security: KafkaSecurity) -> None:
        self._bootstrap = bootstrap
        self._security = security
        self._topic = topic
        self._client_id = client_id
        self._client: AIOKafkaClient | None = None
        self._lock = asyncio.Lock()
        self._seen: dict[int, int] = {}

    def seen(self, partition: int) -> int:
        """The highest end of ``partition`` a query returned so far (0: none)."""
        return self._seen.get(partition, 0)

    async def end(self, partition: int) -> int | None:
        """The partition's end offset, None when its leader does not answer in time (the
        caller then cannot tell, and waits as before)."""
        try:
            client = await self._started()
        except (KafkaError, OSError, TimeoutError) as exc:
            log.info("end offset of %s[%d] unknown: %s", self._topic, partition, exc)
            return None
        end = await leader_end(client, self._topic, partition, QUERY_TIMEOUT_S)
        if end is None:
            log.info("end offset of %s[%d] unknown: no leader confirmed it", self._topic,
                     partition)  # fmt: skip
            return None
        self._seen[partition] = max(end, self.seen(partition))
        return end

    async def _started(self) -> AIOKafkaClient:
        async with self._lock:  # one client, however many requests ask at once
            if self._client is None:
                client = kafka.bare_client(
                    self._bootstrap, self._client_id, QUERY_TIMEOUT_S, security=self._security
                )
                try:
                    await asyncio.wait_for(client.bootstrap(), QUERY_TIMEOUT_S)
                except BaseException:
                    await client.close()
                    raise
                self._client = client
            return self._client

    async def close(self) -> None:
        async with self._lock:
            if self._client is not None:
                await self._client.close()
                self._client = None
