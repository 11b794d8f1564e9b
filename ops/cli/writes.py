"""``lukhas put``, ``patch``, ``touch``, ``delete``: one write each, its receipt or dry run,
and (when waited for) its outcome and the outcome's exit code."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.client import client_config, with_client
from lukhas_context.ops.cli.errors import EXIT_CODES, exit_for, fail, handle_errors
from lukhas_context.ops.cli.options import client_options, mutation_options
from lukhas_context.ops.cli.output import outcome_dict, outcome_text, print_json
from lukhas_context.streams.client import ContextClient, DryRun, Outcome, Receipt
from lukhas_context.streams.exceptions import ReadError
from lukhas_context.streams.validation import check_patch

__all__ = ["delete", "patch", "put", "touch"]


@dataclass(frozen=True, slots=True)
class _Written:
    """What a write command did: the dry run, or the receipt and (when waited for) its
    outcome, or why the outcome is unknown."""

    result: Receipt | DryRun
    outcome: Outcome | None = None
    unknown: str | None = None


def _result_out(written: _Written, as_json: bool) -> None:
    """Prints what a write did and exits with its outcome's code."""
    result = written.result
    if isinstance(result, DryRun):
        data = {"dry_run": True, "status": result.status, "version": result.version,
                "reason": result.reason, "kind": result.kind, "doc": result.doc,
                "checksum": result.checksum, "expires_at_ms": result.expires_at_ms}  # fmt: skip
        if as_json:
            print_json(data)
        else:
            click.echo(f"dry run: {result.status} (version {result.version})"
                       + (f": {result.reason}" if result.reason else ""))  # fmt: skip
            if result.doc is not None:
                click.echo(json.dumps(result.doc, indent=2, sort_keys=True))
        exit_for(result.status)
        return
    outcome = written.outcome
    if as_json:
        out: dict[str, Any] = {"context_id": result.context_id, "partition": result.partition,
                               "offset": result.offset, "event_id": result.event_id}  # fmt: skip
        if outcome is not None:
            out["outcome"] = outcome_dict(outcome)
        print_json(out)
    else:
        click.echo(f"{result.context_id} -> {result.position} (event {result.event_id})"
                   + (f": {outcome_text(outcome)}" if outcome is not None else ""))  # fmt: skip
    if written.unknown is not None:
        fail(f"the event was appended at {result.position}, but its outcome is unknown: "
             f"{written.unknown} (ask later: `lukhas outcome {result.position}`)")  # fmt: skip
    if outcome is not None:
        exit_for(outcome.status)


@dataclass(frozen=True, slots=True)
class _Target:
    """Where and how a write command writes (its common options)."""

    data_dir: Path | None
    bootstrap: str | None
    api: str | None
    dry_run: bool
    wait: bool | None
    timeout: float
    as_json: bool


def _write(
    target: _Target,
    call: Callable[[ContextClient], Coroutine[Any, Any, Any]],
    conditional: bool,
) -> None:
    """Runs one write; waits for its outcome when asked (by default when the write has a
    condition: its point is the outcome), then prints it and exits with its code."""
    wait = (conditional if target.wait is None else target.wait) and not target.dry_run
    config = client_config(target.data_dir, target.bootstrap, target.api,
                           read_api=wait or target.dry_run)  # fmt: skip

    async def run(client: ContextClient) -> _Written:
        result = await call(client)
        if not wait or not isinstance(result, Receipt):
            return _Written(result)
        try:
            return _Written(result, await result.outcome(target.timeout))
        except ReadError as exc:  # appended all the same: say where, and why it is unknown
            return _Written(result, unknown=str(exc))

    _result_out(with_client(config, run), target.as_json)


