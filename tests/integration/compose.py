"""The docker compose cluster of ``docker-compose.yml`` as tests drive it: started once per
module by ``docker/compose.sh up`` (which builds the images where no registry can be reached),
removed with its volumes at the end, and faults made with the docker CLI.

Needs a Docker engine: ``.ci/run`` starts dockerd when none answers. Without one the fixture
fails (it does not skip); deselect these tests with ``-m "not compose"``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lukhas_context.streams.client import ClientConfig, ContextClient
from lukhas_context.streams.topics import Topics

from .replication import get_json

ROOT = Path(__file__).resolve().parents[2]
PROJECT = "lukhas"  # .env: COMPOSE_PROJECT_NAME
NETWORK = f"{PROJECT}_default"
BOOTSTRAP = "127.0.0.1:29092,127.0.0.1:29093,127.0.0.1:29094"
API_URLS = ["http://127.0.0.1:28081", "http://127.0.0.1:28082"]
WORKER_OF_API = dict(zip(API_URLS, ["worker-1", "worker-2"], strict=True))
PARTITIONS = 6
TOPICS = Topics("lukhas")
#: The address of broker N on the compose network (docker-compose.yml's ipv4_address).
BROKER_IP = {n: f"10.231.7.{10 + n}" for n in (1, 2, 3)}
SERVICES = ("kafka-1", "kafka-2", "kafka-3", "redis", "worker-1", "worker-2")


class Compose:
    """docker-compose and docker commands on the project, each bounded in time."""

    def __init__(self) -> None:
        self.env = {**os.environ, "COMPOSE_PROJECT_NAME": PROJECT, "PYTHON": sys.executable}

    def run(self, *argv: str, timeout: float = 120, check: bool = True
            ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        done = subprocess.run(
            argv, cwd=ROOT, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}):\n"
                                 f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}")  # fmt: skip
        return done

    def compose(self, *args: str, timeout: float = 120, check: bool = True
                ) -> subprocess.CompletedProcess[str]:  # fmt: skip
        return self.run("docker-compose", *args, timeout=timeout, check=check)

    def container(self, service: str) -> str:
        return self.compose("ps", "-q", service).stdout.strip()

    def inspect(self, service: str, template: str) -> str:
        return self.run("docker", "inspect", "-f", template, self.container(service)).stdout.strip()

    def kill(self, service: str) -> None:
        """SIGKILL the container (docker does not restart a container it was told to kill)."""
        self.run("docker", "kill", self.container(service))

    def start(self, service: str) -> None:
        self.compose("start", service)

    def stop(self, service: str) -> None:
        self.compose("stop", "-t", "10", service)

    def disconnect(self, service: str) -> None:
        self.run("docker", "network", "disconnect", NETWORK, self.container(service))

    def connect(self, service: str, ip: str) -> None:
        """Back on the network with its address and its service name (other containers find
        it by that name)."""
        self.run("docker", "network", "connect", "--ip", ip, "--alias", service, NETWORK,
                 self.container(service))  # fmt: skip

    def healthy(self, service: str) -> bool:
        return self.inspect(service, "{{.State.Health.Status}}") == "healthy"

    async def wait_healthy(self, services: tuple[str, ...] = SERVICES, timeout: float = 180
                           ) -> None:  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            waiting = [s for s in services if not await asyncio.to_thread(self.healthy, s)]
            if not waiting:
                return
            assert time.monotonic() < deadline, f"not healthy after {timeout} s: {waiting}"
            await asyncio.sleep(1)


def logs_since(started: float, services: tuple[str, ...] = SERVICES, tail: int = 300) -> str:
    """The services' logs since ``started`` (epoch seconds), the last ``tail`` lines of each:
    attached to a failing test's report (tests/integration/conftest.py)."""
    compose, parts = Compose(), []
    for service in services:
        try:
            container = compose.container(service)
            done = compose.run("docker", "logs", "--since", f"{started:.0f}", "--tail", str(tail),
                               container, check=False, timeout=30)  # fmt: skip
            parts.append(f"----- {service} -----\n{done.stdout}{done.stderr}")
        except (AssertionError, OSError, subprocess.SubprocessError) as exc:
            parts.append(f"----- {service}: no logs ({exc}) -----")
    return "\n".join(parts)


def owners() -> dict[int, str]:
    """partition -> the read API URL of the worker serving it (from any worker that answers)."""
    for url in API_URLS:
        try:
            table = get_json(f"{url}/v1/members")
        except OSError:
            continue
        return {int(p): owner for p, owner in table["owners"].items()}
    return {}


async def all_served(timeout: float = 120) -> dict[int, str]:
    """Until the routing table names a worker for every partition."""
    deadline = time.monotonic() + timeout
    while len(table := await asyncio.to_thread(owners)) < PARTITIONS:
        assert time.monotonic() < deadline, f"served after {timeout} s: {table}"
        await asyncio.sleep(0.5)
    return table


def client(timeout_s: float = 20.0) -> ContextClient:
    return ContextClient(ClientConfig(BOOTSTRAP, ",".join(API_URLS), TOPICS, timeout_s=timeout_s))


@pytest.fixture(scope="module")
def compose() -> Iterator[Compose]:
    """The compose cluster, built and started from scratch (volumes of an earlier run are
    removed first), healthy with every partition served; removed with its volumes after the
    module (its five JVMs and two workers are not left to load the rest of the suite)."""
    c = Compose()
    if c.run("docker", "info", check=False, timeout=30).returncode != 0:
        pytest.fail("no Docker engine answers: start dockerd (`bash docker/compose.sh dockerd` "
                    "as root), or deselect with -m 'not compose'")  # fmt: skip
    c.run("make", "-s", "compose-clean", timeout=180)
    c.run("make", "-s", "compose-up", timeout=1200)  # the README's command: up, then the demo
    try:
        asyncio.run(all_served())
        yield c
    finally:
        logs = c.compose("logs", "--no-color", "--tail", "200", check=False, timeout=60)
        (ROOT / "build").mkdir(exist_ok=True)
        (ROOT / "build" / "compose-logs.txt").write_text(logs.stdout + logs.stderr)
        c.run("make", "-s", "compose-down", timeout=180)  # the README's last command
        c.run("make", "-s", "compose-clean", timeout=180, check=False)
