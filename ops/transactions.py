"""Open Kafka transactions on the WAL, seen and ended with Kafka's own tool.

A transactional client killed mid-transaction leaves its transaction open until the brokers
abort it at its transaction timeout (``ClientConfig.transaction_timeout_s``, at most
``MAX_TRANSACTION_TIMEOUT_S``). Meanwhile every partition it wrote is held: a ``read_committed``
reader (the worker) sees nothing past the transaction's first offset, the last stable offset.
A transaction can also hang for good (a coordinator that lost track of it). This module runs
Apache Kafka's ``org.apache.kafka.tools.TransactionsCommand`` (``kafka-transactions.sh``) from
the same jars ``lukhas up`` runs the brokers from, and turns its tables into dicts:

- ``list_transactions``: the transactional ids the coordinators know, with their state;
- ``describe``: one transactional id (timeout, start time, partitions);
- ``open_transactions``: per WAL partition, the producers with a transaction open there and
  the offset where it began (``describe-producers``): what holds a partition now;
- ``find_hanging``: open transactions the coordinators no longer track (Kafka's definition);
- ``abort``: writes an abort marker for the transaction that began at an offset of a
  partition, which releases the partition. Abort only a transaction whose producer is gone
  (a killed client, a hanging transaction): a live producer's transaction is then aborted
  on that partition only, and its later commit cannot make it atomic again.
"""

from __future__ import annotations

import math
import os
import subprocess
import time
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from lukhas_context.ops.exceptions import TransactionToolError
from lukhas_context.ops.kafka_dist import KafkaDist
from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity

__all__ = ["TOOL_CLASS", "TransactionTool"]

TOOL_CLASS = "org.apache.kafka.tools.TransactionsCommand"
#: Coordinator states of a transaction that is not over.
OPEN_STATES = frozenset({"Ongoing", "PrepareCommit", "PrepareAbort", "PrepareEpochFence"})
#: JVMs started at once by ``open_transactions`` (one per partition).
PARALLEL = 3

# The tool prints its tables on stdout: its log lines go to stderr, at WARN.
_LOG4J2 = """status = warn
appender.console.type = Console
appender.console.name = STDERR
appender.console.target = SYSTEM_ERR
appender.console.layout.type = PatternLayout
appender.console.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = warn
rootLogger.appenderRef.stderr.ref = STDERR
"""


