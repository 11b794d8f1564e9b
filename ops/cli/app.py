"""The ``lukhas`` command group: logging, ``--version``, and every command of the package."""

from __future__ import annotations

import logging

import click

from lukhas_context.ops.cli.advise import advise_command
from lukhas_context.ops.cli.checkpoint import checkpoint
from lukhas_context.ops.cli.cluster import demo, down, status, up
from lukhas_context.ops.cli.dlq import dlq
from lukhas_context.ops.cli.errors import EXIT_CODES, OneLineGroup
from lukhas_context.ops.cli.history import history
from lukhas_context.ops.cli.inspect import inspect
from lukhas_context.ops.cli.lock import lock
from lukhas_context.ops.cli.ls import ls
from lukhas_context.ops.cli.reads import get, outcome, watch
from lukhas_context.ops.cli.replay import replay
from lukhas_context.ops.cli.restore import restore
from lukhas_context.ops.cli.topics import topics
from lukhas_context.ops.cli.transactions import transactions
from lukhas_context.ops.cli.verify import verify
from lukhas_context.ops.cli.wal import wal
from lukhas_context.ops.cli.worker import worker
from lukhas_context.ops.cli.writes import delete, patch, put, touch

__all__ = ["DISTRIBUTION", "cli", "main"]

#: The distribution (pyproject's ``[project] name``) whose version ``--version`` prints.
DISTRIBUTION = "lukhas-context"


@click.group(cls=OneLineGroup, epilog=EXIT_CODES)
@click.option("-v", "--verbose", count=True, help="More logging (-v info, -vv debug).")
@click.version_option(package_name=DISTRIBUTION, prog_name="lukhas", message="%(prog)s %(version)s")
@click.pass_context
def cli(ctx: click.Context, verbose: int) -> None:
    """LUKHAS Context: an event-sourced context store on Kafka and RocksDB."""
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not verbose and ctx.invoked_subcommand != "worker":
        # The Kafka client logs every failed connection attempt at ERROR; a command says
        # what failed in one line of its own (-v shows the library's lines too).
        logging.getLogger("aiokafka").setLevel(logging.CRITICAL)


for _command in (up, down, status, demo, worker, restore, put, patch, touch, delete, get, ls,
                 outcome, history, watch, checkpoint, transactions, topics, verify, inspect,
                 replay, wal, dlq, lock, advise_command):  # fmt: skip
    cli.add_command(_command)


def main() -> None:
    cli(prog_name="lukhas")
