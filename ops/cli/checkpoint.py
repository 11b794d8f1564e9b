"""``lukhas checkpoint``: a barrier on every WAL partition, and (by default) the manifests of
the checkpoints the workers take there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.client import client_config, with_client
from lukhas_context.ops.cli.errors import handle_errors
from lukhas_context.ops.cli.options import client_options
from lukhas_context.ops.cli.output import partition_line, print_json
from lukhas_context.streams.client import ContextClient

__all__ = ["checkpoint"]


@click.command()
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
@client_options
@handle_errors
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

    result = with_client(client_config(data_dir, bootstrap, api), call)
    if as_json:
        print_json(result)
        return
    click.echo(f"checkpoint {result['checkpoint_id']}")
    for m in result.get("manifests", []):
        click.echo(partition_line(m))
    if not wait:
        click.echo(f"  barriers at {result['barriers']}")
