"""``lukhas ls [PREFIX]``: the live contexts, in id order (``GET /v1/contexts``)."""

from __future__ import annotations

import asyncio
import dataclasses
import sys
from pathlib import Path

import click

from lukhas_context.ops.cli.client import client_config
from lukhas_context.ops.cli.errors import handle_errors
from lukhas_context.ops.cli.options import client_options
from lukhas_context.ops.cli.output import print_json
from lukhas_context.streams.client import ContextClient, ContextPage, ListedContext

__all__ = ["ls"]

#: ``--all`` stops after this many contexts (say ``--limit``/``--after`` to page further).
MAX_ALL = 1_000_000


@click.command()
@click.argument("prefix", default="")
@click.option("--after", default=None, metavar="ID",
              help="Start after this context id (the last a previous page showed).")  # fmt: skip
@click.option("--limit", type=click.IntRange(1, 1000), default=100, show_default=True,
              help="Contexts per page.")  # fmt: skip
@click.option("--all", "every", is_flag=True,
              help=f"Follow the pages to the end (at most {MAX_ALL:,} contexts).")  # fmt: skip
@client_options
@handle_errors
def ls(prefix: str, after: str | None, limit: int, every: bool, data_dir: Path | None,
       bootstrap: str | None, api: str | None, as_json: bool) -> None:  # fmt: skip
    """List the live contexts whose id starts with PREFIX (all of them without one), in id
    order: id, version, expiry. One page unless --all; the next page's --after goes to
    stderr. Needs only the read API (any worker: it asks the others). Partitions no worker
    answered for are named on stderr, and the exit code is then 1."""
    config = client_config(data_dir, bootstrap, api, kafka=False, read_api=True)

    async def run() -> tuple[list[ListedContext], ContextPage]:
        listed: list[ListedContext] = []
        async with ContextClient(config) as client:
            page = await client.list_contexts(prefix, after, limit)
            listed.extend(page.contexts)
            while every and page.more and len(listed) < MAX_ALL:
                page = await client.list_contexts(prefix, page.next_after, limit)
                listed.extend(page.contexts)
        return listed, page

    listed, last = asyncio.run(run())
    if as_json:
        print_json({"contexts": [dataclasses.asdict(c) for c in listed],
                    "next_after": last.next_after, "incomplete": last.incomplete})  # fmt: skip
    else:
        for c in listed:
            expiry = "never" if c.expires_at_ms is None else f"{c.expires_at_ms}"
            click.echo(f"{c.context_id}\tversion {c.version}\texpires {expiry}")
    if last.more and not as_json:
        click.echo(f"more: lukhas ls {prefix!r} --after {last.next_after!r}", err=True)
    if last.incomplete:
        click.echo(f"incomplete: no worker answered for partition(s) {last.incomplete}", err=True)
        sys.exit(1)
