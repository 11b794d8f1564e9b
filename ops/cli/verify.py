"""``lukhas verify``: compare partition stores with a replay of the WAL, a checkpoint folded
on, or another worker's store, and name the first differing contexts (``ops.verify``)."""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.errors import EXIT_DIFFERS, handle_errors
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

__all__ = ["verify"]


@click.command()
@partitions_option("Partition to verify")
@click.option(
    "--against",
    "against",
    type=params.Parsed("replay|checkpoint:ID|URL", "lukhas_context.ops.verify:parse_against"),
    default="replay",
    show_default=True,
    help="Compare with a replay of the WAL, with checkpoint ID (or 'latest') folded "
    "on to the same offset, or with the store of the worker at URL.",
)
@state_dir_option(
    "Verify the stores in this state dir (no worker may hold them) instead of "
    "the live ones behind the read API."
)
@checkpoint_dir_option
@click.option(
    "--scratch",
    type=click.Path(path_type=Path, file_okay=False),
    default=None,
    help="Where replays are built (deleted after) [default: the temp dir].",
)
@click.option(
    "--limit",
    type=click.IntRange(1, 10_000),
    default=10,
    show_default=True,
    help="Differing contexts to name per partition.",
)
@api_option()
@bootstrap_option()
@click.option("--json", "as_json", is_flag=True, help="Print the reports as JSON.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
@data_dir_option
@handle_errors
def verify(partitions: tuple[int, ...], against: Any, state_dir: Path | None,
           checkpoint_dir: Path | None, scratch: Path | None, limit: int, api: str | None,
           bootstrap: str | None, as_json: bool, no_progress: bool,
           data_dir: Path | None) -> None:  # fmt: skip
    """Check that partition stores hold what the WAL says: each store's digest is
    recomputed from its records, then compared with the same partition rebuilt at the same
    offset. On a difference, the first differing contexts are found by bisecting key ranges
    by their digests (each side is read about once). Live stores are frozen by their worker
    for the comparison; nothing live changes. Exit 7 when a partition differs or a store is
    corrupt."""
    from lukhas_context.ops import verify as v

    if state_dir is not None and not state_dir.is_dir():
        raise click.UsageError(f"--state-dir {state_dir}: no such directory")
    settings = Settings.load(data_dir)
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
    rebuild = against.kind in ("replay", "checkpoint")
    config = None
    if rebuild:
        if against.kind == "checkpoint" and checkpoint_dir is None and state_dir is None \
                and not settings.recorded():  # fmt: skip
            raise click.UsageError(f"--against {against} needs --checkpoint-dir (or --state-dir)")
        config = settings.restore_config(bootstrap, state_dir, checkpoint_dir) \
            if (state_dir is not None or settings.recorded()) else None  # fmt: skip
        if config is None:
            from lukhas_context.processors.config import WorkerConfig

            kafka = settings.client_config(bootstrap, None).bootstrap
            config = WorkerConfig(bootstrap=kafka, state_dir=Path(".").resolve(),
                                  topics=settings.client_config(bootstrap, None).topics,
                                  checkpoint_dir=checkpoint_dir)  # fmt: skip
    url = None if state_dir is not None else settings.client_config(
        None, api, kafka=False, read_api=True).api_url  # fmt: skip
    progress = not no_progress and sys.stderr.isatty()

    async def one(http: Any, p: int) -> dict[str, Any]:
        started = time.monotonic()

        async def subject() -> v.Side:
            if state_dir is not None:
                return await asyncio.to_thread(v.open_stored, state_dir / f"partition-{p}")
            assert url is not None
            return await v.open_remote(http, url, p, pinned=False)

        if rebuild:
            assert config is not None
            a = await subject()
            try:
                async with v.kept_alive(a):
                    b = await v.rebuilt_side(config, p, a.next_offset, against, scratch,
                                             progress)  # fmt: skip
            except BaseException:
                await a.close()
                raise
        else:
            a, b = await v.same_offset(
                subject, lambda: v.open_remote(http, against.value, p, pinned=True)
            )
        try:
            return await v.verify_partition(a, b, p, limit, started)
        finally:
            await a.close()
            await b.close()

    async def run() -> list[dict[str, Any]]:
        async with v.http_session(settings.env.api_token) as http:
            chosen = list(partitions) or await _every_partition(http, url, state_dir)
            return [await one(http, p) for p in chosen]

    reports = asyncio.run(run())
    if as_json:
        print_json(reports if len(reports) != 1 else reports[0])
    else:
        for r in reports:
            _echo(r)
    if not all(r["equal"] for r in reports):
        sys.exit(EXIT_DIFFERS)


async def _every_partition(http: Any, url: str | None, state_dir: Path | None) -> list[int]:
    from lukhas_context.ops import verify as v

    if state_dir is not None:
        names = await asyncio.to_thread(lambda: [d.name for d in state_dir.glob("partition-*")])
        found = sorted(int(n[len("partition-"):]) for n in names
                       if n[len("partition-"):].isdigit())  # fmt: skip
        if not found:
            raise v.VerifyError(f"no partition stores in {state_dir}")
        return found
    assert url is not None
    try:
        async with http.get(f"{url}/v1/members") as response:
            data = await response.json(content_type=None)
    except (OSError, ValueError) as exc:
        raise v.VerifyError(f"cannot read the partition count from {url}: {exc}") from None
    count = data.get("partition_count") if isinstance(data, dict) else None
    if not count:
        raise v.VerifyError(f"{url} does not know the partitions yet (is it starting?)")
    return list(range(int(count)))


def _echo(r: dict[str, Any]) -> None:
    s, o = r["subject"], r["against"]
    head = f"partition {r['partition']} at offset {r['next_offset']}:"
    for side in (s, o):
        if side["corrupt"]:
            rec = side["recomputed"]
            click.echo(f"{head} CORRUPT: {side['source']} keeps digest {side['digest']} over "
                       f"{side['records']} records, its records give {rec['digest']} over "
                       f"{rec['records']}")  # fmt: skip
    if r["equal"]:
        click.echo(f"{head} equal to {o['source']}: digest {s['digest']}, {s['records']} "
                   f"records ({r['seconds']:.2f} s)")  # fmt: skip
        return
    if s["digest"] != o["digest"] or s["records"] != o["records"]:
        click.echo(f"{head} DIFFERS from {o['source']}: digest {s['digest']} ({s['records']} "
                   f"records) vs {o['digest']} ({o['records']}); first differing contexts "
                   f"({r['requests']} range requests, {r['seconds']:.2f} s):")  # fmt: skip
    for d in r["differences"]:
        click.echo(f"  {d['context_id']}: here {_row(d['subject'])}; there {_row(d['against'])}")
    if r["truncated"]:
        click.echo("  ... more (raise --limit)")
    if r.get("fences_differ"):
        click.echo("  every context agrees: the fencing tokens kept for the locks differ")


def _row(row: dict[str, Any] | None) -> str:
    if row is None:
        return "absent"
    what = "deleted" if row["deleted"] else "version"
    return f"{what} {row['version']} (from offset {row['offset']}, hash {row['hash']})"
