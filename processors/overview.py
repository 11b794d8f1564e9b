"""The cluster as one worker sees it, for ``GET /v1/cluster`` (the operators' console and any
other tool): every member of the routing table with what it serves, and every partition with
its owner, position, lag and whether its copies' digests agree.

Each member is asked for its own view (``GET /v1/cluster`` marked forwarded, answered from its
stores alone), all at once and within ``processors.fanout.PEER_TIMEOUT_S``; a member that does
not answer is listed as unreachable with the reason, never left out and never a failure of the
whole answer: a console must show a worker that is down, not break on it.

Digests are compared between copies at the same ``next_offset`` only (the digest is of the
state folded up to it, so copies at different positions differ without anything being
wrong): ``equal`` when every copy at the owner's position has the owner's digest, ``differ``
when one does not, ``behind`` when no other copy is at the owner's position yet, ``single``
when there is no other copy, ``unknown`` when the owner's own view is missing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from lukhas_context.processors import fanout
from lukhas_context.processors.fanout import Answer
from lukhas_context.processors.materializer import Materializer
from lukhas_context.processors.members import Member


def worker_view(m: Materializer) -> dict[str, Any]:
    """This worker's own part: its status, the partitions it serves (each with the WAL's end
    as last seen and the lag to it), the ones it is restoring, and its standby copies."""
    partitions = []
    for p, store in sorted(m.stores.items()):
        summary = store.summary()
        end = m.highwater(p)
        report = m.restore_reports.get(p)
        partitions.append(
            {
                "partition": p,
                "next_offset": summary.next_offset,
                "end": end,
                "lag": None if end is None else max(0, end - summary.next_offset),
                "digest": summary.digest_hex,
                "documents": summary.documents,
                "opened_from": None if report is None else report.source.value,
            }
        )
    error = m.stop_error
    return {
        "api": m.config.api_url,
        "member": m.membership.member,
        "reachable": True,
        "error": None if error is None else f"{type(error).__name__}: {error}",
        "status": "ok" if m.running else "stopped" if m.stopped else "starting",
        "partitions": partitions,
        "restoring": m.restoring,
        "standbys": [] if m.standby is None else m.standby.report(),
    }


def unreachable(member: Member, reason: str) -> dict[str, Any]:
    """The entry of a member that did not answer: what the routing table says it serves."""
    return {
        **fanout.unreachable(member, reason),
        "status": "unreachable",
        "partitions": [{"partition": p} for p in member.partitions],
        "restoring": [],
        "standbys": [{"partition": p} for p in member.standbys],
    }


def peer_view(answer: Answer) -> dict[str, Any]:
    """A member's own view from its answer to ``/v1/cluster`` (forwarded: its view alone), or
    its unreachable entry saying why there is none (no answer, or one of another shape)."""
    view = answer.own_entry()
    lists = ("partitions", "restoring", "standbys")
    if view is None or not all(isinstance(view.get(k), list) for k in lists):
        return unreachable(answer.member, answer.why or "its answer is not a cluster view")
    return view


def replicas(
    partition_count: int, owners: Mapping[int, str], workers: Sequence[Mapping[str, Any]]
) -> list[dict[str, Any]]:
    """One entry per partition: its owner (the routing table's; None: unowned), the owner's
    position, lag and digest, every standby copy's, and the digests' verdict (module doc)."""
    active: dict[int, dict[str, Any]] = {}
    copies: dict[int, list[dict[str, Any]]] = {p: [] for p in range(partition_count)}
    restoring: dict[int, list[str]] = {p: [] for p in range(partition_count)}
    for worker in workers:
        api = str(worker.get("api"))
        # A peer's answer of another shape (an older or newer worker, garbage) loses its
        # odd entries, never the whole answer.
        for entry in _entries(worker.get("partitions")):
            p = entry["partition"]
            # Mid-rebalance two may say they fold it: the routing table's owner wins.
            first_or_owner = p not in active or api == owners.get(p)
            if "next_offset" in entry and p in copies and first_or_owner:
                active[p] = {**entry, "api": api}
        for entry in _entries(worker.get("standbys")):
            if entry["partition"] in copies and "next_offset" in entry:
                copies[entry["partition"]].append({**entry, "api": api})
        restoring_here = worker.get("restoring")
        for p in restoring_here if isinstance(restoring_here, list) else ():
            if type(p) is int and p in restoring:
                restoring[p].append(api)
    out = []
    for p in range(partition_count):
        own = active.get(p)
        out.append(
            {
                "partition": p,
                "owner": owners.get(p),
                "next_offset": None if own is None else own.get("next_offset"),
                "end": None if own is None else own.get("end"),
                "lag": None if own is None else own.get("lag"),
                "digest": None if own is None else own.get("digest"),
                "restoring": restoring[p],
                "standbys": copies[p],
                "digests": verdict(own, copies[p]),
            }
        )
    return out


def verdict(own: Mapping[str, Any] | None, standbys: Sequence[Mapping[str, Any]]) -> str:
    """``equal``, ``differ``, ``behind``, ``single`` or ``unknown`` (see the module doc)."""
    if own is None:
        return "unknown"
    if not standbys:
        return "single"
    level = [c for c in standbys if c.get("next_offset") == own.get("next_offset")]
    if not level:
        return "behind"
    return "equal" if all(c.get("digest") == own.get("digest") for c in level) else "differ"


def _entries(value: object) -> list[dict[str, Any]]:
    """The dict entries of a list with an int ``partition`` (others left out)."""
    if not isinstance(value, list):
        return []
    return [e for e in value if isinstance(e, dict) and type(e.get("partition")) is int]
