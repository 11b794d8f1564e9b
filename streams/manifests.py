"""Waiting for a checkpoint: the manifests its partitions publish on the checkpoints topic."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from lukhas_context.streams import kafka
from lukhas_context.streams.barriers import published_manifest
from lukhas_context.streams.config import ClientConfig
from lukhas_context.streams.exceptions import CheckpointTimeoutError, ReadError
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.results import CheckpointRequest

__all__ = ["wait_manifests"]


async def wait_manifests(
    config: ClientConfig, request: CheckpointRequest, timeout: float
) -> list[dict[str, Any]]:
    """Waits until every partition's checkpoint of ``request`` is published and returns their
    manifests (partition order); ``CheckpointTimeoutError`` names the missing ones, and
    ``ReadError`` says why the topic could not be read."""
    topic = config.topics.checkpoints
    found: dict[int, dict[str, Any]] = {}
    reader = kafka.consumer(
        config.bootstrap, config.client_id, topic, isolation="read_uncommitted",
        auto_offset_reset="earliest", security=config.kafka_security,
    )  # fmt: skip
    deadline = time.monotonic() + timeout
    try:
        with kafka_errors(ReadError, f"cannot read {topic}"):
            try:
                await asyncio.wait_for(reader.start(), max(0.001, timeout))
            except TimeoutError:
                raise CheckpointTimeoutError(
                    f"checkpoint {request.checkpoint_id}: no broker of {config.bootstrap} "
                    f"let {topic} be read within {timeout:g} s"
                ) from None
            while len(found) < len(request.offsets):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(request.offsets) - set(found))
                    raise CheckpointTimeoutError(
                        f"checkpoint {request.checkpoint_id}: no manifest from partitions "
                        f"{missing} within {timeout:g} s (is a worker folding them?)"
                    )
                batch = await reader.getmany(timeout_ms=int(min(left, 1.0) * 1000))
                for records in batch.values():
                    for m in records:
                        manifest = published_manifest(
                            m.key, m.value, request.checkpoint_id, request.offsets,
                            config.topics.events,
                        )  # fmt: skip
                        if manifest is not None:
                            found[manifest["partition"]] = manifest
    finally:
        await reader.stop()
    return [found[p] for p in sorted(found)]
