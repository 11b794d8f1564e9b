"""Subscriptions to the change stream: ``client.watch(...)``, ``lukhas watch``, SSE.

A ``Watcher`` reads the change topic directly (a consumer with no group, every partition or,
for one context, the partition of its id) and yields, in order:

* ``Change``: one applied mutation — context id, version, kind, document or delta, checksum,
  and the ``token`` to resume right after it;
* ``Gap``: change-topic offsets that are gone (compacted or deleted by retention before they
  were read): the changes in them are lost to this subscriber, never silently. Offsets also go
  missing, with nothing lost, under transaction markers and a zombie's aborted rounds (which a
  ``read_committed`` consumer never gets): every record on a change partition is numbered
  (header ``seq``, ``schemas.change.SEQ_HEADER``), and a hole between records numbered ``n``
  and ``n + 1`` is no gap. A hole between records without numbers (published before they
  existed) is read uncommitted to see whether it held only aborted records. A record that
  is not a usable change is one too (``kind``): one that does not decode, or a change whose
  document does not match the checksum it carries (corrupted or forged), which is never
  delivered as a good change.

**Guarantees.** Per context, changes arrive in version order (a context lives in one partition,
and the processor publishes a partition's changes in WAL order). A change is identified by its
context id and the WAL offset of the event that made it; a processor that crashed between
publishing and committing publishes some changes again, always with WAL offsets at or below
the highest one already published for the partition, so the watcher drops every change whose
WAL offset is below the highest it has seen in that partition, or equal to it for a context
already delivered there (a transaction's changes share its record's WAL offset, one per
context): each change once. The resume token holds, per partition, the next change-topic
offset and that highest WAL offset, so a subscriber that saves the token of the last change it
handled and resumes with it gets every later change exactly once — except that a change
published again at exactly the token's WAL offset, for another context of the same
transaction, after a processor crash, may come twice (the token does not list the contexts).

The token (``streams.changes``) is text, safe in a URL, a header or a file. It
resumes the subscription it came from: the same topic, and the same ``context_id`` or
``prefix`` (a filtered watch keeps the highest WAL offset over the changes that pass its
filter, and decodes nothing else).
"""

from __future__ import annotations

import contextlib
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from typing import Any

import orjson
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from lukhas_context.schemas.change import (
    FENCE_KEY_PREFIX,
    TX_END_HEADER,
    ChangeRecord,
    document_matches,
    read_fence_record,
    seq_of,
    wal_offset_of,
)
from lukhas_context.schemas.codec import ChangeCodec
from lukhas_context.schemas.exceptions import BadFenceRecordError, BadTombstoneError, CodecError
from lukhas_context.schemas.patch import diff_canonical
from lukhas_context.streams import kafka, tracing
from lukhas_context.streams.changes import KIND_NAMES, Change, Gap, ResumeToken, Start, parse_start
from lukhas_context.streams.changes import token_text as _token_text
from lukhas_context.streams.exceptions import (
    ChangeGapError,
    CorruptChangeError,
    InvalidResumeTokenError,
    ReadError,
    ValidationError,
)
from lukhas_context.streams.kafka import kafka_errors
from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity
from lukhas_context.streams.topics import Topics, partition_for
from lukhas_context.streams.validation import context_key

_read_change: Callable[..., Any] | None
try:  # the native decoder, when the extension is built
    from lukhas_context.schemas._fastchange import read_change as _read_change
except ImportError:
    _read_change = None

#: Documents remembered per context for deltas (least recently changed dropped first).
DELTA_MEMORY = 100_000
#: How often a subscription checks that its topic's partition count has not changed.
METADATA_CHECK_S = 30.0
#: Change records read back from a start position to find the highest WAL offset before it.
LOOK_BACK = 16
#: The largest hole in a change partition that is read uncommitted to see whether it holds
#: only aborted transactions (a zombie's rounds), and how long that read may take.
PROBE_LIMIT = 10_000
PROBE_TIMEOUT_S = 5.0