@dataclass(frozen=True, slots=True)
class TransactionTool:
    """``TransactionsCommand`` against ``bootstrap``; each call is one JVM run, bounded by
    ``timeout_s``. Raises ``TransactionToolError`` with the tool's own reason."""

    dist: KafkaDist
    bootstrap: str
    log4j: Path
    timeout_s: float = 60.0
    #: The tool's ``--command-config``: the Kafka security settings (None: plaintext).
    command_config: Path | None = None

    @classmethod
    def create(
        cls, dist: KafkaDist, bootstrap: str, work_dir: Path, timeout_s: float,
        security: KafkaSecurity = PLAINTEXT,
    ) -> TransactionTool:  # fmt: skip
        """The tool, its log config written to ``work_dir`` (and, for a secured Kafka, its
        client properties, readable by the owner only: they hold the password)."""
        log4j = work_dir / "tools-log4j2.properties"
        log4j.parent.mkdir(parents=True, exist_ok=True)
        log4j.write_text(_LOG4J2)
        command_config = None
        if security != PLAINTEXT:
            command_config = work_dir / "tools-client.properties"
            fd = os.open(command_config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)  # an existing file keeps its mode through O_CREAT
            with os.fdopen(fd, "w") as f:
                for key, value in security.java_properties().items():
                    f.write(f"{key}={_properties_value(value)}\n")
        return cls(dist, bootstrap, log4j, timeout_s, command_config)

    def list_transactions(self, include_done: bool = False) -> list[dict[str, str | None]]:
        """``transactional_id``, ``coordinator``, ``producer_id``, ``state`` of each
        transactional id; only those not over unless ``include_done``."""
        rows = self._run("list")
        keep = [r for r in rows if include_done or r.get("TransactionState") in OPEN_STATES]
        return [_renamed(r) for r in keep]

    def describe(self, transactional_id: str) -> dict[str, str | None]:
        rows = self._run("describe", "--transactional-id", transactional_id)
        if not rows:
            raise TransactionToolError(f"no description of transactional id {transactional_id!r}")
        return _renamed(rows[0])

    def open_transactions(self, topic: str, partitions: Iterable[int]) -> list[dict[str, object]]:
        """Per partition, the producers with a transaction open there: ``partition``,
        ``producer_id``, ``producer_epoch``, ``start_offset`` (where it began: the partition's
        last stable offset, if it is the oldest), ``last_timestamp_ms``, ``idle_s``."""
        wanted = sorted(set(partitions))

        def one(partition: int) -> list[dict[str, object]]:
            rows = self._run("describe-producers", "--topic", topic, "--partition", str(partition))
            return [
                _open_row(partition, r)
                for r in rows
                if _int(r.get("CurrentTransactionStartOffset")) is not None
            ]

        with ThreadPoolExecutor(PARALLEL) as pool:
            found = [row for rows in pool.map(one, wanted) for row in rows]
        return sorted(found, key=lambda r: (r["partition"], r["start_offset"]))

    def find_hanging(self, topic: str, max_timeout_s: float) -> list[dict[str, str | None]]:
        """Kafka's hanging transactions on ``topic``: open longer than ``max_timeout_s``
        (rounded up to whole minutes, the tool's unit) and unknown to their coordinator."""
        minutes = str(max(1, math.ceil(max_timeout_s / 60)))
        rows = self._run("find-hanging", "--topic", topic, "--max-transaction-timeout", minutes)
        return [_renamed(r) for r in rows]

    def abort(self, topic: str, partition: int, start_offset: int) -> None:
        """Aborts the transaction that began at ``start_offset`` of ``topic``/``partition``."""
        self._run("abort", "--topic", topic, "--partition", str(partition),
                  "--start-offset", str(start_offset))  # fmt: skip

    def _run(self, *args: str) -> list[dict[str, str | None]]:
        argv = [
            self.dist.java, "-cp", self.dist.classpath, f"-Dlog4j2.configurationFile={self.log4j}",
            TOOL_CLASS, "--bootstrap-server", self.bootstrap,
        ]  # fmt: skip
        if self.command_config is not None:
            argv += ["--command-config", str(self.command_config)]
        argv += args
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout_s, check=False
            )
        except subprocess.TimeoutExpired:
            raise TransactionToolError(
                f"kafka-transactions {args[0]} did not finish within {self.timeout_s:g} s "
                f"(is Kafka at {self.bootstrap} up?)"
            ) from None
        if done.returncode != 0:
            raise TransactionToolError(f"kafka-transactions {args[0]}: {_last_line(done)}")
        return parse_table(done.stdout)


def _properties_value(value: str) -> str:
    """``value`` as a Java properties file reads it back (backslashes and line breaks
    escaped, a leading space kept)."""
    text = value.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r")
    return "\\" + text if text.startswith(" ") else text


def parse_table(text: str) -> list[dict[str, str | None]]:
    """The rows of one of the tool's tables (a tab-separated header line, then rows; cells
    padded with spaces; ``None`` for no value)."""
    lines = [line for line in text.splitlines() if "\t" in line]
    if not lines:
        return []
    header = [cell.strip() for cell in lines[0].split("\t")]
    rows = []
    for line in lines[1:]:
        cells = [cell.strip() for cell in line.split("\t")]
        rows.append({name: (None if value in ("None", "") else value)
                     for name, value in zip(header, cells, strict=False) if name})  # fmt: skip
    return rows


def _last_line(done: subprocess.CompletedProcess[str]) -> str:
    lines = [line.strip() for line in (done.stderr + done.stdout).splitlines() if line.strip()]
    return lines[-1] if lines else f"exit {done.returncode}"


def _snake(name: str) -> str:
    out = "".join(f"_{c.lower()}" if c.isupper() else c for c in name).lstrip("_")
    return out.replace("(min)", "_min").replace("__", "_")


def _renamed(row: dict[str, str | None]) -> dict[str, str | None]:
    return {_snake(k): v for k, v in row.items()}


def _int(value: str | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def _open_row(partition: int, row: dict[str, str | None]) -> dict[str, object]:
    last = _int(row.get("LastTimestamp"))
    return {
        "partition": partition,
        "producer_id": _int(row.get("ProducerId")),
        "producer_epoch": _int(row.get("ProducerEpoch")),
        "start_offset": _int(row.get("CurrentTransactionStartOffset")),
        "last_timestamp_ms": last,
        "idle_s": None if last is None else round(max(0.0, time.time() - last / 1000), 1),
    }
