"""``SyncContextClient``: the client's calls, blocking, for code without an event loop."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from lukhas_context.schemas.event import Fence
from lukhas_context.streams.async_client import ContextClient
from lukhas_context.streams.config import ClientConfig
from lukhas_context.streams.locks import Lock
from lukhas_context.streams.results import Context, ContextPage, History, Outcome, Receipt
from lukhas_context.streams.validation import renamed_argument

__all__ = ["SyncContextClient", "SyncLock"]

T = TypeVar("T")


class SyncContextClient:
    """The same calls, blocking: an event loop runs the async client in a private thread."""

    def __init__(self, config: ClientConfig) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._client = ContextClient(config)
        try:
            self._call(self._client.start())
        except BaseException:
            self._stop_loop()
            raise

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def put(self, context_id: str, doc: dict[str, Any], ttl: float | None = None, **kw: Any) -> Any:
        """A ``Receipt``, or a ``DryRun`` with ``dry_run=True`` (as every mutation here)."""
        return self._call(self._client.put(context_id, doc, ttl, **kw))

    def delete(self, context_id: str, **kw: Any) -> Any:
        return self._call(self._client.delete(context_id, **kw))

    def patch(self, context_id: str, patch: list[Any] | dict[str, Any], **kw: Any) -> Any:
        return self._call(self._client.patch(context_id, patch, **kw))

    def touch(self, context_id: str, ttl: float | None, **kw: Any) -> Any:
        return self._call(self._client.touch(context_id, ttl, **kw))

    def update(self, context_id: str, new_doc: dict[str, Any], ttl: float | None = None) -> Receipt:
        return self._call(self._client.update(context_id, new_doc, ttl))

    def outcome(self, receipt: Receipt, timeout: float = 5.0) -> Outcome:
        return self._call(receipt.outcome(timeout))

    def get(
        self, context_id: str, min_offset: Receipt | str | None = None, timeout: float = 5.0,
        *, allow_stale: bool = False, max_lag: int | None = None,
        after: Receipt | str | None = None,
    ) -> Context:  # fmt: skip
        """See ``ContextClient.get`` (``after=``: the old name of ``min_offset``)."""
        min_offset = renamed_argument(min_offset, after, "min_offset", "after")
        return self._call(
            self._client.get(
                context_id, min_offset, timeout, allow_stale=allow_stale, max_lag=max_lag
            )
        )

    def list_contexts(
        self, prefix: str = "", after: str | None = None, limit: int = 100, timeout: float = 10.0
    ) -> ContextPage:
        """See ``ContextClient.list_contexts``."""
        return self._call(self._client.list_contexts(prefix, after, limit, timeout))

    def history(
        self, context_id: str, after: int | None = None, limit: int = 1000, timeout: float = 5.0
    ) -> History:
        return self._call(self._client.history(context_id, after, limit, timeout))

    def lock(self, name: str, ttl: float, timeout: float = 10.0) -> SyncLock:
        """``with client.lock("job:1", ttl=10) as lock: ... lock.token`` (see
        ``ContextClient.lock``); renewed in the client's thread while held."""
        return SyncLock(self, self._client.lock(name, ttl, timeout))

    def close(self) -> None:
        try:
            self._call(self._client.close())
        finally:
            self._stop_loop()

    def _stop_loop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> SyncContextClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class SyncLock:
    """A ``Lock`` of a ``SyncContextClient``: acquired on enter, released on exit."""

    def __init__(self, client: SyncContextClient, lock: Lock) -> None:
        self._client = client
        self.lock = lock

    @property
    def token(self) -> int | None:
        return self.lock.token

    @property
    def held(self) -> bool:
        return self.lock.held

    def check(self) -> int:
        return self.lock.check()

    @property
    def fence(self) -> Fence:
        """What a write sends under this lock (``Lock.fence``)."""
        return self.lock.fence

    def acquire(self) -> int:
        return self._client._call(self.lock.acquire())

    def release(self) -> bool:
        return self._client._call(self.lock.release())

    def __enter__(self) -> SyncLock:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self._client._call(self.lock.__aexit__(None, None, None))
