"""``ClientConfig``: where a client writes and reads, and how long it waits."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lukhas_context.streams.breaker import BreakerPolicy
from lukhas_context.streams.deadlines import DeadlinePolicy
from lukhas_context.streams.exceptions import InvalidConfigError
from lukhas_context.streams.security import PLAINTEXT, KafkaSecurity
from lukhas_context.streams.topics import Topics
from lukhas_context.streams.validation import DEFAULT_MAX_DOCUMENT_BYTES

__all__ = ["DIAGNOSIS_S", "MAX_TRANSACTION_TIMEOUT_S", "ClientConfig"]

#: The longest Kafka transaction a client may ask for. A transaction left open (its client
#: killed mid-way) holds every partition it wrote for this long: readers ``read_committed``
#: see nothing past it. Brokers started by ``lukhas up`` refuse more
#: (``transaction.max.timeout.ms``).
MAX_TRANSACTION_TIMEOUT_S = 60.0
#: The most of a call's deadline kept for finding out why it failed (``streams.health``).
DIAGNOSIS_S = 3.0


def bearer_headers(token: str | None) -> dict[str, str]:
    """The header that carries the read API's bearer ``token`` (none without one): sent by
    the client, the tools, and workers to each other."""
    return {} if token is None else {"Authorization": f"Bearer {token}"}


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """Where the client writes and reads, and how long it waits. Nothing here reads the
    environment. Times are seconds; ``InvalidConfigError`` for a value out of range.

    ``timeout_s`` is the deadline of each call that talks to Kafka (a mutation, ``checkpoint``,
    a transaction's begin, send, commit or abort), retries and the producer's start included:
    the call returns or raises ``PublishTimeoutError`` with the brokers' reason within it.
    ``request_timeout_s`` bounds one Kafka request inside it (aiokafka's
    ``request_timeout_ms``, also how long a broker waits for its replicas before it answers
    ``REQUEST_TIMED_OUT``), at most half of ``timeout_s`` so that a call sees that answer
    and can retry. ``close_timeout_s``: how long ``close()`` waits for sends not yet
    acknowledged before it gives them up. ``transaction_timeout_s``: how long a transaction
    may stay open before the brokers abort it, at most ``MAX_TRANSACTION_TIMEOUT_S``.
    """

    bootstrap: str
    api_url: str | None = None
    topics: Topics = field(default_factory=Topics)
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    request_timeout_s: float = 10.0
    client_id: str = "lukhas-client"
    #: Sends of one event (same bytes, same event id) before a write fails, all within
    #: ``timeout_s``: a send is repeated after an error that failed it, never after a wait.
    send_attempts: int = 3
    timeout_s: float = 30.0
    close_timeout_s: float = 5.0
    transaction_timeout_s: float = 10.0
    #: redis-server for ``ContextClient.lock`` (``redis://host:port[/db]``); None: no locks.
    redis_url: str | None = None
    #: The read API's bearer token, when its workers need one (``lukhas worker
    #: --api-token-file``); sent with every read. Never printed (``repr=False``).
    api_token: str | None = field(default=None, repr=False)
    #: How to reach a secured Kafka (TLS, SASL PLAIN or SCRAM: ``streams.security``); the
    #: default is neither.
    kafka_security: KafkaSecurity = PLAINTEXT
    #: When a read API worker's circuit breaker opens (``streams.breaker``), and how a read's
    #: attempt timeouts follow the latency it has seen (``streams.deadlines``: floor,
    #: ceiling, quantile); None: the defaults.
    breaker_policy: BreakerPolicy | None = None
    deadline_policy: DeadlinePolicy | None = None
    #: False: every read goes to ``api_url``'s workers, which forward it to the worker
    #: serving its partition (a worker always does), never straight to the URLs the routing
    #: table names: for a client that can reach only some workers (behind a proxy, or
    #: inside a container network whose workers advertise URLs of the host). One hop more.
    route_reads: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.send_attempts, bool) or not (
            isinstance(self.send_attempts, int) and self.send_attempts >= 1
        ):
            raise InvalidConfigError(
                f"send_attempts must be an int >= 1, got {self.send_attempts!r}"
            )
        for name in ("timeout_s", "request_timeout_s", "close_timeout_s", "transaction_timeout_s"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not (math.isfinite(value) and value > 0)
            ):
                raise InvalidConfigError(f"{name} must be a positive finite number of seconds, "
                                         f"got {value!r}")  # fmt: skip
        if self.api_token is not None and (
            not isinstance(self.api_token, str)
            or not self.api_token
            or any(c in self.api_token for c in "\r\n ")
        ):
            raise InvalidConfigError("api_token must be a non-empty str without spaces or newlines")
        if self.breaker_policy is not None and not isinstance(self.breaker_policy, BreakerPolicy):
            raise InvalidConfigError("breaker_policy must be a BreakerPolicy or None")
        if self.deadline_policy is not None and not isinstance(
            self.deadline_policy, DeadlinePolicy
        ):
            raise InvalidConfigError("deadline_policy must be a DeadlinePolicy or None")
        if not isinstance(self.kafka_security, KafkaSecurity):
            raise InvalidConfigError("kafka_security must be a KafkaSecurity")
        if self.transaction_timeout_s > MAX_TRANSACTION_TIMEOUT_S:
            raise InvalidConfigError(
                f"transaction_timeout_s must be at most {MAX_TRANSACTION_TIMEOUT_S:g}, got "
                f"{self.transaction_timeout_s:g}: an open transaction holds its partitions "
                "for that long"
            )

    @property
    def send_window_s(self) -> float:
        """The part of ``timeout_s`` a call waits for Kafka; the rest is for saying why not."""
        return self.timeout_s - self.diagnosis_s

    @property
    def kafka_request_timeout_s(self) -> float:
        """``request_timeout_s``, at most half of ``timeout_s``."""
        return min(self.request_timeout_s, self.timeout_s / 2)

    @property
    def diagnosis_s(self) -> float:
        return min(DIAGNOSIS_S, self.timeout_s * 0.2)
