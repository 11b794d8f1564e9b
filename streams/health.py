"""Why the cluster does not acknowledge: a bounded look at brokers, leaders and replicas.

aiokafka retries a produce that the brokers refuse with a retriable error (not enough
in-sync replicas, no leader, a broker unreachable) without end and only logs why, so a call
that runs out of time knows nothing but "no acknowledgement". ``explain`` finds the reason
the way an operator would, within a time budget: it asks every broker for its API versions
(does it answer at all?), asks one that answers for the topic's metadata (each partition's
leader and in-sync replicas) and ``min.insync.replicas``, and says, for each partition asked
about, what stops a write with ``acks=all`` there. It never raises: a look that cannot be
completed says so in its answer.

``unreachable`` says why no broker of a bootstrap list can be reached, as aiokafka does not:
a client that cannot bootstrap raises "Unable to bootstrap" and only logs the reason (a
refused connection, a certificate that does not verify, a SASL password the broker refuses).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from aiokafka.conn import create_conn
from aiokafka.errors import (
    KafkaConnectionError,
    SaslAuthenticationFailed,
    UnsupportedSaslMechanismError,
)
from aiokafka.protocol.admin import DescribeConfigsRequest
from aiokafka.protocol.metadata import MetadataRequest

from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity

__all__ = ["Broker", "Unreachable", "explain", "explained", "parse_bootstrap", "unreachable"]

E = TypeVar("E", bound=BaseException)

#: DescribeConfigs resource type of a topic (Kafka protocol).
_TOPIC_RESOURCE = 2


@dataclass(frozen=True, slots=True)
class Broker:
    """A broker to ask: its node id when known (from metadata), else None (a bootstrap)."""

    host: str
    port: int
    node_id: int | None = None

    def __str__(self) -> str:
        if self.node_id is None:
            return f"{self.host}:{self.port}"
        return f"broker {self.node_id} ({self.host}:{self.port})"


@dataclass(frozen=True, slots=True)
class _Partition:
    partition: int
    leader: int
    replicas: list[int]
    isr: list[int]
    error: str | None


def parse_bootstrap(bootstrap: str) -> list[Broker]:
    """The ``host:port`` entries of a bootstrap string (entries that do not parse are left
    out: the client that uses the string reports them)."""
    brokers = []
    for entry in bootstrap.split(","):
        host, _, port = entry.strip().rpartition(":")
        if host and port.isdigit():
            brokers.append(Broker(host.strip("[]"), int(port)))
    return brokers


async def explain(
    brokers: list[Broker],
    topic: str,
    partitions: Iterable[int] | None,
    timeout_s: float,
    answers: Mapping[int, str] | None = None,
    security: KafkaSecurity = PLAINTEXT,
) -> str:
    """One line saying why writes to ``partitions`` of ``topic`` (None: the topic's every
    partition) cannot be acknowledged now, found within about ``timeout_s`` seconds.

    ``answers`` maps a node id to the last error this client had from that node (see
    ``WalProducer.answers``); those of brokers that answer now are quoted."""
    deadline = time.monotonic() + timeout_s
    conns: dict[Broker, Any] = {}
    try:
        failures = await _probe(brokers, conns, timeout_s * 0.4, security)
        if not conns:
            return "no broker answers: " + "; ".join(f"{b} {why}" for b, why in failures.items())
        metadata = await _metadata(next(iter(conns.values())), topic, deadline)
        if isinstance(metadata, str):
            return metadata
        known, parts, min_isr = metadata
        missing = [b for b in known if not any(_same(b, c) for c in conns)]
        more = [b for b in missing if not any(_same(b, f) for f in failures)]
        failures.update(await _probe(more, conns, max(0.1, deadline - time.monotonic()), security))
        down = {b.node_id: why for b in known for f, why in failures.items() if _same(b, f)}
        return _verdict(topic, parts, partitions, min_isr, known, down, answers or {})
    except Exception as exc:  # a diagnosis must never hide the error it was asked to explain
        return f"the cluster could not be examined ({type(exc).__name__}: {exc})"
    finally:
        for conn in conns.values():
            conn.close()


def _same(a: Broker, b: Broker) -> bool:
    return (a.host, a.port) == (b.host, b.port)


@dataclass(frozen=True, slots=True)
class Unreachable:
    """Why no broker takes a connection: ``reason`` (each broker's, ``;``-joined), and
    whether every one of them ``refused`` this client's TLS or SASL (a wrong password, a
    certificate that does not verify, a mechanism not enabled): retrying will not help."""

    reason: str
    refused: bool


class _Why(str):
    """A broker's reason for not answering; ``refused``: it refused TLS or SASL."""

    refused = False