@click.command(epilog=EXIT_CODES)
@click.argument("context_id")
@click.argument("document", type=params.JsonArgument("DOCUMENT", objects_only=True))
@click.option("--ttl", type=params.TTL, default=None, help="Expire after SECONDS.")
@mutation_options
@client_options
@handle_errors
def put(context_id: str, document: dict[str, Any], ttl: float | None, if_version: int | None,
        event_id: str | None, fence: str | None, metadata: dict[str, str] | None,
        dry_run: bool, wait: bool | None, timeout: float, data_dir: Path | None,
        bootstrap: str | None, api: str | None, as_json: bool) -> None:  # fmt: skip
    """Replace the document of CONTEXT_ID with DOCUMENT, a JSON object: inline, `-` to read
    it from stdin, or `@FILE` to read it from a file (for documents too big for a command
    line)."""
    target = _Target(data_dir, bootstrap, api, dry_run, wait, timeout, as_json)
    _write(target, lambda c: c.put(
        context_id, document, ttl, expected_version=if_version, dry_run=dry_run,
        event_id=event_id, fence=fence, metadata=metadata,
    ), conditional=if_version is not None or fence is not None)  # fmt: skip


@click.command(epilog=EXIT_CODES)
@click.argument("context_id")
@click.argument("patch", type=params.JsonArgument("PATCH"))
@click.option("--merge", is_flag=True, help="PATCH is an RFC 7386 merge patch (an object).")
@click.option("--expect-checksum", default=None, metavar="HEX",
              help="Reject unless the result has this checksum.")  # fmt: skip
@click.option("--ttl", type=params.TTL, default=None, help="Also set the TTL to SECONDS.")
@click.option("--clear-ttl", is_flag=True, help="Also remove the TTL.")
@mutation_options
@client_options
@handle_errors
def patch(context_id: str, patch: Any, merge: bool, expect_checksum: str | None,
          ttl: float | None, clear_ttl: bool, if_version: int | None, event_id: str | None,
          fence: str | None, metadata: dict[str, str] | None, dry_run: bool,
          wait: bool | None, timeout: float, data_dir: Path | None, bootstrap: str | None,
          api: str | None, as_json: bool) -> None:  # fmt: skip
    """Apply PATCH to CONTEXT_ID: an RFC 6902 JSON Patch (a list of ops) by default. PATCH
    is inline, `-` to read it from stdin, or `@FILE` to read it from a file."""
    check_patch(patch, merge)  # before anything is looked up or connected
    target = _Target(data_dir, bootstrap, api, dry_run, wait, timeout, as_json)
    _write(target, lambda c: c.patch(
        context_id, patch, merge=merge, expected_version=if_version,
        expected_checksum=expect_checksum, ttl=ttl, clear_ttl=clear_ttl, dry_run=dry_run,
        event_id=event_id, fence=fence, metadata=metadata,
    ), conditional=any(x is not None for x in (if_version, expect_checksum, fence)))  # fmt: skip


@click.command(epilog=EXIT_CODES)
@click.argument("context_id")
@click.option("--ttl", type=params.TTL, default=None,
              help="SECONDS from now; omit to remove the TTL.")  # fmt: skip
@mutation_options
@client_options
@handle_errors
def touch(context_id: str, ttl: float | None, if_version: int | None, event_id: str | None,
          fence: str | None, metadata: dict[str, str] | None, dry_run: bool,
          wait: bool | None, timeout: float, data_dir: Path | None, bootstrap: str | None,
          api: str | None, as_json: bool) -> None:  # fmt: skip
    """Set (or, without --ttl, remove) the TTL of CONTEXT_ID."""
    target = _Target(data_dir, bootstrap, api, dry_run, wait, timeout, as_json)
    _write(target, lambda c: c.touch(
        context_id, ttl, expected_version=if_version, dry_run=dry_run, event_id=event_id,
        fence=fence, metadata=metadata,
    ), conditional=if_version is not None or fence is not None)  # fmt: skip


@click.command(epilog=EXIT_CODES)
@click.argument("context_id")
@mutation_options
@client_options
@handle_errors
def delete(context_id: str, if_version: int | None, event_id: str | None, fence: str | None,
           metadata: dict[str, str] | None, dry_run: bool, wait: bool | None,
           timeout: float, data_dir: Path | None, bootstrap: str | None, api: str | None,
           as_json: bool) -> None:  # fmt: skip
    """Delete CONTEXT_ID."""
    target = _Target(data_dir, bootstrap, api, dry_run, wait, timeout, as_json)
    _write(target, lambda c: c.delete(
        context_id, expected_version=if_version, dry_run=dry_run, event_id=event_id,
        fence=fence, metadata=metadata,
    ), conditional=if_version is not None or fence is not None)  # fmt: skip
