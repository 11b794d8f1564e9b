"""``lukhas history ID``: what happened to one context, event by event (``ops.history``)."""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli.client import client_config, with_client
from lukhas_context.ops.cli.errors import EXIT_NOT_FOUND, handle_errors
from lukhas_context.ops.cli.options import client_options
from lukhas_context.ops.cli.output import print_json

__all__ = ["history"]


@click.command()
@click.argument("context_id")
@click.option(
    "--after",
    type=click.IntRange(0),
    default=None,
    help="Only entries after this WAL offset (the last one a previous page showed).",
)
@click.option("--limit", type=click.IntRange(1, 1_000_000), default=1000, show_default=True,
              help="Entries at most.")  # fmt: skip
@click.option(
    "--no-wal",
    "no_wal",
    is_flag=True,
    help="Outcomes only: do not read the events from the WAL (no Kafka needed).",
)
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@client_options
@handle_errors
def history(context_id: str, after: int | None, limit: int, no_wal: bool, no_progress: bool,
            data_dir: Path | None, bootstrap: str | None, api: str | None,
            as_json: bool) -> None:  # fmt: skip
    """Print what became of every event of CONTEXT_ID, oldest first: its WAL position, log
    time, kind and event id (read from the WAL), and its outcome — applied (with the new
    version), conflict, rejected, dead-lettered (with the reason) or a duplicate of an earlier
    offset. Served by the worker that owns the context, from its history index; records the
    WAL no longer holds are marked pruned. A summary goes to stderr. Exits 3 when the context
    has no history."""
    from lukhas_context.ops.history import context_history

    config = client_config(data_dir, bootstrap, api, kafka=False, read_api=True)
    wal = not no_wal and bool(config.bootstrap)
    progress = not no_progress and sys.stderr.isatty()
    report = with_client(
        config, lambda c: context_history(c, context_id, limit, after, wal, progress=progress)
    )
    if not no_wal and not config.bootstrap:
        report.wal_error = "no Kafka (pass --bootstrap or set LUKHAS_BOOTSTRAP)"
    if as_json:
        print_json(report.to_dict())
    else:
        for event in report.events:
            click.echo(_line(report.partition, event))
    _summary(report)
    if not report.events:
        sys.exit(EXIT_NOT_FOUND)


def _line(partition: int | None, e: dict[str, Any]) -> str:
    position = f"{partition}:{e['offset']}"
    if "undecodable" in e:
        what = f"UNDECODABLE: {e['undecodable']}"
    elif "kind" in e:
        extra = "".join(f" {k}={e[k]}" for k in ("if_version", "expires_version") if k in e)
        what = f"{e['log_time']}  {e['kind']:<8} {e['event_id']}{extra}"
    elif e.get("wal") == "pruned":
        what = "(pruned from the WAL)"
    else:
        what = "(WAL not read)"
    status = e["status"]
    if status == "applied":
        outcome = f"applied v{e['version']}"
    elif status == "duplicate":
        outcome = f"duplicate of offset {e['duplicate_of']}"
    else:
        at = status in ("conflict", "rejected", "fenced") and e["version"] is not None
        outcome = status.replace("_", "-") + (f" (at v{e['version']})" if at else "")
    if e.get("reason") and status != "duplicate":
        outcome += f": {e['reason']}"
    return f"{position:<12} {what}  -> {outcome}"


def _summary(report: Any) -> None:
    """The counts, what the index covers and how to go on, on stderr (stdout stays data)."""
    counts = Counter(e["status"] for e in report.events)
    shown = ", ".join(f"{n} {s.replace('_', '-')}" for s, n in sorted(counts.items()))
    n = len(report.events)
    head = f"{n} event{'' if n == 1 else 's'} of {report.context_id!r}"
    parts = [head + (f" ({shown})" if shown else "")]
    if report.partition is not None:
        covered = report.covered_from
        if covered is None:
            index = "complete from no offset (a worker with --no-history-index, or none folded)"
        else:
            index = f"complete from offset {covered}"
        folded = f"partition {report.partition} folded to offset {report.next_offset}"
        parts.append(f"{folded}, its history index {index}")
    if report.pruned_below:
        parts.append(f"entries pruned below offset {report.pruned_below}")
    if report.more:
        parts.append(f"more follow: --after {report.events[-1]['offset']}")
    if report.wal_error:
        parts.append(f"events not read from the WAL: {report.wal_error}")
    click.echo("; ".join(parts), err=True)