async def unreachable(
    bootstrap: str, security: KafkaSecurity = PLAINTEXT, timeout_s: float = 3.0
) -> Unreachable | None:
    """Why no broker of ``bootstrap`` takes a connection, found within about ``timeout_s``;
    None when one does (the trouble is elsewhere). Never raises."""
    conns: dict[Broker, Any] = {}
    try:
        failures = await _probe(parse_bootstrap(bootstrap), conns, timeout_s, security)
    except Exception as exc:  # a diagnosis must never hide the error it was asked to explain
        return Unreachable(f"the brokers could not be examined ({type(exc).__name__}: {exc})",
                           refused=False)  # fmt: skip
    finally:
        for conn in conns.values():
            conn.close()
    if conns or not failures:
        return None
    return Unreachable(
        "; ".join(f"{b} {why}" for b, why in failures.items()),
        refused=all(getattr(why, "refused", False) for why in failures.values()),
    )


async def explained(
    error: E, what: str, bootstrap: str, security: KafkaSecurity, timeout_s: float = 3.0
) -> E:
    """``error`` (``what: <Kafka's error>``, as ``kafka_errors`` makes it), or, when its cause
    is aiokafka's "Unable to bootstrap", an error of the same type saying ``what: <why no
    broker takes this client>`` (``unreachable``), ``error`` its cause."""
    if not isinstance(error.__cause__, KafkaConnectionError):
        return error
    found = await unreachable(bootstrap, security, timeout_s)
    if found is None:
        return error
    better = type(error)(f"{what}: {found.reason}")
    better.__cause__ = error
    return better


async def _probe(
    brokers: list[Broker], conns: dict[Broker, Any], timeout_s: float, security: KafkaSecurity
) -> dict[Broker, str]:
    """Connects to each broker (TLS and SASL as ``security`` says; a connection makes one
    request, ApiVersions); keeps the connections that answered in ``conns`` and returns why
    the others did not."""
    try:
        options = security.aiokafka_options()
    except Exception as exc:  # a CA file gone since the config was made, say
        return dict.fromkeys(brokers, _short(exc))

    async def one(broker: Broker) -> str | None:
        try:
            conn = await asyncio.wait_for(
                create_conn(
                    broker.host, broker.port, request_timeout_ms=int(timeout_s * 1000),
                    **options,
                ),
                timeout_s,
            )  # fmt: skip
        except TimeoutError:
            return f"does not answer within {timeout_s:.1f} s"
        except Exception as exc:  # refused, reset, unresolvable: all mean "does not answer"
            return _short(exc)
        conns[broker] = conn
        return None

    results = await asyncio.gather(*(one(b) for b in brokers))
    return {b: why for b, why in zip(brokers, results, strict=True) if why is not None}


def _refused(text: str) -> _Why:
    why = _Why(text)
    why.refused = True
    return why


def _short(exc: BaseException) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "refuses connections"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return _refused(f"sends a certificate that does not verify: {exc.verify_message}")
    if isinstance(exc, SaslAuthenticationFailed | UnsupportedSaslMechanismError):
        return _refused(f"refuses the SASL login: {exc}")
    if isinstance(exc, KafkaConnectionError) and "closed" in str(exc):
        # A broker that requires a client certificate, or speaks TLS where the client does
        # not (or the reverse), closes the connection without a word.
        return "closes the connection (a TLS or SASL setting that does not match its listener?)"
    text = str(exc) or type(exc).__name__
    return text if len(text) < 120 else text[:117] + "..."


