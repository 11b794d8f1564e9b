"""Options several ``lukhas`` commands share: where the cluster is (data dir, Kafka, read API),
JSON output, and a write's conditions and wait."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.errors import F

__all__ = [
    "api_option",
    "bootstrap_option",
    "checkpoint_dir_option",
    "client_options",
    "data_dir_option",
    "kafka_config_option",
    "merge_old",
    "mutation_options",
    "old_name",
    "partitions_option",
    "state_dir_option",
]

KAFKA_HELP = "Kafka [env LUKHAS_BOOTSTRAP]."


def _or_environment(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """An empty option counts as not given, as an empty variable does (click skips those):
    the variable then, else None."""
    return value or param.resolve_envvar_value(ctx)


def _path_option(name: str, help: str) -> Callable[[F], F]:
    return click.option(name, type=click.Path(path_type=Path), default=None, help=help)


data_dir_option = _path_option(
    "--data-dir", "Cluster data dir [env LUKHAS_DATA_DIR, default ./.lukhas]."
)
checkpoint_dir_option = _path_option(
    "--checkpoint-dir", "Where checkpoints are kept [default: STATE_DIR/checkpoints]."
)


def partitions_option(what: str = "Partition") -> Callable[[F], F]:
    """``-p/--partition``, repeatable (none: every partition)."""
    return click.option(
        "--partition", "-p", "partitions", type=params.PARTITION, multiple=True,
        help=f"{what} (repeat for several) [default: every one].",
    )  # fmt: skip


def state_dir_option(help: str) -> Callable[[F], F]:
    """``--state-dir``: a worker's state dir, for its stores or checkpoints."""
    return _path_option("--state-dir", help)


def bootstrap_option(help: str = KAFKA_HELP) -> Callable[[F], F]:
    """``--bootstrap``, else ``LUKHAS_BOOTSTRAP`` (the command may then fall back on the data
    dir's cluster), and ``--kafka-config`` with it."""

    def decorate(fn: F) -> F:
        fn = kafka_config_option(fn)
        return click.option(
            "--bootstrap", default=None, envvar="LUKHAS_BOOTSTRAP", callback=_or_environment,
            help=help,
        )(fn)  # fmt: skip

    return decorate


def _kafka_config(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    """``--kafka-config FILE`` is ``LUKHAS_KAFKA_CONFIG=FILE`` for this command: the one reader
    of the environment (``ops.config``) reads it there, and so do the processes the command
    starts. Made absolute (a child may run elsewhere); the variable is restored when the
    command ends."""
    if value is None:
        return
    name = "LUKHAS_KAFKA_CONFIG"
    before = os.environ.get(name)
    os.environ[name] = str(Path(value).absolute())

    def restore() -> None:
        if before is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = before

    ctx.call_on_close(restore)


kafka_config_option = click.option(
    "--kafka-config", type=click.Path(exists=True, dir_okay=False, readable=True),
    default=None, expose_value=False, callback=_kafka_config, metavar="FILE",
    help="Kafka's security settings (TLS, SASL): a properties file with security.protocol, "
    "sasl.mechanism, sasl.username, sasl.password, ssl.ca.location... "
    "[env LUKHAS_KAFKA_CONFIG; or one variable per setting: LUKHAS_KAFKA_SASL_PASSWORD...].",
)  # fmt: skip


def api_option(help: str = "Read API URL [env LUKHAS_API_URL].") -> Callable[[F], F]:
    """``--api``, else ``LUKHAS_API_URL`` (empty counts as unset, as for ``--bootstrap``)."""
    return click.option(
        "--api", default=None, envvar="LUKHAS_API_URL", callback=_or_environment, help=help
    )


def client_options(fn: F) -> F:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON (only JSON on stdout).")(
        fn
    )
    fn = api_option()(fn)
    fn = bootstrap_option()(fn)
    fn = data_dir_option(fn)
    return fn


def _metadata(ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
              ) -> dict[str, str] | None:  # fmt: skip
    """``KEY=VALUE`` options as a map (None for none); the client checks the entries."""
    found: dict[str, str] = {}
    for item in value:
        key, sep, text = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item[:60]!r} is not KEY=VALUE", ctx, param)
        if key in found:
            raise click.BadParameter(f"{key[:60]!r} is given twice", ctx, param)
        found[key] = text
    return found or None


def mutation_options(fn: F) -> F:
    fn = click.option("--metadata", "metadata", multiple=True, metavar="KEY=VALUE",
                      callback=_metadata,
                      help="Kept with the event in the WAL, e.g. who wrote it (repeat for "
                           "several; at most 16 short entries).")(fn)  # fmt: skip
    fn = click.option("--timeout", type=params.WAIT, default=10.0, show_default=True,
                      help="Seconds to wait for the outcome (with --wait).")(fn)  # fmt: skip
    fn = click.option(
        "--wait/--no-wait", default=None,
        help="Wait until the event is folded and exit with its outcome's code (4 conflict, "
             "5 rejected, 6 dead-lettered, 9 fenced) [default: wait when a condition is "
             "given: --if-version, --fence, or --expect-checksum of a patch].",
    )(fn)  # fmt: skip
    fn = click.option("--dry-run", is_flag=True,
                      help="Show what the processor would do, exit with its code; append "
                           "nothing.")(fn)  # fmt: skip
    fn = click.option("--fence", "fence", default=None, metavar="LOCK:TOKEN",
                      help="The fencing token of a lock held (`lukhas lock` passes it as "
                           "$LUKHAS_FENCE): the event is fenced (exit 9) if a later holder "
                           "of LOCK has written to its partition.")(fn)  # fmt: skip
    fn = click.option("--event-id", "event_id", default=None, metavar="UUID",
                      help="The event's id (a UUID), so that a retry after a crash is the "
                           "same event: folded once, the repeat a duplicate.")(fn)  # fmt: skip
    fn = click.option("--if-version", "if_version", type=params.VERSION, default=None,
                      metavar="VERSION",
                      help="Apply only at this version (0 = must not exist).")(fn)  # fmt: skip
    return fn


def old_name(old: str, new: str, dest: str, **kw: Any) -> Callable[[F], F]:
    """An option's old name, still taken: hidden from ``--help``, it sets ``dest`` (the
    new option's parameter, with ``_old`` after it: ``merge_old`` merges the two) and says on
    stderr that it is deprecated. The vocabulary is the HTTP API's (``start``,
    ``min_offset``, ``context_id``)."""

    def said(ctx: click.Context, param: click.Parameter, value: object) -> object:
        if value is not None:
            click.echo(f"lukhas: {old} is deprecated: use {new}", err=True)
        return value

    return click.option(old, f"{dest}_old", hidden=True, default=None, callback=said, **kw)


def merge_old(dest: str, names: str, default: object = None) -> Callable[[F], F]:
    """Gives the command ``dest`` from the option's new name or its old one (``old_name``),
    or ``default``: a usage error when both are given. ``names``: ``"--new/--old"``."""

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def merged(*args: Any, **kwargs: Any) -> Any:
            new, old = kwargs.get(dest), kwargs.pop(f"{dest}_old", None)
            if new is not None and old is not None:
                first, second = names.split("/")
                raise click.UsageError(f"give {first} only ({second} is its old name)")
            kwargs[dest] = new if new is not None else old if old is not None else default
            return fn(*args, **kwargs)

        return merged  # type: ignore[return-value]

    return decorate
