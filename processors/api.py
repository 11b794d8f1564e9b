"""The read API of a worker (aiohttp), served from the worker's own event loop.

``GET /v1/contexts/{id}`` returns ``{"context_id", "version", "doc", "checksum", "offset",
"partition", "expires_at_ms"}`` (checksum: 16 hex digits of xxh3-64) or 404 when the context
does not exist, was deleted or has expired (expiry is checked against the wall clock at once,
before the Expire event is folded). ``?min_offset=PARTITION:OFFSET`` first waits until that WAL
offset is folded (read-your-writes), at most ``timeout`` seconds (default 5, at most 30): 504
when it is not. A partition this worker does not serve answers 421.

``GET /healthz`` is 200 while the worker folds, 503 otherwise. ``GET /metrics`` is the
Prometheus text exposition.
"""

from __future__ import annotations

import time

import orjson
from aiohttp import web
from aiokafka.partitioner import murmur2

from lukhas_context.processors.exceptions import NotOwnerError
from lukhas_context.processors.materializer import Materializer

MAX_WAIT_S = 30.0


def partition_for(context_id: bytes, partitions: int) -> int:
    """The partition the producers' default partitioner picks for a key (murmur2, as Java)."""
    return (int(murmur2(context_id)) & 0x7FFFFFFF) % partitions


def _error(status: int, reason: str) -> web.Response:
    return web.json_response({"error": reason}, status=status)


def _parse_position(raw: str) -> tuple[int, int]:
    partition, _, offset = raw.partition(":")
    try:
        p, o = int(partition), int(offset)
    except ValueError:
        raise web.HTTPBadRequest(text=f"min_offset must be PARTITION:OFFSET, got {raw!r}") from None
    if p < 0 or o < 0:
        raise web.HTTPBadRequest(text=f"min_offset must be non-negative, got {raw!r}")
    return p, o


def _parse_timeout(raw: str | None) -> float:
    if raw is None:
        return 5.0
    try:
        value = float(raw)
    except ValueError:
        raise web.HTTPBadRequest(text=f"timeout must be seconds, got {raw!r}") from None
    return min(max(value, 0.0), MAX_WAIT_S)


class ReadApi:
    def __init__(self, materializer: Materializer) -> None:
        self.m = materializer
        self.app = web.Application()
        self.app.add_routes(
            [
                web.get("/v1/contexts/{context_id}", self.get_context),
                web.get("/healthz", self.healthz),
                web.get("/metrics", self.metrics),
            ]
        )
        self._runner: web.AppRunner | None = None

    async def start(self, host: str, port: int) -> None:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def get_context(self, request: web.Request) -> web.Response:
        context_id = request.match_info["context_id"]
        key = context_id.encode()
        try:
            if "min_offset" in request.query:
                p, offset = _parse_position(request.query["min_offset"])
                timeout = _parse_timeout(request.query.get("timeout"))
                if not await self.m.wait_applied(p, offset, timeout):
                    return _error(504, f"offset {p}:{offset} not applied within {timeout:g} s")
            if not self.m.partition_count:
                return _error(503, "the worker has no partitions yet")
            partition = partition_for(key, self.m.partition_count)
            record = self.m.store_for(partition).get(key)
        except NotOwnerError as exc:
            return _error(421, str(exc))
        if record is None or not record.is_live(int(time.time() * 1000)):
            return _error(404, f"context {context_id!r} not found")
        assert record.doc is not None
        head = orjson.dumps(
            {
                "context_id": context_id,
                "version": record.version,
                "checksum": record.checksum.hex(),
                "offset": record.offset,
                "partition": partition,
                "expires_at_ms": record.expires_at_ms,
            }
        )
        # The stored document is canonical JSON already: splice it in, never re-encode it.
        body = head[:-1] + b',"doc":' + record.doc + b"}"
        return web.Response(body=body, content_type="application/json")

    async def healthz(self, request: web.Request) -> web.Response:
        body = {
            "status": "ok" if self.m.running else "starting",
            "partitions": sorted(self.m.stores),
        }
        return web.json_response(body, status=200 if self.m.running else 503)

    async def metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.m.metrics.render(), content_type="text/plain")
