"""``lukhas wal prune``: delete WAL records no restore path needs (``ops.prune``)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli.errors import OneLineGroup, handle_errors
from lukhas_context.ops.cli.options import (
    api_option,
    bootstrap_option,
    checkpoint_dir_option,
    data_dir_option,
    partitions_option,
    state_dir_option,
)
from lukhas_context.ops.cli.output import print_json
from lukhas_context.ops.config import Settings

__all__ = ["wal"]


@click.group(cls=OneLineGroup)
def wal() -> None:
    """The write-ahead log itself."""


@wal.command()
@partitions_option("Partition to prune")
@click.option("--yes", is_flag=True, help="Delete; without it the plan is only shown.")
@click.option(
    "--dedupe-window",
    type=click.IntRange(0, 10**9),
    default=None,
    help="WAL records the workers' dedupe window spans (a change-topic restore "
    "reads them back before its coverage) [default: 100000, the workers'].",
)
@state_dir_option("The worker's state dir, for its checkpoints [default: the local cluster's].")
@checkpoint_dir_option
@api_option()
@bootstrap_option()
@click.option("--json", "as_json", is_flag=True, help="Print the plan (and what was done) as JSON.")
@data_dir_option
@handle_errors
def prune(partitions: tuple[int, ...], yes: bool, dedupe_window: int | None,
          state_dir: Path | None,
          checkpoint_dir: Path | None, api: str | None, bootstrap: str | None, as_json: bool,
          data_dir: Path | None) -> None:  # fmt: skip
    """Delete the WAL records below what every restore path still needs: the oldest valid
    checkpoint, the change topic's coverage less the dedupe window, and the live store's
    position, per partition.
    Without --yes it only shows the plan. A full replay needs the whole WAL: after a prune
    it fails, naming the checkpoint to start from."""
    from lukhas_context.ops.prune import apply, plan

    settings = Settings.load(data_dir)
    if state_dir is None and checkpoint_dir is None and not settings.recorded():
        raise click.UsageError("pass --state-dir or --checkpoint-dir: the checkpoints decide "
                               "what may go")  # fmt: skip
    config = settings.restore_config(bootstrap, state_dir or Path("."), checkpoint_dir) \
        if (state_dir is not None or not settings.recorded()) \
        else settings.restore_config(bootstrap, None, checkpoint_dir)  # fmt: skip
    url = settings.client_config(None, api, kafka=False, read_api=True).api_url
    assert url is not None
    url = url.split(",")[0].rstrip("/")

    async def run() -> list[dict[str, Any]]:
        planned = await plan(config, url, list(partitions) or None, dedupe_window)
        return await apply(config, planned) if yes else planned

    result = asyncio.run(run())
    if as_json:
        print_json(result)
        return
    for e in result:
        head = f"partition {e['partition']}: log starts at {e['log_start']}"
        if e["kept_because"]:
            click.echo(f"{head}; nothing to prune: {'; '.join(e['kept_because'])}")
            continue
        ck = e["oldest_checkpoint"]
        why = (f"oldest checkpoint {ck['id']} at {ck['next_offset']}, changes cover "
               f"{e['changes_coverage']} less a dedupe window of {e['dedupe_window']}, the "
               f"worker is at {e['live_next_offset']}")  # fmt: skip
        if "log_start_now" in e:
            click.echo(f"{head}, now at {e['log_start_now']}: deleted {e['deletes']} records "
                       f"({why})")  # fmt: skip
        else:
            click.echo(f"{head}; would delete {e['deletes']} records, up to {e['prune_to']} "
                       f"({why})")  # fmt: skip
    if not yes and any(e["deletes"] for e in result):
        click.echo("nothing deleted: pass --yes to delete")
