"""What several ``lukhas`` commands print: JSON, a cluster's status, a partition's line, an
event's outcome."""

from __future__ import annotations

import json
from typing import Any

import click

from lukhas_context.streams.client import Outcome

__all__ = ["echo_status", "outcome_dict", "outcome_text", "partition_line", "print_json"]


def print_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True))


def echo_status(status: dict[str, Any]) -> None:
    """The local cluster's status (``LocalCluster.status``) as ``up`` and ``status`` show it."""
    kafka = status["kafka"]
    click.echo(
        f"kafka      {kafka['bootstrap']}  brokers={kafka['brokers']} ready={kafka['ready']}"
        + (f"  ({kafka['why']})" if kafka.get("why") else "")
    )
    if "redis" in status:
        click.echo(f"redis      {status['redis']['url']}  ready={status['redis']['ready']}")
    for p in status["processors"]:
        who = f"pid={p['pid']}" if "pid" in p else f"member={p.get('member')}"
        click.echo(f"processor  {p['api']}  {who} ready={p.get('ready')}"
                   + (f"  digest={p['digest']}" if p.get("digest") else ""))  # fmt: skip
        for part in p.get("partitions", []):
            held = part.get("open_transaction_from")
            click.echo(f"{partition_line(part)}  opened from {part['opened_from']}"
                       + ("" if held is None else f"  HELD by an open transaction from "
                          f"offset {held} (lukhas transactions open)"))  # fmt: skip
        for copy in p.get("standbys", []):
            if "error" in copy:
                click.echo(f"  standby   {copy['partition']:>3}  NOT BUILT: {copy['error']}")
                continue
            built = f"  built {copy['rebuilds']}x from changes" if copy.get("rebuilds") else ""
            click.echo(f"  standby   {copy['partition']:>3}  next_offset={copy['next_offset']:<10} "
                       f"lag={copy['lag_records']} change records{built}")  # fmt: skip


def partition_line(p: dict[str, Any]) -> str:
    """One partition of a checkpoint manifest or of ``/v1/partitions``."""
    return (f"  partition {p['partition']:>3}  next_offset={p['next_offset']:<10} "
            f"documents={p['documents']:<8} digest={p['digest']}")  # fmt: skip


def outcome_dict(outcome: Outcome) -> dict[str, Any]:
    return {"status": outcome.status, "version": outcome.version, "reason": outcome.reason,
            "duplicate_of": outcome.duplicate_of}  # fmt: skip


def outcome_text(outcome: Outcome) -> str:
    """``applied (version 3)``; a retry: ``... , a duplicate of offset O`` (its original's)."""
    return (outcome.status
            + (f" (version {outcome.version})" if outcome.version is not None else "")
            + (f": {outcome.reason}" if outcome.reason else "")
            + (f", a duplicate of offset {outcome.duplicate_of}"
               if outcome.duplicate_of is not None else ""))  # fmt: skip
