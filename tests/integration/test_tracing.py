"""One trace from a producer's write to a subscriber's receipt, through a real broker and a
worker: the client's ``lukhas put`` span, the worker's ``lukhas fold`` (its child), and the
watcher's ``lukhas receive`` (the fold's child), recorded by OpenTelemetry's SDK with its
in-memory exporter (the worker runs in this process, so one provider sees all three)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import aiohttp
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.streams import tracing

pytestmark = pytest.mark.integration


async def test_a_trace_runs_from_a_write_to_a_subscribers_receipt(
    start_worker: Any, make_client: Any, topics: Any, read_topic: Any, cluster: Any,
    spans: InMemorySpanExporter,
) -> None:  # fmt: skip
    worker = await start_worker()
    async with make_client(worker.url) as client:
        receipt = await client.put("traced:1", {"step": 1}, metadata={"writer": "svc-a"})
        assert (await receipt.outcome(timeout=30)).status == "applied"
        untraced = None
        tracing.set_tracer_provider(None)  # the global provider: nothing records
        try:
            untraced = await client.put("plain:1", {"step": 2})
        finally:
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(spans))
            tracing.set_tracer_provider(provider)
        await untraced.outcome(timeout=30)
        async with client.watch(start="earliest", idle_timeout=5) as w:
            changes = {c.context_id: c async for c in w}

    by_name = {s.name: s for s in spans.get_finished_spans()}
    write, fold, receive = by_name["lukhas put"], by_name["lukhas fold"], by_name["lukhas receive"]
    assert write.context.trace_id == fold.context.trace_id == receive.context.trace_id
    assert fold.parent is not None and fold.parent.span_id == write.context.span_id
    assert receive.parent is not None and receive.parent.span_id == fold.context.span_id
    assert fold.attributes is not None and fold.attributes["lukhas.outcome"] == "applied"
    traced = changes["traced:1"]
    assert traced.traceparent == _traceparent(fold)
    assert changes["plain:1"].traceparent is None
    assert [s.name for s in spans.get_finished_spans()].count("lukhas receive") == 1
    # The command line's writes take metadata too.
    env = {**os.environ, "LUKHAS_TOPIC_PREFIX": topics.prefix}
    done = subprocess.run(  # noqa: ASYNC221 (the command, as a user runs it)
        [sys.executable, "-m", "lukhas_context.ops", "put", "cli:1", "{}", "--metadata",
         "writer=cli", "--metadata", "ticket=OPS-7", "--bootstrap", cluster.bootstrap,
         "--api", worker.url], capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr

    # The WAL keeps the event's metadata: the caller's entry and the write's trace context.
    wal = await read_topic(topics.events, lambda records: len(records) >= 3)
    metadata = {m.key: dict(EventCodec().decode(m.value).metadata) for m in wal}
    assert metadata[b"traced:1"] == {
        "writer": "svc-a",
        "traceparent": _traceparent(write),
    }
    assert metadata[b"plain:1"] == {}
    assert metadata[b"cli:1"] == {"writer": "cli", "ticket": "OPS-7"}

    # The SSE stream hands the trace context on too.
    url = f"{worker.url}/v1/changes?context_id=traced:1&start=earliest&idle_timeout=2"
    async with aiohttp.ClientSession() as session, session.get(url) as answer:
        body = (await answer.read()).decode()
    data = [json.loads(line[5:]) for line in body.splitlines() if line.startswith("data:")]
    assert [d["traceparent"] for d in data if "context_id" in d] == [traced.traceparent]


def _traceparent(span: Any) -> str:
    c = span.context
    return f"00-{c.trace_id:032x}-{c.span_id:016x}-{c.trace_flags:02x}"
