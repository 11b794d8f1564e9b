"""An event's ``metadata`` (checked before anything is sent, hostile shapes included) and the
trace it carries: a write's PRODUCER span, the fold's CONSUMER span (its child, linked to it)
and a subscriber's receipt, recorded by OpenTelemetry's SDK with its in-memory exporter."""

from __future__ import annotations

from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import Put
from lukhas_context.streams import tracing
from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.exceptions import InvalidMetadataError
from lukhas_context.streams.validation import check_metadata


@pytest.mark.parametrize(
    ("metadata", "says"),
    [
        (["writer", "me"], "a mapping of str to str, got list"),
        ({f"k{i}": "v" for i in range(17)}, "17 entries: at most 16"),
        ({"": "v"}, "is not 1-64 characters"),
        ({"has space": "v"}, "is not 1-64 characters"),
        ({"-lead": "v"}, "is not 1-64 characters"),
        ({"k" * 65: "v"}, "is not 1-64 characters"),
        ({1: "v"}, "is not 1-64 characters"),
        ({"writer": 7}, "the value is text without control characters"),
        ({"writer": "a\nb"}, "the value is text without control characters"),
        ({"writer": "\ud800"}, "the value is text without control characters"),
        ({"writer": "é" * 513}, "a value of 1026 bytes, at most 1024"),
        ({f"k{i}": "v" * 1000 for i in range(5)}, "at most 4096 in all"),
    ],
)  # fmt: skip
def test_metadata_that_is_not_a_few_short_text_entries_is_refused(metadata: Any, says: str
                                                                  ) -> None:  # fmt: skip
    with pytest.raises(InvalidMetadataError, match=says):
        check_metadata(metadata)


def test_metadata_is_kept_with_the_event() -> None:
    assert check_metadata(None) == {}
    good = {"writer": "svc-a/7", "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01"}
    assert check_metadata(good) == good
    client = ContextClient(ClientConfig("127.0.0.1:1"))
    _, value, _ = client.writer.event("c:1", Put(b"{}"), None, metadata={"writer": "svc-a"})
    assert dict(EventCodec().decode(value).metadata) == {"writer": "svc-a"}


def test_the_trace_context_takes_none_of_the_callers_room(spans: InMemorySpanExporter) -> None:
    """16 entries and 4 KiB are the caller's: a traced write adds its context beyond them."""
    full = {f"k{i:02}": "v" * 250 for i in range(16)}  # 16 entries, 4,096 bytes
    assert check_metadata(full) == full
    traced = {**full, "traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01",
              "tracestate": "vendor=" + "x" * 1000}  # fmt: skip
    assert check_metadata(traced) == traced
    with pytest.raises(InvalidMetadataError, match=r"17 entries: at most 16 \(besides"):
        check_metadata({**traced, "one": "more"})
    with pytest.raises(InvalidMetadataError, match="a value of 1030 bytes"):
        check_metadata({"tracestate": "vendor=" + "x" * 1023})
    client = ContextClient(ClientConfig("127.0.0.1:1"))
    with tracing.write_span("put", "t", "c:1", full) as metadata:
        assert metadata is not None and "traceparent" in metadata
        _, value, _ = client.writer.event("c:1", Put(b"{}"), None, metadata=metadata)
    assert dict(EventCodec().decode(value).metadata) == metadata


async def test_a_write_with_bad_metadata_sends_nothing() -> None:
    client = ContextClient(ClientConfig("127.0.0.1:1", timeout_s=1))
    with pytest.raises(InvalidMetadataError):
        await client.put("c:1", {"a": 1}, metadata={"bad key": "x"})
    assert client.writer._producer is None  # no producer was even started


def test_without_a_recording_provider_nothing_is_added() -> None:
    with tracing.write_span("put", "t", "c:1", {"writer": "a"}) as metadata:
        assert metadata == {"writer": "a"}
    with tracing.write_span("put", "t", "c:1", None) as metadata:
        assert metadata is None
    # A worker that records nothing hands the write's context on to the change as it came.
    parent = "00-" + "1" * 32 + "-" + "2" * 16 + "-01"
    assert tracing.fold_span({"traceparent": parent}, 0, 1, "c:1", "applied") == parent.encode()
    zero_trace = "00-" + "0" * 32 + "-" + "2" * 16 + "-01"
    upper_case = "00-" + "A" * 32 + "-" + "2" * 16 + "-01"
    for hostile in ("garbage", zero_trace, upper_case, parent + "-x", "00-" + "a" * 10_000):
        assert tracing.fold_span({"traceparent": hostile}, 0, 1, "c:1", "applied") is None


