"""``lukhas transactions``: open Kafka transactions seen and ended with Kafka's own
``TransactionsCommand`` (``ops/transactions.py``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.errors import F, handle_errors
from lukhas_context.ops.cli.options import bootstrap_option, data_dir_option
from lukhas_context.ops.cli.output import print_json
from lukhas_context.ops.config import Settings

__all__ = ["transactions"]


@click.group()
def transactions() -> None:
    """See and end open Kafka transactions (Kafka's own TransactionsCommand, from the jars
    `lukhas up` runs the brokers from; fetched on first use). An open transaction holds every
    WAL partition it wrote: nothing after its first offset is folded until it commits or
    aborts. Exit codes: 0 done (also when nothing is open), 1 error, 2 usage."""


def _transactions_options(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    fn = bootstrap_option()(fn)
    fn = data_dir_option(fn)
    return fn


def _rows_out(rows: list[dict[str, Any]], as_json: bool, empty: str) -> None:
    if as_json:
        print_json(rows)
    elif not rows:
        click.echo(empty)
    for row in [] if as_json else rows:
        click.echo("  ".join(f"{key}={value}" for key, value in row.items()))


@transactions.command("list")
@click.option("--all", "include_done", is_flag=True, help="Also the transactional ids at rest.")
@_transactions_options
@handle_errors
def transactions_list(include_done: bool, data_dir: Path | None, bootstrap: str | None,
                      as_json: bool) -> None:  # fmt: skip
    """Transactional ids whose transaction is not over (with --all: every one known)."""
    tool, _ = Settings.load(data_dir).transaction_tool(bootstrap)
    _rows_out(tool.list_transactions(include_done), as_json, "no open transactions")


@transactions.command("describe")
@click.argument("transactional_id")
@_transactions_options
@handle_errors
def transactions_describe(transactional_id: str, data_dir: Path | None, bootstrap: str | None,
                          as_json: bool) -> None:  # fmt: skip
    """State, timeout, start time and partitions of TRANSACTIONAL_ID's transaction."""
    tool, _ = Settings.load(data_dir).transaction_tool(bootstrap)
    _rows_out([tool.describe(transactional_id)], as_json, "")


@transactions.command("open")
@click.option("--partition", "-p", "partitions", type=params.PARTITION, multiple=True,
              help="Only this WAL partition (repeat for several) [default: all].")  # fmt: skip
@_transactions_options
@handle_errors
def transactions_open(partitions: tuple[int, ...], data_dir: Path | None,
                      bootstrap: str | None, as_json: bool) -> None:  # fmt: skip
    """Transactions open on the WAL's partitions: producer, the offset where each began
    (what `transactions abort --start-offset` takes) and how long it has been idle."""
    from lukhas_context.streams.admin import partition_count

    tool, config = Settings.load(data_dir).transaction_tool(bootstrap)
    topic = config.topics.events
    wanted = partitions or range(
        asyncio.run(partition_count(config.bootstrap, topic, security=config.kafka_security))
    )
    _rows_out(tool.open_transactions(topic, wanted), as_json, "no open transactions")


@transactions.command("find-hanging")
@_transactions_options
@handle_errors
def transactions_find_hanging(data_dir: Path | None, bootstrap: str | None,
                              as_json: bool) -> None:  # fmt: skip
    """Transactions open on the WAL longer than any client may ask for, which their
    coordinator no longer tracks (Kafka's definition of hanging): only an abort ends them."""
    from lukhas_context.streams.client import MAX_TRANSACTION_TIMEOUT_S

    tool, config = Settings.load(data_dir).transaction_tool(bootstrap)
    rows = tool.find_hanging(config.topics.events, MAX_TRANSACTION_TIMEOUT_S)
    _rows_out(rows, as_json, "no hanging transactions")


@transactions.command("abort")
@click.option("--partition", "-p", type=params.PARTITION, required=True, help="WAL partition.")
@click.option("--start-offset", type=params.VERSION, required=True,
              help="Offset where the transaction began (see `transactions open`).")  # fmt: skip
@_transactions_options
@handle_errors
def transactions_abort(partition: int, start_offset: int, data_dir: Path | None,
                       bootstrap: str | None, as_json: bool) -> None:  # fmt: skip
    """Abort the transaction that began at START_OFFSET of WAL partition PARTITION, releasing
    the partition. Only for a transaction whose producer is gone (killed, hanging): a live
    one's transaction would be aborted on this partition only."""
    tool, config = Settings.load(data_dir).transaction_tool(bootstrap)
    tool.abort(config.topics.events, partition, start_offset)
    result = {"aborted": {"partition": partition, "start_offset": start_offset}}
    if as_json:
        print_json(result)
    else:
        click.echo(f"aborted the transaction at {partition}:{start_offset}")
