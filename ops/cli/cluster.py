"""``lukhas up``, ``down``, ``status``: the local cluster of a data dir; ``lukhas demo``: a
write, a read after it and a checkpoint against it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.client import client_config, with_client
from lukhas_context.ops.cli.errors import fail, handle_errors
from lukhas_context.ops.cli.options import (
    api_option,
    bootstrap_option,
    client_options,
    data_dir_option,
)
from lukhas_context.ops.cli.output import echo_status, partition_line, print_json
from lukhas_context.ops.cluster import LocalCluster
from lukhas_context.ops.cluster.remote import remote_status
from lukhas_context.ops.config import Environment, Settings
from lukhas_context.streams.client import Context, ContextClient, Receipt

__all__ = ["demo", "down", "status", "up"]


@click.command()
@data_dir_option
@click.option("--brokers", type=click.IntRange(1, 9), default=None, help="Kafka brokers (1 or 3).")
@bootstrap_option("Use this existing Kafka cluster: start no broker.")
@click.option("--port-base", type=click.IntRange(1, 65535 - 18), default=None,
              help="First broker port (default 19092).")  # fmt: skip
@click.option("--redis-port", type=params.PORT, default=None, help="Redis port (default 16379).")
@click.option("--api-port", type=params.PORT, default=None,
              help="Processor read API port (default 18080).")  # fmt: skip
@click.option("--partitions", type=click.IntRange(1, 1000), default=None, help="WAL partitions.")
@click.option("--no-processor", is_flag=True, help="Start Kafka and Redis only.")
@click.option("--json", "as_json", is_flag=True, help="Print the status as JSON.")
@handle_errors
def up(data_dir: Path | None, brokers: int | None, bootstrap: str | None, port_base: int | None,
       redis_port: int | None, api_port: int | None, partitions: int | None,
       no_processor: bool, as_json: bool) -> None:  # fmt: skip
    """Start (or resume) the local cluster: Kafka, Redis, topics, one processor."""
    spec = Settings.load(data_dir).cluster_spec(
        brokers=brokers, bootstrap=bootstrap, port_base=port_base, redis_port=redis_port,
        api_port=api_port, partitions=partitions, start_processor=not no_processor,
    )  # fmt: skip
    status = LocalCluster(spec).up()
    if as_json:
        print_json(status)
        return
    echo_status(status)
    if status.get("started"):
        click.echo(f"started    {', '.join(status['started'])}")


def _recorded_cluster(data_dir: Path | None) -> LocalCluster:
    """The cluster `lukhas up` recorded in the data dir; ``NotConfiguredError`` without one:
    the default ports may well be someone else's cluster, not this dir's."""
    settings = Settings.load(data_dir)
    settings.require_cluster()
    return LocalCluster(settings.cluster_spec())


@click.command()
@data_dir_option
@click.option("--json", "as_json", is_flag=True)
@click.option("--processor-only", is_flag=True, help="Stop the processor, leave Kafka and Redis.")
@handle_errors
def down(data_dir: Path | None, as_json: bool, processor_only: bool) -> None:
    """Stop what `up` started, by pid. Keeps all data."""
    result = _recorded_cluster(data_dir).down(processors_only=processor_only)
    if as_json:
        print_json(result)
    else:
        for what in ("stopped", "killed", "not_running"):
            if result.get(what):
                click.echo(f"{what.replace('_', ' '):12} {', '.join(result[what])}")


@click.command()
@data_dir_option
@bootstrap_option("Report on this Kafka cluster instead of the data dir's (docker compose).")
@api_option(
    "With --bootstrap: workers' read API URLs, comma-separated [env LUKHAS_API_URL]; "
    "the group's other workers are found from them."
)
@click.option(
    "--brokers",
    type=click.IntRange(1, 1000),
    default=None,
    help="With --bootstrap: brokers that must be up [default: those that are].",
)
@click.option("--redis-url", default=None, help="With --bootstrap: the Redis to PING.")
@click.option("--json", "as_json", is_flag=True)
@handle_errors
def status(data_dir: Path | None, bootstrap: str | None, api: str | None, brokers: int | None,
           redis_url: str | None, as_json: bool) -> None:  # fmt: skip
    """Show whether Kafka, Redis and the processors of the data dir's cluster are up and
    ready; with --bootstrap (or LUKHAS_BOOTSTRAP, unless --data-dir is given), of that
    cluster and the workers found from --api. Exit 1 (after the report) when a part is not
    ready, or the data dir holds no cluster."""
    remote = bool(bootstrap) and data_dir is None
    if remote:
        assert bootstrap is not None
        security = Environment.read().kafka_security
        result = remote_status(bootstrap, api, brokers, redis_url, security)
    else:
        result = _recorded_cluster(data_dir).status()
    if as_json:
        print_json(result)
    else:
        echo_status(result)
    waiting: list[str] = [
        name for name in ("kafka", "redis") if name in result and not result[name]["ready"]
    ]
    if remote and not result["processors"]:
        waiting.append("processors (none found: pass --api)")
    waiting += [f"processor {p['api']}" for p in result["processors"] if not p.get("ready")]
    if waiting:
        fail(f"not ready: {', '.join(waiting)}")


@click.command()
@client_options
@handle_errors
def demo(data_dir: Path | None, bootstrap: str | None, api: str | None, as_json: bool) -> None:
    """Write a context, read it back after its write, checkpoint, and print all three."""
    config = client_config(data_dir, bootstrap, api, read_api=True)

    async def run(client: ContextClient) -> tuple[Receipt, Context, list[dict[str, Any]]]:
        doc = {"agent": "demo", "messages": [{"role": "user", "text": "hello, LUKHAS"}]}
        receipt = await client.put("demo:session-1", doc, ttl=3600)
        ctx = await client.get("demo:session-1", min_offset=receipt, timeout=30)
        manifests = await client.wait_checkpoint(await client.checkpoint(), timeout=60)
        return receipt, ctx, manifests

    receipt, ctx, manifests = with_client(config, run)
    if as_json:
        print_json({
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
        click.echo(partition_line(m))
