"""``cluster.json``: what ``lukhas up`` ran with (the spec fields later commands need) and the
pids it started, written atomically under the data dir, read back by ``status``, ``down`` and
every command that finds its cluster through the data dir."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

from lukhas_context.ops.cluster.spec import ClusterSpec
from lukhas_context.ops.exceptions import ClusterStateError

__all__ = [
    "RECORDED", "STATE_FILE", "read_state", "recorded_processors", "recorded_spec", "write_state",
]  # fmt: skip

STATE_FILE = "cluster.json"
#: The spec fields that status/down must know after the process that ran `up` has exited.
RECORDED = (
    "brokers", "port_base", "redis_port", "api_port", "bootstrap", "topic_prefix", "partitions",
)  # fmt: skip


def read_state(data_dir: Path) -> dict[str, Any]:
    """What ``lukhas up`` recorded in ``data_dir/cluster.json`` ({} when nothing is). Raises
    ``ClusterStateError`` when the file is unreadable or not a JSON object."""
    path = data_dir / STATE_FILE
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterStateError(f"{path} is unreadable ({exc}); `lukhas up` rewrites it") from exc
    if not isinstance(data, dict):
        raise ClusterStateError(f"{path} is not a JSON object; `lukhas up` rewrites it")
    return data


def recorded_spec(spec: ClusterSpec) -> ClusterSpec:
    """``spec`` with the fields ``up`` last ran with in its data dir (they may differ from the
    caller's defaults)."""
    recorded = _read_leniently(spec.data_dir).get("spec", {})
    return replace(spec, **{k: v for k, v in recorded.items() if k in RECORDED})


def recorded_processors(data_dir: Path) -> list[dict[str, Any]]:
    """The processors ``up`` recorded: ``pid`` (None when it was not running) and ``api``."""
    processors: list[dict[str, Any]] = _read_leniently(data_dir).get("processors", [])
    return processors


def _read_leniently(data_dir: Path) -> dict[str, Any]:
    """``cluster.json``, or {} when it cannot be read: ``status`` and ``down`` then act on the
    spec they were given (the CLI has refused an unreadable file before, with ``read_state``)."""
    try:
        state: dict[str, Any] = json.loads((data_dir / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state


def write_state(
    spec: ClusterSpec, broker_pids: list[int | None], redis_pid: int | None,
    processor_pid: int | None,
) -> None:  # fmt: skip
    """Write ``cluster.json``: the spec values and pids that ``status``/``down`` need."""
    state = {
        "spec": {key: asdict(spec)[key] for key in RECORDED},
        "bootstrap": spec.kafka_bootstrap,
        "redis_url": spec.redis_url,
        "broker_pids": broker_pids,
        "redis_pid": redis_pid,
        "processors": [{"pid": processor_pid, "api": spec.api_url}],
    }
    tmp = spec.data_dir / (STATE_FILE + ".tmp")
    tmp.write_text(json.dumps(state, indent=2) + "\n")
    tmp.replace(spec.data_dir / STATE_FILE)
