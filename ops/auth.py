"""The read API's bearer token as the tools send it: ``LUKHAS_API_TOKEN`` (see
``ops.config``'s table). A module of its own, below ``ops.config`` and ``ops.cluster``, so
every tool that talks to a worker (status probes, inspect, prune) reads it the same way."""

from __future__ import annotations

import os

from lukhas_context.streams.config import bearer_headers

#: The variable that holds the token (``lukhas worker`` requires it unless given a file).
TOKEN_VARIABLE = "LUKHAS_API_TOKEN"


def api_token() -> str | None:
    """The token of ``LUKHAS_API_TOKEN`` (None when unset or empty)."""
    return os.environ.get(TOKEN_VARIABLE) or None


def api_headers() -> dict[str, str]:
    """The headers a tool sends to the read API: the token as a bearer token, if set."""
    return bearer_headers(api_token())
