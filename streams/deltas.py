"""``DeltaCache``: the document a client last saw of each context, so that ``update()`` can
send a JSON Patch against it instead of the whole document."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any

import xxhash

from lukhas_context.schemas.event import Op, Patch, PatchFormat, Put
from lukhas_context.schemas.exceptions import PatchError
from lukhas_context.schemas.patch import diff_canonical, validate_json_patch
from lukhas_context.streams.validation import json_bytes

__all__ = ["SEEN_CACHE_SIZE", "DeltaCache"]

#: Contexts whose last document is remembered (least recently seen dropped first).
SEEN_CACHE_SIZE = 1024


class DeltaCache:
    """Per context, the version (None: not known) and document last seen, from a read or
    this client's own write."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, tuple[int | None, bytes]] = OrderedDict()

    def remember(self, context_id: str, version: int | None, canonical: bytes) -> None:
        """Keeps the document last seen of a context, as its canonical JSON (immutable: the
        caller's dict cannot change it)."""
        self._seen.pop(context_id, None)
        self._seen[context_id] = (version, canonical)
        while len(self._seen) > SEEN_CACHE_SIZE:
            self._seen.popitem(last=False)

    def forget(self, context_id: str) -> None:
        """The context changed in a way this cache cannot follow (a patch, a touch, a delete)."""
        self._seen.pop(context_id, None)

    def update_op(
        self, context_id: str, new_doc: dict[str, Any], data: bytes, ttl_ms: int | None
    ) -> tuple[Op, int | None]:
        """What ``update()`` sends to make ``new_doc`` (canonical JSON ``data``) the document,
        and the version to condition it on (None: none). A JSON Patch against the document last
        seen when that is smaller than the document and within the fold's bounds,
        conditioned on the version seen (when known) and on the checksum of ``new_doc``; else
        a put."""
        seen = self._seen.get(context_id)
        expected = seen[0] if seen is not None else None
        op: Op = Put(data, ttl_ms)
        if seen is not None:
            ops = diff_canonical(seen[1], data)
            delta = json_bytes(ops, len(data), "patch", quiet=True)
            if delta is not None and len(delta) < len(data) and _patch_fits(ops):
                # clear_ttl when no ttl is given: update() writes the whole new document, and a
                # put of it would leave no TTL either, whichever form goes on the wire.
                op = Patch(
                    PatchFormat.JSON_PATCH, delta, xxhash.xxh3_64_digest(data), ttl_ms,
                    clear_ttl=ttl_ms is None,
                )  # fmt: skip
        return op, expected


def _patch_fits(ops: list[dict[str, Any]]) -> bool:
    """Whether ``update()`` may send these operations (else it sends the document)."""
    try:
        validate_json_patch(ops)
    except PatchError:
        return False
    return True
