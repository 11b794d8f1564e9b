"""``lukhas advise``: how many workers the group's load needs now, and whether the WAL's
partitions are the limit (``processors.advice``).

The workers are found as ``lukhas status`` finds them: the ``--api`` URLs (or
``LUKHAS_API_URL``, or the data dir's cluster), and every member the first one that answers
lists in its routing table (``GET /v1/members``). Each is asked for its counters
(``GET /v1/advice``) twice, ``--interval`` seconds apart; the load between the two samples of
every worker gives the advice — fresh, without the worker's cool-down, which the
``lukhas_desired_workers`` gauge each worker exports has (shown beside it)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.errors import fail, handle_errors
from lukhas_context.ops.cli.options import api_option, data_dir_option
from lukhas_context.ops.cli.output import print_json
from lukhas_context.ops.cluster.probes import get_json
from lukhas_context.ops.config import Settings
from lukhas_context.processors.advice import WorkerLoad, WorkerSample, advise, load_between

__all__ = ["advise_command"]


@click.command("advise")
@data_dir_option
@api_option(
    "Workers' read API URLs, comma-separated [env LUKHAS_API_URL; default: the data dir's "
    "cluster]; the group's other workers are found from them."
)
@click.option("--interval", type=params.Seconds(1.0, 300), default=3.0, show_default=True,
              help="Seconds between the two samples of each worker.")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON (only JSON on stdout).")
@handle_errors
def advise_command(data_dir: Path | None, api: str | None, interval: float, as_json: bool) -> None:
    """Say how many workers the load needs: from each worker's lag growth, fold rate and
    busy share, read requests and memory against its budget, capped at the WAL's partition
    count (add partitions when that is the limit). Exit 1 when no worker answers."""
    urls = _named(data_dir, api)
    partitions, workers = _group(urls)
    first = {url: _sample(url) for url in workers}
    answering = [url for url, got in first.items() if got is not None]
    if not answering:
        fail(f"no worker answered GET /v1/advice at {', '.join(workers)}")
    time.sleep(interval)
    rows = []
    for url in workers:
        before = first[url]
        after = _sample(url) if before is not None else None
        load = None
        if before is not None and after is not None:
            load = load_between(before[0], after[0])
        rows.append((url, load, (after or before or (None, None))[1]))
    advice = advise([load for _, load, _ in rows], partitions)
    if as_json:
        print_json({
            "advice": advice.to_dict(), "sentence": advice.sentence(), "interval_s": interval,
            "workers": [{"api": url, "load": None if load is None else load.to_dict(),
                         "desired_workers_gauge": gauge} for url, load, gauge in rows],
        })  # fmt: skip
        return
    click.echo(advice.sentence())
    for url, load, gauge in rows:
        click.echo(f"  {url}  {_load_text(load)}  gauge lukhas_desired_workers={gauge}")


def _named(data_dir: Path | None, api: str | None) -> list[str]:
    """The URLs given, else the data dir's cluster's worker (``NotConfiguredError``, one line,
    when there is neither)."""
    if not api:
        api = Settings.load(data_dir).client_config(None, None, kafka=False, read_api=True).api_url
    return [u.strip().rstrip("/") for u in (api or "").split(",") if u.strip()]


def _group(urls: list[str]) -> tuple[int, list[str]]:
    """The WAL's partition count and every member's API URL, from the first named worker
    that answers ``/v1/members`` (the named ones first); exits 1 when none does."""
    for url in urls:
        table = get_json(f"{url}/v1/members")
        if table is None:
            continue
        found = dict.fromkeys(urls)
        for member in table.get("members", []):
            if isinstance(member, dict) and isinstance(member.get("api"), str):
                found[member["api"].rstrip("/")] = None
        count = table.get("partition_count")
        return (count if isinstance(count, int) else 0), list(found)
    fail(f"cannot reach a worker's read API at {', '.join(urls)} (is the cluster up?)")


def _sample(url: str) -> tuple[WorkerSample, Any] | None:
    """A worker's counters now and the figure its gauge exports; None when it does not say."""
    answer = get_json(f"{url}/v1/advice")
    sample = None if answer is None else WorkerSample.from_dict(answer.get("sample"))
    if answer is None or sample is None:
        return None
    return sample, answer.get("desired_workers")


def _load_text(load: WorkerLoad | None) -> str:
    if load is None:
        return "no load measured (did not answer twice)"
    return (
        f"appended {load.incoming:.0f}/s, folded {load.folded:.0f}/s, busy {load.busy:.0%}, "
        f"lag {load.lag}, reads {load.reads:.0f}/s"
        + ("" if load.memory is None else f", memory {load.memory:.0%} of budget")
    )