async def _metadata(
    conn: Any, topic: str, deadline: float
) -> tuple[list[Broker], dict[int, _Partition], int | None] | str:
    """The brokers, the topic's partitions and its ``min.insync.replicas`` (None when the
    broker does not say), or a sentence saying why they are not known."""
    left = max(0.1, deadline - time.monotonic())
    try:
        response = await asyncio.wait_for(conn.send(MetadataRequest([topic])), left)
        data = response.to_object()
        configs = await asyncio.wait_for(
            conn.send(DescribeConfigsRequest([(_TOPIC_RESOURCE, topic, ["min.insync.replicas"])])),
            max(0.1, deadline - time.monotonic()),
        )
    except TimeoutError:
        return f"a broker answers but sends no metadata of {topic} within {left:.1f} s"
    known = [Broker(b["host"], b["port"], b["node_id"]) for b in data["brokers"]]
    topics = [t for t in data["topics"] if t["topic"] == topic]
    if not topics or topics[0]["error_code"]:
        code = topics[0]["error_code"] if topics else 3
        return f"topic {topic}: {_code_name(code)}"
    parts = {p["partition"]: _partition(p) for p in topics[0]["partitions"]}
    return known, parts, _min_isr(configs.to_object())


def _partition(p: dict[str, Any]) -> _Partition:
    error = _code_name(p["error_code"]) if p["error_code"] else None
    return _Partition(p["partition"], p["leader"], list(p["replicas"]), list(p["isr"]), error)


def _min_isr(data: dict[str, Any]) -> int | None:
    for resource in data.get("resources", []):
        for entry in resource.get("config_entries", []):
            if entry.get("config_names") == "min.insync.replicas":
                with contextlib.suppress(TypeError, ValueError):
                    return int(entry["config_value"])
    return None


def _code_name(code: int) -> str:
    from aiokafka.errors import for_code

    return str(getattr(for_code(code), "message", f"error {code}"))


def _verdict(
    topic: str,
    parts: dict[int, _Partition],
    asked: Iterable[int] | None,
    min_isr: int | None,
    known: list[Broker],
    down: dict[int | None, str],
    answers: Mapping[int, str],
) -> str:
    wanted = sorted(parts) if asked is None else sorted(set(asked))
    lines = [_partition_verdict(topic, parts.get(p), p, min_isr, down) for p in wanted]
    # What the brokers that do answer said last (a refused producer id, NOT_ENOUGH_REPLICAS):
    # for the silent ones, that they are silent says more.
    lines += [f"broker {node} {what}" for node, what in sorted(answers.items()) if node not in down]
    live = len(known) - len(down)
    summary = f"{live} of {len(known)} brokers answer"
    if down:
        silent = sorted((n, why) for n, why in down.items() if n is not None)
        summary += " (" + "; ".join(f"broker {n} {why}" for n, why in silent) + ")"
    return "; ".join([*lines, summary])


def _partition_verdict(
    topic: str,
    part: _Partition | None,
    number: int,
    min_isr: int | None,
    down: dict[int | None, str],
) -> str:
    name = f"partition {number} of {topic}"
    if part is None:
        return f"{name}: not in the metadata (UNKNOWN_TOPIC_OR_PARTITION)"
    if part.leader < 0:
        return f"{name}: no leader (LEADER_NOT_AVAILABLE), replicas {part.replicas}"
    if part.leader in down:
        return f"{name}: its leader, broker {part.leader}, does not answer"
    needed = min_isr if min_isr is not None else 1
    answering = [r for r in part.isr if r not in down]
    isr = f"in-sync replicas {part.isr}"
    setting = f"min.insync.replicas={min_isr if min_isr is not None else 'unknown'}"
    if len(part.isr) < needed:
        return f"{name}: NOT_ENOUGH_REPLICAS: {len(part.isr)} {isr}, {setting}"
    if len(answering) < needed:
        silent = [r for r in part.isr if r in down]
        return (f"{name}: NOT_ENOUGH_REPLICAS: only {len(answering)} of its {isr} answer "
                f"(brokers {silent} do not), {setting}: acks=all cannot be met")  # fmt: skip
    if part.error is not None:
        return f"{name}: {part.error} (leader {part.leader}, {isr})"
    return (f"{name}: leader {part.leader} and {isr} answer now, {setting}; no "
            f"acknowledgement came in time")  # fmt: skip
