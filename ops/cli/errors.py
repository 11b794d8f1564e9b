"""How a ``lukhas`` command ends: its exit code, and every error as one line on stderr
(``lukhas: error: <reason>``, ``lukhas: usage error: <reason>``), never a traceback."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, NoReturn, TypeVar

import click
from aiokafka.errors import KafkaError

from lukhas_context.ops.exceptions import NotConfiguredError
from lukhas_context.schemas.exceptions import LukhasError
from lukhas_context.streams.exceptions import (
    ContextNotFoundError,
    NoSuchPositionError,
    ValidationError,
)

__all__ = [
    "EXIT_CODES",
    "EXIT_DIFFERS",
    "EXIT_ERROR",
    "EXIT_LOCK_LOST",
    "EXIT_OF_STATUS",
    "F",
    "OneLineGroup",
    "exit_for",
    "fail",
    "handle_errors",
]

F = TypeVar("F", bound=Callable[..., Any])
EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_NOT_FOUND = 3
EXIT_CONFLICT = 4
EXIT_REJECTED = 5
EXIT_DEAD_LETTERED = 6
#: ``lukhas verify``: a partition differs from what it was compared with, or is corrupt.
EXIT_DIFFERS = 7
#: ``lukhas lock``: the command succeeded, but the lock was lost while it ran.
EXIT_LOCK_LOST = 8
#: A write waited on whose fencing token was stale (``--fence``).
EXIT_FENCED = 9
#: The exit code of each outcome of an event (a waited write, `lukhas outcome`, a dry run).
EXIT_OF_STATUS = {
    "applied": 0,
    "conflict": EXIT_CONFLICT,
    "rejected": EXIT_REJECTED,
    "dead_lettered": EXIT_DEAD_LETTERED,
    "fenced": EXIT_FENCED,
    "aborted": EXIT_CONFLICT,
}
EXIT_CODES = (
    "Exit codes: 0 success; 1 error (one line on stderr); 2 usage error; 3 not found (the "
    "context, the WAL position, its history, the dead letter); for a write waited on (--wait), "
    "`outcome` and --dry-run: 4 conflict (or a transaction aborted), 5 rejected, 6 "
    "dead-lettered (also `dlq redrive`: one was dead-lettered again), 9 fenced (a stale "
    "--fence token); `verify`: 7 a partition differs or is corrupt; `lock`: the command's "
    "code, or 8 when the lock was lost while it ran."
)


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    click.echo(f"lukhas: error: {message}", err=True)
    sys.exit(code)


def exit_for(status: str) -> None:
    """Exits with the code of an outcome's status (nothing for ``applied``)."""
    code = EXIT_OF_STATUS.get(status, EXIT_ERROR)
    if code:
        sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turns the distribution's errors into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ContextNotFoundError as exc:
            fail(f"context {exc.args[0]!r} not found", EXIT_NOT_FOUND)
        except NoSuchPositionError as exc:
            fail(str(exc), EXIT_NOT_FOUND)
        except ValidationError as exc:  # an argument the client refused: nothing was sent
            click.echo(f"lukhas: usage error: {type(exc).__name__}: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except NotConfiguredError as exc:  # its message says what to pass or set
            fail(str(exc))
        except LukhasError as exc:  # `not_found`: exit 3, as for a context (no dead letter...)
            fail(f"{type(exc).__name__}: {exc}", EXIT_NOT_FOUND if exc.not_found else EXIT_ERROR)
        except KafkaError as exc:  # one the distribution did not wrap: still one line
            fail(f"Kafka: {exc}")
        except ModuleNotFoundError as exc:  # an extra not installed: say which
            missing_extra(exc)
        except OSError as exc:
            fail(f"{type(exc).__name__}: {exc}")

    return wrapper  # type: ignore[return-value]


def missing_extra(exc: ModuleNotFoundError) -> NoReturn:
    """One line naming the extra that brings the package a command could not import (the
    error itself when no extra does: a broken install is not a missing extra)."""
    extra = EXTRA_OF_MODULE.get((exc.name or "").split(".")[0])
    if extra is None:
        raise exc
    fail(f"this command needs the {exc.name} package: pip install 'lukhas-context[{extra}]'")


#: A package a command may need that the base install (the client) lacks -> the extra that
#: brings it (pyproject.toml's [project.optional-dependencies]).
EXTRA_OF_MODULE = {
    "rocksdict": "server",
    "prometheus_client": "server",
    "cramjam": "server",
    "tqdm": "cli",
    "redis": "locks",
    "faust": "faust",
    "mode": "faust",
}


class _UsageError(click.UsageError):
    """A usage error shown on one line, as every other error of the command."""

    def show(self, file: Any = None) -> None:
        where = self.ctx.command_path if self.ctx is not None else "lukhas"
        click.echo(f"lukhas: usage error: {self.format_message()} (see `{where} --help`)", err=True)


def _one_line(exc: click.UsageError) -> click.UsageError:
    if isinstance(exc, _UsageError | click.exceptions.NoArgsIsHelpError):
        return exc  # one line already, or the help asked for by giving no arguments
    # A bad parameter's message names it: "Invalid value for '--x': ...".
    bad = isinstance(exc, click.BadParameter)
    return _UsageError(exc.format_message() if bad else exc.message, exc.ctx)


class OneLineGroup(click.Group):
    """The command group: its usage errors, and its commands', are one line on stderr."""

    def make_context(self, *args: Any, **kwargs: Any) -> click.Context:
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:
            _raise_one_line(exc)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as exc:
            _raise_one_line(exc)
        except ModuleNotFoundError as exc:  # while parsing an option (a size, a time...)
            missing_extra(exc)


def _raise_one_line(exc: click.UsageError) -> NoReturn:
    converted = _one_line(exc)
    if converted is exc:
        raise exc
    raise converted from exc
