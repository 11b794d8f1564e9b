"""The local cluster's redis-server: an append-only file under ``data_dir/redis``, started
detached and waited for until it answers PING; installed with apt-get when missing and root."""

from __future__ import annotations

import os
import shutil
import subprocess

from lukhas_context.ops.cluster.probes import redis_ping
from lukhas_context.ops.cluster.process import (
    LOG_TAIL_LINES,
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
    """``redis-server``'s path; installs it with apt-get when missing and running as root."""
    found = shutil.which("redis-server")
    if found is not None:
        return found
    if os.geteuid() != 0:
        raise RedisNotInstalledError(
            "redis-server not found on PATH: install it (apt-get install redis-server, "
            "brew install redis) and run `lukhas up` again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    done = subprocess.run(
        ["sh", "-c", "apt-get update -qq && apt-get install -y -qq redis-server"],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    found = shutil.which("redis-server")
    if found is None:
        tail = "\n".join((done.stdout + done.stderr).splitlines()[-LOG_TAIL_LINES:])
        raise RedisNotInstalledError(f"apt-get install redis-server failed:\n{tail}")
    return found
