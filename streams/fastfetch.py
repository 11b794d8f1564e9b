"""Fetched records built in C for the worker's consumers (``streams._fastrecords``).

``install()`` makes every aiokafka consumer of this process that has no deserializers yield
``WalRecord`` objects (the fields of ``ConsumerRecord``, read-only) instead of
``ConsumerRecord`` dataclasses: at a few hundred thousand records a second, building those in
a Python frame is a fifth of the worker's time. Only ``lukhas worker`` installs it. It does
nothing (and says why, once) when the extension is not built or aiokafka is not the version
whose ``PartitionRecords._consumer_record`` it replaces; a test compares the records of one
fetch both ways, field by field.
"""

from __future__ import annotations

import logging
from typing import Any

import aiokafka
from aiokafka.consumer import fetcher

log = logging.getLogger(__name__)

__all__ = ["install", "installed"]

#: The aiokafka versions whose ``PartitionRecords._consumer_record`` this replaces: a record
#: from ``(tp, record)`` with the key and value deserializers applied, if any.
TESTED = ("0.14.",)

_original: Any = None


def installed() -> bool:
    return _original is not None


def install() -> bool:
    """Replaces ``PartitionRecords._consumer_record`` for consumers without deserializers;
    returns whether it is in place."""
    global _original
    if _original is not None:
        return True
    try:
        from lukhas_context.streams._fastrecords import consumer_record, set_fallback
    except ImportError:
        log.info("fetched records stay aiokafka's: the native extension is not built")
        return False
    if not aiokafka.__version__.startswith(TESTED):
        log.info("fetched records stay aiokafka's: built for aiokafka %s, this is %s",
                 " or ".join(TESTED), aiokafka.__version__)  # fmt: skip
        return False
    original = fetcher.PartitionRecords._consumer_record
    set_fallback(original)  # a consumer with deserializers (none of this code base's)
    fetcher.PartitionRecords._consumer_record = consumer_record  # binds: a Cython function
    _original = original
    return True


def uninstall() -> None:
    """Puts aiokafka's back (tests)."""
    global _original
    if _original is not None:
        fetcher.PartitionRecords._consumer_record = _original
        _original = None
