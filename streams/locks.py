"""Distributed locks on redis-server, each acquisition with a fencing token.

``LockManager(redis_url).lock(name, ttl=...)`` is an async context manager: entering acquires
the lock (waiting at most ``timeout``), yields a ``Lock`` whose ``token`` is larger than every
token issued for that name before, renews it every third of its TTL while it is held, and
releases it on exit. The token comes from the same Lua script as the lock itself (the lock
key set only when it does not exist, the name's counter raised), so no two holders of one
name ever get the same token, and a later holder always gets a larger one. The counter never
goes below Redis's clock in microseconds: a redis-server restarted without its data keeps
issuing larger tokens (as long as its clock does not go back).

A lock is not a guarantee by itself: a holder that stops (a pause, a swap storm, a long GC)
past the TTL loses it without knowing. That is what the token is for — writes carry it
(``fence``), and whoever applies them refuses a token lower than one it has seen (Kleppmann,
"How to do distributed locking", 2016). Here: ``Lock.check()`` raises ``LockLostError`` once
a renewal found the lock gone, and the token is what a fenced write sends (``lock.fence``,
the ``fence=`` of every write): the fold refuses, as ``fenced``, a write whose token is below
the highest it has folded for that lock in the partition (``processors.round``).

Redis down: acquiring fails at once with ``LockUnavailableError`` (a short connect timeout,
no retries); writes that do not use locks never touch Redis. Release and renewal act only
when the lock still holds this acquisition's value (owner id and token), so a holder whose
lock expired and was taken by another can never release or extend the other's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from types import TracebackType
from typing import Any

from lukhas_context.schemas.event import MAX_LOCK_NAME_BYTES, Fence, fence_problem
from lukhas_context.streams.exceptions import (
    LockLostError,
    LockTimeoutError,
    LockUnavailableError,
    ValidationError,
)

__all__ = [
    "MAX_LOCK_NAME_BYTES",
    "MAX_TTL_S",
    "Lock",
    "LockManager",
    "as_fence",
    "check_fence",
    "check_lock_name",
]

log = logging.getLogger(__name__)

#: A TTL's bounds (seconds).
MIN_TTL_S = 0.05
MAX_TTL_S = 86_400.0
#: How long connecting to Redis may take before acquiring fails.
CONNECT_TIMEOUT_S = 2.0

#: Takes the lock and issues its token: one more than the last token of the name, and never
#: less than the server's clock in microseconds, so a Redis that restarted without its data
#: (the counter gone) still issues tokens above every one it issued before, as long as its
#: clock does not go back. Lua numbers are doubles: exact up to 2^53, about 285 years of
#: microseconds from 1970.
_ACQUIRE = """
if redis.call('EXISTS', KEYS[1]) == 1 then return false end
local now = redis.call('TIME')
local floor = tonumber(now[1]) * 1000000 + tonumber(now[2])
local last = tonumber(redis.call('GET', KEYS[2]) or '0')
local token = math.max(last + 1, floor)
redis.call('SET', KEYS[2], string.format('%d', token))
redis.call('SET', KEYS[1], ARGV[1] .. ':' .. string.format('%d', token), 'PX', ARGV[2])
return token
"""
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


def check_lock_name(name: object) -> str:
    """``name`` if it can name a lock: a non-empty string of at most ``MAX_LOCK_NAME_BYTES``
    UTF-8 bytes without control characters; ``ValidationError`` otherwise."""
    if not isinstance(name, str):
        raise ValidationError(f"a lock name is a non-empty string, got {name!r:.60}")
    problem = fence_problem(Fence(name, 0))
    if problem is not None:
        raise ValidationError(problem)
    return name


def check_fence(lock: object, token: object) -> Fence:
    """The fence of ``lock`` and ``token`` (a token a lock issued: an integer in [0, 2^63));
    ``ValidationError`` before anything is sent otherwise."""
    check_lock_name(lock)
    problem = fence_problem(Fence(lock, token))  # type: ignore[arg-type]
    if problem is not None:
        raise ValidationError(problem)
    return Fence(lock, token)  # type: ignore[arg-type]


def as_fence(value: object) -> Fence:
    """The fence a write sends: a ``Fence`` (checked), or a held lock's (a ``Lock``, or the
    sync client's; ``LockLostError`` when it is known lost), or ``"LOCK:TOKEN"`` text;
    ``ValidationError`` otherwise."""
    if isinstance(value, Lock) or isinstance(getattr(value, "lock", None), Lock):
        return value.fence  # type: ignore[attr-defined,no-any-return]
    if isinstance(value, Fence):
        return check_fence(value.lock, value.token)
    if isinstance(value, str):
        lock, sep, token = value.rpartition(":")
        if not sep or not token.isascii() or not token.isdigit() or len(token) > 19:
            raise ValidationError(
                f"a fence is LOCK:TOKEN with a non-negative integer token, got {value!r:.80}"
            )
        return check_fence(lock, int(token))
    raise ValidationError(f"a fence is a Fence, a Lock or 'LOCK:TOKEN', got {value!r:.60}")


def _check_seconds(value: object, what: str, low: float, high: float) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"{what} is a number of seconds, got {value!r:.40}")
    if not low <= float(value) <= high:  # NaN fails both comparisons
        raise ValidationError(f"{what} must be in [{low:g}, {high:g}] seconds, got {value!r}")
    return float(value)


def _redis_asyncio() -> Any:
    """redis-py's asyncio client, imported on first use: a client that takes no locks needs
    no ``redis`` package (it comes with the ``locks``, ``cli`` and ``server`` extras)."""
    try:
        from redis import asyncio as aioredis
    except ImportError:
        raise LockUnavailableError(
            "locks need the redis package: pip install 'lukhas-context[locks]'"
        ) from None
    return aioredis


class LockManager:
    """Locks on one redis-server (``redis://host:port[/db]``); keys under ``prefix``."""

    def __init__(self, redis_url: str, prefix: str = "lukhas") -> None:
        self.url = redis_url
        self.prefix = prefix
        self._redis: Any = None
        #: The acquisitions of this manager still held: released when it closes.
        self._held: set[Lock] = set()
        self._client()  # a URL that does not parse fails here, typed, before anything

    def _client(self) -> Any:
        if self._redis is None:
            aioredis = _redis_asyncio()
            try:
                self._redis = aioredis.Redis.from_url(
                    self.url, socket_connect_timeout=CONNECT_TIMEOUT_S,
                    socket_timeout=CONNECT_TIMEOUT_S * 2, retry_on_timeout=False,
                )  # fmt: skip
            except ValueError as exc:
                raise ValidationError(f"Redis URL {self.url!r:.80}: {exc}") from None
        return self._redis

    def lock(self, name: str, ttl: float, timeout: float = 10.0) -> Lock:
        """A lock on ``name`` held at most ``ttl`` seconds without renewal, acquired within
        ``timeout`` seconds (``LockTimeoutError`` otherwise). Checked before anything is
        sent."""
        check_lock_name(name)
        ttl = _check_seconds(ttl, "ttl", MIN_TTL_S, MAX_TTL_S)
        timeout = _check_seconds(timeout, "timeout", 0.0, MAX_TTL_S)
        return Lock(self, name, ttl, timeout)

    async def call(self, script: str, keys: list[str], args: list[Any]) -> Any:
        from redis.exceptions import RedisError  # the client was made: redis is installed

        try:
            return await self._client().eval(script, len(keys), *keys, *args)
        except (RedisError, OSError) as exc:
            raise LockUnavailableError(
                f"Redis at {self.url}: {type(exc).__name__}: {exc}"
            ) from None

    def keys(self, name: str) -> list[str]:
        return [f"{self.prefix}:lock:{name}", f"{self.prefix}:fence:{name}"]

    async def close(self) -> None:
        """Releases the locks still held (their renewals stop), then disconnects."""
        for lock in list(self._held):
            with contextlib.suppress(LockUnavailableError):
                await lock.release()
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None


class Lock:
    """One acquisition of a lock (see the module doc). ``token`` is set once acquired."""

    def __init__(self, manager: LockManager, name: str, ttl: float, timeout: float) -> None:
        self.manager = manager
        self.name = name
        self.ttl = ttl
        self.timeout = timeout
        self.token: int | None = None
        self._value: str | None = None
        self._renewing: asyncio.Task[None] | None = None
        self._lost: str | None = None

    @property
    def held(self) -> bool:
        """Acquired, not released, and no renewal found it gone (it may still have expired
        since: only the token makes a write safe)."""
        return self.token is not None and self._lost is None

    @property
    def fence(self) -> Fence:
        """The fence a write sends under this lock (``client.put(..., fence=lock.fence)``);
        ``LockLostError`` when not held. Even a held lock may have expired meanwhile: the fold
        refuses the write then, if a later holder has written."""
        return Fence(self.name, self.check())

    def check(self) -> int:
        """The token, or ``LockLostError`` when the lock is known to be gone."""
        if self.token is None:
            raise LockLostError(f"lock {self.name!r} is not held")
        if self._lost is not None:
            raise LockLostError(f"lock {self.name!r} (token {self.token}) {self._lost}")
        return self.token

    async def acquire(self) -> int:
        """Waits until the lock is free and takes it; returns the fencing token."""
        owner = uuid.uuid4().hex
        deadline = time.monotonic() + self.timeout
        pause = 0.02
        ttl_ms = max(1, int(self.ttl * 1000))
        while True:
            token = await self.manager.call(_ACQUIRE, self.manager.keys(self.name),
                                            [owner, ttl_ms])  # fmt: skip
            if token is not None:
                self.token, self._value = int(token), f"{owner}:{int(token)}"
                self._renewing = asyncio.create_task(self._renew(ttl_ms))
                self.manager._held.add(self)
                return self.token
            left = deadline - time.monotonic()
            if left <= 0:
                raise LockTimeoutError(f"lock {self.name!r} not acquired within {self.timeout:g} s")
            await asyncio.sleep(min(pause, left))
            pause = min(pause * 2, 0.1)  # a waiter asks at least 10 times a second

    async def _renew(self, ttl_ms: int) -> None:
        """Extends the lock every third of its TTL while held; marks it lost when it is no
        longer this acquisition's, or when no renewal succeeded for a whole TTL."""
        last_ok = time.monotonic()
        key = self.manager.keys(self.name)[:1]
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                extended = await self.manager.call(_RENEW, key, [self._value, ttl_ms])
            except LockUnavailableError as exc:
                if time.monotonic() - last_ok >= self.ttl:
                    self._lost = f"could not be renewed for its whole TTL ({exc})"
                    return
                continue
            if not extended:
                self._lost = "expired and is no longer held by this acquisition"
                log.warning("lock %r (token %s) was lost", self.name, self.token)
                return
            last_ok = time.monotonic()

    async def release(self) -> bool:
        """Stops renewing and deletes the lock if it is still this acquisition's; True if it
        was (False: it had expired, perhaps taken by another meanwhile)."""
        if self._renewing is not None:
            self._renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._renewing
            self._renewing = None
        self.manager._held.discard(self)
        if self._value is None:
            return False
        value, self._value = self._value, None
        self._lost = self._lost or "was released"
        released = await self.manager.call(_RELEASE, self.manager.keys(self.name)[:1], [value])
        return bool(released)

    async def __aenter__(self) -> Lock:
        await self.acquire()
        return self

    async def __aexit__(self, kind: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:  # fmt: skip
        try:
            await self.release()
        except LockUnavailableError as error:  # it expires by itself within its TTL
            log.warning("lock %r not released (%s); it expires within %g s", self.name, error,
                        self.ttl)  # fmt: skip
