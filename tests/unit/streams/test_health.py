"""``streams.health``: what the look at the cluster says, from synthetic metadata, and from a
port where nothing listens (no broker is needed for either)."""

from __future__ import annotations

import socket

from lukhas_context.streams.health import Broker, _Partition, _verdict, explain, parse_bootstrap

TOPIC = "t.context.events"
KNOWN = [Broker("127.0.0.1", 1, 1), Broker("127.0.0.1", 2, 2), Broker("127.0.0.1", 3, 3)]


def _parts(**overrides: _Partition) -> dict[int, _Partition]:
    parts = {p: _Partition(p, 1, [1, 2, 3], [1, 2, 3], None) for p in range(3)}
    parts.update({int(k[1:]): v for k, v in overrides.items()})
    return parts


def test_a_leader_that_does_not_answer_is_named() -> None:
    parts = _parts(p0=_Partition(0, 2, [2, 3, 1], [2, 3, 1], None))
    text = _verdict(TOPIC, parts, [0], 2, KNOWN, {2: "refuses connections"}, {})
    assert f"partition 0 of {TOPIC}: its leader, broker 2, does not answer" in text
    assert "2 of 3 brokers answer (broker 2 refuses connections)" in text


def test_in_sync_replicas_that_do_not_answer_are_not_enough_replicas() -> None:
    down = {2: "refuses connections", 3: "does not answer within 1.0 s"}
    text = _verdict(TOPIC, _parts(), [1], 2, KNOWN, down, {1: "answered Produce with X"})
    assert "NOT_ENOUGH_REPLICAS: only 1 of its in-sync replicas [1, 2, 3] answer" in text
    assert "min.insync.replicas=2: acks=all cannot be met" in text
    assert "broker 1 answered Produce with X" in text  # a live broker's own answer is quoted
    assert "1 of 3 brokers answer" in text


def test_a_shrunk_isr_and_a_partition_without_leader() -> None:
    parts = _parts(p0=_Partition(0, 1, [1, 2, 3], [1], None), p1=_Partition(1, -1, [1], [], None))
    text = _verdict(TOPIC, parts, None, 2, KNOWN, {}, {})
    assert "partition 0 of t.context.events: NOT_ENOUGH_REPLICAS: 1 in-sync replicas [1]" in text
    assert "partition 1 of t.context.events: no leader (LEADER_NOT_AVAILABLE)" in text
    assert "no acknowledgement came in time" in text  # partition 2 is healthy now
    assert text.endswith("3 of 3 brokers answer")


def test_the_answers_of_silent_brokers_are_not_quoted() -> None:
    text = _verdict(TOPIC, _parts(), [], 2, KNOWN, {2: "refuses connections"}, {2: "old news"})
    assert "old news" not in text and text == "2 of 3 brokers answer (broker 2 refuses connections)"


async def test_no_broker_answering_is_said_so() -> None:
    with socket.socket() as probe:  # a port that was free a moment ago
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    text = await explain(parse_bootstrap(f"127.0.0.1:{port}"), TOPIC, None, 2.0)
    assert text == f"no broker answers: 127.0.0.1:{port} refuses connections"


def test_parse_bootstrap() -> None:
    assert parse_bootstrap("a:1, b:2,bad,[::1]:3") == [
        Broker("a", 1),
        Broker("b", 2),
        Broker("::1", 3),
    ]
