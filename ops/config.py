"""The ``lukhas`` command's composition root: the one place that builds its configs
(``ClientConfig``, ``WorkerConfig``, ``ClusterSpec``, the transaction tool) and the one reader of
the environment (``Environment.read``, called by ``Settings.load`` only).

Each value comes from the first of: the command's option, the environment variable, what
``lukhas up`` recorded in the data dir's ``cluster.json``, the default.

| variable | meaning |
|---|---|
| ``LUKHAS_DATA_DIR`` | where ``lukhas up`` keeps the local cluster (default ``./.lukhas``) |
| ``LUKHAS_BOOTSTRAP`` | an existing Kafka cluster (skips the local brokers; tests reuse it) |
| ``LUKHAS_API_URL`` | a worker's read API, for ``get`` |
| ``LUKHAS_TOPIC_PREFIX`` | topic prefix (default ``lukhas``) |
| ``KAFKA_HOME`` | an unpacked Apache Kafka to run instead of the Maven-fetched jars |
| ``LUKHAS_KAFKA_CACHE`` | where the fetched Kafka jars are kept (default ``~/.cache/lukhas``) |
| ``LUKHAS_API_TOKEN`` | the read API's bearer token (commands send it; a worker requires it) |
| ``LUKHAS_TIMEOUT`` | deadline in seconds of each Kafka call of a ``lukhas`` command (default 30) |
| ``LUKHAS_KAFKA_CONFIG`` | a properties file of Kafka security settings (``--kafka-config``) |
| ``LUKHAS_KAFKA_<SETTING>`` | one such setting (``LUKHAS_KAFKA_SASL_PASSWORD``...) |
| ``LUKHAS_TEST_CHECKPOINT_PAUSE_S`` | tests only: a worker's pause before a checkpoint's manifest |

click reads ``LUKHAS_BOOTSTRAP`` and ``LUKHAS_API_URL`` (``envvar=`` of ``--bootstrap`` and
``--api``, in ``cli/options.py``); ``Environment`` reads the others.

An empty variable counts as unset, except ``LUKHAS_DATA_DIR`` (empty: the current directory)
and ``LUKHAS_TOPIC_PREFIX`` (empty: no prefix).

Why click reads only those two, and through ``envvar=`` rather than ``auto_envvar_prefix``:
click derives ``<PREFIX>_<COMMAND>_<OPTION>`` (``LUKHAS_GET_BOOTSTRAP``), none of the names
above, and would make every option of every command settable from the environment (a flat
prefix would even let ``LUKHAS_TIMEOUT`` set ``get --timeout``, the wait, instead of the Kafka
deadline it means). The others have no option; ``LUKHAS_DATA_DIR`` stays here because click
skips an empty variable, and passes a relative one on as given where the command has always
made it absolute.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lukhas_context.ops.auth import api_token
from lukhas_context.ops.cluster import ClusterSpec
from lukhas_context.ops.cluster.processor import state_dir
from lukhas_context.ops.cluster.state import read_state
from lukhas_context.ops.exceptions import NotConfiguredError, OpsError
from lukhas_context.ops.kafka_dist import DEFAULT_VERSION, ensure_kafka_tools
from lukhas_context.ops.transactions import TransactionTool
from lukhas_context.streams.client import ClientConfig
from lukhas_context.streams.exceptions import InvalidConfigError
from lukhas_context.streams.security import PROPERTY_KEYS, KafkaSecurity, read_properties
from lukhas_context.streams.topics import DEFAULT_PREFIX, Topics

if TYPE_CHECKING:
    from lukhas_context.processors.config import WorkerConfig
    from lukhas_context.processors.ttl_policy import TtlPolicy

__all__ = ["Environment", "Settings", "WorkerFlags", "kafka_security", "kafka_variable"]


@dataclass(frozen=True, slots=True)
class Environment:
    """The variables above that no option reads (see the module's docstring)."""

    data_dir: Path
    topic_prefix: str
    kafka_home: str | None
    kafka_cache: Path | None
    checkpoint_pause_s: float = 0.0
    timeout_s: float | None = None
    #: ``LUKHAS_SCHEMA_DIR``: newer writer schemas the offline fold (restore, replay,
    #: verify) decodes, as the worker's ``--schema-dir`` does.
    schema_dir: Path | None = None
    #: ``LUKHAS_DEDUPE_WINDOW``: the dedupe window of the offline fold, as the workers'
    #: ``--dedupe-window`` (it is part of the fold: every fold of one WAL must use the same).
    dedupe_window: int | None = None
    #: ``LUKHAS_API_TOKEN``: the read API's bearer token (commands send it; a worker
    #: without ``--api-token-file`` requires it). Never printed.
    api_token: str | None = field(default=None, repr=False)
    #: ``LUKHAS_KAFKA_CONFIG`` and ``LUKHAS_KAFKA_<SETTING>``: how to reach a secured Kafka.
    kafka_security: KafkaSecurity = field(default_factory=KafkaSecurity)

    @classmethod
    def read(cls) -> Environment:
        """Raises ``OpsError`` for a ``LUKHAS_TIMEOUT`` that is not a positive number, and
        ``ValueError`` for a ``LUKHAS_TEST_CHECKPOINT_PAUSE_S`` that is not a number."""
        env = os.environ
        cache = env.get("LUKHAS_KAFKA_CACHE")
        return cls(
            data_dir=Path(env.get("LUKHAS_DATA_DIR", ".lukhas")).absolute(),
            topic_prefix=env.get("LUKHAS_TOPIC_PREFIX", DEFAULT_PREFIX),
            kafka_home=env.get("KAFKA_HOME") or None,
            kafka_cache=Path(cache) if cache else None,
            checkpoint_pause_s=float(env.get("LUKHAS_TEST_CHECKPOINT_PAUSE_S") or 0.0),
            timeout_s=_seconds(env, "LUKHAS_TIMEOUT"),
            schema_dir=Path(env["LUKHAS_SCHEMA_DIR"]) if env.get("LUKHAS_SCHEMA_DIR") else None,
            dedupe_window=_window(env.get("LUKHAS_DEDUPE_WINDOW")),
            api_token=api_token(),
            kafka_security=kafka_security(env),
        )


def kafka_variable(key: str) -> str:
    """The variable of one Kafka security setting: ``sasl.password`` ->
    ``LUKHAS_KAFKA_SASL_PASSWORD``."""
    return "LUKHAS_KAFKA_" + key.upper().replace(".", "_")


def kafka_security(env: Mapping[str, str]) -> KafkaSecurity:
    """The Kafka security settings of the environment: the properties file named by
    ``LUKHAS_KAFKA_CONFIG`` (``--kafka-config``), and a ``LUKHAS_KAFKA_<SETTING>`` variable
    for each setting (``kafka_variable``); neither: plaintext. ``InvalidConfigError`` for a
    setting given by both with different values (which one was meant cannot be known), and
    for settings that do not go together (``streams.security``)."""
    path = env.get("LUKHAS_KAFKA_CONFIG") or None
    props = read_properties(Path(path)) if path else {}
    sources = [path] if path else []
    for key in PROPERTY_KEYS:
        name = kafka_variable(key)
        value = env.get(name)
        if not value:
            continue
        if key in props and props[key] != value:
            raise InvalidConfigError(f"{key} is set by both {path} and {name}, differently")
        props[key] = value
        sources.append(name)
    return KafkaSecurity.from_properties(props, ", ".join(sources))


#: The largest dedupe window (records of a partition).
MAX_DEDUPE_WINDOW = 100_000_000


def _window(raw: str | None) -> int | None:
    if not raw:
        return None
    if not (raw.isascii() and raw.isdigit() and 1 <= int(raw) <= MAX_DEDUPE_WINDOW):
        raise OpsError(f"LUKHAS_DEDUPE_WINDOW must be 1 to {MAX_DEDUPE_WINDOW} records, "
                       f"got {raw[:40]!r}")  # fmt: skip
    return int(raw)


def fold_sizing(window: int | None) -> dict[str, Any]:
    """The ``WorkerConfig`` fields of a dedupe window (none: the defaults): the window, and a
    journal that holds at least it."""
    if window is None:
        return {}
    from lukhas_context.processors.fold import Limits

    return {"limits": Limits(dedupe_window=window), "journal_offsets": max(1_000_000, window)}


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


@dataclass(frozen=True, slots=True)
class WorkerFlags:
    """The options of ``lukhas worker``, by their parameter names (``redis_url`` is taken and
    not used yet: fencing locks land later)."""

    bootstrap: str
    state_dir: Path
    topic_prefix: str
    group: str
    api_host: str
    api_port: int
    advertised_url: str | None
    peer_url: str | None
    redis_url: str | None
    max_batch: int
    instance_id: str | None
    session_timeout: float
    checkpoint_dir: Path | None
    checkpoint_interval: float | None
    checkpoint_keep: int
    expiry_interval: float
    expiry_batch: int
    max_connections: int | None
    header_timeout: float
    body_timeout: float
    idle_timeout: float
    history_index: bool
    schema_dir: Path | None
    prune_interval: float | None
    dedupe_window: int | None
    exactly_once: bool = True
    change_compression: str = "lz4"
    standby_replicas: int = 0
    rebalance_timeout: float | None = None
    memory_budget: int | None = None
    api_token_file: Path | None = None
    api_write_token_file: Path | None = None
    cors_origin: tuple[str, ...] = ()
    schema_registry: str | None = None
    coalesce_changes: bool = False
    evict_dead_peers: bool = False
    ttl_policy: tuple[TtlPolicy, ...] = ()
    ttl_touch_interval: float = 60.0
    ttl_touch_batch: int = 10_000
    read_queue_budget: int = 512
    round_budget_ms: int = 1000
    advice_interval: float = 15.0
    advice_cooldown: float = 300.0


class Settings:
    """One command's sources: its options (given to each method), the environment (read once,
    by ``load``) and the data dir's ``cluster.json`` (read on first use, at most once)."""

    def __init__(self, env: Environment, data_dir: Path | None = None) -> None:
        self.env = env
        # An option's data dir is used (and shown) as given; the environment's is absolute.
        self.data_dir = data_dir or env.data_dir
        self._recorded: dict[str, Any] | None = None

    @classmethod
    def load(cls, data_dir: Path | None = None) -> Settings:
        return cls(Environment.read(), data_dir)

    def recorded(self) -> dict[str, Any]:
        """What ``lukhas up`` recorded in the data dir ({} when nothing is); raises
        ``ClusterStateError`` when ``cluster.json`` is unreadable."""
        if self._recorded is None:
            self._recorded = read_state(self.data_dir)
        return self._recorded

    def require_cluster(self) -> None:
        """Raises ``NotConfiguredError`` unless ``lukhas up`` recorded a cluster in the data
        dir: without one, the default ports may well be someone else's cluster, not this dir's."""
        if not self.recorded():
            raise NotConfiguredError(
                f"no cluster in {self.data_dir} (`lukhas up` records one there; or pass "
                "--data-dir, or set LUKHAS_DATA_DIR)"
            )

    def cluster_spec(self, **options: Any) -> ClusterSpec:
        """The cluster of the data dir: what ``up`` recorded there, then the options given
        (those that are not None)."""
        recorded: Any = self.recorded().get("spec") or {}
        fields = {"topic_prefix": self.env.topic_prefix, **recorded}
        fields.update({k: v for k, v in options.items() if v is not None})
        env = self.env
        return ClusterSpec(
            data_dir=self.data_dir, kafka_home=env.kafka_home, kafka_cache=env.kafka_cache,
            kafka_security=env.kafka_security, **fields,
        )  # fmt: skip

    def client_config(
        self, bootstrap: str | None, api: str | None, *, kafka: bool = True,
        read_api: bool = False,
    ) -> ClientConfig:  # fmt: skip
        """The options (or their variables), else what ``lukhas up`` recorded. Raises
        ``NotConfiguredError`` when what the command needs is missing: ``kafka`` (writes,
        watches, checkpoints) or the ``read_api`` (reads, outcomes, dry runs)."""
        recorded = self.recorded()
        processors: Any = recorded.get("processors") or [{}]
        bootstrap = bootstrap or recorded.get("bootstrap")
        api = api or processors[0].get("api")
        hint = "" if recorded else f" (no cluster in {self.data_dir})"
        if kafka and not bootstrap:
            raise NotConfiguredError(
                f"no Kafka: pass --bootstrap, set LUKHAS_BOOTSTRAP, or run `lukhas up` first{hint}"
            )
        if read_api and not api:
            raise NotConfiguredError(
                f"no read API: pass --api, set LUKHAS_API_URL, or run `lukhas up` first{hint}"
            )
        redis_url = os.environ.get("LUKHAS_REDIS_URL") or recorded.get("redis_url")
        config = ClientConfig(
            bootstrap=str(bootstrap or ""), api_url=api, topics=Topics(self.env.topic_prefix),
            redis_url=redis_url, api_token=self.env.api_token,
            kafka_security=self.env.kafka_security,
        )  # fmt: skip
        timeout_s = self.env.timeout_s
        return config if timeout_s is None else replace(config, timeout_s=timeout_s)

    def api_token(self, path: Path | None) -> str | None:
        """The read API's token: the first line of ``path``, else ``LUKHAS_API_TOKEN``;
        ``OpsError`` for a file that cannot be read or holds none."""
        if path is None:
            return self.env.api_token
        return _token_file(path)

    @staticmethod
    def write_token(path: Path | None) -> str | None:
        """The API's write token: the first line of ``path`` (None: no path, read-only);
        ``OpsError`` as for ``api_token``. No variable: a write token is given on purpose."""
        return None if path is None else _token_file(path)

    def worker_config(self, flags: WorkerFlags) -> WorkerConfig:
        """The config of ``lukhas worker``: its options, and the test-only checkpoint pause."""
        # The processors are imported by the commands that run them only: they take a
        # while to import, and most commands never fold.
        from lukhas_context.processors.config import WorkerConfig
        from lukhas_context.processors.listener import ListenerLimits
        from lukhas_context.processors.ttl_policy import TtlPolicies

        f = flags
        return WorkerConfig(
            bootstrap=f.bootstrap, state_dir=f.state_dir, topics=Topics(f.topic_prefix),
            kafka_security=self.env.kafka_security, group_id=f.group, api_host=f.api_host,
            api_port=f.api_port,
            advertised_url=f.advertised_url, peer_url=f.peer_url,
            max_batch_records=f.max_batch, instance_id=f.instance_id,
            session_timeout_ms=int(f.session_timeout * 1000), checkpoint_dir=f.checkpoint_dir,
            rebalance_timeout_ms=int((f.rebalance_timeout or max(30.0, f.session_timeout)) * 1000),
            checkpoint_interval_s=f.checkpoint_interval, checkpoint_keep=f.checkpoint_keep,
            expiry_interval_s=f.expiry_interval, expiry_batch=f.expiry_batch,
            history_index=f.history_index, schema_dir=f.schema_dir,
            prune_interval_s=f.prune_interval, exactly_once=f.exactly_once,
            standby_replicas=f.standby_replicas, memory_budget_bytes=f.memory_budget,
            change_compression=f.change_compression,
            api_token=self.api_token(f.api_token_file), cors_origins=tuple(f.cors_origin),
            api_write_token=self.write_token(f.api_write_token_file),
            schema_registry_url=f.schema_registry or None,
            coalesce_changes=f.coalesce_changes, evict_dead_peers=f.evict_dead_peers,
            ttl_policies=TtlPolicies(f.ttl_policy) if f.ttl_policy else None,
            ttl_touch_interval_s=f.ttl_touch_interval, ttl_touch_batch=f.ttl_touch_batch,
            read_queue_budget=f.read_queue_budget or None,
            round_budget_s=f.round_budget_ms / 1000,
            advice_interval_s=f.advice_interval, advice_cooldown_s=f.advice_cooldown,
            **fold_sizing(f.dedupe_window or self.env.dedupe_window),
            checkpoint_pause_s=self.env.checkpoint_pause_s,
            listener=ListenerLimits(
                f.max_connections, f.header_timeout, f.body_timeout, f.idle_timeout
            ),
        )  # fmt: skip

    def restore_config(
        self, bootstrap: str | None, store_dir: Path | None, checkpoint_dir: Path | None
    ) -> WorkerConfig:
        """The config an offline restore folds with: Kafka as for a client, the stores in
        ``store_dir`` or else the local cluster's processor's (``NotConfiguredError`` when the
        data dir holds no cluster)."""
        from lukhas_context.processors.config import WorkerConfig

        kafka = self.client_config(bootstrap, None).bootstrap
        if store_dir is None:
            if not self.recorded():
                raise NotConfiguredError(
                    "no --state-dir and no local cluster recorded in the data dir"
                )
            store_dir = state_dir(self.data_dir)
        return WorkerConfig(
            bootstrap=str(kafka), state_dir=store_dir, topics=Topics(self.env.topic_prefix),
            kafka_security=self.env.kafka_security, checkpoint_dir=checkpoint_dir,
            schema_dir=self.env.schema_dir,
            **fold_sizing(self.env.dedupe_window),
        )  # fmt: skip

    def transaction_tool(self, bootstrap: str | None) -> tuple[TransactionTool, ClientConfig]:
        """Kafka's ``TransactionsCommand`` against the cluster (its jars fetched on first use),
        each run bounded by ``LUKHAS_TIMEOUT`` but never under 60 s (a JVM start), and the
        client config that names the WAL."""
        env = self.env
        config = self.client_config(bootstrap, None)
        dist = ensure_kafka_tools(DEFAULT_VERSION, env.kafka_cache, env.kafka_home)
        timeout = max(60.0, env.timeout_s or 0.0)
        tool = TransactionTool.create(
            dist, config.bootstrap, self.data_dir, timeout, config.kafka_security
        )
        return tool, config


def _token_file(path: Path) -> str:
    """The first line of a token file; ``OpsError`` for one that cannot be read or holds
    none."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise OpsError(f"cannot read the API token file {path}: {exc}") from None
    token = lines[0].strip() if lines else ""
    if not token:
        raise OpsError(f"the API token file {path} is empty")
    return token
