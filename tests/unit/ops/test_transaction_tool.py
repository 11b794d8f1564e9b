"""``ops.transactions``: the tables of Kafka's TransactionsCommand, parsed (the tool itself
runs against real brokers in ``tests/integration/test_stalled_transaction.py``)."""

from __future__ import annotations

from pathlib import Path

from lukhas_context.ops.cluster import ClusterSpec, LocalCluster
from lukhas_context.ops.transactions import _open_row, _renamed, parse_table
from lukhas_context.streams.client import MAX_TRANSACTION_TIMEOUT_S

LIST = (
    "TransactionalId                 \tCoordinator\tProducerId\tTransactionState\t\n"
    "lukhas-client-tx-a3ed           \t1          \t1000      \tOngoing         \t\n"
    "lukhas-client-tx-1a1a           \t1          \t2001      \tEmpty           \t\n"
)
PRODUCERS = (
    "ProducerId\tProducerEpoch\tLatestCoordinatorEpoch\tLastSequence\tLastTimestamp\t"
    "CurrentTransactionStartOffset\t\n"
    "0         \t0            \t-1                    \t1           \t1796191214350\tNone\t\n"
    "2000      \t3            \t0                     \t0           \t1796191272981\t17  \t\n"
)


def test_a_table_becomes_rows() -> None:
    rows = parse_table(LIST)
    assert rows[0] == {"TransactionalId": "lukhas-client-tx-a3ed", "Coordinator": "1",
                       "ProducerId": "1000", "TransactionState": "Ongoing"}  # fmt: skip
    assert [_renamed(r)["transaction_state"] for r in rows] == ["Ongoing", "Empty"]
    assert parse_table("") == [] and parse_table("no table here\n") == []


def test_open_transactions_are_the_producers_with_a_start_offset() -> None:
    rows = parse_table(PRODUCERS)
    assert rows[0]["CurrentTransactionStartOffset"] is None
    row = _open_row(4, rows[1])
    assert row["partition"] == 4 and row["producer_id"] == 2000 and row["start_offset"] == 17
    assert row["producer_epoch"] == 3 and row["last_timestamp_ms"] == 1796191272981


def test_local_brokers_refuse_long_transactions_and_abort_expired_ones_soon(
    tmp_path: Path,
) -> None:
    cluster = LocalCluster(ClusterSpec(tmp_path, brokers=1, start_processor=False))
    cluster.brokers.write_props(0)
    props = dict(
        line.split("=", 1)
        for line in (tmp_path / "broker-0" / "server.properties").read_text().split()
    )
    assert int(props["transaction.max.timeout.ms"]) == MAX_TRANSACTION_TIMEOUT_S * 1000
    assert int(props["transaction.abort.timed.out.transaction.cleanup.interval.ms"]) <= 1000
