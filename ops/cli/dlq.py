"""``lukhas dlq list|show|redrive|prune``: the dead-letter queue (``ops.dlq``)."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.client import client_config, with_client
from lukhas_context.ops.cli.errors import EXIT_DEAD_LETTERED, F, OneLineGroup, handle_errors
from lukhas_context.ops.cli.options import (
    api_option,
    bootstrap_option,
    data_dir_option,
    merge_old,
    old_name,
    partitions_option,
)
from lukhas_context.ops.cli.output import print_json
from lukhas_context.ops.config import Settings

__all__ = ["dlq"]


@click.group(cls=OneLineGroup)
def dlq() -> None:
    """The dead-letter queue: records the fold could not read as events."""


def _filters(fn: F) -> F:
    """The options that choose dead letters (``streams.deadletters.Filters``)."""
    fn = merge_old("context_id", "--context-id/--id")(fn)
    for option in reversed([
        partitions_option("DLQ partition (the same number as the WAL's)"),
        click.option("--since", type=params.Parsed("TIME|OFFSET",
                     "lukhas_context.streams.position:parse_bound"), default=None,
                     help="Dead-lettered at or after this time (ISO 8601, or ms:EPOCH_MS) "
                          "or DLQ offset."),
        click.option("--reason", default=None,
                     help="Only those whose reason contains this (any case), e.g. "
                          "UnknownSchemaError."),
        click.option("--context-id", "context_id", default=None, help="Only this context's."),
        old_name("--id", "--context-id", "context_id"),
        click.option("--limit", type=click.IntRange(1, 1_000_000), default=100,
                     show_default=True, help="Dead letters at most."),
    ]):  # fmt: skip
        fn = option(fn)
    return fn


def _make_filters(partitions: tuple[int, ...], since: Any, reason: str | None,
                  context_id: str | None, limit: int) -> Any:  # fmt: skip
    from lukhas_context.streams.deadletters import Filters

    return Filters(list(partitions) or None, since, reason, context_id, limit)


@dlq.command(name="list")
@_filters
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@bootstrap_option()
@data_dir_option
@handle_errors
def list_(partitions: tuple[int, ...], since: Any, reason: str | None, context_id: str | None,
          limit: int, as_json: bool, bootstrap: str | None,
          data_dir: Path | None) -> None:  # fmt: skip
    """List dead letters: DLQ position, time, context, the WAL position it came from, the
    event's kind and id when it decodes, and why it was dead-lettered. Reads only."""
    from lukhas_context.streams.deadletters import listing

    config = Settings.load(data_dir).client_config(bootstrap, None)
    f = _make_filters(partitions, since, reason, context_id, limit)
    lines = asyncio.run(listing(config.bootstrap, config.topics, f,
                                  security=config.kafka_security))  # fmt: skip
    for line in lines:
        click.echo(_json_line(line) if as_json else _text(line))
    if not lines:
        click.echo("no dead letters" + (" match" if f != _make_filters((), None, None, None,
                   limit) else ""), err=True)  # fmt: skip


@dlq.command()
@click.argument("position", type=params.Position())
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@bootstrap_option()
@data_dir_option
@handle_errors
def show(position: tuple[int, int], as_json: bool, bootstrap: str | None,
         data_dir: Path | None) -> None:  # fmt: skip
    """Show the dead letter at POSITION (DLQ PARTITION:OFFSET, as `dlq list` prints it):
    every header, its key, the size and first bytes of its value, the event when it decodes.
    Exits 3 when there is none."""
    from lukhas_context.ops.dlq import show as show_one

    config = Settings.load(data_dir).client_config(bootstrap, None)
    detail = asyncio.run(show_one(config.bootstrap, config.topics, *position,
                                  security=config.kafka_security))  # fmt: skip
    if as_json:
        print_json(detail)
        return
    click.echo(_text(detail))
    for name in ("key", "value_bytes", "value_head"):
        click.echo(f"  {name}: {detail[name]}")
    for name, value in detail["headers"].items():
        click.echo(f"  header {name}: {value}")


@dlq.command(name="redrive")
@_filters
@click.option("--yes", is_flag=True, help="Append them to the WAL; without it nothing is.")
@click.option("--dry-run", "dry_run", is_flag=True,
              help="Only show what the fold would do with each (as without --yes).")  # fmt: skip
