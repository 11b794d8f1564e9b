"""``lukhas restore``: partition stores rebuilt offline, from a checkpoint, the change topic or
the whole WAL, then the WAL folded on."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.errors import handle_errors
from lukhas_context.ops.cli.options import (
    bootstrap_option,
    checkpoint_dir_option,
    data_dir_option,
)
from lukhas_context.ops.cli.output import print_json
from lukhas_context.ops.config import Settings

__all__ = ["restore"]


@click.command()
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
@checkpoint_dir_option
@bootstrap_option()
@click.option("--json", "as_json", is_flag=True, help="Print what was done as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@data_dir_option
@handle_errors
def restore(partitions: tuple[int, ...], checkpoint_id: str | None, from_scratch: bool,
            from_changes: bool, state_dir: Path | None, checkpoint_dir: Path | None,
            bootstrap: str | None, as_json: bool, no_progress: bool,
            data_dir: Path | None) -> None:  # fmt: skip
    """Rebuild partition stores offline from a checkpoint (default: the newest valid one),
    from the change topic or from scratch, then fold the WAL on. The worker serving them
    must be stopped (`lukhas down --processor-only`); the old store is moved to
    STATE_DIR/quarantine, never deleted."""
    from lukhas_context.processors.offline import From, restore_offline

    if sum((checkpoint_id is not None, from_scratch, from_changes)) > 1:
        raise click.UsageError("choose one of --checkpoint, --from-scratch, --from-changes")
    config = Settings.load(data_dir).restore_config(bootstrap, state_dir, checkpoint_dir)
    source = From.LATEST_CHECKPOINT
    if from_scratch:
        source = From.SCRATCH
    elif from_changes:
        source = From.CHANGES
    elif checkpoint_id not in (None, "latest"):
        source = From.CHECKPOINT

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
        print_json(reports if len(reports) > 1 else reports[0])
        return
    for r in reports:
        origin = r["source"] + (f" {r['checkpoint_id']}" if r["checkpoint_id"] else "")
        click.echo(f"partition {r['partition']}: from {origin}, folded {r['events_folded']} "
                   f"records to offset {r['next_offset']} in {r['seconds']:.2f} s; "
                   f"{r['documents']} documents, digest {r['digest']}")  # fmt: skip
        if r["moved_aside"]:
            click.echo(f"  previous store moved to {r['moved_aside']}")
