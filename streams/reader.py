"""``Reader``: the read API's calls as the client makes them — a context (its checksum
verified), an event's outcome, a dry run — and what their answers mean, as results or typed
errors. Which worker answers is the ``Router``'s business."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson
import xxhash

from lukhas_context.streams.exceptions import (
    ChecksumMismatchError,
    ContextNotFoundError,
    InvalidPositionError,
    NoSuchPositionError,
    NotAppliedYetError,
    ReadError,
    ValidationError,
)
from lukhas_context.streams.position import MAX_OFFSET, parse_position
from lukhas_context.streams.results import (
    Context,
    ContextPage,
    DryRun,
    History,
    HistoryEvent,
    ListedContext,
    Outcome,
    Receipt,
)
from lukhas_context.streams.routing import Router
from lukhas_context.streams.validation import check_wait, context_key

__all__ = ["MAX_HISTORY_PAGE", "MAX_LIST_PAGE", "Reader"]

#: Contexts one listing page holds at most (the worker's ``processors.listing.MAX_LIMIT``).
MAX_LIST_PAGE = 1000

#: The most history entries one read asks for (the read API's bound).
MAX_HISTORY_PAGE = 10_000
#: Characters of a context id sent as they are in a read's path (RFC 3986 sub-delims, ":"
#: and "@"); the rest are percent-encoded, "/" included. The worker reads them alike, and a
#: plain id is what its fast path for point reads takes (``processors.listener``).
ID_SAFE = "!$&'()*+,;=:@"


class Reader:
    """The read API's calls, over ``router``."""

    def __init__(self, router: Router) -> None:
        self._router = router

    async def context(
        self, context_id: str, after: Receipt | str | None, timeout: float,
        allow_stale: bool = False, max_lag: int | None = None,
    ) -> tuple[Context, bytes]:  # fmt: skip
        """A context and its canonical JSON (see ``ContextClient.get``)."""
        context_key(context_id)
        check_wait(timeout)
        params = {}
        stale = allow_stale or max_lag is not None
        if stale:
            if after is not None:
                raise ValidationError(
                    "a stale read (allow_stale, max_lag) cannot wait for a receipt: a standby "
                    "copy may not have it; read without them to see your own write"
                )
            if max_lag is not None and not (type(max_lag) is int and 0 <= max_lag <= MAX_OFFSET):
                raise ValidationError(f"max_lag must be an integer in [0, {MAX_OFFSET}]")
            params = {"max_lag": str(max_lag)} if max_lag is not None else {"allow_stale": "1"}
        partition = await self._router.partition_of(context_id, max(0.25, timeout))
        if after is not None:
            position = after.position if isinstance(after, Receipt) else after
            spans = dict(after.transaction) if isinstance(after, Receipt) else {}
            if spans and partition is None:
                # The context's partition is not known yet (no worker said how many there
                # are): wait until every part of the transaction is decided and applied.
                for p, offset in spans.items():
                    await self._wait_folded(p, offset, timeout)
            elif partition in spans:
                # A transaction across partitions has a record in this one too: read at it
                # (which waits for the decision), not after the receipt's own partition.
                position = f"{partition}:{spans[partition]}"
            wait_on = _position_or_none(position)
            if partition is not None and wait_on is not None and wait_on[0] != partition:
                # Another partition, perhaps another worker: wait there, then read here.
                await self._wait_folded(*wait_on, timeout)
            else:
                params["min_offset"] = position
                params["timeout"] = str(timeout)
        path = f"/v1/contexts/{quote(context_id, safe=ID_SAFE)}"
        status, body = await self._router.request(
            "GET", path, params, timeout, partition=partition, stale=stale
        )
        ctx = _context_from(status, body, context_id)
        canonical = orjson.dumps(ctx.doc, option=orjson.OPT_SORT_KEYS)
        expected = xxhash.xxh3_64_hexdigest(canonical)
        if expected != ctx.checksum:
            raise ChecksumMismatchError(
                f"context {context_id!r} version {ctx.version}: document checksum {expected}, "
                f"stored checksum {ctx.checksum}"
            )
        return ctx, canonical

    async def history(
        self, context_id: str, after: int | None, limit: int, timeout: float
    ) -> History:
        """A page of a context's history (see ``ContextClient.history``)."""
        context_key(context_id)
        check_wait(timeout)
        if after is not None and not 0 <= after <= MAX_OFFSET:
            raise ValidationError(f"after must be an offset in [0, {MAX_OFFSET}], got {after}")
        if not 1 <= limit <= MAX_HISTORY_PAGE:
            raise ValidationError(f"limit must be 1 to {MAX_HISTORY_PAGE}, got {limit}")
        params = {"limit": str(limit)}
        if after is not None:
            params["after"] = str(after)
        partition = await self._router.partition_of(context_id, max(0.25, timeout))
        path = f"/v1/contexts/{quote(context_id, safe=ID_SAFE)}/history"
        status, body = await self._router.request("GET", path, params, timeout, partition=partition)
        data = _json_body(status, body)
        if status != 200:
            raise ReadError(f"read API answered {status}: {_reason(data)}")
        try:
            events = [
                HistoryEvent(e["offset"], e["status"], e["version"], e["reason"], e["duplicate_of"])
                for e in data["events"]
            ]
            return History(data["context_id"], data["partition"], events, data["covered_from"],
                           data["pruned_below"], data["next_offset"], data["more"])  # fmt: skip
        except (KeyError, TypeError) as exc:
            raise ReadError(f"read API answered a history without {exc}") from None

    async def list_contexts(
        self, prefix: str, after: str | None, limit: int, timeout: float
    ) -> ContextPage:
        """A page of the listing (see ``ContextClient.list_contexts``)."""
        check_wait(timeout)
        for name, value in (("prefix", prefix), ("after", after)):
            if value is not None and not isinstance(value, str):
                raise ValidationError(f"{name} must be a str, not {type(value).__name__}")
        if not 1 <= limit <= MAX_LIST_PAGE:
            raise ValidationError(f"limit must be 1 to {MAX_LIST_PAGE}, got {limit}")
        params = {"limit": str(limit)}
        if prefix:
            params["prefix"] = prefix
        if after is not None:
            params["after"] = after
        status, body = await self._router.request("GET", "/v1/contexts", params, timeout)
        data = _json_body(status, body)
        if status != 200:
            raise ReadError(f"read API answered {status}: {_reason(data)}")
        try:
            listed = [ListedContext(**c) for c in data["contexts"]]
            return ContextPage(listed, data["next_after"], list(data["incomplete"]))
        except (KeyError, TypeError) as exc:
            raise ReadError(f"read API answered a listing without {exc}") from None

    async def outcome(self, partition: int, offset: int, timeout: float) -> Outcome:
        """The outcome of the event at ``partition:offset`` (see ``ContextClient.outcome``)."""
        check_wait(timeout)
        data = await self._outcome_of(partition, offset, timeout)
        assert data is not None
        if data["status"] == "duplicate":
            original = await self.outcome(partition, data["duplicate_of"], timeout)
            return Outcome(original.status, original.version, original.reason, data["duplicate_of"])
        return Outcome(data["status"], data["version"], data["reason"])

    async def dry_run(self, value: bytes, undecodable_ok: bool = False) -> DryRun:
        """What the fold would do with the encoded event ``value`` (``POST /v1/dry-run``);
        ``undecodable_ok``: bytes the worker cannot read as an event are a ``DryRun`` with
        status ``dead_lettered`` and the reason (else a ``ReadError``)."""
        status, body = await self._router.request("POST", "/v1/dry-run", {}, 5.0, value)
        data = _json_body(status, body)
        if status == 400 and undecodable_ok:
            reason = data.get("dead_letter_reason") or _reason(data)
            data = {"status": "dead_lettered", "reason": str(reason)}
        elif status != 200:
            raise ReadError(f"read API answered {status}: {_reason(data)}")
        fields: dict[str, Any] = {name: data.get(name) for name in DryRun.__slots__}
        return DryRun(**fields)

    async def _wait_folded(self, partition: int, offset: int, timeout: float) -> None:
        """Until the worker serving ``partition`` folded ``offset`` (its outcome endpoint
        waits: 200 or 404, the journal forgot it, both mean folded)."""
        await self._outcome_of(partition, offset, timeout, forgotten_ok=True)

    async def _outcome_of(
        self, partition: int, offset: int, timeout: float, forgotten_ok: bool = False
    ) -> dict[str, Any] | None:
        """``GET /v1/outcomes/P/O``, which waits until the offset is folded: the entry, or
        None when the journal forgot it (``forgotten_ok``; else a ``ReadError``)."""
        path = f"/v1/outcomes/{partition}/{offset}"
        status, body = await self._router.request(
            "GET", path, {"timeout": str(timeout)}, timeout, partition=partition
        )
        data = _json_body(status, body)
        if status == 404 and data.get("no_such"):
            raise NoSuchPositionError(str(_reason(data)))
        if status == 404 and forgotten_ok:
            return None
        if status == 504:
            raise NotAppliedYetError(str(_reason(data)), data.get("open_transaction"))
        if status != 200:
            raise ReadError(f"read API answered {status}: {_reason(data)}")
        return data


