"""``lukhas topics create``: create the design's topics on a Kafka cluster, or check them.

What ``lukhas up`` does for its own brokers, for a cluster started some other way (docker
compose runs it once, in a one-shot service, before the workers start). Idempotent: topics
that exist are only checked, and a partition count or replication factor that differs from
the wanted one is an error for a human (``TopicMismatchError``), never changed here.
"""

from __future__ import annotations

import time

import click

from lukhas_context.ops.cli import params
from lukhas_context.ops.cli.errors import fail, handle_errors
from lukhas_context.ops.cli.options import bootstrap_option
from lukhas_context.ops.cli.output import print_json
from lukhas_context.ops.cluster.probes import live_brokers, run_private
from lukhas_context.ops.config import Environment
from lukhas_context.streams.admin import ensure_topics, wait_group_coordinator
from lukhas_context.streams.topics import DEFAULT_PREFIX, Topics

__all__ = ["topics"]

#: Pause between two looks at how many brokers are up.
_BROKER_POLL_S = 0.5


@click.group()
def topics() -> None:
    """Create the topics of a Kafka cluster, or check the ones it has."""


@topics.command("create")
@bootstrap_option()
@click.option("--topic-prefix", default=DEFAULT_PREFIX, show_default=True,
              envvar="LUKHAS_TOPIC_PREFIX",
              help="Prefix of the topics' names [env LUKHAS_TOPIC_PREFIX].")  # fmt: skip
@click.option("--partitions", type=click.IntRange(1, 1000), default=6, show_default=True,
              help="WAL partitions (the change topic gets as many).")  # fmt: skip
@click.option("--brokers", type=click.IntRange(1, 1000), default=None,
              help="Wait until this many brokers are up; replicate as for them (3 or more: "
              "replication 3, min.insync.replicas 2) [default: count the brokers].")  # fmt: skip
@click.option("--timeout", type=params.Seconds(1.0, 3600.0), default=120.0, show_default=True,
              help="SECONDS to wait for the brokers and the topics' leaders.")  # fmt: skip
@click.option("--group", default=None,
              help="Then wait until this consumer group's coordinator answers (a fresh "
              "cluster creates and settles its offsets topic first).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def create(bootstrap: str | None, topic_prefix: str, partitions: int, brokers: int | None,
           timeout: float, group: str | None, as_json: bool) -> None:  # fmt: skip
    """Create the topics that are missing (each topic that exists is checked)."""
    if not bootstrap:
        fail("no Kafka to create topics on: pass --bootstrap or set LUKHAS_BOOTSTRAP")
    security = Environment.read().kafka_security
    deadline = time.monotonic() + timeout
    if brokers is not None:
        seen = live_brokers(bootstrap, security=security)
        while seen < brokers:
            if time.monotonic() >= deadline:
                fail(f"{seen} of {brokers} brokers up at {bootstrap} after {timeout:g} s")
            time.sleep(_BROKER_POLL_S)
            seen = live_brokers(bootstrap, security=security)
    specs = Topics(topic_prefix).specs(partitions)
    left = max(1.0, round(deadline - time.monotonic(), 1))
    created = run_private(
        ensure_topics(bootstrap, specs, brokers=brokers, timeout_s=left, security=security)
    )
    if group is not None:
        left = max(1.0, round(deadline - time.monotonic(), 1))
        run_private(wait_group_coordinator(bootstrap, group, timeout_s=left, security=security))
    if as_json:
        checked = [spec.name for spec in specs if spec.name not in created]
        print_json({"created": created, "checked": checked})
        return
    for spec in specs:
        click.echo(f"{'created' if spec.name in created else 'exists '}  {spec.name}")
