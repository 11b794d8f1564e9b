"""Parameter types of the ``lukhas`` command: every number is finite and within range, every
position and JSON argument is read and checked before anything connects. A bad value is a
usage error (exit 2) naming the option, never a traceback and never a wait without end."""

from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path
from typing import Any

import click
import orjson

from lukhas_context.schemas.numbers import out_of_range_integer
from lukhas_context.streams.changes import MAX_INT64, parse_start
from lukhas_context.streams.exceptions import ValidationError
from lukhas_context.streams.position import MAX_PARTITION, parse_position
from lukhas_context.streams.validation import DEFAULT_MAX_DOCUMENT_BYTES, MAX_TTL_S

#: The longest wait a command may ask for (seconds).
MAX_WAIT_S = 3600.0
#: The most bytes read for one JSON argument (from stdin or a file): generous next to the
#: document limit, since formatted JSON is larger than its canonical form.
MAX_JSON_INPUT = 16 * DEFAULT_MAX_DOCUMENT_BYTES


def _shown(text: str, limit: int = 40) -> str:
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


class Seconds(click.ParamType):
    """A finite number of seconds in ``[low, high]`` (``(low, high]`` with ``open_low``).
    ``nan`` and ``inf`` are refused: one never ends a wait, the other overflows."""

    name = "seconds"

    def __init__(self, low: float = 0.0, high: float = MAX_WAIT_S, open_low: bool = False):
        self.low, self.high, self.open_low = low, high, open_low

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "SECONDS"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> float:
        if isinstance(value, float):
            number = value
        else:
            try:
                number = float(str(value).strip())
            except ValueError:
                self.fail(f"{_shown(str(value))} is not a number of seconds", param, ctx)
        bracket = "(" if self.open_low else "["
        below = number <= self.low if self.open_low else number < self.low
        if not math.isfinite(number) or below or number > self.high:
            self.fail(
                f"{value} is not a finite number of seconds in "
                f"{bracket}{self.low:.15g}, {self.high:.15g}]",
                param,
                ctx,
            )
        return number


class Bytes(click.ParamType):
    """A size: ``512MiB``, ``1GiB``, ``800MB`` or a number of bytes, at least ``low``."""

    name = "size"

    def __init__(self, low: int = 0) -> None:
        self.low = low

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "SIZE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            size = value
        else:
            from lukhas_context.state.memory import parse_bytes

            try:
                size = parse_bytes(str(value))
            except ValueError as exc:
                self.fail(str(exc), param, ctx)
        if size < self.low:
            self.fail(f"{value} is under the least of {self.low // 1024 // 1024} MiB", param, ctx)
        return size


#: A wait (``--timeout``): up to an hour.
WAIT = Seconds()
#: A TTL: more than 0, at most 100 years (what the client accepts).
TTL = Seconds(0.0, float(MAX_TTL_S), open_low=True)
#: A TCP port.
PORT = click.IntRange(1, 65535)
#: A version number (``--if-version``): what the WAL's long can hold.
VERSION = click.IntRange(0, MAX_INT64)
#: A partition number.
PARTITION = click.IntRange(0, MAX_PARTITION)
#: A count of things (``--limit``).
COUNT = click.IntRange(1, MAX_INT64)


class Position(click.ParamType):
    """``PARTITION:OFFSET``, a WAL position (a receipt's ``partition:offset``)."""

    name = "position"

    def get_metavar(self, param: click.Parameter, ctx: click.Context) -> str:
        return "P:O"

    def convert(
        self, value: Any, param: click.Parameter | None, ctx: click.Context | None
    ) -> tuple[int, int]:
        if isinstance(value, tuple):
            return value
        try:  # the one parser of a position (the client's and the read API's too)
            return parse_position(str(value))
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)


class StartPoint(click.ParamType):
    """Where a watch starts: ``latest``, ``earliest``, epoch ms, an ISO time or a token."""

    name = "start"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        try:
            parse_start(value)
        except ValidationError as exc:
            self.fail(str(exc), param, ctx)
        return value


class JsonArgument(click.ParamType):
    """A JSON value given inline, as ``-`` (read from stdin) or as ``@FILE`` (read from the
    file): documents too big for the command line (the kernel's limit is 128 KiB per
    argument) come by file or pipe. ``objects_only``: it must be a JSON object."""

    name = "json"

    def __init__(self, what: str, objects_only: bool = False) -> None:
        self.what = what
        self.objects_only = objects_only

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # already converted (a default)
        raw = self._read(value, param, ctx)
        try:
            parsed = orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            self.fail(f"{self.what} does not parse as JSON: {exc}", param, ctx)
        # orjson reads an integer outside 64 bits as a double: refuse it, never round it.
        reason = out_of_range_integer(raw)
        if reason is not None:
            self.fail(f"{self.what}: {reason}", param, ctx)
        if self.objects_only and not isinstance(parsed, dict):
            kind = type(parsed).__name__
            self.fail(f"{self.what} must be a JSON object, got a JSON {kind}", param, ctx)
        return parsed

    def _read(self, value: str, param: click.Parameter | None, ctx: click.Context | None) -> bytes:
        if value == "-":
            source, data = "stdin", sys.stdin.buffer.read(MAX_JSON_INPUT + 1)
        elif value.startswith("@"):
            source = value[1:]
            try:
                with Path(source).open("rb") as file:
                    data = file.read(MAX_JSON_INPUT + 1)
            except OSError as exc:
                self.fail(f"cannot read {self.what} from {source!r}: {exc.strerror}", param, ctx)
        else:
            return value.encode("utf-8", "surrogateescape")
        if len(data) > MAX_JSON_INPUT:
            self.fail(f"{self.what} from {source} is over {MAX_JSON_INPUT} bytes", param, ctx)
        return data


class Parsed(click.ParamType):
    """A value parsed by ``module:function`` (imported on first use: the commands' parsers
    live beside modules that are slow to import), whose ``ValueError`` is the usage error."""

    def __init__(self, name: str, parser: str) -> None:
        self.name = name
        self._parser = parser

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        if not isinstance(value, str):
            return value  # a default, or a value parsed already
        module, function = self._parser.split(":")
        try:
            return getattr(importlib.import_module(module), function)(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)
