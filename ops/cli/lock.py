"""``lukhas lock NAME --ttl S -- COMMAND...``: run a command holding a distributed lock
(``streams.locks``), its fencing token in the command's environment."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
from pathlib import Path

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.client import client_config
from lukhas_context.ops.cli.errors import EXIT_LOCK_LOST, fail, handle_errors
from lukhas_context.ops.cli.options import data_dir_option

__all__ = ["lock"]


@click.command(context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.option("--ttl", type=params.Seconds(0.05, 86_400.0), required=True,
              help="SECONDS it is held without renewal (renewed every third of it).")  # fmt: skip
@click.option("--timeout", type=params.Seconds(0.0, 86_400.0), default=10.0, show_default=True,
              help="SECONDS to wait for the lock.")  # fmt: skip
@click.option("--redis", "redis_url", default=None, envvar="LUKHAS_REDIS_URL",
              help="redis-server [env LUKHAS_REDIS_URL; default: the local one].")  # fmt: skip
@data_dir_option
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@handle_errors
def lock(name: str, ttl: float, timeout: float, redis_url: str | None, data_dir: Path | None,
         command: tuple[str, ...]) -> None:  # fmt: skip
    """Run COMMAND holding the lock NAME: waits for it (at most --timeout), runs the command
    with LUKHAS_LOCK (the name), LUKHAS_FENCE_TOKEN and LUKHAS_FENCE (NAME:TOKEN) in its
    environment, renews the lock while it runs, releases it when it ends, and exits with the
    command's code — or 8 when the command succeeded but the lock was lost meanwhile (its
    writes may have raced another holder's). Put `--` before COMMAND."""
    from lukhas_context.streams.locks import LockManager

    if shutil.which(command[0]) is None and not Path(command[0]).is_file():
        raise click.UsageError(f"no command {command[0]!r}")
    config = client_config(data_dir, None, None, kafka=False)
    url = redis_url or config.redis_url
    if not url:
        fail("no Redis: pass --redis, set LUKHAS_REDIS_URL, or run `lukhas up` first")
    manager = LockManager(url, config.topics.prefix)

    async def run() -> int:
        try:
            async with manager.lock(name, ttl, timeout) as held:
                env = {**os.environ, "LUKHAS_LOCK": name, "LUKHAS_FENCE_TOKEN": str(held.token),
                       "LUKHAS_FENCE": f"{name}:{held.token}"}  # fmt: skip
                proc = await asyncio.create_subprocess_exec(*command, env=env)
                code = await proc.wait()
                lost = not held.held
        finally:
            await manager.close()
        if lost:
            click.echo(f"lukhas: warning: lock {name!r} was lost while the command ran",
                       err=True)  # fmt: skip
            return code or EXIT_LOCK_LOST
        return code

    sys.exit(asyncio.run(run()))
