"""The worker's metrics follow Prometheus's conventions, and the Grafana dashboard shipped in
``ops/grafana`` asks only for metrics a worker exports."""

from __future__ import annotations

import json
import re
from pathlib import Path

from lukhas_context.processors.metrics import OUTCOMES, WorkerMetrics

DASHBOARD = Path(__file__).resolve().parents[3] / "ops" / "grafana" / "lukhas-worker.json"
#: PromQL words that are not metric names.
PROMQL = {"sum", "rate", "increase", "max", "by", "histogram_quantile", "le", "outcome",
          "partition", "part", "status", "event", "action", "route", "reason"}  # fmt: skip


def exprs() -> list[str]:
    dashboard = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in dashboard["panels"] for t in p["targets"]]


def test_every_dashboard_query_names_an_exported_metric() -> None:
    exported = set(WorkerMetrics().names())
    asked = set()
    for expr in exprs():
        bare = re.sub(r'"[^"]*"', " ", expr)  # label values first: they may hold braces
        bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]", " ", bare)  # then selectors and ranges
        asked |= {w for w in re.findall(r"[a-z_][a-z0-9_]*", bare) if w not in PROMQL}
    assert asked, "no metric names found"
    assert asked - exported == set(), sorted(asked - exported)
    assert {"lukhas_events_total", "lukhas_http_request_duration_seconds_bucket",
            "lukhas_sse_streams", "process_cpu_seconds_total"} <= asked  # fmt: skip


def test_names_follow_the_conventions() -> None:
    metrics = WorkerMetrics()
    names = metrics.names()
    text = metrics.render().decode()
    assert "_created" not in text
    for name in names:
        assert re.fullmatch(r"[a-z][a-z0-9_]*", name), name
    for family in metrics.registry.collect():
        if family.type == "counter":
            assert f"{family.name}_total" in names
        if family.name.startswith("lukhas_") and family.type in ("gauge", "histogram"):
            assert not family.name.endswith("_total"), family.name
    assert 'lukhas_build_info{python="' in text
    assert "process_resident_memory_bytes" in text and "python_gc_collections_total" in text


def test_one_counter_with_an_outcome_label_and_the_old_names_deprecated() -> None:
    metrics = WorkerMetrics()
    metrics.applied.inc(3)
    metrics.dead_lettered.inc()
    text = metrics.render().decode()
    for outcome in OUTCOMES:
        assert f'lukhas_events_total{{outcome="{outcome}"}}' in text
    assert 'lukhas_events_total{outcome="applied"} 3.0' in text
    assert 'lukhas_events_total{outcome="dead_lettered"} 1.0' in text
    assert "lukhas_events_applied_total 3.0" in text  # the old name, kept for now
    assert (
        '# HELP lukhas_events_applied_total DEPRECATED: use lukhas_events_total{outcome="applied"}'
        in text
    )


def test_requests_are_counted_by_route_not_path() -> None:
    metrics = WorkerMetrics()
    metrics.request("GET", "/v1/contexts/{context_id}", 200, 0.0002)
    metrics.request("GET", "unmatched", 404, 0.0001)
    text = metrics.render().decode()
    route = 'route="/v1/contexts/{context_id}"'
    assert f'lukhas_http_requests_total{{method="GET",{route},status="200"}} 1.0' in text
    assert f'lukhas_http_request_duration_seconds_bucket{{le="0.00025",{route}}} 1.0' in text
