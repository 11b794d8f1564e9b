"""The worker runtime: one materialiser and its read API in one process and event loop.

SIGTERM and SIGINT finish the round in progress, commit it, leave the group and exit 0. An
error the materialiser cannot go on from is logged and the process exits 1, loudly, so a
supervisor (``lukhas up``) can see it and restart it; it never keeps running without folding.
A worker that cannot start (no Kafka at its bootstrap address, its API port taken) says so in
one line (``WorkerStartError``), without a traceback, and exits 1.

``run_worker`` rate-limits repeated log lines process-wide (``processors.logfilter``): a
flood of one failure is summarised, never written line by line.
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import logging
import signal

from lukhas_context.processors import logfilter
from lukhas_context.processors.api import ReadApi
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import WorkerStartError
from lukhas_context.processors.materializer import Materializer
from lukhas_context.streams import fastfetch

log = logging.getLogger(__name__)


async def serve(config: WorkerConfig, filters: list[logfilter.RepeatFilter] | None = None) -> None:
    """Runs until SIGTERM/SIGINT or a fatal error (which it raises). ``filters``: the log
    rate limiters to flush every interval (their suppressed lines are counted in metrics)."""
    materializer = Materializer(config)
    api = ReadApi(materializer)
    flushing = None
    if filters:
        for f in filters:
            f.on_suppressed = materializer.metrics.log_lines_suppressed.inc
        flushing = asyncio.create_task(_flush_every(filters, config.log_interval_s))
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, materializer.stop)
    try:
        await api.start(config.api_host, config.api_port)
    except OSError as exc:  # the port is taken, or the host is not this machine's
        where = f"{config.api_host}:{config.api_port}"
        raise WorkerStartError(f"cannot listen on {where} for the read API: {exc}") from exc
    try:
        await materializer.start()
        # What start-up made (modules, config, open stores) lives as long as the process:
        # out of the collector's generations, a full collection no longer walks it.
        gc.freeze()
        log.info(
            "worker folding %s from Kafka %s at %s, API on %s:%d",
            config.topics.events,
            config.kafka_security.describe(),
            config.bootstrap,
            config.api_host,
            config.api_port,
        )
        await materializer.run()
    finally:
        if flushing is not None:
            flushing.cancel()
        await materializer.close()
        await api.close()


async def _flush_every(filters: list[logfilter.RepeatFilter], interval_s: float) -> None:
    """Writes the summaries of suppressed log lines once their interval has ended."""
    while True:
        await asyncio.sleep(interval_s)
        for f in filters:
            f.flush()


#: glibc's ``mallopt`` parameters, and what the worker sets them to (``keep_freed_heap``).
M_TRIM_THRESHOLD, M_TOP_PAD = -1, -2
KEEP_FREED_BYTES = 64 * 1024 * 1024
TOP_PAD_BYTES = 16 * 1024 * 1024


def keep_freed_heap() -> bool:
    """Keeps up to ``KEEP_FREED_BYTES`` of freed heap instead of giving it back at once.

    Each round makes its changes (the whole document each, kilobytes for a conversation),
    sends them and drops them; by default glibc returns the freed top of the heap to the
    system as soon as it is over 128 KiB, so the next round faults every page in again (and
    the kernel zeroes it): a third of the time of a round of conversation appends here. The
    bytes kept count against the memory budget's headroom (``state.memory``). glibc only:
    elsewhere (no ``mallopt``) nothing changes. Returns whether it was set."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    return bool(mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES)) and bool(
        mallopt(M_TOP_PAD, TOP_PAD_BYTES)
    )


def run_worker(config: WorkerConfig) -> int:
    """Process entry point; returns the exit code."""
    # The fold allocates a few short-lived objects per event; with CPython's default gen-0
    # threshold (700) the collector runs every few hundred events and its full collections
    # walk the stores' caches. Fewer, larger young collections cost far less here.
    gc.set_threshold(50_000, 20, 100)
    # This process is the worker's own: its consumers' records are built in C.
    fastfetch.install()
    keep_freed_heap()
    filters = logfilter.install(config.log_burst, config.log_interval_s)
    try:
        asyncio.run(serve(config, filters))
    except WorkerStartError as exc:
        # Said in one line: a traceback would bury what to fix (the address or the port).
        log.error("worker could not start: %s", exc)
        return 1
    except Exception:
        log.exception("worker stopped by an error")
        return 1
    finally:
        logfilter.uninstall(filters)
    log.info("worker stopped cleanly")
    return 0
