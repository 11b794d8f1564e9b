"""``lukhas inspect wal|changes|dlq|checkpoints``: decoded records, one line each
(``ops.inspect``)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.errors import handle_errors
from lukhas_context.ops.cli.options import (
    api_option,
    bootstrap_option,
    data_dir_option,
    merge_old,
    old_name,
)
from lukhas_context.ops.config import Settings

__all__ = ["inspect"]

#: An offset or a time (``streams.position.parse_bound``), parsed when given.
BOUND = params.Parsed("OFFSET|TIME", "lukhas_context.streams.position:parse_bound")


@click.command()
@click.argument("which", type=click.Choice(["wal", "changes", "dlq", "checkpoints"]))
@click.option(
    "--partition",
    "-p",
    "partitions",
    type=params.PARTITION,
    multiple=True,
    help="Partition to read (repeat for several) [default: every one, or the one of --context-id].",
)
@click.option(
    "--start",
    "start",
    type=BOUND,
    default=None,
    help="First offset, or a time (ISO 8601, or ms:EPOCH_MS) [default: the start].",
)
@old_name("--from", "--start", "start", type=BOUND)
@click.option(
    "--until",
    type=BOUND,
    default=None,
    help="Stop before this offset or time [default: the end as the read starts].",
)
@click.option("--context-id", "context_id", default=None, help="Only this context's records.")
@old_name("--id", "--context-id", "context_id")
@click.option(
    "--limit",
    type=click.IntRange(1, 1_000_000),
    default=100,
    show_default=True,
    help="Lines at most.",
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@api_option("Read API URL, for the WAL's outcomes [env LUKHAS_API_URL].")
@bootstrap_option()
@data_dir_option
@handle_errors
@merge_old("start", "--start/--from")
@merge_old("context_id", "--context-id/--id")
def inspect(which: str, partitions: tuple[int, ...], start: Any, until: Any,
            context_id: str | None, limit: int, as_json: bool, api: str | None,
            bootstrap: str | None, data_dir: Path | None) -> None:  # fmt: skip
    """Print the records of the WAL, the change topic, the dead-letter queue or the
    checkpoints topic, decoded: position (PARTITION:OFFSET), log time, then per topic the
    event id, context and kind, and the outcome from the journal (wal); the context,
    version and kind (changes); the reason and the original WAL position (dlq); the
    checkpoint's id, offset and digest (checkpoints). Reads committed records, never
    changes anything; a record that does not decode is shown with the reason."""
    from lukhas_context.ops.inspect import read

    config = Settings.load(data_dir).client_config(bootstrap, api)
    api_url = config.api_url.split(",")[0].rstrip("/") if config.api_url else None

    async def run() -> None:
        async for item in read(config.bootstrap, config.topics, which, list(partitions) or None,
                               start, until, context_id, limit,
                               api_url if which == "wal" else None,
                               security=config.kafka_security):  # fmt: skip
            if as_json:
                sys.stdout.write(orjson.dumps(item).decode() + "\n")
            else:
                click.echo(_text(which, item))

    asyncio.run(run())


def _text(which: str, i: dict[str, Any]) -> str:
    head = f"{i['position']:<10} {i['log_time']}"
    if "undecodable" in i:
        outcome = f"  -> {i['outcome']}" if "outcome" in i else ""
        return f"{head}  key={i.get('key')!r}  UNDECODABLE: {i['undecodable']}{outcome}"
    kind = i.get("kind")
    reason = f" ({i['reason']})" if i.get("reason") else ""
    if which == "wal":
        outcome = f"  -> {i['outcome']}" if "outcome" in i else ""
        if kind == "tick":
            return f"{head}  tick{outcome}"
        if kind == "vote":
            vote = "yes" if i["yes"] else "no"
            return (f"{head}  {i['event_id']}  vote     partition {i['voter']} votes "
                    f"{vote}{reason}{outcome}")  # fmt: skip
        if kind == "decision":
            decided = "commit" if i["commit"] else "abort"
            return f"{head}  {i['event_id']}  decision {decided}{reason}{outcome}"
        named = ("if_version", "expires_version", "checkpoint_id", "partitions")
        extra = "".join(f" {k}={i[k]}" for k in named if k in i)
        return f"{head}  {i['event_id']}  {kind:<8} {i['context_id']}{extra}{outcome}"
    if which == "changes" and kind == "transaction-state":
        state = "prepared" if i["prepared"] else "decided"
        return (f"{head}  transaction {i['event_id']} {state} "
                f"(WAL offset {i['wal_offset']})")  # fmt: skip
    if which == "changes" and kind == "fence":
        return f"{head}  fence {i['lock']!r} token {i['token']}  (WAL offset {i['wal_offset']})"
    if which == "changes":
        return (f"{head}  {i['context_id']}  v{i['version']} {kind}  "
                f"(WAL offset {i['wal_offset']})")  # fmt: skip
    if which == "dlq":
        event = f"  {i.get('kind', '')} {i.get('event_id', i.get('event', ''))}"
        return f"{head}  {i['context_id']}  from WAL {i['source']}{event}  {i['reason']}"
    if i.get("deleted"):
        return f"{head}  {i['key']}  (deleted)"
    return (f"{head}  {i['checkpoint_id']}  partition {i['partition']}  offset "
            f"{i['next_offset']}  digest {i['digest']}  {i['documents']} documents  "
            f"created {i['created']}")  # fmt: skip
