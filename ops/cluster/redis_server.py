"""The local cluster's redis-server: an append-only file under ``data_dir/redis``, started
detached and waited for until it answers PING; never installed by it (``make up`` does that)."""

from __future__ import annotations

import shutil

from lukhas_context.ops.cluster.probes import redis_ping
from lukhas_context.ops.cluster.process import (
    START_TIMEOUT_S,
    Part,
    spawn,
    wait_for,
)
from lukhas_context.ops.cluster.spec import HOST, ClusterSpec
from lukhas_context.ops.exceptions import ClusterStartError, RedisNotInstalledError

__all__ = ["REDIS_STOP_S", "RedisServer"]

REDIS_STOP_S = 30.0


class RedisServer:
    """The redis-server of ``spec``, on ``spec.redis_port``."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec

    def part(self) -> Part:
        markers = ("redis-server", str(self.spec.redis_port))
        return Part("redis", self.spec.data_dir / "redis", "redis.log", markers)

    def start(self) -> Part | None:
        """Spawn redis-server unless it runs; return the part spawned, or None."""
        part = self.part()
        if part.running_pid() is not None:
            return None
        binary = _redis_server_binary()
        part.directory.mkdir(parents=True, exist_ok=True)
        argv = [
            binary, "--bind", HOST, "--port", str(self.spec.redis_port),
            "--dir", str(part.directory), "--appendonly", "yes", "--save", "",
            "--daemonize", "no",
        ]  # fmt: skip
        spawn(argv, part)
        return part

    def wait(self, part: Part) -> None:
        """Wait until it answers PING; fail fast if it exits."""

        def late() -> ClusterStartError:
            return part.failure(f"does not answer PING after {START_TIMEOUT_S}s")

        wait_for(lambda: redis_ping(self.spec.redis_port), [part], START_TIMEOUT_S, late, 0.2)


def _redis_server_binary() -> str:
    """``redis-server``'s path. Never installs it: a command that changes the machine's
    packages by itself, as root, is not one an operator expects from ``lukhas up`` (``make
    up`` installs it as a step of its own, and says so)."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    raise RedisNotInstalledError(
        "redis-server not found on PATH: install it (Debian: apt-get install redis-server; "
        "macOS: brew install redis; or `make up`, which does) and run `lukhas up` again"
    )
