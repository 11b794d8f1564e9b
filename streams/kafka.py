"""Where the package's Kafka clients are built, and where Kafka's errors become ours.

**Factories.** Every producer, consumer and admin client of the package is made here, so what
they share is set once:

- a producer is idempotent with ``acks=all`` (a write is acknowledged by every in-sync
  replica, and aiokafka's retries cannot duplicate it), and its requests may be as large as
  the largest record a topic takes (``DOWNSTREAM_MAX_MESSAGE_BYTES``);
- a consumer never commits offsets (a position is the reader's own: a store's next offset, a
  resume token, or nothing), fetches a partition's records up to that same size, and its
  isolation level is always stated by the caller: reading the WAL uncommitted would fold
  events of transactions that are later aborted;
- ``request_timeout_s`` (seconds, like every time in the package's configs) becomes aiokafka's
  ``request_timeout_ms``.

- every client takes the cluster's ``KafkaSecurity`` (``streams.security``: TLS, SASL PLAIN or
  SCRAM), a keyword every caller must give: a client that forgot it would reach a secured
  cluster in plaintext and fail there, far from the config that said how.

**Errors.** ``kafka_errors(kind, what)`` wraps a block: a ``KafkaError`` raised in it comes out
as ``kind("<what>: <the error>")``, the Kafka error chained as its cause, as httpx's
``map_exceptions`` does. A ``TimeoutError`` always passes through unchanged: a deadline is the
caller's, which explains it (``streams.health``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.client import AIOKafkaClient
from aiokafka.errors import KafkaError

from lukhas_context.schemas.exceptions import LukhasError
from lukhas_context.streams.config import ClientConfig
from lukhas_context.streams.producer import WalProducer
from lukhas_context.streams.security import KafkaSecurity
from lukhas_context.streams.topics import DOWNSTREAM_MAX_MESSAGE_BYTES

__all__ = [
    "Isolation",
    "admin_client",
    "bare_client",
    "consumer",
    "error_text",
    "kafka_error",
    "kafka_errors",
    "producer",
    "wal_producer",
]

E = TypeVar("E", bound=LukhasError)
#: ``read_committed``: only records of committed transactions (and of none); what a reader
#: of the WAL must use. ``read_uncommitted``: every record up to the high watermark.
Isolation = Literal["read_committed", "read_uncommitted"]


def _timeout_ms(seconds: float | None) -> dict[str, int]:
    return {} if seconds is None else {"request_timeout_ms": int(seconds * 1000)}


def _producer_options(bootstrap: str, client_id: str, security: KafkaSecurity) -> dict[str, Any]:
    return {
        "bootstrap_servers": bootstrap,
        "client_id": client_id,
        "enable_idempotence": True,
        "acks": "all",
        "max_request_size": DOWNSTREAM_MAX_MESSAGE_BYTES,
        **security.aiokafka_options(),
    }


def producer(
    bootstrap: str, client_id: str, *, security: KafkaSecurity, **options: Any
) -> AIOKafkaProducer:
    """An idempotent ``acks=all`` producer (see the module doc); ``options`` are aiokafka's
    and override those (e.g. ``linger_ms``, ``max_batch_size``)."""
    return AIOKafkaProducer(**{**_producer_options(bootstrap, client_id, security), **options})


def wal_producer(config: ClientConfig, transactional_id: str | None = None) -> WalProducer:
    """The client's producer of WAL events (transactional with ``transactional_id``): a
    ``WalProducer`` whose start and stop are bounded by the config's deadlines, and whose
    requests are bounded by ``kafka_request_timeout_s``."""
    return WalProducer(
        start_timeout_s=config.timeout_s,
        close_timeout_s=config.close_timeout_s,
        transactional_id=transactional_id,
        transaction_timeout_ms=int(config.transaction_timeout_s * 1000),
        **_producer_options(config.bootstrap, config.client_id, config.kafka_security),
        **_timeout_ms(config.kafka_request_timeout_s),
    )


def consumer(
    bootstrap: str,
    client_id: str,
    *topics: str,
    isolation: Isolation,
    security: KafkaSecurity,
    request_timeout_s: float | None = None,
    fetch_bytes: int = DOWNSTREAM_MAX_MESSAGE_BYTES,
    **options: Any,
) -> AIOKafkaConsumer:
    """A consumer that never commits and fetches records of any size a topic takes (see the
    module doc), subscribed to ``topics`` if any are given. ``fetch_bytes``: what one fetch of
    a partition asks for (the broker still sends a first record batch that is larger: lower it
    for reads of single records). ``options`` are aiokafka's (e.g. ``group_id``,
    ``auto_offset_reset``)."""
    return AIOKafkaConsumer(
        *topics,
        bootstrap_servers=bootstrap,
        client_id=client_id,
        enable_auto_commit=False,
        isolation_level=isolation,
        max_partition_fetch_bytes=fetch_bytes,
        **_timeout_ms(request_timeout_s),
        **security.aiokafka_options(),
        **options,
    )


def admin_client(
    bootstrap: str,
    client_id: str | None = None,
    request_timeout_s: float | None = None,
    *,
    security: KafkaSecurity,
) -> AIOKafkaAdminClient:
    """An admin client (not started); ``client_id`` None keeps aiokafka's."""
    named = {} if client_id is None else {"client_id": client_id}
    return AIOKafkaAdminClient(
        bootstrap_servers=bootstrap,
        **named,
        **_timeout_ms(request_timeout_s),
        **security.aiokafka_options(),
    )


def bare_client(
    bootstrap: str, client_id: str, request_timeout_s: float, *, security: KafkaSecurity
) -> AIOKafkaClient:
    """aiokafka's connection pool and metadata alone (not started: ``await
    c.bootstrap()``), for requests no producer, consumer or admin client makes
    (``streams.leader_end``)."""
    return AIOKafkaClient(
        bootstrap_servers=bootstrap,
        client_id=client_id,
        **_timeout_ms(request_timeout_s),
        **security.aiokafka_options(),
    )


def error_text(exc: BaseException) -> str:
    """An error as one line that is never empty and names its type (``str(TimeoutError())``
    is empty; a ``KafkaError``'s text already starts with its type)."""
    text = str(exc)
    name = type(exc).__name__
    return text if name in text else f"{name}: {text}".rstrip(": ")


def kafka_error(kind: type[E], what: str, exc: BaseException) -> E:
    """``kind`` saying that ``what`` failed, and why (``exc``); the caller chains ``exc``."""
    return kind(f"{what}: {error_text(exc)}")


@contextmanager
def kafka_errors(
    kind: type[LukhasError], what: str, *, also: tuple[type[Exception], ...] = ()
) -> Iterator[None]:
    """Raises ``kafka_error(kind, what, exc)`` from a ``KafkaError`` raised in the block, or an
    error of one of the types ``also`` (e.g. the ``ValueError`` and ``OSError`` of a
    connection that fails); a ``TimeoutError`` passes through, as everything else does."""
    try:
        yield
    except TimeoutError:
        raise
    except (KafkaError, *also) as exc:
        raise kafka_error(kind, what, exc) from exc
