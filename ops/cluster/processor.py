"""The local cluster's processor: one ``lukhas worker`` under ``data_dir/processor-0``, started
detached and waited for until it serves every partition it was assigned; its status from
``/healthz`` and ``/v1/partitions``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from lukhas_context.ops.cluster.probes import get_json, healthz, serving
from lukhas_context.ops.cluster.process import Part, is_ours, spawn, wait_for
from lukhas_context.ops.cluster.spec import HOST, ClusterSpec
from lukhas_context.ops.cluster.state import recorded_processors
from lukhas_context.ops.exceptions import ClusterStartError

__all__ = ["PROCESSOR_START_TIMEOUT_S", "PROCESSOR_STOP_S", "Processor", "state_dir"]

#: A processor may have stores to restore before it serves: it gets longer.
PROCESSOR_START_TIMEOUT_S = 600.0
PROCESSOR_STOP_S = 30.0


def state_dir(data_dir: Path) -> Path:
    """Where the local cluster's processor keeps its stores (``lukhas restore``'s default)."""
    return data_dir / "processor-0" / "state"


class Processor:
    """The processor of ``spec``: its read API on ``spec.api_url``."""

    def __init__(self, spec: ClusterSpec) -> None:
        self.spec = spec

    def part(self) -> Part:
        directory = self.spec.data_dir / "processor-0"
        markers = ("lukhas_context.ops", str(state_dir(self.spec.data_dir)))
        return Part("processor-0", directory, "worker.log", markers)

    def start(self) -> bool:
        """Spawn the worker unless it runs and wait for its /healthz; True if spawned."""
        part = self.part()
        if part.running_pid() is not None:
            return False
        spec = self.spec
        argv = [
            sys.executable, "-m", "lukhas_context.ops", "worker",
            "--bootstrap", spec.kafka_bootstrap, "--topic-prefix", spec.topic_prefix,
            "--state-dir", str(state_dir(spec.data_dir)),
            "--api-host", HOST, "--api-port", str(spec.api_port), "--redis-url", spec.redis_url,
            "--instance-id", f"{spec.topic_prefix}-processor-0",
        ]  # fmt: skip
        part.directory.mkdir(parents=True, exist_ok=True)
        spawn(argv, part)

        def late() -> ClusterStartError:
            return part.failure(f"not serving after {PROCESSOR_START_TIMEOUT_S:g}s")

        ready = f"{spec.api_url}/healthz"
        wait_for(lambda: serving(ready), [part], PROCESSOR_START_TIMEOUT_S, late, 0.3)
        return True

    def status(self) -> list[dict[str, Any]]:
        """The processors ``up`` recorded: ``pid``, ``api``, ``alive``, ``ready`` and, when
        ready, the ``digest`` and ``partitions`` it serves."""
        markers = self.part().markers
        out: list[dict[str, Any]] = []
        for entry in recorded_processors(self.spec.data_dir):
            pid = entry.get("pid")
            if pid is None:
                continue
            alive = is_ours(int(pid), markers)
            ready = alive and healthz(f"{entry['api']}/healthz")
            status: dict[str, Any] = {
                "pid": int(pid), "api": entry["api"], "alive": alive, "ready": ready,
            }  # fmt: skip
            served = get_json(f"{entry['api']}/v1/partitions") if ready else None
            if served is not None:
                status["digest"] = served.get("digest")
                status["partitions"] = served.get("partitions", [])
                status["standbys"] = served.get("standbys", [])
            out.append(status)
        return out
