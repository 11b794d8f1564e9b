"""Microbenchmark of the patch algebra on a 50-message conversation (~5 KB of JSON).

Prints µs per call (the best of several repeats, since this machine is shared) for: the fold's
native patch path (the append spliced into the canonical document), the general path
(``fold.apply``), the delta ``update()`` computes and ``diff_canonical`` (the byte diff it and
watchers use) for one appended message, a one-op JSON Patch append, a two-member merge
patch, orjson loads + dumps of the document (the scale of the fold's own work per event),
``make_json_patch`` for one appended message, and
``check_depth``; and, for comparison, jsonpatch's own ``apply_patch``, which deep-copies the
document. Run: ``.venv/bin/python benchmarks/patch_micro.py``.
"""

from __future__ import annotations

import copy
import timeit
from collections.abc import Callable
from typing import Any

import jsonpatch
import orjson

from lukhas_context.processors.fold import Limits, apply
from lukhas_context.schemas.event import ContextEvent, Patch, PatchFormat
from lukhas_context.schemas.patch import (
    apply_json_patch,
    apply_merge_patch,
    check_depth,
    diff_canonical,
    make_json_patch,
)
from lukhas_context.state.record import ContextRecord
from lukhas_context.streams.deltas import DeltaCache

native_patch: Callable[..., bytes | None] | None
try:
    from lukhas_context.schemas._fastjson import patch_document as native_patch
except ImportError:  # built without a C compiler
    native_patch = None

REPEATS = 5


def conversation(messages: int) -> dict[str, Any]:
    return {
        "context_id": "conv-0001",
        "meta": {"model": "lukhas-1", "tags": ["support", "billing"], "turns": messages},
        "messages": [
            {
                "id": f"msg-{i:04d}",
                "role": "user" if i % 2 else "assistant",
                "content": f"message {i}: a short line of conversation text",
                "ts": 1_700_000_000_000 + i,
            }
            for i in range(messages)
        ],
    }


def per_call_us(run: Callable[[], object]) -> float:
    """The best mean over ``REPEATS`` timings of enough calls to take ~0.2 s each."""
    timer = timeit.Timer(run)
    calls, _ = timer.autorange()
    return min(timer.repeat(REPEATS, calls)) / calls * 1e6


def main() -> None:
    doc = conversation(50)
    message = {"id": "msg-0050", "role": "user", "content": "one more", "ts": 1_700_000_000_050}
    append = [{"op": "add", "path": "/messages/-", "value": message}]
    merge = {"meta": {"turns": 51}, "title": "Billing question"}
    grown = copy.deepcopy(doc)
    grown["messages"].append(message)
    raw = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)

    grown_raw = orjson.dumps(grown, option=orjson.OPT_SORT_KEYS)
    append_raw = orjson.dumps(append)
    limits = Limits()
    record = ContextRecord(1, raw, b"\0" * 8, None, 0, 0)
    event = ContextEvent(bytes(16), "conv-0001", Patch(PatchFormat.JSON_PATCH, append_raw))
    cache = DeltaCache()
    cache.remember("conv-0001", 1, raw)

    cases: list[tuple[str, Callable[[], object]]] = [
        ("fold.apply (general path, 1 add)", lambda: apply(record, event, 1, 1, limits)),
        (
            "update() delta (DeltaCache)",
            lambda: cache.update_op("conv-0001", grown, grown_raw, None),
        ),
        ("diff_canonical (1 appended)", lambda: diff_canonical(raw, grown_raw)),
        ("apply_json_patch (1 add)", lambda: apply_json_patch(doc, append)),
        ("apply_merge_patch (2 keys)", lambda: apply_merge_patch(doc, merge)),
        ("orjson loads+dumps", lambda: orjson.dumps(orjson.loads(raw))),
        ("make_json_patch (1 appended)", lambda: make_json_patch(doc, grown)),
        ("check_depth", lambda: check_depth(doc, 64)),
        ("jsonpatch.apply_patch (deepcopy)", lambda: jsonpatch.apply_patch(doc, append)),
    ]
    if native_patch is not None:
        cases.insert(0, ("native patch (1 add, spliced)", lambda: native_patch(
            raw, append_raw, limits.max_depth, limits.max_document_bytes,
            limits.max_patch_operations, limits.max_patch_work)))  # fmt: skip
    print(f"document: {len(doc['messages'])} messages, {len(raw)} bytes of canonical JSON")
    for name, run in cases:
        print(f"{name:<34} {per_call_us(run):9.1f} µs")
    print(f"make_json_patch result: {make_json_patch(doc, grown)}")


if __name__ == "__main__":
    main()
