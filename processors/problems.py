"""Every error of the read API as an RFC 9457 problem: ``application/problem+json`` with
``type``, ``title``, ``status`` and ``detail``.

* ``type`` is ``about:blank`` (the ``title`` is then the status's phrase) unless a client
  has to tell the error apart from others of its status; then it is
  ``urn:lukhas:problem:NAME`` with a title of its own (``KINDS``).
* ``detail`` says what went wrong in words an operator can act on; it never names a
  Python class.
* Extension members carry what a client needs to act: ``partition_count``/``end_offset``
  (a position that does not exist), ``open_transaction`` (a wait that a transaction holds).
* ``error`` repeats ``detail``: it is what the API answered before problems (``{"error":
  ...}``), kept so clients written against it keep working. It is deprecated: read
  ``detail``.

One writer for every answer: the handlers (``problem``, ``bad_request``), aiohttp's own
answers (404 of no route, 405, 413: ``problem_middleware``), an exception no handler caught
(500, logged with its traceback, not shown), requests aiohttp cannot parse
(``ProblemRequestHandler``) and the listener's own refusals (``problem_bytes``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any, TypeVar

import orjson
from aiohttp import web
from aiohttp.web_protocol import RequestHandler

log = logging.getLogger(__name__)

PROBLEM_CONTENT_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:lukhas:problem:"

#: The problems a client tells apart by ``type``: name -> title.
KINDS: dict[str, str] = {
    "no-such-partition": "No such partition",
    "no-such-offset": "No such offset",
    "not-applied-yet": "Not applied yet",
    "not-served-here": "Partition not served by this worker",
    "context-not-found": "Context not found",
    "unknown-parameter": "Unknown query parameter",
    "partition-not-ready": "Partition not ready",
    "overloaded": "Worker overloaded",
}

#: Headers of aiohttp's own error answers that mean something to the client.
_KEPT_HEADERS = ("Allow", "Retry-After")


def problem_document(
    status: int, detail: str, kind: str | None = None, **extensions: Any
) -> dict[str, Any]:
    """The problem's members (``kind``: a name of ``KINDS``, or None for ``about:blank``)."""
    if kind is None:
        kind_type, title = "about:blank", _phrase(status)
    else:
        kind_type, title = TYPE_PREFIX + kind, KINDS[kind]
    document: dict[str, Any] = {
        "type": kind_type,
        "title": title,
        "status": status,
        "detail": detail,
    }
    for name, value in extensions.items():
        document.setdefault(name, value)  # never over a standard member
    document["error"] = detail  # deprecated: the body before problems; read ``detail``
    return document


def problem_body(status: int, detail: str, kind: str | None = None, **extensions: Any) -> bytes:
    return orjson.dumps(problem_document(status, detail, kind, **extensions))


def problem(
    status: int,
    detail: str,
    kind: str | None = None,
    extensions: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """The answer of an error: ``status`` with the problem as its body."""
    return web.Response(
        status=status,
        body=problem_body(status, detail, kind, **(extensions or {})),
        content_type=PROBLEM_CONTENT_TYPE,
        headers=headers,
    )


def bad_request(detail: str, kind: str | None = None) -> web.HTTPBadRequest:
    """A 400 to raise from deep in a handler's parameter checks."""
    return web.HTTPBadRequest(
        text=problem_body(400, detail, kind).decode(), content_type=PROBLEM_CONTENT_TYPE
    )


H = TypeVar("H", bound=Callable[..., Awaitable[web.StreamResponse]])


def query_params(*known: str) -> Callable[[H], H]:
    """Makes a handler (a method) reject a request that has a query parameter it does not
    take, or one given twice, with a 400 naming the ones it takes: a misspelt parameter
    (``?from=`` for ``?start=``) must not be silently ignored."""

    def decorate(handler: H) -> H:
        @functools.wraps(handler)
        async def checked(owner: object, request: web.Request) -> web.StreamResponse:
            query = request.query
            unknown = sorted(set(query) - set(known))
            if unknown:
                takes = ", ".join(known) if known else "no query parameters"
                resource = request.match_info.route.resource
                where = request.path if resource is None else resource.canonical
                return problem(
                    400, f"unknown query parameter {', '.join(map(repr, unknown))}: "
                    f"{request.method} {where} takes {takes}", "unknown-parameter",
                )  # fmt: skip
            repeated = sorted(k for k in set(query) if len(query.getall(k)) > 1)
            if repeated:
                return problem(400, f"query parameter {', '.join(map(repr, repeated))} given twice")
            return await handler(owner, request)

        checked.query_parameters = known  # type: ignore[attr-defined]  # the OpenAPI test's
        return checked  # type: ignore[return-value]

    return decorate


def problem_bytes(
    status: int,
    detail: str,
    extra_headers: bytes = b"",
    kind: str | None = None,
    **extensions: Any,
) -> bytes:
    """A whole HTTP/1.1 answer that closes the connection, for the listener, which answers
    before aiohttp has a request (``extra_headers``: CRLF-terminated lines)."""
    body = problem_body(status, detail, kind, **extensions)
    return (
        b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%sConnection: close"
        b"\r\n\r\n%s"
        % (status, _phrase(status).encode(), PROBLEM_CONTENT_TYPE.encode(), len(body),
           extra_headers, body)
    )  # fmt: skip


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _detail_of(request: web.Request, exc: web.HTTPException) -> str:
    """What went wrong, for one of aiohttp's own error answers."""
    if exc.status == 404:
        return f"no such resource: {request.method} {request.path}"
    if exc.status == 405:
        allowed = ", ".join(sorted(getattr(exc, "allowed_methods", ()) or ()))
        return f"{request.method} is not allowed on {request.path}" + (
            f"; it takes {allowed}" if allowed else ""
        )
    text = exc.text or ""
    # aiohttp's default text is "<status>: <phrase>": say the phrase alone.
    prefix = f"{exc.status}: "
    return text[len(prefix) :] if text.startswith(prefix) else text or _phrase(exc.status)


@web.middleware
async def problem_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Makes every error answer a problem: aiohttp's own (no route, a method the route does
    not take, a body over the limit), a handler's raised ``HTTPException`` that is not one
    yet, and any exception no handler caught (a 500 whose detail says to see the log; the
    traceback goes to the log, never to the client)."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == PROBLEM_CONTENT_TYPE:
            raise
        headers = {k: exc.headers[k] for k in _KEPT_HEADERS if k in exc.headers}
        return problem(exc.status, _detail_of(request, exc), headers=headers)
    except ConnectionError:
        raise
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return problem(500, "the worker failed to answer this request; its log says why")


class ProblemRequestHandler(RequestHandler):
    """aiohttp's connection handler, answering a request it cannot parse (a bad request
    line, an oversized header...) with a problem instead of plain text."""

    __slots__ = ()

    def handle_error(
        self,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        super().handle_error(request, status, exc, message)  # logs; raises if answered
        if status >= 500:
            detail = "the worker failed to answer this request; its log says why"
        else:
            detail = message or _phrase(status)
        response = problem(status, detail)
        response.force_close()
        return response
