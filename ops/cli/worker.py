"""``lukhas worker``: one processor worker in the foreground, until SIGTERM."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.errors import F, handle_errors
from lukhas_context.ops.cli.options import checkpoint_dir_option, kafka_config_option
from lukhas_context.ops.config import Settings, WorkerFlags

__all__ = ["worker"]

#: A connection deadline of the read API.
_CONNECTION_S = params.Seconds(0.0, 3600.0, open_low=True)


class _TtlPolicy(params.Parsed):
    """One ``--ttl-policy``; ``LUKHAS_TTL_POLICY`` holds several separated by ``;`` (a
    duration or key never has one; empty parts are skipped)."""

    def split_envvar_value(self, rv: str) -> list[str]:
        return [part.strip() for part in rv.split(";") if part.strip()]


_TTL_POLICY = _TtlPolicy("POLICY", "lukhas_context.processors.ttl_policy:parse_policy")


def _opt(name: str, kind: click.ParamType, default: float | None, help: str) -> Callable[[F], F]:
    """An option of a bounded type whose default the help shows (None: no default shown)."""
    return click.option(name, type=kind, default=default, show_default=True, help=help)


def _api_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A URL a worker may advertise (the routing table's rule), else a usage error."""
    from lukhas_context.processors.members import api_url_problem

    problem = None if value is None else api_url_problem(value)
    if problem is not None:
        raise click.BadParameter(problem)
    return value


