"""What ``lukhas worker`` sets in its own process before it folds."""

from __future__ import annotations

import asyncio
import platform
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from lukhas_context.processors import worker
from lukhas_context.processors.config import WorkerConfig
from lukhas_context.processors.exceptions import WorkerStartError


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_freed_heap_is_kept_for_the_next_round_on_glibc() -> None:
    assert worker.keep_freed_heap() is True
    assert worker.KEEP_FREED_BYTES == 64 * 1024 * 1024  # what state.memory's headroom names


def _busy_port() -> tuple[socket.socket, int]:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    return taken, taken.getsockname()[1]


def test_no_kafka_at_the_bootstrap_address_is_a_typed_start_error(tmp_path: Path) -> None:
    config = WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path, api_port=0)
    with pytest.raises(WorkerStartError, match=r"^cannot reach Kafka at 127\.0\.0\.1:1: "):
        asyncio.run(worker.serve(config))


def test_a_taken_api_port_is_a_typed_start_error(tmp_path: Path) -> None:
    taken, port = _busy_port()
    with taken:
        config = WorkerConfig(bootstrap="127.0.0.1:1", state_dir=tmp_path, api_port=port)
        with pytest.raises(WorkerStartError, match=f"cannot listen on 127.0.0.1:{port} "):
            asyncio.run(worker.serve(config))


def test_the_cli_says_why_the_worker_cannot_start_in_one_line(tmp_path: Path) -> None:
    """What a newcomer sees running ``lukhas worker`` with no cluster: one line, exit 1."""
    taken, port = _busy_port()
    with taken:
        run = subprocess.run(
            [sys.executable, "-m", "lukhas_context.ops", "worker", "--bootstrap",
             "127.0.0.1:1", "--state-dir", str(tmp_path), "--api-port", str(port)],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert run.returncode == 1, run.stderr
    assert "Traceback" not in run.stderr
    assert f"worker could not start: cannot listen on 127.0.0.1:{port}" in run.stderr
