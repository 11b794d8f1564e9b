"""Errors of the per-partition state store."""

from __future__ import annotations

from pathlib import Path

from lukhas_context.schemas.exceptions import LukhasError

__all__ = [
    "CheckpointError",
    "CorruptRecordError",
    "InvalidCheckpointError",
    "LukhasError",
    "StateError",
    "StoreCorruptError",
    "StoreLockedError",
    "StoreOpenError",
]


class StateError(LukhasError):
    """Root of the state store's errors."""


class StoreOpenError(StateError):
    """A partition's RocksDB directory could not be opened; names the path."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"cannot open state store {path}: {cause}")
        self.path = path


class StoreCorruptError(StoreOpenError):
    """The store's files are damaged (RocksDB reports corruption, ``CURRENT`` is missing,
    metadata is malformed, or the records disagree with the digest it keeps). Such a store is
    quarantined and rebuilt; any other ``StoreOpenError`` (out of file handles, disk full, no
    permission) is not the store's fault and stops the worker instead."""


class StoreLockedError(StoreOpenError):
    """The store is open in another process (or another handle in this one): RocksDB's
    ``LOCK`` is held. Not corruption: never quarantined."""


class CorruptRecordError(StateError):
    """A stored value does not decode (unknown format byte, short header)."""


class CheckpointError(StateError):
    """A checkpoint could not be made or installed, or disagrees with the live store."""


class InvalidCheckpointError(CheckpointError):
    """A checkpoint id that is not allowed, or a checkpoint whose manifest is missing, does not
    parse or fails its checksum (a checkpoint interrupted by a crash has none)."""
