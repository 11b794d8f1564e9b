"""``WalProducer``: aiokafka's producer, with a start and a stop that end.

aiokafka's idempotent producer never expires a batch: a batch no broker acknowledges (two of
three brokers down, no leader) is retried for as long as the cluster stays that way, and
``stop()`` waits to flush it (aio-libs/aiokafka#1101), as ``start()`` waits for a producer id
that a broker without its controller cannot hand out. The client's calls have deadlines of
their own; this class gives the producer's lifecycle one too, and keeps what the brokers
answered so that an error can say why:

- ``start()`` gives up after ``start_timeout_s`` (or when cancelled) and leaves nothing
  running;
- ``stop()`` waits ``close_timeout_s`` for the pending batches, then gives them up: the
  sender's in-flight requests are cancelled, the batches fail with ``PublishError``, and the
  sender and the connections are closed as a normal ``stop()`` closes them, so no task is
  left behind. A batch given up may still have reached the log (a write that timed out is
  *unknown*, never known to be lost);
- ``answers`` maps each broker (node id) to the last error it answered this producer with:
  aiokafka only logs the retriable errors it retries on.

The hooks are instance attributes over aiokafka 0.14's ``Sender`` coroutines and the client's
``send``; ``tests/integration/test_degraded.py`` checks them against real brokers.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, for_code
from aiokafka.protocol.produce import ProduceRequest

from lukhas_context.streams.exceptions import PublishError

__all__ = ["WalProducer"]

log = logging.getLogger(__name__)

#: The Sender's coroutines that run as tasks of their own (one produce request per broker,
#: one transactional request at a time): the ones a given-up stop must cancel.
_SENDER_TASKS = (
    "_send_produce_req",
    "_do_add_partitions_to_txn",
    "_do_add_offsets_to_txn",
    "_do_txn_offset_commit",
    "_do_txn_commit",
)
#: After the pending batches are given up, closing the sender and the sockets is local work.
_TEARDOWN_S = 5.0


class WalProducer(AIOKafkaProducer):  # type: ignore[misc]
    """An ``AIOKafkaProducer`` (same arguments) whose ``start`` and ``stop`` are bounded."""

    def __init__(self, *, start_timeout_s: float, close_timeout_s: float, **config: Any) -> None:
        super().__init__(**config)
        self.start_timeout_s = start_timeout_s
        self.close_timeout_s = close_timeout_s
        #: node id -> (monotonic time, the last error that node answered with).
        self._answers: dict[int, tuple[float, str]] = {}
        self._requests: set[asyncio.Task[Any]] = set()
        self._giving_up = False
        self._stopping: asyncio.Task[None] | None = None
        for name in _SENDER_TASKS:
            setattr(self._sender, name, self._tracked(getattr(self._sender, name)))
        self.client.send = self._observed(self.client.send)

    # ---- lifecycle ----

    async def start(self) -> None:
        """Connects and gets a producer id; raises ``TimeoutError`` after
        ``start_timeout_s``. On any failure or cancellation everything started is stopped."""
        try:
            await asyncio.wait_for(super().start(), self.start_timeout_s)
        except BaseException:
            await self.stop()
            raise

    async def stop(self, flush: bool = True) -> None:
        """Flushes for at most ``close_timeout_s`` (not at all with ``flush=False``: what is
        pending is worthless, e.g. a transaction that failed), then gives the rest up (see
        the module doc). Returns within about ``close_timeout_s`` (plus the local teardown);
        never raises for what it gave up. Safe to call twice, and concurrently."""
        if not flush:
            self._give_up("dropped without a flush")
        if self._stopping is None:
            self._stopping = asyncio.ensure_future(super().stop())
        try:
            done, _ = await asyncio.wait({self._stopping}, timeout=self.close_timeout_s)
            if not done:
                self._give_up(f"not acknowledged within close_timeout_s={self.close_timeout_s:g}")
                done, _ = await asyncio.wait({self._stopping}, timeout=_TEARDOWN_S)
        except asyncio.CancelledError:
            self._give_up("the close was cancelled")
            raise
        if not done:  # a socket that does not close: not worth hanging the caller for
            log.error("the Kafka producer did not close within %.0f s after giving up", _TEARDOWN_S)
            self._stopping.cancel()
        elif (error := self._stopping.exception()) is not None:
            log.warning("the Kafka producer closed with an error: %r", error)

    def _give_up(self, why: str) -> None:
        if self._giving_up:
            return
        self._giving_up = True
        accumulator = self._message_accumulator
        batches = [*accumulator._pending_batches]
        batches += [batch for queue in accumulator._batches.values() for batch in queue]
        if batches:
            # INFO: whoever waited for these sends was told already (a timeout, a failed
            # transaction); their outcome is unknown, as the error said.
            log.info("giving up %d unacknowledged batch(es): %s", len(batches), why)
        for task in list(self._requests):
            task.cancel()
        accumulator.fail_all(PublishError(f"the producer was closed: {why}"))
        # Nobody may ever await these futures (a send whose caller timed out, a transaction
        # dropped): mark their errors seen, or asyncio logs each one when it is collected.
        for batch in batches:
            futures = [batch.future, batch._drain_waiter, *(f for f, _ in batch._msg_futures)]
            for future in futures:
                if future.done() and not future.cancelled():
                    future.exception()

    def _tracked(self, coroutine: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        """Runs one of the Sender's request coroutines as before, registered so that a
        given-up stop can cancel it. That cancellation ends the coroutine *normally*: the
        Sender's own shutdown awaits these tasks, and a CancelledError out of one would
        abort it before the connections are closed."""

        async def tracked(*args: Any) -> Any:
            if self._giving_up:  # started by the Sender after the give-up: nothing to do
                return None
            task = asyncio.current_task()
            assert task is not None
            self._requests.add(task)
            try:
                return await coroutine(*args)
            except asyncio.CancelledError:
                if not self._giving_up:
                    raise
                task.uncancel()
                return None
            finally:
                self._requests.discard(task)

        return tracked

    # ---- what the brokers answered ----

    def _observed(self, send: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def observed(node_id: Any, request: Any, **kwargs: Any) -> Any:
            try:
                response = await send(node_id, request, **kwargs)
            except KafkaError as exc:
                name = type(request).__name__.removesuffix("Request")
                self._note(node_id, f"could not be sent {name} ({type(exc).__name__})")
                raise
            self._note_response(node_id, request, response)
            return response

        return observed

    def _note(self, node_id: Any, what: str) -> None:
        if isinstance(node_id, int):
            self._answers[node_id] = (time.monotonic(), what)

    def _note_response(self, node_id: Any, request: Any, response: Any) -> None:
        name = type(request).__name__.removesuffix("Request")
        code = getattr(response, "error_code", 0)
        if code:
            self._note(node_id, f"answered {name} with {for_code(code).message}")
        if isinstance(request, ProduceRequest):
            for topic, partitions in getattr(response, "topics", ()):
                for info in partitions:
                    if info[1]:
                        error = for_code(info[1]).message
                        self._note(node_id, f"answered {name} to {topic}[{info[0]}] with {error}")

    def answers(self, since: float) -> dict[int, str]:
        """Node id -> the last error that node answered with, if it came after ``since``
        (``time.monotonic()``)."""
        return {node: what for node, (at, what) in self._answers.items() if at >= since}