def test_a_trace_runs_from_the_write_through_the_fold_to_the_receipt(
    spans: InMemorySpanExporter,
) -> None:
    with tracing.write_span("put", "lukhas.context.events", "c:1", {"writer": "a"}) as metadata:
        assert metadata is not None and metadata["writer"] == "a"
        assert metadata["traceparent"].startswith("00-")
    header = tracing.fold_span(metadata, 2, 41, "c:1", "applied")
    assert header is not None and header.startswith(b"00-")
    traceparent = tracing.change_traceparent([("end", b"x"), ("traceparent", header)])
    assert traceparent == header.decode()
    tracing.receive_span(traceparent, "lukhas.context.changes", 2, 7, "c:1")

    write, fold, receive = spans.get_finished_spans()
    assert (write.name, write.kind) == ("lukhas put", SpanKind.PRODUCER)
    assert (fold.name, fold.kind) == ("lukhas fold", SpanKind.CONSUMER)
    assert (receive.name, receive.kind) == ("lukhas receive", SpanKind.CONSUMER)
    trace_id = write.context.trace_id
    assert fold.context.trace_id == receive.context.trace_id == trace_id
    assert fold.parent is not None and fold.parent.span_id == write.context.span_id
    assert [link.context.span_id for link in fold.links] == [write.context.span_id]
    assert receive.parent is not None and receive.parent.span_id == fold.context.span_id
    assert fold.attributes is not None
    assert fold.attributes["lukhas.outcome"] == "applied"
    assert fold.attributes["messaging.kafka.offset"] == 41


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"writer": "a"},
        {"traceparent": "garbage"},
        {"traceparent": "00-" + "0" * 32 + "-" + "0" * 16 + "-01"},  # all-zero ids: invalid
        {"traceparent": "00-" + "a" * 10_000},
        {"traceparent": "00-" + "1" * 32 + "-" + "2" * 16 + "-01", "tracestate": "x" * 10_000},
    ],
)
def test_a_hostile_trace_context_never_stops_a_fold(
    spans: InMemorySpanExporter, metadata: dict[str, str]
) -> None:
    header = tracing.fold_span(metadata, 0, 1, "c:1", "applied")
    if "tracestate" in metadata:  # a valid parent: the oversized state is dropped, not used
        assert header is not None and spans.get_finished_spans()[0].parent is not None
    else:
        assert header is None and spans.get_finished_spans() == ()
    assert tracing.change_traceparent([("traceparent", b"\xff\xfe")]) is None
    assert tracing.change_traceparent([("traceparent", b"0" * 10_000)]) is None
    tracing.receive_span("garbage", "t", 0, 0, "c:1")


@pytest.mark.parametrize("native", [True, False])
def test_the_fold_passes_a_traced_writes_context_to_its_change(
    spans: InMemorySpanExporter, tmp_path: Any, native: bool
) -> None:
    """A traced event's change carries the fold span's ``traceparent`` header (the native
    loop hands an event with metadata to the general path); an untraced one's carries none,
    and both fold to the same state as without any trace."""
    from collections import namedtuple

    from lukhas_context.processors.fold import Limits
    from lukhas_context.processors.round import PartitionFolder
    from lukhas_context.schemas.event import ContextEvent, Delete
    from lukhas_context.state.store import PartitionStore

    message = namedtuple("message", "topic partition offset key value timestamp headers")
    with tracing.write_span("put", "t", "a", None) as traced:
        assert traced is not None
    events = [
        ContextEvent(b"\x01" * 16, "a", Put(b'{"n":1}'), None, None, traced),
        ContextEvent(b"\x02" * 16, "b", Put(b'{"n":2}')),
        ContextEvent(b"\x03" * 16, "a", Delete(), None, None, traced),
        ContextEvent(b"\x04" * 16, "a", Delete(), None, None, traced),  # rejected: no change
    ]
    log = [message("t", 0, i, e.context_id.encode(), EventCodec().encode(e), 1000 + i, [])
           for i, e in enumerate(events)]  # fmt: skip
    store = PartitionStore(tmp_path / "p")
    try:
        r = PartitionFolder(0, store, Limits(), native=native).fold(log)
        assert r is not None
        headers = [dict(h) for _, _, h in r.changes]
    finally:
        store.close()
    write, *folds = spans.get_finished_spans()
    assert [f.attributes["lukhas.outcome"] for f in folds if f.attributes] == [
        "applied",
        "applied",
        "rejected",
    ]
    assert all(f.parent is not None and f.parent.span_id == write.context.span_id for f in folds)
    assert headers[0]["traceparent"] == _traceparent_of(folds[0])
    assert "traceparent" not in headers[1]
    assert headers[2]["traceparent"] == _traceparent_of(folds[1])  # the tombstone's too
    assert headers[2]["kind"] == b"deleted"


def _traceparent_of(span: Any) -> bytes:
    c = span.context
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags:02x}".encode()
