"""Errors of the per-partition state store."""

from __future__ import annotations

from pathlib import Path

from lukhas_context.schemas.exceptions import LukhasError

__all__ = ["CorruptRecordError", "LukhasError", "StateError", "StoreOpenError"]


class StateError(LukhasError):
    """Root of the state store's errors."""


class StoreOpenError(StateError):
    """A partition's RocksDB directory could not be opened; names the path."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        super().__init__(f"cannot open state store {path}: {cause}")
        self.path = path


class CorruptRecordError(StateError):
    """A stored value does not decode (unknown format byte, short header)."""
