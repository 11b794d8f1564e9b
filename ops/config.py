"""The composition root's view of the environment: the only module that reads it.

| variable | meaning |
|---|---|
| ``LUKHAS_DATA_DIR`` | where ``lukhas up`` keeps the local cluster (default ``./.lukhas``) |
| ``LUKHAS_BOOTSTRAP`` | an existing Kafka cluster (skips the local brokers; tests reuse it) |
| ``LUKHAS_API_URL`` | a worker's read API, for ``get`` |
| ``LUKHAS_TOPIC_PREFIX`` | topic prefix (default ``lukhas``) |
| ``KAFKA_HOME`` | an unpacked Apache Kafka to run instead of the Maven-fetched jars |
| ``LUKHAS_KAFKA_CACHE`` | where the fetched Kafka jars are kept (default ``~/.cache/lukhas``) |
| ``LUKHAS_TIMEOUT`` | deadline in seconds of each Kafka call of a ``lukhas`` command (default 30) |
| ``LUKHAS_TEST_CHECKPOINT_PAUSE_S`` | tests only: a worker's pause before a checkpoint's manifest |
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from lukhas_context.ops.exceptions import ClusterStateError, OpsError
from lukhas_context.streams.topics import DEFAULT_PREFIX


@dataclass(frozen=True, slots=True)
class Environment:
    data_dir: Path
    bootstrap: str | None
    api_url: str | None
    topic_prefix: str
    kafka_home: str | None
    kafka_cache: Path | None
    checkpoint_pause_s: float = 0.0
    timeout_s: float | None = None

    @classmethod
    def read(cls) -> Environment:
        env = os.environ
        cache = env.get("LUKHAS_KAFKA_CACHE")
        return cls(
            data_dir=Path(env.get("LUKHAS_DATA_DIR", ".lukhas")).absolute(),
            bootstrap=env.get("LUKHAS_BOOTSTRAP") or None,
            api_url=env.get("LUKHAS_API_URL") or None,
            topic_prefix=env.get("LUKHAS_TOPIC_PREFIX", DEFAULT_PREFIX),
            kafka_home=env.get("KAFKA_HOME") or None,
            kafka_cache=Path(cache) if cache else None,
            checkpoint_pause_s=float(env.get("LUKHAS_TEST_CHECKPOINT_PAUSE_S") or 0.0),
            timeout_s=_seconds(env, "LUKHAS_TIMEOUT"),
        )


def _seconds(env: Mapping[str, str], name: str) -> float | None:
    raw = env.get(name)
    if not raw:
        return None
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise OpsError(f"{name} must be a positive number of seconds, got {raw!r}")
    return value


def recorded_cluster(data_dir: Path) -> dict[str, object]:
    """What ``lukhas up`` recorded in ``data_dir/cluster.json`` ({} when nothing is)."""
    path = data_dir / "cluster.json"
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ClusterStateError(f"{path} is unreadable ({exc}); `lukhas up` rewrites it") from exc
    if not isinstance(data, dict):
        raise ClusterStateError(f"{path} is not a JSON object; `lukhas up` rewrites it")
    return data
