"""A command's client: its config from the command's sources (``Settings``), and one call on a
``ContextClient`` opened and closed around it."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

from lukhas_context.ops.config import Settings
from lukhas_context.streams.client import ClientConfig, ContextClient

__all__ = ["client_config", "with_client"]

T = TypeVar("T")


def client_config(
    data_dir: Path | None, bootstrap: str | None, api: str | None, *, kafka: bool = True,
    read_api: bool = False,
) -> ClientConfig:  # fmt: skip
    """See ``Settings.client_config``: ``kafka`` for writes, watches and checkpoints, the
    ``read_api`` for reads, outcomes and dry runs."""
    return Settings.load(data_dir).client_config(bootstrap, api, kafka=kafka, read_api=read_api)


def with_client(config: ClientConfig, call: Callable[[ContextClient], Coroutine[Any, Any, T]]) -> T:
    async def run() -> T:
        async with ContextClient(config) as client:
            return await call(client)

    return asyncio.run(run())
