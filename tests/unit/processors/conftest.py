"""Shared by the fold's tests: folding a partition's log against a real store in rounds."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import pytest

from lukhas_context.processors.fold import Limits
from lukhas_context.processors.round import PartitionFolder
from lukhas_context.state.store import PartitionStore

NATIVE = os.environ.get("LUKHAS_TEST_PURE_PYTHON") != "1"

FoldAll = Callable[..., list[tuple[Any, ...]]]


def _fold_all(
    store: PartitionStore,
    log: Sequence[Any],
    cuts: Sequence[int] = (),
    limits: Limits | None = None,
) -> list[tuple[Any, ...]]:
    """Folds ``log`` in rounds ending at each of ``cuts`` (and at its end), committing each;
    returns every change the rounds published."""
    folder = PartitionFolder(0, store, limits or Limits(max_document_bytes=256), native=NATIVE)
    changes: list[tuple[Any, ...]] = []
    start = 0
    for end in [*sorted(set(cuts)), len(log)]:
        end = min(end, len(log))
        if end <= start:
            continue
        r = folder.fold(list(log[start:end]))
        if r is not None:
            changes += r.changes
            folder.commit(r, 100_000)
        start = end
    return changes


@pytest.fixture
def fold_all() -> FoldAll:
    return _fold_all
