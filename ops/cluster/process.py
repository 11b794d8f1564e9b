"""One part of the local cluster as a process: its pid file and log, how it is spawned
(detached), recognised (``/proc/<pid>/cmdline`` markers), waited for and stopped.

The functions are synchronous (the CLI is); they must not be called from a running event loop
(use ``asyncio.to_thread``).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from lukhas_context.ops.cluster.spec import HOST
from lukhas_context.ops.exceptions import ClusterStartError

__all__ = [
    "LOG_TAIL_LINES",
    "START_TIMEOUT_S",
    "Part",
    "check_port_free",
    "is_ours",
    "port_open",
    "spawn",
    "stop_all",
    "wait_for",
]

START_TIMEOUT_S = 60.0
LOG_TAIL_LINES = 20

# Popen objects of the processes this Python process spawned, kept so that they can be reaped
# (no zombies while a test session runs) and so that Popen.__del__ does not warn.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


@dataclass(frozen=True, slots=True)
class Part:
    """One process of the cluster: where its pid and log live, and how to recognise it."""

    name: str
    directory: Path
    log_name: str
    markers: tuple[str, ...]

    @property
    def pid_file(self) -> Path:
        return self.directory / "pid"

    @property
    def log_file(self) -> Path:
        return self.directory / self.log_name

    def running_pid(self) -> int | None:
        """The pid from the pid file if that process is alive and is this part, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        return pid if is_ours(pid, self.markers) else None

    def exit_code(self) -> int | str | None:
        """While waiting for a part this process started: its exit code once it has exited,
        else None. The child's own handle decides (exact, and it reaps the child); a part
        started by another invocation is judged by ``running_pid`` instead."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return "no pid file"
        child = _CHILDREN.get(pid)
        if child is not None:
            return child.poll()
        return None if self.running_pid() is not None else "not running"

    def failure(self, what: str) -> ClusterStartError:
        tail = _tail(self.log_file, LOG_TAIL_LINES)
        return ClusterStartError(f"{self.name} {what}; log {self.log_file}, last lines:\n{tail}")


def spawn(argv: list[str], part: Part) -> int:
    """Start ``argv`` detached (own session: a Ctrl-C of the CLI does not reach it)."""
    part.directory.mkdir(parents=True, exist_ok=True)
    with part.log_file.open("ab") as log:
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True, close_fds=True,
        )  # fmt: skip
    _CHILDREN[child.pid] = child
    part.pid_file.write_text(f"{child.pid}\n")
    return child.pid


def is_ours(pid: int, markers: tuple[str, ...]) -> bool:
    """True if ``pid`` runs and its command line holds every marker (zombies have none)."""
    child = _CHILDREN.get(pid)
    if child is not None and child.poll() is not None:
        del _CHILDREN[pid]
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except (OSError, UnicodeDecodeError):
        return False
    return all(marker in cmdline for marker in markers)


def wait_for(
    ready: Callable[[], bool],
    parts: Sequence[Part],
    timeout_s: float,
    late: Callable[[], ClusterStartError],
    interval_s: float,
) -> None:
    """Polls ``ready()`` every ``interval_s`` until it is true. Raises the failure of a part of
    ``parts`` that exits meanwhile, or ``late()`` once ``timeout_s`` have passed."""
    deadline = time.monotonic() + timeout_s
    while not ready():
        for part in parts:
            if (code := part.exit_code()) is not None:
                raise part.failure(f"exited during startup (code {code})")
        if time.monotonic() > deadline:
            raise late()
        time.sleep(interval_s)


def stop_all(parts: list[Part], grace_s: float) -> dict[str, str]:
    """SIGTERM every running part, SIGKILL those still up after ``grace_s``; remove pid files.

    Returns part name -> ``"stopped"``, ``"killed"`` or ``"not_running"``.
    """
    outcome: dict[str, str] = {}
    running: dict[str, tuple[Part, int]] = {}
    for part in parts:
        pid = part.running_pid()
        if pid is None:
            outcome[part.name] = "not_running"
        else:
            _signal(pid, signal.SIGTERM)
            running[part.name] = (part, pid)
    deadline = time.monotonic() + grace_s
    while running and time.monotonic() < deadline:
        for name, (part, pid) in list(running.items()):
            if not is_ours(pid, part.markers):
                outcome[name] = "stopped"
                del running[name]
        time.sleep(0.2)
    for name, (_part, pid) in running.items():
        _signal(pid, signal.SIGKILL)
        outcome[name] = "killed"
    for part in parts:
        part.pid_file.unlink(missing_ok=True)
    return outcome


def _signal(pid: int, signum: signal.Signals) -> None:
    # It may exit between the check and the signal: that is the outcome we wanted.
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signum)


def _tail(path: Path, lines: int) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    return "\n".join(text.splitlines()[-lines:]) or "(empty log)"


def port_open(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def check_port_free(port: int, what: str) -> None:
    # A port held by someone else makes the JVM die with a BindException deep in its log.
    if port_open(HOST, port):
        raise ClusterStartError(f"port {port} for {what} is in use by another process")
