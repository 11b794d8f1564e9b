"""What ``lukhas worker`` sets in its own process before it folds."""

from __future__ import annotations

import platform

import pytest

from lukhas_context.processors import worker


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_freed_heap_is_kept_for_the_next_round_on_glibc() -> None:
    assert worker.keep_freed_heap() is True
    assert worker.KEEP_FREED_BYTES == 64 * 1024 * 1024  # what state.memory's headroom names
