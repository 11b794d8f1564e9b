"""OpenTelemetry traces from a producer's write to a subscriber's receipt (the ``[otel]``
extra: ``opentelemetry-api``; without it every function here does nothing).

The W3C trace context travels in the data itself, so that the WAL, which is the system's
memory, holds it too:

1. **Write.** Each client write (``put``, ``patch``, ``touch``, ``delete``, ``update``) runs
   in a span ``lukhas <op>`` (kind PRODUCER) of the global tracer provider, and the current
   context is injected (``traceparent``, ``tracestate``) into the event's ``metadata`` map.
   With no provider configured the API's spans are not recording and nothing is injected:
   events stay exactly as without the extra.
2. **Fold.** The worker that folds an event whose metadata carries a ``traceparent`` opens a
   span ``lukhas fold`` (kind CONSUMER) as its child, linked to it as well, with the
   partition, offset, context id and outcome; the change the event made carries that span's
   ``traceparent`` as a Kafka record header of the change topic.
3. **Receipt.** ``watch`` (and the SSE stream, as ``traceparent`` in each change) hands the
   header on: a watcher opens a span ``lukhas receive`` (kind CONSUMER), the fold's child,
   as it yields the change (``Change.traceparent``).

The metadata map is part of the event (written once, replayed as is): a replay folds the same
state whether or not anyone traces. An event with metadata folds on the general path, not the
native one (the native loop takes the plain shapes only): sample traces accordingly.
Nothing here may stop a fold: a malformed trace context from a hostile writer is ignored.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator, Mapping
from typing import Any

try:
    from opentelemetry import propagate, trace
    from opentelemetry.trace import Link, SpanKind
except ImportError:  # the [otel] extra is not installed
    trace = None  # type: ignore[assignment]

__all__ = [
    "TRACEPARENT",
    "change_traceparent",
    "enabled",
    "fold_span",
    "receive_span",
    "set_tracer_provider",
    "write_span",
]

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"
#: A ``traceparent`` is 55 characters (version 00); anything much longer is not one.
_MAX_TRACE_HEADER = 512
_SCOPE = "lukhas_context"


#: The tracer provider the package's spans go to; None: OpenTelemetry's global one.
_provider: Any = None


def enabled() -> bool:
    """Whether the OpenTelemetry API is installed (the ``[otel]`` extra)."""
    return trace is not None


def set_tracer_provider(provider: Any) -> None:
    """Send the package's spans to ``provider`` instead of OpenTelemetry's global one (None:
    the global one again): for an application that keeps several providers, and tests."""
    global _provider
    _provider = provider


def _tracer() -> Any:
    assert trace is not None
    return trace.get_tracer(_SCOPE, tracer_provider=_provider)


def _recording() -> bool:
    """Whether a tracer provider is configured (else the API's spans record nothing)."""
    assert trace is not None
    provider = _provider if _provider is not None else trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


#: A version-00 ``traceparent``: version, trace id, parent id, flags (W3C Trace Context).
_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}")


@contextlib.contextmanager
def write_span(
    op: str, topic: str, context_id: str, metadata: Mapping[str, str] | None
) -> Iterator[Mapping[str, str] | None]:
    """A PRODUCER span around one write; yields ``metadata`` with the span's trace context
    added (a new dict), or as given when nothing records."""
    if trace is None:
        yield metadata
        return
    tracer = _tracer()
    attributes = {
        "messaging.system": "kafka",
        "messaging.operation.type": "send",
        "messaging.destination.name": topic,
        "lukhas.context_id": context_id,
    }
    with tracer.start_as_current_span(f"lukhas {op}", kind=SpanKind.PRODUCER,
                                      attributes=attributes) as span:  # fmt: skip
        if not span.get_span_context().is_valid:
            yield metadata
            return
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        yield {**(metadata or {}), **carrier}


def _extract(carrier: Mapping[str, str]) -> Any:
    """The span context of a ``traceparent`` (and ``tracestate``), or None when there is
    none or it is not valid."""
    assert trace is not None
    parent = carrier.get(TRACEPARENT)
    if not isinstance(parent, str) or len(parent) > _MAX_TRACE_HEADER:
        return None
    state = carrier.get(TRACESTATE)
    clean = {TRACEPARENT: parent}
    if isinstance(state, str) and len(state) <= _MAX_TRACE_HEADER:
        clean[TRACESTATE] = state
    context = propagate.extract(clean)
    span_context = trace.get_current_span(context).get_span_context()
    return context if span_context.is_valid else None


def fold_span(
    metadata: Mapping[str, str], partition: int, offset: int, context_id: str, outcome: str
) -> bytes | None:
    """The span of folding one event whose metadata carries a trace context (a child of it,
    and linked to it), ended at once; returns the ``traceparent`` the change it made carries
    on (None: no trace context, or the extra is not installed). Never raises."""
    if trace is None or TRACEPARENT not in metadata:
        return None
    if not _recording():  # no span to make: the write's context goes on as it came
        value = metadata[TRACEPARENT]
        found = _TRACEPARENT.fullmatch(value) if isinstance(value, str) else None
        if found is None or not int(found[1], 16) or not int(found[2], 16):
            return None
        return value.encode()
    try:
        parent = _extract(metadata)
        if parent is None:
            return None
        producer = trace.get_current_span(parent).get_span_context()
        span = _tracer().start_span(
            "lukhas fold", context=parent, kind=SpanKind.CONSUMER, links=[Link(producer)],
            attributes={
                "messaging.system": "kafka", "messaging.operation.type": "process",
                "messaging.destination.partition.id": str(partition),
                "messaging.kafka.offset": offset, "lukhas.context_id": context_id,
                "lukhas.outcome": outcome,
            },
        )  # fmt: skip
        span.end()
        carrier: dict[str, str] = {}
        propagate.inject(carrier, context=trace.set_span_in_context(span))
        injected = carrier.get(TRACEPARENT)
        return injected.encode() if injected else None
    except Exception:  # a trace context must never stop a fold
        return None


def change_traceparent(headers: Any) -> str | None:
    """The ``traceparent`` header of a change record (None: none, or not text)."""
    for name, value in headers or ():
        if name == TRACEPARENT and isinstance(value, bytes | bytearray):
            if len(value) > _MAX_TRACE_HEADER:
                return None
            try:
                return bytes(value).decode("ascii")
            except UnicodeDecodeError:
                return None
    return None


def receive_span(traceparent: str | None, topic: str, partition: int, offset: int,
                 context_id: str) -> None:  # fmt: skip
    """A subscriber's receipt of a change that carries a trace context: a CONSUMER span, the
    fold's child, ended at once. Never raises."""
    if trace is None or traceparent is None:
        return
    try:
        parent = _extract({TRACEPARENT: traceparent})
        if parent is None:
            return
        _tracer().start_span(
            "lukhas receive", context=parent, kind=SpanKind.CONSUMER,
            attributes={
                "messaging.system": "kafka", "messaging.operation.type": "receive",
                "messaging.destination.name": topic,
                "messaging.destination.partition.id": str(partition),
                "messaging.kafka.offset": offset, "lukhas.context_id": context_id,
            },
        ).end()  # fmt: skip
    except Exception:  # a trace context must never stop a subscription
        return
