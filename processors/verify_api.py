"""The worker's side of ``lukhas verify``: frozen copies of live stores, and their range
digests over HTTP (``state.ranges``).

``POST /v1/partitions/{p}/verify`` freezes the partition's store as it is now: a RocksDB
checkpoint (SST files hard-linked, so it costs a flush and no copy) in
``STATE_DIR/.verify/{session}``, opened as a store of its own. The fold goes on meanwhile and
never sees it. The answer has the session id, the copy's ``next_offset``, its kept summary
(``digest``, ``records``, ``documents``) and the summary ``recomputed`` from its records
(``PartitionStore.verify``, in a thread): the two differ only when the store is corrupt.

On a session, ``POST .../verify/{session}/split`` (``{"lo", "hi", "records", "parts"}``),
``.../summarize`` (``{"lo", "hi", "bounds"}``) and ``.../rows`` (``{"lo", "hi", "limit"}``)
answer what ``state.ranges.RangeSource`` asks; keys travel as base64 (a key is a context id's
UTF-8, but a corrupt store's need not be), ``hi`` null is the end of the key space.
``DELETE .../verify/{session}`` ends it. Bounded: at most ``MAX_SESSIONS`` at once (a 503 over
that), one request at a time per session, a session unused for ``IDLE_S`` seconds is closed
and its copy deleted, and the copies are deleted when the worker stops or the partition leaves
it. The requests are forwarded to the partition's owner like every other.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from lukhas_context.processors.exceptions import NotOwnerError
from lukhas_context.processors.materializer import Materializer
from lukhas_context.processors.problems import problem
from lukhas_context.state.exceptions import StateError
from lukhas_context.state.ranges import LocalRanges
from lukhas_context.state.store import PartitionStore

#: The read API's checks before a partition's request: a 404 for a partition the WAL does not
#: have; the owner's answer when another worker serves it. None: answer here.
Check = Callable[[int], web.Response | None]
Forward = Callable[[web.Request, int], Awaitable[web.Response | None]]

log = logging.getLogger(__name__)

#: Verify sessions one worker keeps at once (each is a frozen copy of a store).
MAX_SESSIONS = 4
#: Seconds a session may go unused before it is closed.
IDLE_S = 120.0
#: Bounds of one request: sub-ranges of a split, bounds of a summary, rows of a leaf.
MAX_PARTS = 256
MAX_ROWS = 10_000


@dataclass
class Session:
    id: str
    partition: int
    store: PartitionStore
    ranges: LocalRanges
    used: float = field(default_factory=time.monotonic)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class VerifySessions:
    """The open sessions of one worker, and the handlers of their endpoints."""

    def __init__(self, m: Materializer, check: Check, forward: Forward) -> None:
        self.m = m
        self._check = check
        self._forward = forward
        self.root: Path = m.config.state_dir / ".verify"
        self._sessions: dict[str, Session] = {}
        self._sweeper: asyncio.Task[None] | None = None
        # Left by a worker that was killed: nobody can use them any more.
        shutil.rmtree(self.root, ignore_errors=True)

    def routes(self) -> list[web.RouteDef]:
        base = "/v1/partitions/{partition}/verify"
        return [
            web.post(base, self.open),
            web.post(base + "/{session}/split", self.split),
            web.post(base + "/{session}/summarize", self.summarize),
            web.post(base + "/{session}/rows", self.rows),
            web.delete(base + "/{session}", self.end),
        ]

    # --- the endpoints ----------------------------------------------------------------------

    async def open(self, request: web.Request) -> web.Response:
        partition, early = await self._route(request)
        if early is not None:
            return early
        self._expire()
        if len(self._sessions) >= MAX_SESSIONS:
            return _error(
                503, f"{MAX_SESSIONS} verify sessions are open on this worker; one ends when "
                f"its verify ends, or after {IDLE_S:g} s unused",
            )  # fmt: skip
        try:
            live = self.m.store_for(partition)
        except NotOwnerError as exc:
            return _error(421, str(exc))
        session_id = f"{partition}-{secrets.token_hex(8)}"
        path = self.root / session_id
        self.root.mkdir(parents=True, exist_ok=True)
        try:
            live.checkpoint(path)  # on the loop: between two commits, as a checkpoint is
            copy = PartitionStore(path)
        except StateError as exc:
            shutil.rmtree(path, ignore_errors=True)
            return _error(500, f"cannot freeze partition {partition}: {exc}")
        session = Session(session_id, partition, copy, LocalRanges(copy))
        self._sessions[session_id] = session
        self._sweep_later()
        async with session.lock:
            kept = copy.summary()
            try:
                found = await asyncio.to_thread(copy.verify)
            except StateError as exc:
                self._close(session_id)
                return _error(500, f"partition {partition} does not read back: {exc}")
        return web.json_response({
            "session": session_id,
            "partition": partition,
            "next_offset": kept.next_offset,
            "digest": kept.digest_hex,
            "records": kept.records,
            "documents": kept.documents,
            "recomputed": {"digest": found.digest_hex, "records": found.records,
                           "documents": found.documents},
        })  # fmt: skip

    async def split(self, request: web.Request) -> web.Response:
        async def answer(session: Session, body: dict[str, Any]) -> dict[str, Any]:
            lo, hi = _range(body)
            records = _int(body, "records", 0, 2**62)
            parts = _int(body, "parts", 2, MAX_PARTS)
            bounds, digests = await session.ranges.split(lo, hi, records, parts)
            return {"bounds": [_b64(k) for k in bounds],
                    "digests": [d.to_dict() for d in digests]}  # fmt: skip

        return await self._on_session(request, answer)

    async def summarize(self, request: web.Request) -> web.Response:
        async def answer(session: Session, body: dict[str, Any]) -> dict[str, Any]:
            lo, hi = _range(body)
            raw = body.get("bounds")
            if not isinstance(raw, list) or len(raw) > MAX_PARTS - 1:
                raise _bad(f"bounds must be a list of at most {MAX_PARTS - 1} keys")
            bounds = [_key(b, "bounds[]") for b in raw]
            if bounds != sorted(set(bounds)):
                raise _bad("bounds must increase")
            digests = await session.ranges.summarize(lo, hi, bounds)
            return {"digests": [d.to_dict() for d in digests]}

        return await self._on_session(request, answer)

    async def rows(self, request: web.Request) -> web.Response:
        async def answer(session: Session, body: dict[str, Any]) -> dict[str, Any]:
            lo, hi = _range(body)
            limit = _int(body, "limit", 1, MAX_ROWS)
            rows, more = await session.ranges.rows(lo, hi, limit)
            return {
                "rows": [
                    {
                        "key": _b64(r.key),
                        "hash": f"{r.hash:016x}",
                        "version": r.version,
                        "deleted": r.deleted,
                        "offset": r.offset,
                    }
                    for r in rows
                ],
                "more": more,
            }

        return await self._on_session(request, answer)

    async def end(self, request: web.Request) -> web.Response:
        partition, early = await self._route(request)
        if early is not None:
            return early
        session = self._sessions.get(request.match_info["session"])
        if session is None or session.partition != partition:
            return _error(404, "no such verify session (it ended, or was idle too long)")
        async with session.lock:
            self._close(session.id)
        return web.json_response({"session": session.id, "ended": True})

    # --- the machinery ----------------------------------------------------------------------

    async def _route(self, request: web.Request) -> tuple[int, web.Response | None]:
        if request.query:
            return -1, _error(400, f"{request.method} {request.path} takes no query parameters")
        raw = request.match_info["partition"]
        if not raw.isascii() or not raw.isdigit() or len(raw) > 6:
            return -1, _error(400, f"partition must be a decimal number, got {raw[:20]!r}")
        partition = int(raw)
        missing = self._check(partition)
        if missing is not None:
            return partition, missing
        forwarded = await self._forward(request, partition)
        return partition, forwarded

    async def _on_session(self, request: web.Request, answer: Any) -> web.Response:
        partition, early = await self._route(request)
        if early is not None:
            return early
        session = self._sessions.get(request.match_info["session"])
        if session is None or session.partition != partition:
            return _error(404, "no such verify session (it ended, was idle too long, or the "
                          "partition moved to another worker)")  # fmt: skip
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError as exc:
            return _error(400, f"the body is not JSON: {exc}")
        if not isinstance(body, dict):
            return _error(400, "the body must be a JSON object")
        async with session.lock:
            if session.id not in self._sessions:
                return _error(404, "no such verify session (it ended meanwhile)")
            session.used = time.monotonic()
            try:
                result = await answer(session, body)
            except web.HTTPBadRequest as exc:
                return _error(400, exc.text or "bad request")
            except StateError as exc:
                return _error(500, f"the frozen copy does not read: {exc}")
            session.used = time.monotonic()
        return web.json_response(result)

    def _expire(self) -> None:
        now = time.monotonic()
        for s in list(self._sessions.values()):
            gone = s.partition not in self.m.stores
            if (now - s.used > IDLE_S or gone) and not s.lock.locked():
                log.info("verify session %s closed (%s)", s.id,
                         "partition left" if gone else "idle")  # fmt: skip
                self._close(s.id)

    def _sweep_later(self) -> None:
        if self._sweeper is None or self._sweeper.done():
            self._sweeper = asyncio.create_task(self._sweep())

    async def _sweep(self) -> None:
        while self._sessions:
            await asyncio.sleep(min(10.0, IDLE_S / 4))
            self._expire()

    def _close(self, session_id: str) -> None:
        session = self._sessions.pop(session_id, None)
        if session is None:
            return
        session.store.close()
        shutil.rmtree(session.store.path, ignore_errors=True)

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
        for session_id in list(self._sessions):
            self._close(session_id)
        shutil.rmtree(self.root, ignore_errors=True)


def _error(status: int, reason: str) -> web.Response:
    return problem(status, reason)


def _bad(reason: str) -> web.HTTPBadRequest:
    """Raised by a session's checks; its text becomes the detail of a problem (``_error``)."""
    return web.HTTPBadRequest(text=reason)


def _b64(key: bytes) -> str:
    return base64.b64encode(key).decode()


def _key(raw: Any, what: str) -> bytes:
    if not isinstance(raw, str) or len(raw) > 2_000:
        raise _bad(f"{what} must be a base64 string of a key")
    try:
        return base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise _bad(f"{what} is not base64: {raw[:40]!r}") from None


def _range(body: dict[str, Any]) -> tuple[bytes, bytes | None]:
    lo = _key(body.get("lo", ""), "lo")
    hi = None if body.get("hi") is None else _key(body["hi"], "hi")
    if hi is not None and hi <= lo:
        raise _bad("hi must be above lo")
    return lo, hi


def _int(body: dict[str, Any], name: str, low: int, high: int) -> int:
    value = body.get(name)
    if type(value) is not int or not low <= value <= high:
        raise _bad(f"{name} must be an integer in [{low}, {high}]")
    return value
