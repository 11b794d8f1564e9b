"""Readiness probes of the local cluster's parts: brokers in the metadata, Redis PING, a
worker's HTTP endpoints. Each answers within about two seconds and never raises for a part
that is down."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Coroutine
from typing import Any, TypeVar

from lukhas_context.ops.auth import api_headers
from lukhas_context.ops.cluster.process import port_open
from lukhas_context.ops.cluster.spec import HOST
from lukhas_context.streams.admin import cluster_brokers
from lukhas_context.streams.exceptions import AdminError
from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity

__all__ = [
    "get_json",
    "healthz",
    "live_brokers",
    "redis_ping",
    "redis_ping_url",
    "run_private",
    "serving",
]

T = TypeVar("T")


def run_private(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on a private loop, leaving the thread's current event loop untouched."""
    loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.close()


def live_brokers(
    bootstrap: str, timeout_s: float = 2.0, *, security: KafkaSecurity = PLAINTEXT
) -> int:
    """Brokers in the metadata, 0 if none answers (checked by TCP first: aiokafka logs every
    refused connection as an error)."""
    hosts = [entry.rsplit(":", 1) for entry in bootstrap.split(",")]
    if not any(port_open(host, int(port)) for host, port in hosts):
        return 0
    try:
        return run_private(cluster_brokers(bootstrap, timeout_s, security=security))
    except AdminError:
        return 0


def redis_ping(port: int) -> bool:
    return redis_ping_url(f"redis://{HOST}:{port}/0")


def redis_ping_url(url: str) -> bool:
    """Whether the Redis at ``url`` answers PING within a second (False for a bad URL)."""
    # redis-py takes about 90 ms to import: only the commands that probe Redis pay for it.
    import redis

    try:
        client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    except ValueError:
        return False
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def get_json(url: str) -> dict[str, Any] | None:
    """The JSON object ``url`` answers (with the read API's token, if one is set); None
    when it does not answer one."""
    try:
        request = urllib.request.Request(url, headers=api_headers())
        with urllib.request.urlopen(request, timeout=2) as response:
            data = json.loads(response.read())
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def serving(healthz_url: str) -> bool:
    """The worker folds (a 503 reads as None) and has opened every partition it was
    assigned."""
    health = get_json(healthz_url)
    return health is not None and bool(health.get("partitions")) and not health.get("restoring")


def healthz(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=1) as response:
            return int(response.status) == 200
    except (urllib.error.URLError, OSError, ValueError):
        return False
