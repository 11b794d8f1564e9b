"""The ``lukhas`` command.

Exit codes: 0 success; 1 an error (one line on stderr: ``lukhas: error: <reason>``); 2 a usage
error (one line: ``lukhas: usage error: <reason>``); 3 not found (the context, or the WAL
position); and for a write waited on (``--wait``), ``lukhas outcome`` and a dry run: 4 conflict,
5 rejected, 6 dead-lettered.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sys
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
import orjson
from aiokafka.errors import KafkaError

from lukhas_context.ops import params
from lukhas_context.ops.config import Environment, recorded_cluster
from lukhas_context.schemas.exceptions import LukhasError
from lukhas_context.streams.client import (
    ClientConfig,
    Context,
    ContextClient,
    DryRun,
    Outcome,
    Receipt,
)
from lukhas_context.streams.exceptions import (
    ContextNotFoundError,
    NoSuchPositionError,
    ReadError,
    ValidationError,
)
from lukhas_context.streams.topics import Topics
from lukhas_context.streams.validation import check_patch
from lukhas_context.streams.watch import Gap

F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_REJECTED = 5
EXIT_DEAD_LETTERED = 6
#: The exit code of each outcome of an event (a waited write, `lukhas outcome`, a dry run).
EXIT_OF_STATUS = {
    "applied": 0,
    "conflict": EXIT_CONFLICT,
    "rejected": EXIT_REJECTED,
    "dead_lettered": EXIT_DEAD_LETTERED,
}
EXIT_CODES = (
    "Exit codes: 0 success; 1 error (one line on stderr); 2 usage error; 3 not found (the "
    "context, or the WAL position); for a write waited on (--wait), `outcome` and --dry-run: "
    "4 conflict, 5 rejected, 6 dead-lettered."
)


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"lukhas: error: {message}", err=True)
    sys.exit(code)


def _errors(fn: F) -> F:
    """Turns the distribution's errors into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ContextNotFoundError as exc:
            _fail(f"context {exc.args[0]!r} not found", EXIT_NOT_FOUND)
        except NoSuchPositionError as exc:
            _fail(str(exc), EXIT_NOT_FOUND)
        except ValidationError as exc:  # an argument the client refused: nothing was sent
            click.echo(f"lukhas: usage error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except LukhasError as exc:
            _fail(f"{type(exc).__name__}: {exc}")
        except KafkaError as exc:  # one the distribution did not wrap: still one line
            _fail(f"Kafka: {exc}")
        except OSError as exc:
            _fail(f"{type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]


class _UsageError(click.UsageError):
    """A usage error shown on one line, as every other error of the command."""

    def show(self, file: Any = None) -> None:
        where = self.ctx.command_path if self.ctx is not None else "lukhas"
        click.echo(f"lukhas: usage error: {self.format_message()} (see `{where} --help`)", err=True)


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, _UsageError | click.exceptions.NoArgsIsHelpError):
        return exc  # one line already, or the help asked for by giving no arguments
    # A bad parameter's message names it: "Invalid value for '--x': ...".
    bad = isinstance(exc, click.BadParameter)
    return _UsageError(exc.format_message() if bad else exc.message, exc.ctx)


class _Group(click.Group):
    """The command group: its usage errors, and its commands', are one line on stderr."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            _raise_one_line(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _raise_one_line(exc)


def _raise_one_line(exc: click.UsageError) -> NoReturn:
    converted = _one_line(exc)
    if converted is exc:
        raise exc
    raise converted from exc


def _print(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


@click.group(cls=_Group, epilog=EXIT_CODES)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """LUKHAS Context: an event-sourced context store on Kafka and RocksDB."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose and ctx.invoked_subcommand != "worker":
        # The Kafka client logs every failed connection attempt at ERROR; a command says
        # what failed in one line of its own (-v shows the library's lines too).
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


# ---------------------------------------------------------------- local cluster


def _cluster_options(fn: F) -> F:
    option = click.option(
        "--data-dir",
        type=click.Path(path_type=Path),
        default=None,
        help="Cluster data dir [env LUKHAS_DATA_DIR, default ./.lukhas].",
    )
    return option(fn)


def _cluster(data_dir: Path | None, **overrides: Any) -> Any:
    """The cluster of a data dir: what `up` recorded there, then the options given now."""
    from lukhas_context.ops.cluster import ClusterSpec, LocalCluster

    env = Environment.read()
    data_dir = data_dir or env.data_dir
    recorded: Any = recorded_cluster(data_dir).get("spec") or {}
    fields = {"topic_prefix": env.topic_prefix, **recorded}
    fields.update({k: v for k, v in overrides.items() if v is not None})
    spec = ClusterSpec(
        data_dir=data_dir, kafka_home=env.kafka_home, kafka_cache=env.kafka_cache, **fields
    )
    return LocalCluster(spec)


@cli.command()
@_cluster_options
@click.option("--brokers", type=click.IntRange(1, 9), default=None, help="Kafka brokers (1 or 3).")
@click.option("--bootstrap", default=None, help="Use this existing Kafka cluster: start no broker.")
@click.option("--port-base", type=click.IntRange(1, 65535 - 18), default=None,
              help="First broker port (default 19092).")  # fmt: skip
@click.option("--redis-port", type=params.PORT, default=None, help="Redis port (default 16379).")
@click.option("--api-port", type=params.PORT, default=None,
              help="Processor read API port (default 18080).")  # fmt: skip
@click.option("--partitions", type=click.IntRange(1, 1000), default=None, help="WAL partitions.")
@click.option("--no-processor", is_flag=True, help="Start Kafka and Redis only.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@_errors
def up(data_dir: Path | None, brokers: int | None, bootstrap: str | None, port_base: int | None,
       redis_port: int | None, api_port: int | None, partitions: int | None,
       no_processor: bool, as_json: bool) -> None:  # fmt: skip
    """Start (or resume) the local cluster: Kafka, Redis, topics, one processor."""
    env = Environment.read()
    cluster = _cluster(
        data_dir, brokers=brokers, bootstrap=bootstrap or env.bootstrap, port_base=port_base,
        redis_port=redis_port, api_port=api_port, partitions=partitions,
        start_processor=not no_processor,
    )  # fmt: skip
    status = cluster.up()
    if as_json:
        _print(status)
        return
    _echo_status(status)
    if status.get("started"):
        click.echo(f"started    {', '.join(status['started'])}")


def _echo_status(status: dict[str, Any]) -> None:
    kafka = status["kafka"]
    click.echo(
        f"kafka      {kafka['bootstrap']}  brokers={kafka['brokers']} ready={kafka['ready']}"
    )
    click.echo(f"redis      {status['redis']['url']}  ready={status['redis']['ready']}")
    for p in status["processors"]:
        click.echo(f"processor  {p['api']}  pid={p['pid']} ready={p.get('ready')}"
                   + (f"  digest={p['digest']}" if p.get("digest") else ""))  # fmt: skip
        for part in p.get("partitions", []):
            held = part.get("open_transaction_from")
            click.echo(f"{_partition_line(part)}  opened from {part['opened_from']}"
                       + ("" if held is None else f"  HELD by an open transaction from "
                          f"offset {held} (lukhas transactions open)"))  # fmt: skip


def _partition_line(p: dict[str, Any]) -> str:
    """One partition of a checkpoint manifest or of ``/v1/partitions``."""
    return (f"  partition {p['partition']:>3}  next_offset={p['next_offset']:<10} "
            f"documents={p['documents']:<8} digest={p['digest']}")  # fmt: skip


def _require_cluster(data_dir: Path | None) -> None:
    """Fails unless `lukhas up` recorded a cluster in the data dir: without one, the default
    ports may well be someone else's cluster, not this dir's."""
    where = data_dir or Environment.read().data_dir
    if not recorded_cluster(where):
        _fail(f"no cluster in {where} (`lukhas up` records one there; or pass --data-dir, "
              "or set LUKHAS_DATA_DIR)")  # fmt: skip


@cli.command()
@_cluster_options
@click.option("--json", "as_json", is_flag=True)
@click.option("--processor-only", is_flag=True, help="Stop the processor, leave Kafka and Redis.")
@_errors
def down(data_dir: Path | None, as_json: bool, processor_only: bool) -> None:
    """Stop what `up` started, by pid. Keeps all data."""
    _require_cluster(data_dir)
    result = _cluster(data_dir).down(processors_only=processor_only)
    if as_json:
        _print(result)
    else:
        for what in ("stopped", "killed", "not_running"):
            if result.get(what):
                click.echo(f"{what.replace('_', ' '):12} {', '.join(result[what])}")


@cli.command()
@_cluster_options
@click.option("--json", "as_json", is_flag=True)
@_errors
def status(data_dir: Path | None, as_json: bool) -> None:
    """Show whether Kafka, Redis and the processors of the data dir's cluster are up and
    ready. Exit 1 (after the report) when a part is not ready, or the data dir holds no
    cluster."""
    _require_cluster(data_dir)
    result = _cluster(data_dir).status()
    if as_json:
        _print(result)
    else:
        _echo_status(result)
    waiting = [name for name in ("kafka", "redis") if not result[name]["ready"]]
    waiting += [f"processor {p['api']}" for p in result["processors"] if not p.get("ready")]
    if waiting:
        _fail(f"not ready: {', '.join(waiting)}")


@cli.command()
@click.option("--bootstrap", required=True, help="Kafka bootstrap servers.")
@click.option("--state-dir", type=click.Path(path_type=Path), required=True)
@click.option("--topic-prefix", default="lukhas", show_default=True)
@click.option("--group", default="lukhas-materializer", show_default=True)
@click.option("--api-host", default="127.0.0.1", show_default=True)
@click.option("--api-port", type=params.PORT, default=18080, show_default=True)
@click.option("--redis-url", default=None, help="Redis (fencing locks; used by later features).")
@click.option("--max-batch", type=click.IntRange(1, 1_000_000), default=50_000, show_default=True)
@click.option(
    "--instance-id",
    default=None,
    help="Static group member id: a restart takes its partitions back at once.",
)
@click.option(
    "--session-timeout",
    type=params.Seconds(1.0, 1800.0),
    default=10.0,
    show_default=True,
    help="SECONDS without a heartbeat before the group moves this worker's partitions.",
)
@click.option(
    "--checkpoint-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where checkpoints are kept [default: STATE_DIR/checkpoints].",
)
@click.option(
    "--checkpoint-interval",
    type=params.Seconds(1.0, 7 * 86_400.0),
    default=None,
    help="Checkpoint the cluster every SECONDS (the owner of partition 0 asks).",
)
@click.option(
    "--checkpoint-keep",
    type=click.IntRange(1, 10_000),
    default=3,
    show_default=True,
    help="Checkpoints kept per partition.",
)
@click.option(
    "--expiry-interval",
    type=params.Seconds(0.01, 3600.0),
    default=0.5,
    show_default=True,
    help="Sweep the expiry index every SECONDS.",
)
@click.option(
    "--expiry-batch",
    type=click.IntRange(1, 1_000_000),
    default=10_000,
    show_default=True,
    help="Most Expire events one sweep appends per partition.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(1, 1_000_000),
    default=None,
    help="Cap on open read API connections [default: from the file-descriptor limit].",
)
@click.option(
    "--header-timeout",
    type=params.Seconds(0.0, 3600.0, open_low=True),
    default=10.0,
    show_default=True,
    help="SECONDS from a request's first byte until its headers are complete (else 408).",
)
@click.option(
    "--body-timeout",
    type=params.Seconds(0.0, 3600.0, open_low=True),
    default=30.0,
    show_default=True,
    help="SECONDS from a request's headers until its body is complete (else closed).",
)
@click.option(
    "--idle-timeout",
    type=params.Seconds(0.0, 3600.0, open_low=True),
    default=30.0,
    show_default=True,
    help="SECONDS a keep-alive connection may stay idle.",
)
def worker(bootstrap: str, state_dir: Path, topic_prefix: str, group: str, api_host: str,
           api_port: int, redis_url: str | None, max_batch: int,
           instance_id: str | None, session_timeout: float, checkpoint_dir: Path | None,
           checkpoint_interval: float | None, checkpoint_keep: int, expiry_interval: float,
           expiry_batch: int, max_connections: int | None, header_timeout: float,
           body_timeout: float, idle_timeout: float) -> None:  # fmt: skip
    """Run one processor worker in the foreground (SIGTERM stops it cleanly)."""
    from lukhas_context.processors.config import WorkerConfig
    from lukhas_context.processors.listener import ListenerLimits
    from lukhas_context.processors.worker import run_worker

    logging.getLogger("lukhas_context").setLevel(logging.INFO)
    logging.getLogger("aiokafka").setLevel(logging.WARNING)  # a worker's log keeps them
    config = WorkerConfig(
        bootstrap=bootstrap, state_dir=state_dir, topics=Topics(topic_prefix), group_id=group,
        api_host=api_host, api_port=api_port, max_batch_records=max_batch,
        instance_id=instance_id, session_timeout_ms=int(session_timeout * 1000),
        checkpoint_dir=checkpoint_dir,
        checkpoint_interval_s=checkpoint_interval, checkpoint_keep=checkpoint_keep,
        expiry_interval_s=expiry_interval, expiry_batch=expiry_batch,
        checkpoint_pause_s=Environment.read().checkpoint_pause_s,
        listener=ListenerLimits(max_connections, header_timeout, body_timeout, idle_timeout),
    )  # fmt: skip
    sys.exit(run_worker(config))


@cli.command()
@click.option(
    "--partition",
    "-p",
    "partitions",
    type=params.PARTITION,
    multiple=True,
    required=True,
    help="Partition to rebuild (repeat for several).",
)
@click.option(
    "--checkpoint",
    "checkpoint_id",
    default=None,
    help="Checkpoint id to start from, or 'latest' [default: latest].",
)
@click.option("--from-scratch", is_flag=True, help="Replay the whole WAL instead.")
@click.option("--from-changes", is_flag=True, help="Start from the compacted change topic.")
@click.option(
    "--state-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="The worker's state dir [default: the local cluster's processor].",
)
@click.option(
    "--checkpoint-dir",
    type=click.Path(path_type=Path),
    default=None,
    help="Where checkpoints are kept [default: STATE_DIR/checkpoints].",
)
@click.option("--bootstrap", default=None, help="Kafka [env LUKHAS_BOOTSTRAP].")
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@_cluster_options
@_errors
def restore(partitions: tuple[int, ...], checkpoint_id: str | None, from_scratch: bool,
            from_changes: bool, state_dir: Path | None, checkpoint_dir: Path | None,
            bootstrap: str | None, as_json: bool, no_progress: bool,
            data_dir: Path | None) -> None:  # fmt: skip
    """Rebuild partition stores offline from a checkpoint (default: the newest valid one),
    from the change topic or from scratch, then fold the WAL on. The worker serving them
    must be stopped (`lukhas down --processor-only`); the old store is moved to
    STATE_DIR/quarantine, never deleted."""
    from lukhas_context.processors.config import WorkerConfig
    from lukhas_context.processors.offline import From, restore_offline

    if sum((checkpoint_id is not None, from_scratch, from_changes)) > 1:
        raise click.UsageError("choose one of --checkpoint, --from-scratch, --from-changes")
    env = Environment.read()
    bootstrap = _client_config(data_dir, bootstrap, None).bootstrap
    if state_dir is None:
        if not recorded_cluster(data_dir or env.data_dir):
            _fail("no --state-dir and no local cluster recorded in the data dir")
        state_dir = (data_dir or env.data_dir) / "processor-0" / "state"
    source = From.LATEST_CHECKPOINT
    if from_scratch:
        source = From.SCRATCH
    elif from_changes:
        source = From.CHANGES
    elif checkpoint_id not in (None, "latest"):
        source = From.CHECKPOINT
    config = WorkerConfig(
        bootstrap=str(bootstrap), state_dir=state_dir, topics=Topics(env.topic_prefix),
        checkpoint_dir=checkpoint_dir,
    )  # fmt: skip

    async def run() -> list[dict[str, Any]]:
        done = []
        for p in partitions:
            report = await restore_offline(
                config, p, source, checkpoint_id, progress=not no_progress
            )
            done.append(report.to_dict())
        return done

    reports = asyncio.run(run())
    if as_json:
        _print(reports if len(reports) > 1 else reports[0])
        return
    for r in reports:
        origin = r["source"] + (f" {r['checkpoint_id']}" if r["checkpoint_id"] else "")
        click.echo(f"partition {r['partition']}: from {origin}, folded {r['events_folded']} "
                   f"records to offset {r['next_offset']} in {r['seconds']:.2f} s; "
                   f"{r['documents']} documents, digest {r['digest']}")  # fmt: skip
        if r["moved_aside"]:
            click.echo(f"  previous store moved to {r['moved_aside']}")


# ---------------------------------------------------------------- context commands

T = TypeVar("T")


def _client_options(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON (only JSON on stdout).")(
        fn
    )
    fn = click.option("--api", default=None, help="Read API URL [env LUKHAS_API_URL].")(fn)
    fn = click.option("--bootstrap", default=None, help="Kafka [env LUKHAS_BOOTSTRAP].")(fn)
    fn = _cluster_options(fn)
    return fn


def _client_config(
    data_dir: Path | None,
    bootstrap: str | None,
    api: str | None,
    *,
    kafka: bool = True,
    read_api: bool = False,
) -> ClientConfig:
    """Options, else the environment, else what `lukhas up` recorded in the data dir. Fails
    when what the command needs is missing: ``kafka`` (writes, watches, checkpoints) or the
    ``read_api`` (reads, outcomes, dry runs)."""
    env = Environment.read()
    where = data_dir or env.data_dir
    recorded = recorded_cluster(where)
    processors: Any = recorded.get("processors") or [{}]
    bootstrap = bootstrap or env.bootstrap or recorded.get("bootstrap")  # type: ignore[assignment]
    api = api or env.api_url or processors[0].get("api")
    hint = "" if recorded else f" (no cluster in {where})"
    if kafka and not bootstrap:
        _fail(f"no Kafka: pass --bootstrap, set LUKHAS_BOOTSTRAP, or run `lukhas up` first{hint}")
    if read_api and not api:
        _fail(f"no read API: pass --api, set LUKHAS_API_URL, or run `lukhas up` first{hint}")
    config = ClientConfig(
        bootstrap=str(bootstrap or ""), api_url=api, topics=Topics(env.topic_prefix)
    )
    return config if env.timeout_s is None else replace(config, timeout_s=env.timeout_s)


def _with_client(
    config: ClientConfig, call: Callable[[ContextClient], Coroutine[Any, Any, T]]
) -> T:
    async def run() -> T:
        async with ContextClient(config) as client:
            return await call(client)

    return asyncio.run(run())


def _outcome_dict(outcome: Outcome) -> dict[str, Any]:
    return {"status": outcome.status, "version": outcome.version, "reason": outcome.reason,
            "duplicate_of": outcome.duplicate_of}  # fmt: skip


def _outcome_text(outcome: Outcome) -> str:
    return (outcome.status
            + (f" (version {outcome.version})" if outcome.version is not None else "")
            + (f": {outcome.reason}" if outcome.reason else ""))  # fmt: skip


def _exit_for(status: str) -> None:
    """Exits with the code of an outcome's status (nothing for ``applied``)."""
    code = EXIT_OF_STATUS.get(status, EXIT_ERROR)
    if code:
        sys.exit(code)


@dataclass(frozen=True, slots=True)
class _Written:
    """What a write command did: the dry run, or the receipt and (when waited for) its
    outcome, or why the outcome is unknown."""

    result: Receipt | DryRun
    outcome: Outcome | None = None
    unknown: str | None = None


def _result_out(written: _Written, as_json: bool) -> None:
    """Prints what a write did and exits with its outcome's code."""
    result = written.result
    if isinstance(result, DryRun):
        data = {"dry_run": True, "status": result.status, "version": result.version,
                "reason": result.reason, "kind": result.kind, "doc": result.doc,
                "checksum": result.checksum, "expires_at_ms": result.expires_at_ms}  # fmt: skip
        if as_json:
            _print(data)
        else:
            click.echo(f"dry run: {result.status} (version {result.version})"
                       + (f": {result.reason}" if result.reason else ""))  # fmt: skip
            if result.doc is not None:
                click.echo(json.dumps(result.doc, indent=2, sort_keys=True))
        _exit_for(result.status)
        return
    outcome = written.outcome
    if as_json:
        out: dict[str, Any] = {"context_id": result.context_id, "partition": result.partition,
                               "offset": result.offset, "event_id": result.event_id}  # fmt: skip
        if outcome is not None:
            out["outcome"] = _outcome_dict(outcome)
        _print(out)
    else:
        click.echo(f"{result.context_id} -> {result.position} (event {result.event_id})"
                   + (f": {_outcome_text(outcome)}" if outcome is not None else ""))  # fmt: skip
    if written.unknown is not None:
        _fail(f"the event was appended at {result.position}, but its outcome is unknown: "
              f"{written.unknown} (ask later: `lukhas outcome {result.position}`)")  # fmt: skip
    if outcome is not None:
        _exit_for(outcome.status)


def _mutation_options(fn: F) -> F:
    fn = click.option("--timeout", type=params.WAIT, default=10.0, show_default=True,
                      help="Seconds to wait for the outcome (with --wait).")(fn)  # fmt: skip
    fn = click.option(
        "--wait/--no-wait", default=None,
        help="Wait until the event is folded and exit with its outcome's code (4 conflict, "
             "5 rejected, 6 dead-lettered) [default: wait when a condition is given: "
             "--if-version, or --expect-checksum of a patch].",
    )(fn)  # fmt: skip
    fn = click.option("--dry-run", is_flag=True,
                      help="Show what the processor would do, exit with its code; append "
                           "nothing.")(fn)  # fmt: skip
    fn = click.option("--if-version", "if_version", type=params.VERSION, default=None,
                      metavar="VERSION",
                      help="Apply only at this version (0 = must not exist).")(fn)  # fmt: skip
    return fn


@dataclass(frozen=True, slots=True)
class _Target:
    """Where and how a write command writes (its common options)."""

    data_dir: Path | None
    bootstrap: str | None
    api: str | None
    dry_run: bool
    wait: bool | None
    timeout: float
    as_json: bool


def _write(
    target: _Target,
    call: Callable[[ContextClient], Coroutine[Any, Any, Any]],
    conditional: bool,
) -> None:
    """Runs one write; waits for its outcome when asked (by default when the write has a
    condition: its point is the outcome), then prints it and exits with its code."""
    wait = (conditional if target.wait is None else target.wait) and not target.dry_run
    config = _client_config(target.data_dir, target.bootstrap, target.api,
                            read_api=wait or target.dry_run)  # fmt: skip

    async def run(client: ContextClient) -> _Written:
        result = await call(client)
        if not wait or not isinstance(result, Receipt):
            return _Written(result)
        try:
            return _Written(result, await result.outcome(target.timeout))
        except ReadError as exc:  # appended all the same: say where, and why it is unknown
            return _Written(result, unknown=str(exc))

    _result_out(_with_client(config, run), target.as_json)


@cli.command(epilog=EXIT_CODES)
@click.argument("context_id")
@click.argument("document", type=params.JsonArgument("DOCUMENT", objects_only=True))
@click.option("--ttl", type=params.TTL, default=None, help="Expire after SECONDS.")
@_mutation_options
@_client_options
@_errors
def put(context_id: str, document: dict[str, Any], ttl: float | None, if_version: int | None,
        dry_run: bool, wait: bool | None, timeout: float, data_dir: Path | None,
        bootstrap: str | None, api: str | None, as_json: bool) -> None:  # fmt: skip
    """Replace the document of CONTEXT_ID with DOCUMENT, a JSON object: inline, `-` to read
    it from stdin, or `@FILE` to read it from a file (for documents too big for a command
    line)."""
    target = _Target(data_dir, bootstrap, api, dry_run, wait, timeout, as_json)
    _write(target, lambda c: c.put(
        context_id, document, ttl, expected_version=if_version, dry_run=dry_run
    ), conditional=if_version is not None)  # fmt: skip


@cli.command(epilog=EXIT_CODES)
@click.argument("context_id")
@click.argument("patch", type=params.JsonArgument("PATCH"))
@click.option("--merge", is_flag=True, help="PATCH is an RFC 7386 merge patch (an object).")
@click.option("--expect-checksum", default=None, metavar="HEX",
              help="Reject unless the result has this checksum.")  # fmt: skip
@click.option("--ttl", type=params.TTL, default=None, help="Also set the TTL to SECONDS.")
@click.option("--clear-ttl", is_flag=True, help="Also remove the TTL.")
@_mutation_options
@_client_options
@_errors
def patch(context_id: str, patch: Any, merge: bool, expect_checksum: str | None,
          ttl: float | None, clear_ttl: bool, if_version: int | None, dry_run: bool,
          wait: bool | None, timeout: float, data_dir: Path | None, bootstrap: str | None,
          api: str | None, as_json: bool) -> None:  # fmt: skip
    """Apply PATCH to CONTEXT_ID: an RFC 6902 JSON Patch (a list of ops) by default. PATCH
    is inline, `-` to read it from stdin, or `@FILE` to read it from a file."""
    check_patch(patch, merge)  # before anything is looked up or connected
    target = _Target(data_dir, bootstrap, api, dry_run, wait, timeout, as_json)
    _write(target, lambda c: c.patch(
        context_id, patch, merge=merge, expected_version=if_version,
        expected_checksum=expect_checksum, ttl=ttl, clear_ttl=clear_ttl, dry_run=dry_run,
    ), conditional=if_version is not None or expect_checksum is not None)  # fmt: skip


@cli.command(epilog=EXIT_CODES)
@click.argument("context_id")
@click.option("--ttl", type=params.TTL, default=None,
              help="SECONDS from now; omit to remove the TTL.")  # fmt: skip
@_mutation_options
@_client_options
@_errors
def touch(context_id: str, ttl: float | None, if_version: int | None, dry_run: bool,
          wait: bool | None, timeout: float, data_dir: Path | None, bootstrap: str | None,
          api: str | None, as_json: bool) -> None:  # fmt: skip
    """Set (or, without --ttl, remove) the TTL of CONTEXT_ID."""
    target = _Target(data_dir, bootstrap, api, dry_run, wait, timeout, as_json)
    _write(target, lambda c: c.touch(
        context_id, ttl, expected_version=if_version, dry_run=dry_run
    ), conditional=if_version is not None)  # fmt: skip


@cli.command(epilog=EXIT_CODES)
@click.argument("context_id")
@_mutation_options
@_client_options
@_errors
def delete(context_id: str, if_version: int | None, dry_run: bool, wait: bool | None,
           timeout: float, data_dir: Path | None, bootstrap: str | None, api: str | None,
           as_json: bool) -> None:  # fmt: skip
    """Delete CONTEXT_ID."""
    target = _Target(data_dir, bootstrap, api, dry_run, wait, timeout, as_json)
    _write(target, lambda c: c.delete(
        context_id, expected_version=if_version, dry_run=dry_run
    ), conditional=if_version is not None)  # fmt: skip


@cli.command()
@click.argument("context_id")
@click.option("--after", default=None, type=params.Position(),
              help="Wait until WAL position P:O is folded.")  # fmt: skip
@click.option("--timeout", type=params.WAIT, default=5.0, show_default=True,
              help="Seconds to wait.")  # fmt: skip
@_client_options
@_errors
def get(context_id: str, after: tuple[int, int] | None, timeout: float, data_dir: Path | None,
        bootstrap: str | None, api: str | None, as_json: bool) -> None:  # fmt: skip
    """Print CONTEXT_ID: version, checksum, expiry and document. Needs only the read API."""
    config = _client_config(data_dir, bootstrap, api, kafka=False, read_api=True)
    position = None if after is None else f"{after[0]}:{after[1]}"
    ctx: Context = _with_client(config, lambda c: c.get(context_id, position, timeout))
    if as_json:
        _print({"context_id": ctx.context_id, "version": ctx.version, "doc": ctx.doc,
                "checksum": ctx.checksum, "offset": ctx.offset, "partition": ctx.partition,
                "expires_at_ms": ctx.expires_at_ms})  # fmt: skip
        return
    expiry = "never" if ctx.expires_at_ms is None else f"{ctx.expires_at_ms} ms (epoch)"
    click.echo(
        f"{ctx.context_id}  version {ctx.version}  checksum {ctx.checksum}  expires {expiry}"
    )
    click.echo(json.dumps(ctx.doc, indent=2, sort_keys=True))


@cli.command(epilog=EXIT_CODES)
@click.argument("position", type=params.Position())
@click.option("--timeout", type=params.WAIT, default=5.0, show_default=True,
              help="Seconds to wait until it is folded.")  # fmt: skip
@_client_options
@_errors
def outcome(position: tuple[int, int], timeout: float, data_dir: Path | None,
            bootstrap: str | None, api: str | None, as_json: bool) -> None:  # fmt: skip
    """What the processor did with the event at WAL position P:O; the exit code says it too
    (0 applied, 4 conflict, 5 rejected, 6 dead-lettered, 3 no such position)."""
    partition, offset = position
    config = _client_config(data_dir, bootstrap, api, kafka=False, read_api=True)
    result = _with_client(config, lambda c: c.outcome(partition, offset, timeout))
    if as_json:
        _print(_outcome_dict(result))
    else:
        click.echo(f"{partition}:{offset}: {_outcome_text(result)}")
    _exit_for(result.status)


@cli.command()
@_client_options
@_errors
def demo(data_dir: Path | None, bootstrap: str | None, api: str | None, as_json: bool) -> None:
    """Write a context, read it back after its write, checkpoint, and print all three."""
    config = _client_config(data_dir, bootstrap, api, read_api=True)

    async def run(client: ContextClient) -> tuple[Receipt, Context, list[dict[str, Any]]]:
        doc = {"agent": "demo", "messages": [{"role": "user", "text": "hello, LUKHAS"}]}
        receipt = await client.put("demo:session-1", doc, ttl=3600)
        ctx = await client.get("demo:session-1", after=receipt, timeout=30)
        manifests = await client.wait_checkpoint(await client.checkpoint(), timeout=60)
        return receipt, ctx, manifests

    receipt, ctx, manifests = _with_client(config, run)
    if as_json:
        _print({
            "put": {"context_id": receipt.context_id, "partition": receipt.partition,
                    "offset": receipt.offset, "event_id": receipt.event_id},
            "get": {"context_id": ctx.context_id, "version": ctx.version,
                    "checksum": ctx.checksum, "doc": ctx.doc},
            "checkpoint": {"checkpoint_id": manifests[0]["checkpoint_id"],
                           "manifests": manifests},
        })  # fmt: skip
        return
    click.echo(f"put  demo:session-1 -> WAL {receipt.position}")
    click.echo(f"get  demo:session-1 -> version {ctx.version}, checksum {ctx.checksum}")
    click.echo(f"     {json.dumps(ctx.doc, sort_keys=True)}")
    click.echo(f"checkpoint {manifests[0]['checkpoint_id']} of {len(manifests)} partitions:")
    for m in manifests:
        click.echo(_partition_line(m))


# ---------------------------------------------------------------- operations


@cli.command()
@click.option(
    "--id", "checkpoint_id", default=None, help="Checkpoint id [default: ck-<UTC time>-<4 hex>]."
)
@click.option(
    "--wait/--no-wait",
    default=True,
    show_default=True,
    help="Wait until every partition published its checkpoint.",
)
@click.option("--timeout", type=params.WAIT, default=60.0, show_default=True,
              help="Seconds to wait.")  # fmt: skip
@_client_options
@_errors
def checkpoint(checkpoint_id: str | None, wait: bool, timeout: float, data_dir: Path | None,
               bootstrap: str | None, api: str | None, as_json: bool) -> None:  # fmt: skip
    """Checkpoint every partition: append a barrier to each, which every worker folding it
    turns into a RocksDB checkpoint at exactly that offset, with a manifest and digest."""

    async def call(client: ContextClient) -> dict[str, Any]:
        request = await client.checkpoint(checkpoint_id)
        out: dict[str, Any] = {
            "checkpoint_id": request.checkpoint_id,
            "barriers": {str(p): o for p, o in sorted(request.offsets.items())},
        }
        if wait:
            out["manifests"] = await client.wait_checkpoint(request, timeout)
        return out

    result = _with_client(_client_config(data_dir, bootstrap, api), call)
    if as_json:
        _print(result)
        return
    click.echo(f"checkpoint {result['checkpoint_id']}")
    for m in result.get("manifests", []):
        click.echo(_partition_line(m))
    if not wait:
        click.echo(f"  barriers at {result['barriers']}")


@cli.command()
@click.option("--id", "context_id", default=None, help="Watch one context.")
@click.option("--prefix", default=None, help="Watch the contexts whose ids start with PREFIX.")
@click.option(
    "--from",
    "start",
    type=params.StartPoint(),
    default="latest",
    show_default=True,
    help="latest | earliest | epoch ms or ISO time | a resume token.",
)
@click.option("--deltas", is_flag=True, help="RFC 6902 deltas instead of whole documents.")
@click.option("--limit", type=params.COUNT, default=None, metavar="N",
              help="Stop after N changes.")  # fmt: skip
@click.option(
    "--idle-timeout",
    type=params.Seconds(0.0, 86_400.0),
    default=None,
    help="Stop after SECONDS without a change.",
)
@click.option("--fail-on-gap", is_flag=True, help="Exit 1 at a gap instead of reporting it.")
@click.option("--bootstrap", default=None, help="Kafka [env LUKHAS_BOOTSTRAP].")
@_cluster_options
@_errors
def watch(context_id: str | None, prefix: str | None, start: str, deltas: bool,
          limit: int | None, idle_timeout: float | None, fail_on_gap: bool,
          bootstrap: str | None, data_dir: Path | None) -> None:  # fmt: skip
    """Follow the change stream: one JSON line per change, each with the `token` that
    resumes right after it (`--from TOKEN`). A gap (changes compacted away before they were
    read) is a line {"gap": ...} on stdout and a warning on stderr, never silent."""
    config = _client_config(data_dir, bootstrap, None)

    async def call(client: ContextClient) -> None:
        on_gap = "raise" if fail_on_gap else "report"
        seen = 0
        async with client.watch(context_id, prefix, start, deltas, idle_timeout, on_gap) as w:
            async for item in w:
                click.echo(orjson.dumps(item.to_dict()).decode())
                if isinstance(item, Gap):
                    gone = f"{item.first_offset}..{item.end_offset - 1}"
                    click.echo(f"lukhas: warning: changes {gone} of partition {item.partition} "
                               f"are gone ({item.reason})", err=True)  # fmt: skip
                    continue
                seen += 1
                if limit is not None and seen >= limit:
                    return

    with contextlib.suppress(KeyboardInterrupt):  # Ctrl-C ends a watch: not an error
        _with_client(config, call)


# ---------------------------------------------------------------- transactions


@cli.group()
def transactions() -> None:
    """See and end open Kafka transactions (Kafka's own TransactionsCommand, from the jars
    `lukhas up` runs the brokers from; fetched on first use). An open transaction holds every
    WAL partition it wrote: nothing after its first offset is folded until it commits or
    aborts. Exit codes: 0 done (also when nothing is open), 1 error, 2 usage."""


def _transactions_options(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    fn = click.option("--bootstrap", default=None, help="Kafka [env LUKHAS_BOOTSTRAP].")(fn)
    fn = _cluster_options(fn)
    return fn


def _transaction_tool(data_dir: Path | None, bootstrap: str | None) -> tuple[Any, ClientConfig]:
    from lukhas_context.ops.kafka_dist import DEFAULT_VERSION, ensure_kafka_tools
    from lukhas_context.ops.transactions import TransactionTool

    env = Environment.read()
    config = _client_config(data_dir, bootstrap, None)
    dist = ensure_kafka_tools(DEFAULT_VERSION, env.kafka_cache, env.kafka_home)
    timeout = max(60.0, env.timeout_s or 0.0)
    return TransactionTool.create(dist, config.bootstrap, data_dir or env.data_dir, timeout), config


def _rows_out(rows: list[dict[str, Any]], as_json: bool, empty: str) -> None:
    if as_json:
        _print(rows)
    elif not rows:
        click.echo(empty)
    for row in [] if as_json else rows:
        click.echo("  ".join(f"{key}={value}" for key, value in row.items()))


@transactions.command("list")
@click.option("--all", "include_done", is_flag=True, help="Also the transactional ids at rest.")
@_transactions_options
@_errors
def transactions_list(include_done: bool, data_dir: Path | None, bootstrap: str | None,
                      as_json: bool) -> None:  # fmt: skip
    """Transactional ids whose transaction is not over (with --all: every one known)."""
    tool, _ = _transaction_tool(data_dir, bootstrap)
    _rows_out(tool.list_transactions(include_done), as_json, "no open transactions")


@transactions.command("describe")
@click.argument("transactional_id")
@_transactions_options
@_errors
def transactions_describe(transactional_id: str, data_dir: Path | None, bootstrap: str | None,
                          as_json: bool) -> None:  # fmt: skip
    """State, timeout, start time and partitions of TRANSACTIONAL_ID's transaction."""
    tool, _ = _transaction_tool(data_dir, bootstrap)
    _rows_out([tool.describe(transactional_id)], as_json, "")


@transactions.command("open")
@click.option("--partition", "-p", "partitions", type=params.PARTITION, multiple=True,
              help="Only this WAL partition (repeat for several) [default: all].")  # fmt: skip
@_transactions_options
@_errors
def transactions_open(partitions: tuple[int, ...], data_dir: Path | None,
                      bootstrap: str | None, as_json: bool) -> None:  # fmt: skip
    """Transactions open on the WAL's partitions: producer, the offset where each began
    (what `transactions abort --start-offset` takes) and how long it has been idle."""
    from lukhas_context.streams.admin import partition_count

    tool, config = _transaction_tool(data_dir, bootstrap)
    topic = config.topics.events
    wanted = partitions or range(asyncio.run(partition_count(config.bootstrap, topic)))
    _rows_out(tool.open_transactions(topic, wanted), as_json, "no open transactions")


@transactions.command("find-hanging")
@_transactions_options
@_errors
def transactions_find_hanging(data_dir: Path | None, bootstrap: str | None,
                              as_json: bool) -> None:  # fmt: skip
    """Transactions open on the WAL longer than any client may ask for, which their
    coordinator no longer tracks (Kafka's definition of hanging): only an abort ends them."""
    from lukhas_context.streams.client import MAX_TRANSACTION_TIMEOUT_S

    tool, config = _transaction_tool(data_dir, bootstrap)
    rows = tool.find_hanging(config.topics.events, MAX_TRANSACTION_TIMEOUT_S)
    _rows_out(rows, as_json, "no hanging transactions")


@transactions.command("abort")
@click.option("--partition", "-p", type=params.PARTITION, required=True, help="WAL partition.")
@click.option("--start-offset", type=params.VERSION, required=True,
              help="Offset where the transaction began (see `transactions open`).")  # fmt: skip
@_transactions_options
@_errors
def transactions_abort(partition: int, start_offset: int, data_dir: Path | None,
                       bootstrap: str | None, as_json: bool) -> None:  # fmt: skip
    """Abort the transaction that began at START_OFFSET of WAL partition PARTITION, releasing
    the partition. Only for a transaction whose producer is gone (killed, hanging): a live
    one's transaction would be aborted on this partition only."""
    tool, config = _transaction_tool(data_dir, bootstrap)
    tool.abort(config.topics.events, partition, start_offset)
    result = {"aborted": {"partition": partition, "start_offset": start_offset}}
    if as_json:
        _print(result)
    else:
        click.echo(f"aborted the transaction at {partition}:{start_offset}")


def main() -> None:
    cli(prog_name="lukhas")
