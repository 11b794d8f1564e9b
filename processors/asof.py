"""Point-in-time states a worker builds on request: ``GET /v1/contexts/{id}?as_of=POINT``.

The point is the one ``lukhas replay --as-of`` takes (a log time, or ``PARTITION:OFFSET``);
the state is built exactly as that command builds it (``processors.pointintime.build``: from
the newest of this worker's checkpoints at or below the point, else from the WAL's start), for
the one partition the context is in, into ``STATE_DIR/as-of/`` — never into the live stores.
A build runs in a thread of its own with its own event loop, so the worker's fold and its read
API go on meanwhile; one build at a time. A request waits for it at most its ``timeout``; the
build goes on without it, and the next request for the same point reads the result. The
newest ``MAX_STATES`` states are kept (the least recently read one is deleted first): a
repeated question costs one read-only RocksDB open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import xxhash

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.pointintime import MANIFEST, AsOf, PointInTimeError, build

__all__ = ["MAX_STATES", "AsOfStates"]

log = logging.getLogger(__name__)

#: Point-in-time states kept per worker.
MAX_STATES = 4
#: The longest one build may take (seconds); it fails after that.
BUILD_TIMEOUT_S = 1800.0

T = TypeVar("T")


class AsOfStates:
    """The worker's point-in-time states (see the module doc)."""

    def __init__(self, config: WorkerConfig) -> None:
        self.config = config
        self.root = config.state_dir / "as-of"
        self._building: dict[str, asyncio.Future[Path]] = {}
        self._one_at_a_time = asyncio.Lock()

    def _name(self, partition: int, as_of: AsOf) -> str:
        return f"partition-{partition}-{xxhash.xxh3_64_hexdigest(as_of.raw.encode())}"

    async def state(self, partition: int, as_of: AsOf) -> Path:
        """The directory holding the state of ``partition`` as of the point: built before,
        or built now (a ``PointInTimeError`` or ``ProcessorError`` when it cannot be)."""
        name = self._name(partition, as_of)
        done = self.root / name
        if await asyncio.to_thread((done / MANIFEST).exists):
            with contextlib.suppress(OSError):
                os.utime(done / MANIFEST)  # recently read: evicted last
            return done
        pending = self._building.get(name)
        if pending is None:
            pending = asyncio.ensure_future(self._build(name, partition, as_of))
            self._building[name] = pending
            pending.add_done_callback(lambda _f: self._building.pop(name, None))
        return await asyncio.shield(pending)

    async def _build(self, name: str, partition: int, as_of: AsOf) -> Path:
        async with self._one_at_a_time:
            scratch = self.root / f"{name}.building"
            done = self.root / name
            await asyncio.to_thread(_reset, scratch)

            async def run() -> Any:
                try:
                    return await asyncio.wait_for(
                        build(self.config, scratch, as_of, [partition], progress=False),
                        BUILD_TIMEOUT_S,
                    )
                except TimeoutError:
                    raise PointInTimeError(
                        f"the state as of {as_of.raw} was not built within {BUILD_TIMEOUT_S:g} s"
                    ) from None

            try:
                await _in_thread(run)
                await asyncio.to_thread(_reset, done)  # a remains without its manifest
                await asyncio.to_thread(os.replace, scratch, done)
            finally:
                await asyncio.to_thread(shutil.rmtree, scratch, True)
            await asyncio.to_thread(self._evict)
            log.info("partition %d: the state as of %s is built in %s", partition, as_of.raw, done)
            return done

    def _evict(self) -> None:
        """Deletes the least recently read states beyond ``MAX_STATES``."""
        built = [d for d in self.root.iterdir() if (d / MANIFEST).exists()]
        built.sort(key=lambda d: (d / MANIFEST).stat().st_mtime, reverse=True)
        for old in built[MAX_STATES:]:
            shutil.rmtree(old, ignore_errors=True)


def _reset(path: Path) -> None:
    """No ``path`` (a build that died before leaves its remains there), its parent made."""
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)


def _in_thread(make: Callable[[], Awaitable[T]]) -> asyncio.Future[T]:
    """Runs the coroutine ``make()`` in a daemon thread with an event loop of its own: the
    caller's loop goes on, and a worker that stops does not wait for a long build (it is
    abandoned with its scratch directory, reset by the next build of the point)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(result: T | None, error: BaseException | None) -> None:
        if future.done():
            return
        if error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)  # type: ignore[arg-type]

    def run() -> None:
        async def main() -> T:
            return await make()

        try:
            result, error = asyncio.run(main()), None
        except BaseException as exc:  # handed to the caller's loop, whatever it is
            result, error = None, exc
        with contextlib.suppress(RuntimeError):  # the caller's loop is closed: nobody waits
            loop.call_soon_threadsafe(settle, result, error)

    threading.Thread(target=run, name="lukhas-as-of", daemon=True).start()
    return future
