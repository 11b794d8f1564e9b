"""Shared by the processors' tests: folding a partition's log against a real store in rounds;
a listener serving a tiny app on loopback."""

from __future__ import annotations

import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from aiohttp import web

from lukhas_context.processors.fold import Limits
from lukhas_context.processors.listener import Listener, ListenerLimits
from lukhas_context.processors.metrics import WorkerMetrics
from lukhas_context.processors.round import PartitionFolder
from lukhas_context.state.store import PartitionStore

NATIVE = os.environ.get("LUKHAS_TEST_PURE_PYTHON") != "1"

FoldAll = Callable[..., list[tuple[Any, ...]]]


def _fold_all(
    store: PartitionStore,
    log: Sequence[Any],
    cuts: Sequence[int] = (),
    limits: Limits | None = None,
) -> list[tuple[Any, ...]]:
    """Folds ``log`` in rounds ending at each of ``cuts`` (and at its end), committing each;
    returns every change the rounds published."""
    folder = PartitionFolder(0, store, limits or Limits(max_document_bytes=256), native=NATIVE)
    changes: list[tuple[Any, ...]] = []
    start = 0
    for end in [*sorted(set(cuts)), len(log)]:
        end = min(end, len(log))
        if end <= start:
            continue
        r = folder.fold(list(log[start:end]))
        if r is not None:
            changes += r.changes
            folder.commit(r, 100_000)
        start = end
    return changes


@pytest.fixture
def fold_all() -> FoldAll:
    return _fold_all


@asynccontextmanager
async def _listening(
    routes: Sequence[web.RouteDef], limits: ListenerLimits, keepalive_timeout: float | None = None
) -> AsyncIterator[tuple[Listener, int, WorkerMetrics]]:
    """A ``Listener`` on a free loopback port serving a tiny aiohttp app of ``routes``, its
    guard in the app's middleware as the read API has it; ``keepalive_timeout``: aiohttp's
    own (None: its default)."""
    listener: Listener | None = None

    @web.middleware
    async def deadlines(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        assert listener is not None
        return await listener.guard(request, handler)

    app = web.Application(middlewares=[deadlines])
    app.add_routes(routes)
    kept = {} if keepalive_timeout is None else {"keepalive_timeout": keepalive_timeout}
    runner = web.AppRunner(app, access_log=None, **kept)
    await runner.setup()
    assert runner.server is not None
    metrics = WorkerMetrics()
    listener = Listener(runner.server, limits, metrics)
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    try:
        await listener.start("127.0.0.1", port)
        yield listener, port, metrics
    finally:
        listener.close()
        await runner.cleanup()


@pytest.fixture
def listening() -> Callable[..., Any]:
    """``async with listening(routes, limits) as (listener, port, metrics)``."""
    return _listening
