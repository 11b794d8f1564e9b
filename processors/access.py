"""Who may use the read API: an optional bearer token, and a CORS allow-list of origins.

* **Token** (``WorkerConfig.api_token``; ``lukhas worker --api-token-file`` or
  ``LUKHAS_API_TOKEN``). When set, every request but the probes (``OPEN_PATHS``: a
  kubelet or a load balancer has no token) carries ``Authorization: Bearer TOKEN``; one
  without it, or with another, is a 401 problem with ``WWW-Authenticate: Bearer`` (RFC
  6750), compared in constant time. The console's static pages (``/console``) answer without
  one too: they hold no data, and the calls their script makes carry the token. Workers send
  it to each other when they forward, and the client sends ``ClientConfig.api_token``. The
  listener's fast path is off then: it does not read ``Authorization``, so every read goes
  through this check.
* **Write token** (``WorkerConfig.api_write_token``; ``lukhas worker
  --api-write-token-file``). The routes that change something (``WRITES``: starting a
  checkpoint, re-driving a dead letter) need it, and it reads too; a worker without one has a
  read-only API (those routes answer 403). Reads keep needing only the read token, if any.
* **CORS** (``WorkerConfig.cors_origins``; ``--cors-origin``). An answer to a request from
  an origin on the list (or any, with ``*``) says so (``Access-Control-Allow-Origin``, and
  the headers a page may read); a preflight (``OPTIONS`` with
  ``Access-Control-Request-Method``) is answered 204. Other origins get no CORS headers,
  so browsers keep their pages from reading the answers. Server-sent event streams get the
  headers too (``on_response_prepare``: before the first byte).
"""

from __future__ import annotations

import hmac
import re
from collections.abc import Awaitable, Callable, Iterable

from aiohttp import web

from lukhas_context.processors.console import is_console_path
from lukhas_context.processors.exceptions import InvalidWorkerConfigError
from lukhas_context.processors.problems import problem

#: Paths answered without a token: the probes.
OPEN_PATHS = frozenset({"/livez", "/readyz", "/healthz"})
#: The routes that change something: they need the write token (``api_write_token``), and
#: answer 403 on a worker that has none.
WRITES = frozenset({("POST", "/v1/checkpoints"), ("POST", "/v1/dead-letters/redrive")})
#: A token's characters (RFC 6750 ``b64token``) and its shortest length.
_TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
MIN_TOKEN_CHARS = 16
#: An origin: scheme, host and optional port, nothing else (or ``*``: any).
_ORIGIN = re.compile(
    r"https?://[A-Za-z0-9.\-]+(:[0-9]{1,5})?|https?://\[[0-9A-Fa-f:.]+\](:[0-9]{1,5})?"
)
#: What a cross-origin page may send and read.
ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
ALLOW_HEADERS = "Authorization, Content-Type, If-None-Match, Last-Event-ID"
EXPOSE_HEADERS = (
    "ETag, Retry-After, X-Lukhas-Served-By, X-Lukhas-Standby-Position, X-Lukhas-Standby-Lag"
)
PREFLIGHT_MAX_AGE_S = 600


def check_token(token: str | None) -> None:
    """``InvalidWorkerConfigError`` for a token a client could not send, or too short to
    be a secret."""
    if token is None:
        return
    if not _TOKEN.fullmatch(token):
        raise InvalidWorkerConfigError(
            "the API token may hold letters, digits and -._~+/ (then = padding) only"
        )
    if len(token) < MIN_TOKEN_CHARS:
        raise InvalidWorkerConfigError(
            f"the API token is {len(token)} characters; give at least {MIN_TOKEN_CHARS} "
            "(e.g. `openssl rand -hex 24`)"
        )


def check_origins(origins: Iterable[str]) -> None:
    """``InvalidWorkerConfigError`` for an entry that is neither ``*`` nor an origin."""
    for origin in origins:
        if origin != "*" and not _ORIGIN.fullmatch(origin):
            raise InvalidWorkerConfigError(
                f"CORS origin {origin[:80]!r} is not scheme://host[:port] (no path) or *"
            )


def token_middleware(
    token: str | None, write_token: str | None = None
) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Requires ``token`` (or ``write_token``, which reads too) on every request but the
    open paths, and ``write_token`` on the routes that change something (``WRITES``); a
    write route without a write token configured passes to its handler, which refuses it
    (403: the API is read-only)."""
    reads = [f"Bearer {t}".encode() for t in (token, write_token) if t is not None]
    writes = [] if write_token is None else [f"Bearer {write_token}".encode()]

    @web.middleware
    async def require_token(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if (
            request.path in OPEN_PATHS
            or request.method == "OPTIONS"
            or is_console_path(request.path)
        ):
            return await handler(request)
        write = (request.method, request.path) in WRITES
        accepted = writes if write else reads
        if (write and write_token is None) or (not write and token is None):
            return await handler(request)
        given = request.headers.get("Authorization")
        what = "a write token" if write else "a bearer token"
        if given is None:
            detail = f"this API needs {what} (Authorization: Bearer ...)"
            challenge = 'Bearer realm="lukhas"'
        elif any(hmac.compare_digest(given.encode(errors="replace"), a) for a in accepted):
            return await handler(request)
        else:
            detail = f"the bearer token is not this API's {'write token' if write else 'token'}"
            challenge = 'Bearer realm="lukhas", error="invalid_token"'
        return problem(401, detail, headers={"WWW-Authenticate": challenge})

    return require_token


class Cors:
    """The CORS answers of one allow-list (see the module doc)."""

    def __init__(self, origins: Iterable[str]) -> None:
        self.origins = frozenset(origins)

    def allowed(self, origin: str | None) -> str | None:
        """The ``Access-Control-Allow-Origin`` for a request from ``origin`` (None: none)."""
        if origin is None or not self.origins:
            return None
        if origin in self.origins:
            return origin
        return "*" if "*" in self.origins else None

    @web.middleware
    async def preflight(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        asked = request.headers.get("Access-Control-Request-Method")
        if request.method != "OPTIONS" or asked is None:
            return await handler(request)
        allow = self.allowed(request.headers.get("Origin"))
        if allow is None:
            return problem(403, "this origin is not allowed to use this API from a browser")
        return web.Response(
            status=204,
            headers={
                "Access-Control-Allow-Origin": allow,
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE_S),
                "Vary": "Origin",
            },
        )

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Adds the CORS headers to any answer for an allowed origin (streams included)."""
        allow = self.allowed(request.headers.get("Origin"))
        if allow is None or "Access-Control-Allow-Origin" in response.headers:
            return
        response.headers["Access-Control-Allow-Origin"] = allow
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
        response.headers.add("Vary", "Origin")
