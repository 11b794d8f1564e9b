"""The checkpoints the workers hold, for ``GET /v1/checkpoints`` (the console's Checkpoints
view, and any tool): each worker lists the valid checkpoints in its own checkpoint directory
(``state.checkpoints``: a manifest per partition, checked when read), and the worker asked
merges its members' lists by checkpoint id.

A checkpoint of one partition taken by several workers (an owner and a standby, or owners
before and after a rebalance) is of the same WAL offset, so its digests must agree: each
partition says which workers hold it and whether their digests are ``equal`` or ``differ``
(``single``: one worker holds it, nothing to compare).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lukhas_context.processors.fanout import Answer
from lukhas_context.state.checkpoints import CheckpointDir

#: The manifest fields each partition of a listed checkpoint carries.
FIELDS = ("partition", "next_offset", "records", "documents", "digest", "created_at_ms")


def held(checkpoints: CheckpointDir, partitions: Iterable[int]) -> list[dict[str, Any]]:
    """The manifests of the valid checkpoints this worker holds of ``partitions`` (reads the
    disk: call it off the event loop)."""
    out = []
    for p in partitions:
        for manifest in checkpoints.valid(p):
            fields = manifest.fields()
            out.append({"checkpoint_id": manifest.checkpoint_id, **{k: fields[k] for k in FIELDS}})
    return out


def gathered(
    own: tuple[str, list[dict[str, Any]]], answers: Sequence[Answer]
) -> tuple[list[tuple[str, Sequence[Mapping[str, Any]]]], list[dict[str, str]]]:
    """This worker's ``(api, manifests)`` and the other members' answers to
    ``/v1/checkpoints`` -> the holders ``merged`` takes, and the members that gave no list
    (``{"api", "error"}``: why)."""
    holders: list[tuple[str, Sequence[Mapping[str, Any]]]] = [own]
    missing: list[dict[str, str]] = []
    for answer in answers:
        listed = None if answer.data is None else answer.data.get("held")
        if isinstance(listed, list):
            holders.append((answer.member.api, listed))
        else:
            missing.append({"api": answer.member.api, "error": answer.why or "no held list"})
    return holders, missing


def _well_formed(m: object) -> bool:
    """Whether a manifest entry (a peer's, from JSON) has the fields ``merged`` reads, of
    their types: anything else is left out rather than failing the whole answer."""
    return (
        isinstance(m, Mapping)
        and isinstance(m.get("checkpoint_id"), str)
        and type(m.get("partition")) is int
        and type(m.get("created_at_ms")) is int
        and isinstance(m.get("digest"), str)
        and all(k in m for k in FIELDS)
    )


def merged(holders: Sequence[tuple[str, Sequence[Mapping[str, Any]]]]) -> list[dict[str, Any]]:
    """``(api, manifests)`` of each worker -> one entry per checkpoint id, newest first
    (by the latest ``created_at_ms`` of its partitions), its partitions in order, each with the
    workers that hold it (``held_by``) and whether their digests agree (``digests``: ``equal``,
    ``differ``, or ``single`` when one worker holds it)."""
    by_id: dict[str, dict[int, list[tuple[str, Mapping[str, Any]]]]] = {}
    for api, manifests in holders:
        for m in manifests:
            if not _well_formed(m):  # a peer's answer of another shape: left out, not a 500
                continue
            by_id.setdefault(m["checkpoint_id"], {}).setdefault(m["partition"], []).append((api, m))
    out = []
    for checkpoint_id, partitions in by_id.items():
        rows = []
        for p in sorted(partitions):
            copies = partitions[p]
            first = copies[0][1]
            digests = {m["digest"] for _, m in copies}
            agree = "single" if len(copies) == 1 else "equal" if len(digests) == 1 else "differ"
            rows.append(
                {
                    **{k: first[k] for k in FIELDS},
                    "held_by": sorted(api for api, _ in copies),
                    "digests": agree,
                }
            )
        created = max(r["created_at_ms"] for r in rows)
        out.append({"checkpoint_id": checkpoint_id, "created_at_ms": created, "partitions": rows})
    out.sort(key=lambda c: (c["created_at_ms"], c["checkpoint_id"]), reverse=True)
    return out
