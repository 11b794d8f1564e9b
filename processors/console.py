"""The operators' console: ``GET /console`` and its assets, served by every worker.

The pages are static files shipped in the package (``processors/static``, package data, read
with ``importlib.resources``): nothing is fetched from another site at run time. They hold no
data; the script in them reads the cluster through the public read API alone (``/v1/...``),
with the bearer token the operator types (kept in the tab's ``sessionStorage``) when the
worker has one. That is why these paths answer without a token (``processors.access``): a
browser's navigation cannot carry one, and there is nothing in them to protect.

Every answer carries headers that keep a page from running anything but this script:
a Content-Security-Policy with no inline script and ``script-src 'self'`` (the script puts
every value into the page as text, never as HTML), ``X-Content-Type-Options: nosniff``, and
no framing (``frame-ancestors 'none'``, ``X-Frame-Options: DENY``).
"""

from __future__ import annotations

import functools
from importlib.resources import files

from aiohttp import web

from lukhas_context.processors.problems import problem

#: The console's path; it and everything under it answer without a token.
CONSOLE_PATH = "/console"
#: The files under ``CONSOLE_PATH`` (name -> content type); any other name is a 404.
ASSETS = {
    "console.js": "text/javascript; charset=utf-8",
    "console.css": "text/css; charset=utf-8",
    # without an icon of its own, a browser asks for /favicon.ico: a 404 on every visit
    "icon.svg": "image/svg+xml",
}
INDEX = "index.html"
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    # a new version of the worker serves its own script at once
    "Cache-Control": "no-cache",
}


@functools.cache
def asset(name: str) -> bytes:
    """The bytes of one shipped file (read once)."""
    return files("lukhas_context.processors").joinpath("static", name).read_bytes()


def is_console_path(path: str) -> bool:
    return path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/")


def _answer(name: str, content_type: str) -> web.Response:
    response = web.Response(body=asset(name), headers=SECURITY_HEADERS)
    response.headers["Content-Type"] = content_type
    return response


async def index(request: web.Request) -> web.Response:
    """The console's page."""
    if request.query:
        return problem(400, "GET /console takes no query parameters (views are in the #)")
    return _answer(INDEX, "text/html; charset=utf-8")


async def static(request: web.Request) -> web.Response:
    """One of the console's ``ASSETS``; 404 for any other name."""
    name = request.match_info["asset"]
    content_type = ASSETS.get(name)
    if content_type is None:
        return problem(404, f"the console has no file {name[:80]!r}")
    return _answer(name, content_type)


def console_routes() -> list[web.RouteDef]:
    return [
        web.get(CONSOLE_PATH, index),
        web.get(CONSOLE_PATH + "/{asset}", static),
    ]