def _registry_url(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A Schema Registry URL (``processors.mirror``), else a usage error; empty: none."""
    from lukhas_context.processors.exceptions import InvalidWorkerConfigError
    from lukhas_context.processors.mirror import check_registry_url

    if not value:
        return None
    try:
        return check_registry_url(value)
    except InvalidWorkerConfigError as exc:
        raise click.BadParameter(str(exc)) from None


@click.command()
@click.option("--bootstrap", required=True, help="Kafka bootstrap servers.")
@kafka_config_option
@click.option("--state-dir", type=click.Path(path_type=Path), required=True)
@click.option("--topic-prefix", default="lukhas", show_default=True, envvar="LUKHAS_TOPIC_PREFIX",
              help="Prefix of the topics' names [env LUKHAS_TOPIC_PREFIX].")  # fmt: skip
@click.option("--group", default="lukhas-materializer", show_default=True)
@click.option("--api-host", default="127.0.0.1", show_default=True)
@click.option("--api-port", type=params.PORT, default=18080, show_default=True)
@click.option(
    "--advertised-url",
    default=None,
    callback=_api_url,
    help="The read API's URL as clients reach it [default: http://API_HOST:API_PORT].",
)
@click.option("--peer-url", default=None, callback=_api_url,
              help="The URL other workers forward to, if not --advertised-url (e.g. a container "
              "name, where clients use a published port).")  # fmt: skip
@click.option("--redis-url", default=None, help="Redis (fencing locks; used by later features).")
@click.option("--max-batch", type=click.IntRange(1, 1_000_000), default=50_000, show_default=True)
@click.option(
    "--instance-id",
    default=None,
    help="Static group member id: a restart takes its partitions back at once.",
)
@_opt("--session-timeout", params.Seconds(1.0, 1800.0), 10.0,
      "SECONDS without a heartbeat before the group moves this worker's partitions.")  # fmt: skip
@click.option("--rebalance-timeout", type=params.Seconds(1.0, 1800.0), default=None,
              envvar="LUKHAS_REBALANCE_TIMEOUT",
              help="SECONDS the group waits, in a rebalance, for each member to finish its "
                   "revocation and rejoin; a slower member is dropped and rejoins, which "
                   "starts another rebalance [env LUKHAS_REBALANCE_TIMEOUT; default: 30, or "
                   "the session timeout if longer].")  # fmt: skip
@checkpoint_dir_option
@_opt("--checkpoint-interval", params.Seconds(1.0, 7 * 86_400.0), None,
      "Checkpoint the cluster every SECONDS (the owner of partition 0 asks).")  # fmt: skip
@_opt("--checkpoint-keep", click.IntRange(1, 10_000), 3, "Checkpoints kept per partition.")
@_opt("--expiry-interval", params.Seconds(0.01, 3600.0), 0.5,
      "Sweep the expiry index every SECONDS.")  # fmt: skip
@_opt("--expiry-batch", click.IntRange(1, 1_000_000), 10_000,
      "Most Expire events one sweep appends per partition.")  # fmt: skip
@click.option("--ttl-policy", "ttl_policy", type=_TTL_POLICY, multiple=True,
              envvar="LUKHAS_TTL_POLICY", metavar="PREFIX=base=D,min=D,max=D,per_read=D[,hot=N]",
              help="Access-driven TTL for the contexts whose id starts with PREFIX (the longest "
                   "matching prefix wins; durations 500ms, 5s, 30m, 24h, 7d): each interval, a "
                   "context read N times gets ttl clamp(base + (N - hot) * per_read, min, max) "
                   "by a Touch event the owner appends; repeat for more [env LUKHAS_TTL_POLICY, "
                   "policies separated by ';'; default: none, off].")  # fmt: skip
@click.option("--ttl-touch-interval", type=params.Seconds(0.1, 86_400.0), default=60.0,
              show_default=True, envvar="LUKHAS_TTL_TOUCH_INTERVAL",
              help="SECONDS between the TTL policies' sweeps: each read context is touched at "
                   "most once per interval [env LUKHAS_TTL_TOUCH_INTERVAL].")  # fmt: skip
@_opt("--ttl-touch-batch", click.IntRange(1, 1_000_000), 10_000,
      "Most Touch events one TTL sweep appends per partition (the most read first).")  # fmt: skip
@_opt("--max-connections", click.IntRange(1, 1_000_000), None,
      "Cap on open read API connections [default: from the file-descriptor limit].")  # fmt: skip
@_opt("--header-timeout", _CONNECTION_S, 10.0,
      "SECONDS from a request's first byte until its headers are complete (else 408).")  # fmt: skip
@_opt("--body-timeout", _CONNECTION_S, 30.0,
      "SECONDS from a request's headers until its body is complete (else closed).")  # fmt: skip
@_opt("--idle-timeout", _CONNECTION_S, 30.0, "SECONDS a keep-alive connection may stay idle.")
@click.option("--schema-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              envvar="LUKHAS_SCHEMA_DIR",
              help="Newer writer schemas (ContextEvent.vN.avsc) to decode too "
                   "[env LUKHAS_SCHEMA_DIR].")  # fmt: skip
@_opt("--advice-interval", params.Seconds(0.0, 86_400.0, open_low=True), 15.0,
      "Compute the scaling advice (lukhas_desired_workers) every SECONDS.")  # fmt: skip
@_opt("--advice-cooldown", params.Seconds(0.0, 86_400.0), 300.0,
      "SECONDS lukhas_desired_workers waits with no higher figure before it goes down "
      "(up is at once).")  # fmt: skip
@_opt("--prune-interval", params.Seconds(1.0, 7 * 86_400.0), None,
      "Every SECONDS, delete the WAL records no restore path needs (as `wal prune`).")  # fmt: skip
@click.option("--dedupe-window", type=click.IntRange(1, 100_000_000), default=None,
              envvar="LUKHAS_DEDUPE_WINDOW", metavar="RECORDS",
              help="A retried event is recognised within this many records of its partition "
                   "[env LUKHAS_DEDUPE_WINDOW; default 100000]. Part of the fold: give every "
                   "worker and tool of a cluster the same.")  # fmt: skip
@click.option("--history-index/--no-history-index", default=True, show_default=True,
              help="Keep the index `lukhas history` reads (off: faster folds).")  # fmt: skip
@click.option("--exactly-once/--at-least-once", default=True, show_default=True,
              envvar="LUKHAS_EXACTLY_ONCE",
              help="Publish each round's changes in a Kafka transaction of the partition's own "
                   "producer, with the WAL offset: a zombie's round is aborted by the broker "
                   "(at least once: one idempotent producer, faster; a paused worker's last "
                   "round can still reach the change topic after its partition moved) "
                   "[env LUKHAS_EXACTLY_ONCE=1|0].")  # fmt: skip
@click.option("--change-compression", type=click.Choice(["none", "lz4", "zstd"]),
              default="lz4", show_default=True, envvar="LUKHAS_CHANGE_COMPRESSION",
              help="Compress the change stream's batches (a change carries the whole "
                   "document: lz4 or zstd move a growing conversation's bytes at a fraction "
                   "of the cost) [env LUKHAS_CHANGE_COMPRESSION].")  # fmt: skip
@click.option("--coalesce-changes/--every-change", default=False, show_default=True,
              envvar="LUKHAS_COALESCE_CHANGES",
              help="Publish only each context's last change of a round (what compaction keeps): "
                   "a context written many times a second costs the change stream once a "
                   "round; subscribers see its latest version, not every version "
                   "[env LUKHAS_COALESCE_CHANGES=1].")  # fmt: skip
@click.option("--evict-dead-peers/--no-evict-dead-peers", default=False, show_default=True,
              envvar="LUKHAS_EVICT_DEAD_PEERS",
              help="Probe the other workers' read APIs and remove one that refuses "
                   "connections (its process is gone) from the group, so the group hands its "
                   "partitions on at once instead of after its session timeout "
                   "[env LUKHAS_EVICT_DEAD_PEERS=1].")  # fmt: skip
@click.option("--standby-replicas", type=click.IntRange(0, 8), default=0, show_default=True,
              envvar="LUKHAS_STANDBY_REPLICAS",
              help="Warm copies the group keeps of each partition on other workers, following "
                   "the change topic; a partition whose worker dies moves to its caught-up "
                   "copy [env LUKHAS_STANDBY_REPLICAS].")  # fmt: skip
@click.option("--memory-budget", type=params.Bytes(128 * 1024 * 1024), default="1GiB",
              envvar="LUKHAS_MEMORY_BUDGET", show_default=True,
              help="SIZE (512MiB, 2GiB) the worker keeps its memory within: one RocksDB block "
                   "cache and write buffer manager for all its stores, read caches bounded by "
                   "bytes, smaller rounds and pauses near it; reported in /metrics "
                   "(lukhas_memory_bytes) [env LUKHAS_MEMORY_BUDGET].")  # fmt: skip
@click.option("--read-queue-budget", type=click.IntRange(0, 1_000_000), default=512,
              show_default=True, envvar="LUKHAS_READ_QUEUE_BUDGET", metavar="READS",
              help="Reads in progress at once (waits for an offset included) past which new "
                   "reads are answered 503 with Retry-After, without being done; health, "
                   "metrics and members never are (0: never shed) "
                   "[env LUKHAS_READ_QUEUE_BUDGET].")  # fmt: skip
@click.option("--round-budget-ms", type=click.IntRange(1, 600_000), default=1000,
              show_default=True, envvar="LUKHAS_ROUND_BUDGET_MS", metavar="MS",
              help="Target time of one round's fold (reads wait while it runs): rounds are "
                   "sized to it, and after one that took longer fetching pauses for about the "
                   "overrun (at most 0.5 s) [env LUKHAS_ROUND_BUDGET_MS].")  # fmt: skip
@click.option("--api-token-file", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="A file whose first line is a bearer token every read API request but the "
                   "probes (/livez, /readyz, /healthz) must carry; without it "
                   "LUKHAS_API_TOKEN, if set, is the token (none: no token needed).")  # fmt: skip
@click.option("--api-write-token-file", type=click.Path(path_type=Path, dir_okay=False),
              default=None,
              help="A file whose first line is the bearer token of the API's routes that "
                   "change something (POST /v1/checkpoints: the console's Start a "
                   "checkpoint); it reads too. Without it the API is read-only.")  # fmt: skip
@click.option("--cors-origin", multiple=True, metavar="ORIGIN",
              help="An origin (https://console.example:8443, or * for any) whose pages may "
                   "use the read API from a browser; repeat for more.")  # fmt: skip
@click.option("--schema-registry", default=None, metavar="URL", envvar="LUKHAS_SCHEMA_REGISTRY_URL",
              callback=_registry_url,
              help="A Schema Registry (Confluent-compatible API): the changes are also "
                   "written, in its wire format, to PREFIX.context.changes.sr for Kafka "
                   "Connect, ksqlDB, Flink [env LUKHAS_SCHEMA_REGISTRY_URL].")  # fmt: skip
@handle_errors
def worker(**flags: Any) -> None:
    """Run one processor worker in the foreground (SIGTERM stops it cleanly)."""
    from lukhas_context.processors.worker import run_worker

    logging.getLogger("lukhas_context").setLevel(logging.INFO)
    if logging.getLogger().level >= logging.WARNING:  # -v/-vv keep the library's lines
        logging.getLogger("aiokafka").setLevel(logging.WARNING)  # a worker's log keeps them
        # and the group's rebalances (coordinator found, group joined, leader elected): rare,
        # and what an operator asks first when partitions are not served
        logging.getLogger("aiokafka.consumer.group_coordinator").setLevel(logging.INFO)
    if flags.get("coalesce_changes") and not flags.get("exactly_once", True):
        raise click.UsageError(
            "--coalesce-changes (LUKHAS_COALESCE_CHANGES) needs --exactly-once "
            "(LUKHAS_EXACTLY_ONCE=1, the default): at least once, a crash can leave half a "
            "coalesced round on the change topic, a state no prefix of the WAL has"
        )
    if flags.get("ttl_policy"):  # each parsed alone already; together: no prefix twice
        from lukhas_context.processors.ttl_policy import InvalidTtlPolicyError, TtlPolicies

        try:
            TtlPolicies(flags["ttl_policy"])
        except InvalidTtlPolicyError as exc:
            raise click.UsageError(f"--ttl-policy (LUKHAS_TTL_POLICY): {exc}") from None
    config = Settings.load().worker_config(WorkerFlags(**flags))
    config.event_codec()  # a schema directory that is not usable: one line, before anything
    sys.exit(run_worker(config))
