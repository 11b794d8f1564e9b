"""Errors of the processors: poison records (dead-lettered) and fatal worker errors."""

from __future__ import annotations

from lukhas_context.schemas.exceptions import LukhasError

__all__ = [
    "ChangesUnusableError",
    "EventIdConflictError",
    "InvalidWorkerConfigError",
    "KeyMismatchError",
    "LukhasError",
    "NotOwnerError",
    "PoisonRecordError",
    "ProcessorError",
    "StoreInUseError",
    "UnusableChangeError",
    "WalTruncatedError",
    "WorkerStartError",
]


class ProcessorError(LukhasError):
    """Root of the processors' errors."""


class WorkerStartError(ProcessorError):
    """The worker could not start: Kafka did not answer at its bootstrap address, or the read
    API's port could not be bound. The message says which and why, in one line."""


class InvalidWorkerConfigError(ProcessorError, ValueError):
    """A worker setting is out of its range (``WorkerConfig``, its ``ListenerLimits``, the log
    filter's rate). A ``ValueError`` too, as these were before they had a type."""


class PoisonRecordError(ProcessorError):
    """A WAL record that decodes but cannot be an event of its key (goes to the DLQ)."""


class KeyMismatchError(PoisonRecordError):
    """The record's key is not the UTF-8 context id of its payload."""


class EventIdConflictError(PoisonRecordError):
    """An event id already used, within the dedupe window, for different bytes."""


class WalTruncatedError(ProcessorError):
    """The WAL no longer holds the offset the store needs next: the log start (low watermark)
    is above the store's ``next_offset``. Folding on would silently skip events, so the worker
    stops instead."""

    def __init__(self, partition: int, needed: int, low_watermark: int, detail: str = "") -> None:
        super().__init__(
            f"WAL partition {partition} starts at offset {low_watermark}, "
            f"but the store needs offset {needed}: events were deleted (retention, or "
            "`lukhas wal prune`)" + (f" ({detail})" if detail else "")
        )
        self.partition = partition
        self.needed = needed
        self.low_watermark = low_watermark


class NotOwnerError(ProcessorError):
    """This worker does not serve the partition asked for."""

    retriable = True


class UnusableChangeError(ProcessorError):
    """A change-topic record that cannot stand for a stored record: it does not decode, a
    field is out of range or disagrees with another, or it names what no change of this log
    can (a WAL offset past the WAL's end, an event the WAL does not hold there)."""


class ChangesUnusableError(ProcessorError):
    """The change topic cannot restore a partition: it holds a record that cannot be used
    (``UnusableChangeError``). Restoring from the rest would silently lose or misstate that
    record's context, so the restore takes the next path instead."""


class StoreInUseError(ProcessorError):
    """The partition's store is open in a running worker (``lukhas restore``): stop it first."""
