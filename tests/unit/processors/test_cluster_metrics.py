"""``GET /v1/cluster/metrics``'s parts (``processors.cluster_metrics``): a worker's figures
read from its own registry, a peer's entry taken from its answer, and a peer that gave none
(or one of another shape) listed unreachable with why, its figures null."""

from __future__ import annotations

from typing import Any

import pytest

from lukhas_context.processors.cluster_metrics import FIGURES, peer_figures, unreachable
from lukhas_context.processors.fanout import Answer
from lukhas_context.processors.members import Member
from lukhas_context.processors.metrics import READ_ROUTE, WorkerMetrics

B = Member("m-b", "http://b:1", (1,), 3, 0)


def reading(**changes: Any) -> dict[str, Any]:
    entry = {"api": "http://b:1", "member": "m-b", "reachable": True, "error": None,
             "at_ms": 1000, "folded": 7.0, "read_seconds": 0.5, "reads": 4.0,
             "memory_resident_bytes": 10.0, "memory_budget_bytes": None}  # fmt: skip
    return {**entry, **changes}


def test_the_figures_are_the_views_sums_and_memory_gauges() -> None:
    m = WorkerMetrics()
    assert m.figures() == {"folded": 0.0, "read_seconds": 0.0, "reads": 0.0,
                           "memory_resident_bytes": None, "memory_budget_bytes": None}  # fmt: skip
    m.applied.inc(3)
    m.dead_lettered.inc()  # every outcome is a record folded
    m.request("GET", READ_ROUTE, 200, 0.5)
    m.request("GET", "/v1/contexts", 200, 2.0)  # not a point read
    m.memory.labels("budget").set(100)
    m.memory.labels("resident").set(40)
    assert m.figures() == {"folded": 4.0, "read_seconds": 0.5, "reads": 1.0,
                           "memory_resident_bytes": 40.0, "memory_budget_bytes": 100.0}  # fmt: skip


def test_a_peers_entry_is_its_own_reading_under_the_tables_name() -> None:
    got = peer_figures(Answer(B, {"api": "http://b:1", "workers": [reading()]}))
    assert got == {**reading(), "member": "m-b", "api": "http://b:1"}
    assert set(FIGURES) <= set(got)


def test_a_member_that_did_not_answer_is_unreachable_with_why() -> None:
    got = peer_figures(Answer(B, None, "no answer within 3 s"))
    assert got == unreachable(B, "no answer within 3 s")
    assert (got["reachable"], got["error"], got["api"]) == (False, "no answer within 3 s", B.api)
    assert all(got[k] is None for k in (*FIGURES, "at_ms"))


@pytest.mark.parametrize(
    "data",
    [
        {"workers": []},
        {"workers": "x"},
        {"workers": [reading(folded="7")]},
        {"workers": [reading(reads=None)]},  # only the memory figures may be null
        {"workers": [reading(at_ms=None)]},
        {"workers": [{k: v for k, v in reading().items() if k != "memory_budget_bytes"}]},
        {"workers": [reading(folded=True)]},
        {"workers": [reading(memory_budget_bytes=-1)]},  # would draw below the plot
        {"workers": [reading(reads=-5)]},
    ],
)
def test_an_answer_of_another_shape_is_unreachable_not_a_failure(data: dict[str, Any]) -> None:
    got = peer_figures(Answer(B, data))
    assert (got["reachable"], got["error"]) == (False, "its answer is not a metrics reading")
