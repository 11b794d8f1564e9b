"""Every worker's figures for ``GET /v1/cluster/metrics`` (the console's Metrics view): what
``WorkerMetrics.figures`` reads from each worker's own Prometheus registry, as JSON.

The worker asked gives its own figures and, unless the request was forwarded, every other
member's (each asked for its own, through ``processors.fanout``, all at once); a member that
does not answer, or answers with something else, is listed with ``"reachable": false`` and
why, its figures null, never left out and never a failure of the whole answer.

The figures are counters since that worker started (``folded``, ``read_seconds``, ``reads``)
and gauges (``memory_resident_bytes``, ``memory_budget_bytes``: null without a memory
budget), with ``at_ms``, the worker's wall clock when it read them: a rate is the difference
of two readings of one worker over the difference of its ``at_ms`` (a counter that went down
is a restarted worker).
"""

from __future__ import annotations

import time
from typing import Any

from lukhas_context.processors import fanout
from lukhas_context.processors.fanout import Answer
from lukhas_context.processors.materializer import Materializer
from lukhas_context.processors.members import Member

#: The figures of a worker, each a number (the memory ones may be null).
FIGURES = ("folded", "read_seconds", "reads", "memory_resident_bytes", "memory_budget_bytes")
_NULLABLE = ("memory_resident_bytes", "memory_budget_bytes")


def own_figures(m: Materializer) -> dict[str, Any]:
    """This worker's entry: who it is, and its figures now."""
    return {
        "api": m.config.api_url,
        "member": m.membership.member,
        "reachable": True,
        "error": None,
        "at_ms": int(time.time() * 1000),
        **m.metrics.figures(),
    }


def unreachable(member: Member, reason: str) -> dict[str, Any]:
    """The entry of a member that gave no figures, saying why."""
    return {**fanout.unreachable(member, reason), "at_ms": None, **dict.fromkeys(FIGURES)}


def peer_figures(answer: Answer) -> dict[str, Any]:
    """A member's entry from its answer to ``/v1/cluster/metrics`` (forwarded: its own
    figures alone), or its unreachable entry when there is none or it is of another shape."""
    entry = answer.own_entry()
    if entry is None or not _well_formed(entry):
        return unreachable(answer.member, answer.why or "its answer is not a metrics reading")
    return {
        "api": answer.member.api,
        "member": answer.member.member,
        "reachable": True,
        "error": None,
        "at_ms": entry["at_ms"],
        **{k: entry[k] for k in FIGURES},
    }


def _number(value: object) -> bool:
    """A figure: finite and not below 0 (orjson reads no NaN or infinity; a peer's negative
    figure would draw below the plot)."""
    return type(value) in (int, float) and value >= 0  # type: ignore[operator]


def _well_formed(entry: dict[str, Any]) -> bool:
    """Whether a peer's entry has every figure, each a number (or null where it may be)."""
    if not _number(entry.get("at_ms")):
        return False
    return all(
        _number(entry.get(k)) or (k in _NULLABLE and k in entry and entry[k] is None)
        for k in FIGURES
    )