def aborted_only(found: set[int], first: int, end: int) -> bool:
    """True when ``[first, end)``, with data records (read uncommitted) at the ``found``
    offsets, can be only aborted transactions and their markers: each transaction's marker
    comes right after its records, so an offset without a record must follow one, and the
    hole ends with a marker. A record the log cleaner removed leaves an offset that fits
    neither (unless right after an aborted record: not told apart)."""
    if not found or end - 1 in found:
        return False
    return all(o in found or o - 1 in found for o in range(first, end))


def _ends_transaction(headers: Any) -> bool:
    return any(name == TX_END_HEADER for name, _ in headers)


class _Every:
    """Contains everything: the contexts delivered at a WAL offset, when they are not known
    (a change at the highest WAL offset is then taken for one delivered already)."""

    def __contains__(self, key: object) -> bool:
        return True


_EVERY_CONTEXT: Any = _Every()


class Watcher:
    """An async iterator of ``Change`` and ``Gap`` items; see the module doc.

    ``async with Watcher(...) as w: async for item in w: ...`` (or ``client.watch(...)``).
    ``idle_timeout``: end the iteration after that many seconds without a change (None:
    follow the stream for ever). ``on_gap="raise"`` raises ``ChangeGapError`` instead of
    yielding a ``Gap`` (``CorruptChangeError``, a subclass, for a checksum mismatch).
    """

    def __init__(
        self,
        bootstrap: str,
        topics: Topics,
        context_id: str | None = None,
        prefix: str | None = None,
        start: object = "latest",
        deltas: bool = False,
        idle_timeout: float | None = None,
        on_gap: str = "report",
        client_id: str = "lukhas-watch",
        security: KafkaSecurity = PLAINTEXT,
    ) -> None:
        if context_id is not None and prefix is not None:
            raise ValidationError("watch one context_id or a prefix, not both")
        if on_gap not in ("report", "raise"):
            raise ValidationError(f"on_gap must be 'report' or 'raise', not {on_gap!r}")
        self._key = None if context_id is None else context_key(context_id)
        self._prefix = None if prefix is None else prefix.encode()
        self._start = parse_start(start)
        self._deltas = deltas
        self._idle_timeout = idle_timeout
        self._raise_gaps = on_gap == "raise"
        self.topic = topics.changes
        # Committed records only: a worker publishes each round in a Kafka transaction
        # (``processors.publisher``), and a zombie's round is aborted, never delivered.
        self._consumer = kafka.consumer(
            bootstrap, client_id, isolation="read_committed", auto_offset_reset="earliest",
            security=security,
        )  # fmt: skip
        self._bootstrap, self._client_id, self._security = bootstrap, client_id, security
        #: Reads holes uncommitted (``_aborted_only``), started on the first hole.
        self._uncommitted: Any = None
        self._codec = ChangeCodec()
        self._header = self._codec.header
        #: Per partition, in partition order (0, 1, ...): partition, next change-topic offset,
        #: highest WAL offset delivered (-1: none); partition p's next offset is at 3p + 1.
        #: Flat, so a change's token is one tuple() copy.
        self._pos: list[int] = []
        #: Per partition, the contexts delivered at its highest WAL offset (more than one
        #: only for a transaction's changes).
        self._at_highest: dict[int, set[bytes]] = {}
        self._buffer: list[Any] = []
        #: Per partition, the last record read at its expected offset (its ``seq`` header is
        #: read only when the next record is not at the next offset).
        self._prev: dict[int, Any] = {}
        self._docs: OrderedDict[bytes, bytes] = OrderedDict()
        self._started = False
        self._closed = False
        self._idle_since = time.monotonic()
        self._partition_count = 0
        self._next_metadata_check = time.monotonic() + METADATA_CHECK_S
        #: A timestamp start: per partition, the log time its changes are skipped before,
        #: until the first change logged at or after it (see ``_position``).
        self._not_before: dict[int, int] = {}

    # ---- lifecycle ----

    async def __aenter__(self) -> Watcher:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        if self._started:
            return
        self._started = True
        try:
            with kafka_errors(ReadError, f"cannot subscribe to {self.topic}"):
                await self._consumer.start()
                await self._position()
        except BaseException:
            await self.close()
            raise
        # ``idle_timeout`` counts from here: connecting and positioning are not idleness.
        self._idle_since = time.monotonic()

    async def close(self) -> None:
        if not self._closed:
            self._closed = True
            await self._consumer.stop()
            if self._uncommitted is not None:
                await self._uncommitted.stop()

    async def _aborted_only(self, partition: int, first: int, end: int) -> bool:
        """True when the offsets ``[first, end)`` that reading committed skipped held only
        aborted transactions — a zombie's rounds, fenced by the partition's next owner
        (``processors.publisher``) — and their markers: read uncommitted, every offset there
        is a record or the marker right after one, and the hole ends with a marker. Holes of
        more than ``PROBE_LIMIT`` offsets, or that cannot be read in time, are not looked at
        (reported as gaps)."""
        if end - first > PROBE_LIMIT:
            return False
        try:
            found = await self._uncommitted_offsets(partition, first, end)
        except (KafkaError, OSError, TimeoutError):
            return False
        return aborted_only(found, first, end)

    async def _uncommitted_offsets(self, partition: int, first: int, end: int) -> set[int]:
        """The offsets of ``[first, end)`` that hold data records, read uncommitted (aborted
        transactions' records included; control records never appear)."""
        if self._uncommitted is None:
            self._uncommitted = kafka.consumer(
                self._bootstrap, f"{self._client_id}-probe", isolation="read_uncommitted",
                security=self._security,
            )  # fmt: skip
            await self._uncommitted.start()
        consumer = self._uncommitted
        tp = TopicPartition(self.topic, partition)
        consumer.assign([tp])
        consumer.seek(tp, first)
        found: set[int] = set()
        deadline = time.monotonic() + PROBE_TIMEOUT_S
        while time.monotonic() < deadline:
            batch = await consumer.getmany(tp, timeout_ms=200, max_records=PROBE_LIMIT)
            found.update(m.offset for m in batch.get(tp, ()) if m.offset < end)
            if await consumer.position(tp) >= end:
                return found
        raise TimeoutError(f"probe of {self.topic}[{partition}] {first}..{end}")

    def _explained(self, m: Any, expected: int) -> bool:
        """True when the offsets between the record read before ``m`` in its partition and
        ``m`` held no change: ``m`` is numbered right after it (``SEQ_HEADER``: transaction
        markers, aborted records), or the hole is the one offset after the last change of a
        transaction (``txend``: its commit marker)."""
        prev = self._prev.get(m.partition)
        if prev is None:
            return False
        if m.offset == expected + 1 and self._marker_at(m.partition, expected):
            return True
        before = seq_of(prev.headers)
        return before is not None and seq_of(m.headers) == before + 1

    def _marker_at(self, partition: int, offset: int) -> bool:
        """True when ``offset`` is right after the last change of a transaction read in
        ``partition`` (``txend``): its commit marker."""
        prev = self._prev.get(partition)
        return (
            prev is not None and prev.offset + 1 == offset and _ends_transaction(prev.headers or ())
        )

    def token(self) -> str:
        """The resume token of the subscription as it stands (after the last item)."""
        return _token_text(self.topic, tuple(self._pos))

    async def _position(self) -> None:
        consumer = self._consumer
        metadata = await consumer._client.fetch_all_metadata()
        count = len(metadata.partitions_for_topic(self.topic) or ())
        if not count:
            raise ReadError(f"topic {self.topic} does not exist")
        self._partition_count = count
        start = self._start
        if isinstance(start, ResumeToken):
            if start.topic != self.topic or sorted(p for p, _, _ in start.positions) != list(
                range(count)
            ):
                raise InvalidResumeTokenError(
                    f"the token is for {start.topic} with partitions "
                    f"{sorted(p for p, _, _ in start.positions)}, not {self.topic} with {count}"
                )
            wanted = {p: [o, w] for p, o, w in start.positions}
        else:
            wanted = {p: [0, -1] for p in range(count)}
        parts = range(count) if self._key is None else [partition_for(self._key, count)]
        tps = [TopicPartition(self.topic, p) for p in parts]
        consumer.assign(tps)
        low = await consumer.beginning_offsets(tps)
        end = await consumer.end_offsets(tps)
        if start is Start.LATEST:
            offsets = {tp: end[tp] for tp in tps}
        elif start is Start.EARLIEST:
            offsets = {tp: low[tp] for tp in tps}
        elif isinstance(start, int):
            # A change record is stamped when the worker published it, never before its log
            # time: a worker that was behind publishes changes logged before ``start`` after
            # it. They are read from here and skipped by their log time (``_take``).
            found = await consumer.offsets_for_times({tp: start for tp in tps})
            offsets = {tp: end[tp] if found[tp] is None else found[tp].offset for tp in tps}
            self._not_before = {tp.partition: start for tp in tps}
        else:
            offsets = {tp: wanted[tp.partition][0] for tp in tps}
            for tp in tps:
                if offsets[tp] > end[tp]:
                    raise InvalidResumeTokenError(
                        f"the token is at offset {offsets[tp]} of {self.topic}[{tp.partition}], "
                        f"which ends at {end[tp]}: the topic was re-created, or the token "
                        "belongs to another cluster"
                    )
        state: dict[int, list[int]] = {}
        for tp in tps:
            before = await self._changes_before(tp, offsets[tp], low[tp])
            if isinstance(start, ResumeToken):
                highest = wanted[tp.partition][1]
            else:  # changes republished later may carry WAL offsets from before the start
                highest = max((w for w, _ in before), default=-1)
            # The contexts delivered at that WAL offset: a transaction's other contexts at it
            # are still to come.
            self._at_highest[tp.partition] = {k for w, k in before if w == highest}
            state[tp.partition] = [offsets[tp], highest]
            consumer.seek(tp, offsets[tp])
        # Partitions not read (one context's watch) keep their token positions.
        for p in range(count):
            state.setdefault(p, wanted[p])
        for p in range(count):
            self._pos += [p, *state[p]]

    async def _changes_before(
        self, tp: TopicPartition, offset: int, low: int
    ) -> list[tuple[int, bytes]]:
        """``(WAL offset, key)`` of the last few changes before ``offset`` (a few records
        back: the one just before may have been compacted away)."""
        if offset <= low:
            return []
        self._consumer.seek(tp, max(low, offset - LOOK_BACK))
        batch = await self._consumer.getmany(tp, timeout_ms=5000, max_records=LOOK_BACK)
        found = []
        for m in batch.get(tp, ()):
            if m.offset < offset:
                self._prev[tp.partition] = m
            if m.offset < offset and m.key is not None and m.key[:1] not in (b"\xff", b"\xfe"):
                with contextlib.suppress(CodecError):  # a tombstone without its headers too
                    found.append((wal_offset_of(m.value, m.headers, self._codec), m.key))
        return found

    # ---- iteration ----

    def __aiter__(self) -> AsyncIterator[Change | Gap]:
        return self

    async def __anext__(self) -> Change | Gap:
        """The next item. Safe to cancel (e.g. by ``asyncio.wait_for``): the only await is
        the fetch, and records fetched are kept in the buffer until they are yielded."""
        await self.start()
        fetched = False
        while True:
            while self._buffer:
                m = self._buffer[-1]
                expected = self._pos[3 * m.partition + 1]
                if (
                    m.offset > expected
                    and not self._explained(m, expected)
                    and await self._aborted_only(m.partition, expected, m.offset)
                ):  # a zombie's aborted round: no gap
                    self._pos[3 * m.partition + 1] = m.offset
                item = self._take(self._buffer.pop())
                if item is not None:
                    self._idle_since = time.monotonic()
                    return item
            if self._closed:
                raise StopAsyncIteration
            now = time.monotonic()
            # Idle only after a fetch of this call found nothing: a consumer that took its
            # time between items is not idle for that, and the clock started once positioned.
            idle = self._idle_timeout is not None and now - self._idle_since >= self._idle_timeout
            if idle and fetched:
                raise StopAsyncIteration
            if now >= self._next_metadata_check:
                await self._check_partition_count()
            with kafka_errors(ReadError, f"reading {self.topic} failed"):
                batch = await self._consumer.getmany(timeout_ms=200, max_records=10_000)
            fetched = True
            records = [m for messages in batch.values() for m in messages]
            if records:
                records.reverse()  # popped from the end: oldest first
                self._buffer = records

    async def _check_partition_count(self) -> None:
        """A topic whose partition count changed moves contexts to other partitions: a
        subscription cannot go on unnoticed, so it ends with an error."""
        self._next_metadata_check = time.monotonic() + METADATA_CHECK_S
        metadata = await self._consumer._client.fetch_all_metadata()
        count = len(metadata.partitions_for_topic(self.topic) or ())
        if count and count != self._partition_count:
            raise ReadError(
                f"{self.topic} went from {self._partition_count} to {count} partitions; "
                "subscribe again (a token of the old layout no longer applies)"
            )

    def _take(self, m: Any) -> Change | Gap | None:
        """Turns one record into what the subscriber gets (None: nothing, e.g. a repeat)."""
        pos = self._pos
        i = 3 * m.partition + 1
        expected = pos[i]
        offset = m.offset
        if offset < expected:
            return None  # fetched before a seek
        if offset > expected:
            pos[i] = offset
            if self._explained(m, expected):
                pass  # transaction markers, a zombie's aborted round: nothing lost
            else:  # removed by the log cleaner or retention: report, then read this one next
                self._buffer.append(m)
                if self._marker_at(m.partition, expected):
                    expected += 1  # the commit marker's offset held no change
                return self._gap(m.partition, expected, offset, "compacted or deleted")
        # Always the next offset, even after the last change of a transaction (whose commit
        # marker takes it, never read): a record there was not written in a transaction
        # (a copy, a forgery), and is read like any other, never skipped unseen.
        pos[i] = offset + 1
        self._prev[m.partition] = m
        key = m.key or b""
        if key[:1] == b"\xfe":  # a transaction's state (processors.twophase): not a change
            return None
        if key[:1] == FENCE_KEY_PREFIX:  # no context id starts so
            try:
                read_fence_record(key, m.value)
            except BadFenceRecordError:
                return self._gap(m.partition, offset, offset + 1, "undecodable fence record",
                                 "undecodable")  # fmt: skip
            return None  # a fence record (``schemas.change``): no change of a context
        # Filtered out before decoding. The highest WAL offset is kept over the changes that
        # pass the filter: a repeat of one of them still carries an offset at or below it.
        if (self._key is not None and key != self._key) or (
            self._prefix is not None and not key.startswith(self._prefix)
        ):
            return None
        change = self._decode(m)
        if isinstance(change, str):  # never delivered as a good change; the position moves
            # past the record, not the WAL offset: a good copy published later still comes
            kind = "checksum" if change.startswith("the document") else "undecodable"
            return self._gap(m.partition, offset, offset + 1, change, kind)
        wal_offset, highest = change.wal_offset, pos[i + 1]
        # Published again after a processor crash: delivered already. A transaction's
        # changes share its record's WAL offset, one per context (``schemas.txrecord``).
        at = self._at_highest
        if wal_offset < highest or (
            wal_offset == highest and key in at.get(m.partition, _EVERY_CONTEXT)
        ):
            return None
        if wal_offset > highest:
            at[m.partition] = {key}
        else:
            at.setdefault(m.partition, set()).add(key)
        pos[i + 1] = wal_offset
        if self._not_before:
            not_before = self._not_before.get(m.partition)
            if not_before is not None:
                if change.log_time_ms < not_before:
                    return None  # logged before the start: passed over, as a repeat would be
                # A partition's changes come in WAL order, which is log-time order (the
                # brokers stamp the WAL): the rest are at or after the start.
                del self._not_before[m.partition]
        change._token = (self.topic, tuple(pos))
        if self._deltas:
            change = self._with_delta(key, change)
        if m.headers:  # a traced write's change: this receipt is a span of its trace
            change.traceparent = tracing.change_traceparent(m.headers)
            tracing.receive_span(change.traceparent, self.topic, m.partition, offset,
                                 change.context_id)  # fmt: skip
        return change

    def _gap(self, partition: int, first: int, end: int, reason: str, kind: str = "gone") -> Gap:
        gap = Gap(partition, first, end, reason, kind, (self.topic, tuple(self._pos)))
        if self._raise_gaps:
            error = CorruptChangeError if kind == "checksum" else ChangeGapError
            raise error(
                f"changes at offsets {first}..{end - 1} of {self.topic}[{partition}] are "
                f"{'not usable' if kind != 'gone' else 'gone'} ({reason}); resume with token "
                f"{gap.token} to go on past them"
            )
        return gap

    def _decode(self, m: Any) -> Change | str:
        """The change in a record (its token not set yet), or why it is not one: it does not
        decode, or its document does not match its checksum (``check_document``)."""
        value = m.value
        if value is None:
            try:  # a tombstone without log_time_ms (older writers): the record's timestamp
                t = ChangeRecord.from_tombstone(m.key, m.headers, log_time_ms=m.timestamp)
            except BadTombstoneError as exc:
                return f"undecodable tombstone: {exc}"
            return Change(
                t.context_id, t.version, KIND_NAMES[t.kind], None, t.checksum.hex(),
                m.partition, t.wal_offset, t.log_time_ms, t.expires_at_ms, t.event_id.hex(),
                m.offset,
            )  # fmt: skip
        fields = _read_change(self._header, value) if _read_change is not None else None
        if fields is None:  # the Python codec: a valid change of another schema version
            try:
                c = self._codec.decode(value)
            except CodecError as exc:
                return f"undecodable change: {type(exc).__name__}"
            fields = (c.context_id, c.version, c.kind, c.doc, c.checksum, c.expires_at_ms,
                      c.wal_offset, c.event_id, c.log_time_ms)  # fmt: skip
        context_id, version, kind, doc, checksum, expires, wal_offset, event_id, log_time = fields
        if not document_matches(doc, checksum):
            return (f"the document of {context_id!r} version {version} does not match its "
                    f"checksum {checksum.hex()}")  # fmt: skip
        try:
            parsed = orjson.loads(doc)
        except orjson.JSONDecodeError:
            return "undecodable change: its document is not JSON"
        return Change(
            context_id, version, KIND_NAMES[kind], parsed, checksum.hex(), m.partition,
            wal_offset, log_time, expires, event_id.hex(), m.offset, _canonical=doc,
        )  # fmt: skip

    def _with_delta(self, key: bytes, change: Change) -> Change:
        docs = self._docs
        previous = docs.pop(key, None)
        canonical = change._canonical
        if change.doc is None or canonical is None:
            return change
        docs[key] = canonical
        if len(docs) > DELTA_MEMORY:
            docs.popitem(last=False)
        if previous is None:
            return change
        change.delta = diff_canonical(previous, canonical)
        change.doc = None
        return change
