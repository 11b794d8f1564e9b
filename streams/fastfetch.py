"""Fetched records built in C for the worker's consumers (``streams._fastrecords``).

``install()`` makes every aiokafka consumer of this process that has no deserializers yield
``WalRecord`` objects (the fields of ``ConsumerRecord``, read-only) instead of
``ConsumerRecord`` dataclasses: at a few hundred thousand records a second, building those in
a Python frame is a fifth of the worker's time. And the frames a record passed through on its
way out of a fetch (``FetchResult.getall``'s loop, ``PartitionRecords.__next__``, the
``_unpack_records`` generator) are one C loop (``_fastrecords.Unpacker`` and ``drain``),
which decides about batches (CRC, control batches, aborted transactions) as aiokafka does,
calling the same methods. Only ``lukhas worker`` installs it. It does nothing (and says why,
once) when the extension is not built or aiokafka is not the version whose methods it
replaces; a test compares the records of fetches both ways, field by field, and the
consumer's positions after them.
"""

from __future__ import annotations

import logging
from typing import Any

import aiokafka
from aiokafka.consumer import fetcher

log = logging.getLogger(__name__)

__all__ = ["install", "installed"]

#: The aiokafka versions whose ``PartitionRecords._consumer_record`` (a record from
#: ``(tp, record)`` with the deserializers applied, if any), ``_unpack_records`` and
#: ``FetchResult.getall`` this replaces.
TESTED = ("0.14.",)

_original: Any = None
_drain: Any = None


def installed() -> bool:
    return _original is not None


def install() -> bool:
    """Replaces ``PartitionRecords._consumer_record`` and ``_unpack_records`` (for consumers
    without deserializers) and ``FetchResult.getall``; returns whether they are in place."""
    global _original, _drain
    if _original is not None:
        return True
    try:
        from lukhas_context.streams._fastrecords import (
            consumer_record,
            drain,
            set_fallback,
            set_unpack_fallback,
            unpacker,
        )
    except ImportError:
        log.info("fetched records stay aiokafka's: the native extension is not built")
        return False
    if not aiokafka.__version__.startswith(TESTED):
        log.info("fetched records stay aiokafka's: built for aiokafka %s, this is %s",
                 " or ".join(TESTED), aiokafka.__version__)  # fmt: skip
        return False
    original = (
        fetcher.PartitionRecords._consumer_record,
        fetcher.PartitionRecords._unpack_records,
        fetcher.FetchResult.getall,
    )
    set_fallback(original[0])  # a consumer with deserializers (none of this code base's)
    set_unpack_fallback(original[1])
    fetcher.PartitionRecords._consumer_record = consumer_record  # binds: a Cython function
    fetcher.PartitionRecords._unpack_records = unpacker
    fetcher.FetchResult.getall = _getall
    _drain = drain
    _original = original
    return True


def uninstall() -> None:
    """Puts aiokafka's back (tests)."""
    global _original
    if _original is not None:
        (
            fetcher.PartitionRecords._consumer_record,
            fetcher.PartitionRecords._unpack_records,
            fetcher.FetchResult.getall,
        ) = _original
        _original = None


def _getall(self: Any, max_records: int | None = None) -> list[Any]:
    """``FetchResult.getall``, its loop in C (``_fastrecords.drain``): the same records, the
    same position afterwards."""
    if not self.check_assignment(self._topic_partition) or not self.has_more():
        return []
    records, exhausted = _drain(self._partition_records, max_records)
    self._update_position()
    if exhausted:
        self._partition_records = None
    return records  # type: ignore[no-any-return]
