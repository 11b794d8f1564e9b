"""A worker with no partition says so every 15 s (a rebalance that does not end is in the
log), and stops saying it once it has one."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest

from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.materializer import UNASSIGNED_WARN_S, Materializer


class Consumer:
    def __init__(self) -> None:
        self.assigned: set[int] = set()
        self._coordinator = SimpleNamespace(coordinator_id=2, generation=7)

    def assignment(self) -> set[int]:
        return self.assigned


def test_no_partition_for_a_while_is_logged_once_per_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    m = Materializer(WorkerConfig(bootstrap="127.0.0.1:9", state_dir=tmp_path))
    consumer = Consumer()
    caplog.set_level(logging.WARNING, "lukhas_context.processors.materializer")
    since = None
    for tick in range(0, 40):  # 40 loop turns, half a second apart: 20 s without a partition
        since = m._watch_assignment(consumer, 100.0 + tick / 2, since)
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "no partition assigned for 15 s" in warnings[0]
    assert "coordinator node 2, generation 7" in warnings[0]
    consumer.assigned = {0}
    assert m._watch_assignment(consumer, 200.0, since) is None
    assert UNASSIGNED_WARN_S == 15.0