def _position_or_none(position: str) -> tuple[int, int] | None:
    """``(partition, offset)`` of ``PARTITION:OFFSET`` (None when it is not one: the read
    API then says why)."""
    try:
        return parse_position(position)
    except InvalidPositionError:
        return None


def _reason(data: dict[str, Any]) -> Any:
    """What an error answer says went wrong: a problem's ``detail`` (RFC 9457), else the
    ``error`` of workers from before problems."""
    return data.get("detail") or data.get("error")


def _json_body(status: int, body: bytes) -> dict[str, Any]:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise ReadError(f"read API answered {status} with a non-JSON body") from None
    if not isinstance(data, dict):
        raise ReadError(f"read API answered {status} with a JSON {type(data).__name__}")
    return data


def _context_from(status: int, body: bytes, context_id: str) -> Context:
    data = _json_body(status, body)
    if status == 404 and data.get("no_such"):  # the position of min_offset, not the context
        raise NoSuchPositionError(str(_reason(data)))
    if status == 404:
        raise ContextNotFoundError(context_id)
    if status == 504:
        error = str(_reason(data) or "not applied yet")
        raise NotAppliedYetError(error, data.get("open_transaction"))
    if status != 200:
        raise ReadError(f"read API answered {status}: {_reason(data) or repr(body[:200])}")
    return Context(
        data["context_id"],
        data["version"],
        data["doc"],
        data["checksum"],
        data["offset"],
        data["partition"],
        data.get("expires_at_ms"),
        data.get("standby_position"),
    )
