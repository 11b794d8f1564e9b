"""What the client's calls return: ``Receipt`` (an acknowledged write), ``Outcome`` (what the
fold did with it), ``DryRun``, ``Context`` (a read), ``History`` (what became of every event of
a context) and ``CheckpointRequest``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from lukhas_context.streams.exceptions import ReadError

__all__ = [
    "CheckpointRequest",
    "Context",
    "DryRun",
    "History",
    "HistoryEvent",
    "Outcome",
    "OutcomeSource",
    "Receipt",
]


class OutcomeSource(Protocol):
    """Where a ``Receipt`` asks for its outcome: the ``ContextClient`` that wrote it."""

    async def outcome(self, partition: int, offset: int, timeout: float = 5.0) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class Outcome:
    """What the fold did with an event.

    ``status``: ``applied`` (``version`` is the new version), ``conflict`` (a version condition
    failed; ``version`` is the current one), ``rejected`` (``reason`` says why; nothing
    changed), ``fenced`` (its fencing token was below one a later holder of the lock wrote
    with; nothing changed), ``aborted`` (a transaction across partitions that another
    partition's part, or its timeout, aborted; ``reason`` says which), ``dead_lettered`` (the
    record could not be read as an event). A retried event
    reports the outcome of its original, with ``duplicate_of`` naming the original's offset.
    """

    status: str
    version: int | None
    reason: str | None = None
    duplicate_of: int | None = None

    @property
    def applied(self) -> bool:
        return self.status == "applied"


@dataclass(frozen=True, slots=True)
class Receipt:
    """Where an acknowledged event landed in the WAL. ``transaction``: for an event of a
    transaction across partitions, the position of the transaction's record in each of its
    partitions, so that a read ``after`` it of a context in any of them sees the whole
    transaction (empty otherwise)."""

    context_id: str
    partition: int
    offset: int
    event_id: str
    _client: OutcomeSource | None = field(default=None, compare=False, repr=False)
    transaction: tuple[tuple[int, int], ...] = ()

    @property
    def position(self) -> str:
        """``PARTITION:OFFSET``, as ``get(min_offset=...)`` and ``lukhas get --min-offset``
        take it."""
        return f"{self.partition}:{self.offset}"

    async def outcome(self, timeout: float = 5.0) -> Outcome:
        """Waits (at most ``timeout`` s) until the event is folded and returns its outcome."""
        if self._client is None:
            raise ReadError("this receipt is not bound to a client")
        return await self._client.outcome(self.partition, self.offset, timeout)


@dataclass(frozen=True, slots=True)
class DryRun:
    """What a mutation would do to the current state; nothing was appended. ``status`` is
    one of the fold's (``applied``, ``conflict``, ``rejected``), or ``dead_lettered`` /
    ``duplicate`` when the fold would not fold the event at all (``version`` None then)."""

    status: str
    version: int | None
    reason: str | None
    kind: str | None
    doc: dict[str, Any] | None
    checksum: str | None
    expires_at_ms: int | None

    @property
    def applied(self) -> bool:
        return self.status == "applied"


@dataclass(frozen=True, slots=True)
class Context:
    """A context as the read API returns it."""

    context_id: str
    version: int
    doc: dict[str, Any]
    checksum: str
    offset: int
    partition: int
    expires_at_ms: int | None = None
    #: ``"P:NEXT_OFFSET"`` when a standby copy answered (a read that accepted staleness:
    #: ``get(..., allow_stale=True)`` or ``max_lag=``): the WAL prefix it holds. None when
    #: the partition's owner answered.
    standby_position: str | None = None


@dataclass(frozen=True, slots=True)
class CheckpointRequest:
    """A checkpoint asked for: its id and the WAL offset of its barrier in each partition."""

    checkpoint_id: str
    offsets: dict[int, int]


@dataclass(frozen=True, slots=True)
class ListedContext:
    """A context as a listing shows it (``ContextClient.list_contexts``): no document."""

    context_id: str
    version: int
    checksum: str
    offset: int
    partition: int
    expires_at_ms: int | None


@dataclass(frozen=True, slots=True)
class ContextPage:
    """A page of the live contexts, in id order (``ContextClient.list_contexts``).
    ``next_after``: pass it as ``after`` for the next page (None: the listing is complete).
    ``incomplete``: partitions no worker answered for (restoring, unowned, or their owner
    did not answer): contexts there are missing from this page."""

    contexts: list[ListedContext]
    next_after: str | None
    incomplete: list[int]

    @property
    def more(self) -> bool:
        return self.next_after is not None


@dataclass(frozen=True, slots=True)
class HistoryEvent:
    """What became of one WAL record of a context: ``status`` as in ``Outcome`` (or
    ``duplicate``, with ``duplicate_of`` the original's offset), ``version`` the new version
    when applied, the current one otherwise; ``reason`` while the journal holds it."""

    offset: int
    status: str
    version: int | None
    reason: str | None = None
    duplicate_of: int | None = None


@dataclass(frozen=True, slots=True)
class History:
    """A page of a context's history (``ContextClient.history``), oldest first.

    ``covered_from``: the worker's index holds every record of the partition from this offset
    on (None: it has indexed nothing yet; a store restored from the change topic starts its
    index where the restore ended). ``pruned_below``: entries below it were trimmed with the
    WAL. ``more``: another page follows (ask again with ``after`` the last offset)."""

    context_id: str
    partition: int
    events: list[HistoryEvent]
    covered_from: int | None
    pruned_below: int
    next_offset: int
    more: bool
