"""``lukhas get`` and ``outcome`` (through the read API only), and ``watch`` (the change
stream)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import click
import orjson

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.client import client_config, with_client
from lukhas_context.ops.cli.errors import EXIT_CODES, exit_for, handle_errors
from lukhas_context.ops.cli.options import (
    bootstrap_option,
    client_options,
    data_dir_option,
    merge_old,
    old_name,
)
from lukhas_context.ops.cli.output import outcome_dict, outcome_text, print_json
from lukhas_context.streams.changes import Gap
from lukhas_context.streams.client import Context, ContextClient

__all__ = ["get", "outcome", "watch"]


@click.command()
@click.argument("context_id")
@click.option("--min-offset", "min_offset", default=None, type=params.Position(),
              help="Wait until WAL position P:O is folded.")  # fmt: skip
@old_name("--after", "--min-offset", "min_offset", type=params.Position())
@click.option("--timeout", type=params.WAIT, default=5.0, show_default=True,
              help="Seconds to wait.")  # fmt: skip
@click.option(
    "--as-of",
    "as_of",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Read from the state `lukhas replay --as-of ... --into DIR` built in DIR.",
)
@client_options
@handle_errors
@merge_old("min_offset", "--min-offset/--after")
def get(context_id: str, min_offset: tuple[int, int] | None, timeout: float, as_of: Path | None,
        data_dir: Path | None, bootstrap: str | None, api: str | None,
        as_json: bool) -> None:  # fmt: skip
    """Print CONTEXT_ID: version, checksum, expiry and document. Needs only the read API (or,
    with --as-of, the directory)."""
    if as_of is not None:
        if min_offset is not None:
            raise click.UsageError(
                "--min-offset waits for the live state; --as-of reads a built one"
            )
        _get_as_of(context_id, as_of, as_json)
        return
    config = client_config(data_dir, bootstrap, api, kafka=False, read_api=True)
    position = None if min_offset is None else f"{min_offset[0]}:{min_offset[1]}"
    ctx: Context = with_client(config, lambda c: c.get(context_id, position, timeout))
    if as_json:
        print_json({"context_id": ctx.context_id, "version": ctx.version, "doc": ctx.doc,
                    "checksum": ctx.checksum, "offset": ctx.offset, "partition": ctx.partition,
                    "expires_at_ms": ctx.expires_at_ms})  # fmt: skip
        return
    expiry = "never" if ctx.expires_at_ms is None else f"{ctx.expires_at_ms} ms (epoch)"
    click.echo(
        f"{ctx.context_id}  version {ctx.version}  checksum {ctx.checksum}  expires {expiry}"
    )
    click.echo(json.dumps(ctx.doc, indent=2, sort_keys=True))


def _get_as_of(context_id: str, into: Path, as_json: bool) -> None:
    from lukhas_context.processors.pointintime import read_context
    from lukhas_context.streams.exceptions import ContextNotFoundError

    record, manifest, partition = read_context(into, context_id)
    if record is None:
        raise ContextNotFoundError(context_id)
    assert record.doc is not None
    data = {"context_id": context_id, "version": record.version, "doc": orjson.loads(record.doc),
            "checksum": record.checksum.hex(), "offset": record.offset, "partition": partition,
            "expires_at_ms": record.expires_at_ms, "as_of": manifest["as_of"]}  # fmt: skip
    if as_json:
        print_json(data)
        return
    expiry = "never" if record.expires_at_ms is None else f"{record.expires_at_ms} ms (epoch)"
    click.echo(f"{context_id}  version {record.version}  checksum {data['checksum']}  "
               f"expires {expiry}  (as of {manifest['as_of']})")  # fmt: skip
    click.echo(json.dumps(data["doc"], indent=2, sort_keys=True))


@click.command(epilog=EXIT_CODES)
@click.argument("position", type=params.Position())
@click.option("--timeout", type=params.WAIT, default=5.0, show_default=True,
              help="Seconds to wait until it is folded.")  # fmt: skip
@client_options
@handle_errors
def outcome(position: tuple[int, int], timeout: float, data_dir: Path | None,
            bootstrap: str | None, api: str | None, as_json: bool) -> None:  # fmt: skip
    """What the processor did with the event at WAL position P:O; the exit code says it too
    (0 applied, 4 conflict, 5 rejected, 6 dead-lettered, 3 no such position)."""
    partition, offset = position
    config = client_config(data_dir, bootstrap, api, kafka=False, read_api=True)
    result = with_client(config, lambda c: c.outcome(partition, offset, timeout))
    if as_json:
        print_json(outcome_dict(result))
    else:
        click.echo(f"{partition}:{offset}: {outcome_text(result)}")
    exit_for(result.status)


@click.command()
@click.option("--context-id", "context_id", default=None, help="Watch one context.")
@old_name("--id", "--context-id", "context_id")
@click.option("--prefix", default=None, help="Watch the contexts whose ids start with PREFIX.")
@click.option(
    "--start",
    "start",
    type=params.StartPoint(),
    default=None,
    help="latest | earliest | epoch ms or ISO time | a resume token [default: latest].",
)
@old_name("--from", "--start", "start", type=params.StartPoint())
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
@bootstrap_option()
@data_dir_option
@handle_errors
@merge_old("context_id", "--context-id/--id")
@merge_old("start", "--start/--from", "latest")
def watch(context_id: str | None, prefix: str | None, start: str, deltas: bool,
          limit: int | None, idle_timeout: float | None, fail_on_gap: bool,
          bootstrap: str | None, data_dir: Path | None) -> None:  # fmt: skip
    """Follow the change stream: one JSON line per change, each with the `token` that
    resumes right after it (`--start TOKEN`). A gap (changes compacted away before they were
    read) is a line {"gap": ...} on stdout and a warning on stderr, never silent."""
    config = client_config(data_dir, bootstrap, None)

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
        with_client(config, call)
