"""The status of a cluster this data dir did not start (docker compose, or any other): its
Kafka by bootstrap, its workers by read API URL, its Redis by URL.

The workers are found from the ones named: each named worker, and every member of the group
that a worker's routing table (``GET /v1/members``) lists, is asked for ``/healthz`` and
``/v1/partitions``. A named worker that does not answer is listed, not ready."""

from __future__ import annotations

from typing import Any

from lukhas_context.ops.cluster.probes import get_json, live_brokers, redis_ping_url, run_private
from lukhas_context.streams.health import unreachable
from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity

__all__ = ["remote_status"]


def remote_status(
    bootstrap: str, api: str | None, brokers: int | None = None, redis_url: str | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> dict[str, Any]:  # fmt: skip
    """The shape of ``LocalCluster.status``: ``kafka`` (ready: ``brokers`` brokers in the
    metadata, or at least one when None), ``redis`` (when ``redis_url`` is given) and
    ``processors``, each with ``api``, ``member``, ``alive``, ``ready`` and, when ready,
    ``digest`` and ``partitions``. With no broker live, ``kafka.why`` says why (a refused
    connection, a refused login, a certificate that does not verify)."""
    live = live_brokers(bootstrap, security=security)
    expected = brokers if brokers is not None else live
    status: dict[str, Any] = {
        "kafka": {"bootstrap": bootstrap, "brokers": expected, "live": live,
                  "ready": live >= expected > 0},
    }  # fmt: skip
    if live == 0:
        found = run_private(unreachable(bootstrap, security))
        if found is not None:
            status["kafka"]["why"] = found.reason
    if redis_url is not None:
        status["redis"] = {"url": redis_url, "ready": redis_ping_url(redis_url)}
    status["processors"] = [_worker(url, member) for url, member in _workers(api).items()]
    return status


def _workers(api: str | None) -> dict[str, str | None]:
    """Read API URL -> member id (None when no routing table names it), the named ones first."""
    named = [u.strip().rstrip("/") for u in (api or "").split(",") if u.strip()]
    found: dict[str, str | None] = dict.fromkeys(named)
    for url in named:
        table = get_json(f"{url}/v1/members")
        if table is None:
            continue
        for member in table.get("members", []):
            if isinstance(member, dict) and isinstance(member.get("api"), str):
                found[member["api"].rstrip("/")] = str(member.get("member"))
        break
    return found


def _worker(api: str, member: str | None) -> dict[str, Any]:
    health = get_json(f"{api}/healthz")  # None unless it answers 200 with JSON
    ready = health is not None
    status: dict[str, Any] = {
        "api": api, "member": member, "alive": health is not None, "ready": ready,
    }  # fmt: skip
    if health is not None:
        status["state"] = health.get("status")
    served = get_json(f"{api}/v1/partitions") if ready else None
    if served is not None:
        status["digest"] = served.get("digest")
        status["partitions"] = served.get("partitions", [])
        status["standbys"] = served.get("standbys", [])
    return status
