"""The worker runtime: one materialiser and its read API in one process and event loop.

SIGTERM and SIGINT finish the round in progress, commit it, leave the group and exit 0. An
error the materialiser cannot go on from is logged and the process exits 1, loudly, so a
supervisor (``lukhas up``) can see it and restart it; it never keeps running without folding.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import signal

from lukhas_context.processors.api import ReadApi
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.materializer import Materializer

log = logging.getLogger(__name__)


async def serve(config: WorkerConfig) -> None:
    """Runs until SIGTERM/SIGINT or a fatal error (which it raises)."""
    materializer = Materializer(config)
    api = ReadApi(materializer)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, materializer.stop)
    await api.start(config.api_host, config.api_port)
    try:
        await materializer.start()
        log.info(
            "worker folding %s, API on %s:%d",
            config.topics.events,
            config.api_host,
            config.api_port,
        )
        await materializer.run()
    finally:
        await materializer.close()
        await api.close()


def run_worker(config: WorkerConfig) -> int:
    """Process entry point; returns the exit code."""
    # The fold allocates a few short-lived objects per event; with CPython's default gen-0
    # threshold (700) the collector runs every few hundred events and its full collections
    # walk the stores' caches. Fewer, larger young collections cost far less here.
    gc.set_threshold(50_000, 20, 100)
    try:
        asyncio.run(serve(config))
    except Exception:
        log.exception("worker stopped by an error")
        return 1
    log.info("worker stopped cleanly")
    return 0
