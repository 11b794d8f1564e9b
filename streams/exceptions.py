"""Errors of the ``streams`` package: the client's (validation: nothing was sent; transport;
reads) and the topic administration's."""

from __future__ import annotations

from lukhas_context.schemas.exceptions import LukhasError

__all__ = [
    "AdminError",
    "ChangeGapError",
    "CheckpointTimeoutError",
    "ChecksumMismatchError",
    "ClientError",
    "ContextNotFoundError",
    "CorruptChangeError",
    "DocumentTooDeepError",
    "DocumentTooLargeError",
    "InvalidConfigError",
    "InvalidContextIdError",
    "InvalidDocumentError",
    "InvalidMetadataError",
    "InvalidPatchError",
    "InvalidPositionError",
    "InvalidResumeTokenError",
    "InvalidTTLError",
    "LockError",
    "LockLostError",
    "LockTimeoutError",
    "LockUnavailableError",
    "LukhasError",
    "NoSuchPositionError",
    "NotAppliedYetError",
    "PublishError",
    "PublishTimeoutError",
    "ReadError",
    "TopicMismatchError",
    "ValidationError",
]


class ClientError(LukhasError):
    """Root of the client's errors."""


class ValidationError(ClientError, ValueError):
    """The call's arguments are invalid; nothing was sent."""


class InvalidConfigError(ValidationError):
    """A ``ClientConfig`` value is out of its range (a deadline that is not a positive finite
    number of seconds, a transaction timeout over the maximum)."""


class InvalidContextIdError(ValidationError):
    """A context id must be a non-empty string of at most 256 UTF-8 bytes."""


class InvalidDocumentError(ValidationError):
    """A document must be a JSON object (a dict with string keys)."""


class DocumentTooLargeError(ValidationError):
    """The canonical JSON of the document is over the size limit."""


class DocumentTooDeepError(ValidationError):
    """The document nests objects and arrays deeper than the limit."""


class InvalidMetadataError(ValidationError):
    """An event's ``metadata`` is not a small map of short text keys and values."""


class InvalidPositionError(ValidationError):
    """A WAL position that is not ``PARTITION:OFFSET``, each a decimal number in range."""


class InvalidTTLError(ValidationError):
    """A TTL must be a positive number of seconds, at most 100 years."""


class InvalidPatchError(ValidationError):
    """A patch is not of its format's shape (a list of ops, or an object for a merge)."""


class ChecksumMismatchError(ClientError):
    """A document read back does not match its checksum: it is not returned."""


class PublishError(ClientError):
    """The WAL did not acknowledge the event: it may or may not have been appended."""

    retriable = True


class PublishTimeoutError(PublishError):
    """The call's deadline passed before the WAL acknowledged. The message says what the
    brokers reported (a partition without enough in-sync replicas or without a leader,
    brokers that do not answer); the write may still land (its outcome is unknown)."""


class PublishCircuitOpenError(PublishError):
    """The WAL's circuit breaker (``streams.breaker``, endpoint ``kafka``) is open: the last
    writes failed (timed out, or Kafka could not be reached), so this one fails at once
    instead of waiting its whole deadline too. Nothing was sent: sending it again is safe.
    ``retry_after_s``: when the breaker lets a write through to try Kafka again."""

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ReadError(ClientError):
    """The read API failed or could not be reached."""

    retriable = True


class ContextNotFoundError(ClientError, KeyError):
    """The context does not exist, was deleted or has expired."""


class NotAppliedYetError(ReadError):
    """The read-your-writes wait timed out: the worker has not folded the offset yet.

    ``open_transaction`` is set when an open Kafka transaction holds the partition
    (``{"partition", "first_offset", "high_watermark"}``); the message says so too."""

    def __init__(self, message: str, open_transaction: dict[str, int] | None = None) -> None:
        super().__init__(message)
        self.open_transaction = open_transaction


class NoSuchPositionError(ReadError):
    """The WAL has no such position: no such partition, or an offset past its end."""

    retriable = False


class CheckpointTimeoutError(ReadError):
    """Not every partition published its checkpoint in time."""


class InvalidResumeTokenError(ValidationError):
    """A resume token that does not parse, or belongs to another topic or partition count."""


class ChangeGapError(ReadError):
    """Changes a subscriber had not read yet are gone (``watch(on_gap="raise")``)."""


class CorruptChangeError(ChangeGapError):
    """A change's document does not match its checksum: it is not delivered
    (``watch(on_gap="raise")``)."""


class AdminError(LukhasError):
    """The cluster could not be reached or refused a topic operation (the cause is chained)."""


class TopicMismatchError(AdminError):
    """An existing topic has another partition count or replication factor than its spec."""


class LockError(ClientError):
    """A distributed lock (``streams.locks``) could not be taken or kept."""


class LockTimeoutError(LockError):
    """The lock was held by another for the whole wait."""

    retriable = True


class LockLostError(LockError):
    """The lock is no longer held: it expired (not renewed in time) or was released."""


class LockUnavailableError(LockError):
    """Redis could not be reached (or answered an error): nothing was locked."""

    retriable = True
