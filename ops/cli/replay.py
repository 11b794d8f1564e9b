"""``lukhas replay --as-of``: the state at a point of the log, built aside
(``processors.pointintime``)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.errors import handle_errors
from lukhas_context.ops.cli.options import (
    bootstrap_option,
    checkpoint_dir_option,
    data_dir_option,
    partitions_option,
    state_dir_option,
)
from lukhas_context.ops.cli.output import print_json
from lukhas_context.ops.config import Settings

__all__ = ["replay"]


@click.command()
@click.option(
    "--as-of",
    "as_of",
    type=params.Parsed("TIME|P:O,...", "lukhas_context.processors.pointintime:parse_as_of"),
    required=True,
    help="A time (ISO 8601, or ms:EPOCH_MS; the log's time) or WAL positions "
    "P:O,... (each offset included).",
)
@click.option(
    "--into",
    type=click.Path(path_type=Path, file_okay=False),
    required=True,
    help="An empty directory for the stores (read them with `get --as-of DIR`).",
)
@partitions_option("Partition to build")
@state_dir_option("A worker's state dir, for its checkpoints [default: the local cluster's].")
@checkpoint_dir_option
@bootstrap_option()
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@data_dir_option
@handle_errors
def replay(as_of: Any, into: Path, partitions: tuple[int, ...], state_dir: Path | None,
           checkpoint_dir: Path | None, bootstrap: str | None, as_json: bool,
           no_progress: bool, data_dir: Path | None) -> None:  # fmt: skip
    """Build the state as of a point of the log into DIR, without touching live state: each
    partition from the newest checkpoint at or below the point, else from the start, folded
    on with the worker's own fold. The same point always gives the same state."""
    from lukhas_context.processors.config import WorkerConfig
    from lukhas_context.processors.pointintime import build

    settings = Settings.load(data_dir)
    if state_dir is not None or settings.recorded():
        config = settings.restore_config(bootstrap, state_dir, checkpoint_dir)
    else:
        client = settings.client_config(bootstrap, None)
        config = WorkerConfig(bootstrap=client.bootstrap, state_dir=into.resolve(),
                              topics=client.topics, checkpoint_dir=checkpoint_dir)  # fmt: skip
    progress = not no_progress and sys.stderr.isatty()
    manifest = asyncio.run(build(config, into, as_of, list(partitions) or None, progress))
    if as_json:
        print_json(manifest)
        return
    for p, s in sorted(manifest["partitions"].items(), key=lambda kv: int(kv[0])):
        click.echo(f"partition {p}: as of {as_of.raw}, offset {s['next_offset']}, "
                   f"{s['documents']} documents, digest {s['digest']}, "
                   f"from {s['source']}")  # fmt: skip
    click.echo(f"in {into}; read with: lukhas get ID --as-of {into}")