@click.option("--timeout", type=params.WAIT, default=30.0, show_default=True,
              help="Seconds to wait for each outcome.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@api_option()
@bootstrap_option()
@data_dir_option
@handle_errors
def redrive(partitions: tuple[int, ...], since: Any, reason: str | None, context_id: str | None,
            limit: int, yes: bool, dry_run: bool, timeout: float, as_json: bool,
            no_progress: bool, api: str | None, bootstrap: str | None,
            data_dir: Path | None) -> None:  # fmt: skip
    """Fold dead letters again, once what failed them is fixed (a worker that knows a newer
    schema: `lukhas worker --schema-dir`). Each chosen record is first dry-run on the worker
    that owns its context; with --yes its original bytes (original event id) are appended to
    the WAL under its key and its outcome waited for. A second re-drive of the same record is
    a duplicate, never applied twice; a record that still cannot be folded is dead-lettered
    again with its new reason (exit 6)."""
    from lukhas_context.ops.dlq import redrive as run

    if yes and dry_run:
        raise click.UsageError("--yes appends, --dry-run only shows: give one")
    config = client_config(data_dir, bootstrap, api, kafka=True, read_api=True)
    f = _make_filters(partitions, since, reason, context_id, limit)
    progress = not no_progress and sys.stderr.isatty()
    report = with_client(config, lambda c: run(c, f, yes, timeout, progress))
    if as_json:
        print_json(report.to_dict())
    else:
        for entry in report.records:
            click.echo(_redrive_text(entry))
    _redrive_summary(report.records, yes)
    if yes and any(e.get("outcome", {}).get("status") == "dead_lettered" for e in report.records):
        sys.exit(EXIT_DEAD_LETTERED)


def _json_line(item: dict[str, Any]) -> str:
    import orjson

    return orjson.dumps(item).decode()


def _text(i: dict[str, Any]) -> str:
    event = f"  {i.get('kind', '')} {i.get('event_id', i.get('event', ''))}"
    return (f"{i['position']:<10} {i['log_time']}  {i['context_id']}  from WAL {i['source']}"
            f"{event}  {i['reason']}")  # fmt: skip


def _verdict(v: dict[str, Any] | None) -> str:
    if not v:
        return "?"
    reason = f" ({v['reason']})" if v.get("reason") else ""
    return f"{v['status']}{reason}"


def _redrive_text(e: dict[str, Any]) -> str:
    head = f"{e['position']:<10} {e['context_id']}  from WAL {e['source']}"
    if "skipped" in e:
        return f"{head}  skipped: {e['skipped']}"
    if "outcome" in e:
        o = e["outcome"]
        if o["status"] == "duplicate":
            what = f"duplicate of offset {o['duplicate_of']}"
        else:
            what = _verdict(o) + (f" v{o['version']}" if o["status"] == "applied" else "")
        return f"{head}  -> WAL {e['wal_position']}: {what}"
    return f"{head}  would be {_verdict(e.get('now'))}"


def _redrive_summary(records: list[dict[str, Any]], yes: bool) -> None:
    key: Callable[[dict[str, Any]], str] = (
        (lambda e: e.get("outcome", {}).get("status", "skipped"))
        if yes
        else (lambda e: (e.get("now") or {}).get("status", "skipped"))
    )
    if not records:
        click.echo("no dead letters to re-drive", err=True)
        return
    counts: dict[str, int] = {}
    for e in records:
        counts[key(e)] = counts.get(key(e), 0) + 1
    shown = ", ".join(f"{n} {s.replace('_', '-')}" for s, n in sorted(counts.items()))
    verb = "re-driven" if yes else "would be re-driven (dry run: add --yes to append them)"
    n = len(records)
    click.echo(f"{n} dead letter{'' if n == 1 else 's'} {verb}" + (f": {shown}" if shown else ""),
               err=True)  # fmt: skip


@dlq.command(name="prune")
@click.option("--before", required=True,
              type=params.Parsed("TIME|OFFSET", "lukhas_context.streams.position:parse_bound"),
              help="Delete the dead letters logged before this time (ISO 8601, or "
                   "ms:EPOCH_MS), or below this DLQ offset.")  # fmt: skip
@partitions_option("DLQ partition")
@click.option("--yes", is_flag=True, help="Delete; without it the plan is only shown.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@bootstrap_option()
@data_dir_option
@handle_errors
def prune(before: Any, partitions: tuple[int, ...], yes: bool, as_json: bool,
          bootstrap: str | None, data_dir: Path | None) -> None:  # fmt: skip
    """Delete dead letters logged before --before (per partition, Kafka's DeleteRecords).
    Without --yes it only shows how many would go. The records stay in the WAL."""
    from lukhas_context.ops.dlq import prune as run

    config = Settings.load(data_dir).client_config(bootstrap, None)
    plan = asyncio.run(run(config.bootstrap, config.topics, list(partitions) or None, before,
                           yes, security=config.kafka_security))  # fmt: skip
    if as_json:
        print_json(plan)
        return
    for e in plan:
        head = f"partition {e['partition']}: starts at {e['log_start']}, ends at {e['end']}"
        if not e["deletes"]:
            click.echo(f"{head}: nothing before {before}")
        elif yes:
            click.echo(f"{head}: {e['deletes']} deleted, starts at {e['log_start_now']} now")
        else:
            click.echo(f"{head}: {e['deletes']} would be deleted (below {e['prune_to']})")
    if not yes and any(e["deletes"] for e in plan):
        click.echo("nothing deleted: add --yes to delete", err=True)
