"""LUKHAS Context: an event-sourced context store on Kafka and RocksDB.

The names a producer or subscriber needs, at the top::

    from lukhas_context import ClientConfig, ContextClient

Everything else lives in the packages, one per layer of the architecture (see
``docs/architecture.md``): ``schemas`` → ``state`` → ``streams`` → ``processors`` → ``ops``.
The names here are loaded on first use (PEP 562), so ``import lukhas_context.schemas`` does not
pull in the client, and the client does not pull in the storage engine.
"""

from __future__ import annotations

import importlib
from importlib import metadata
from typing import TYPE_CHECKING, Any

try:
    __version__: str = metadata.version("lukhas_context")
except metadata.PackageNotFoundError:  # a source tree that was never installed
    __version__ = "0+unknown"

#: Public name -> the module that defines it.
_EXPORTS: dict[str, str] = {
    **dict.fromkeys(
        ["ClientConfig", "ContextClient", "SyncContextClient", "Receipt", "Outcome",
         "Context", "DryRun", "Transaction"],
        "lukhas_context.streams.client",
    ),
    **dict.fromkeys(["Change", "Gap"], "lukhas_context.streams.changes"),
    **dict.fromkeys(["Topics"], "lukhas_context.streams.topics"),
    **dict.fromkeys(["LukhasError", "CodecError"], "lukhas_context.schemas.exceptions"),
    **dict.fromkeys(
        ["ClientError", "ValidationError", "InvalidConfigError", "InvalidContextIdError",
         "InvalidDocumentError", "DocumentTooLargeError", "DocumentTooDeepError",
         "InvalidTTLError", "InvalidPatchError", "ChecksumMismatchError", "PublishError",
         "PublishTimeoutError", "PublishCircuitOpenError", "ReadError", "ContextNotFoundError",
         "NotAppliedYetError",
         "NoSuchPositionError", "CheckpointTimeoutError", "InvalidResumeTokenError",
         "ChangeGapError", "CorruptChangeError"],
        "lukhas_context.streams.exceptions",
    ),
    **dict.fromkeys(["BreakerPolicy", "CircuitOpenError"], "lukhas_context.streams.breaker"),
    **dict.fromkeys(
        ["DeadlinePolicy", "DeadlineExceededError", "OverloadedError"],
        "lukhas_context.streams.deadlines",
    ),
}  # fmt: skip

__all__ = [
    "BreakerPolicy",
    "Change",
    "ChangeGapError",
    "CheckpointTimeoutError",
    "ChecksumMismatchError",
    "CircuitOpenError",
    "ClientConfig",
    "ClientError",
    "CodecError",
    "Context",
    "ContextClient",
    "ContextNotFoundError",
    "CorruptChangeError",
    "DeadlineExceededError",
    "DeadlinePolicy",
    "DocumentTooDeepError",
    "DocumentTooLargeError",
    "DryRun",
    "Gap",
    "InvalidConfigError",
    "InvalidContextIdError",
    "InvalidDocumentError",
    "InvalidPatchError",
    "InvalidResumeTokenError",
    "InvalidTTLError",
    "LukhasError",
    "NoSuchPositionError",
    "NotAppliedYetError",
    "Outcome",
    "OverloadedError",
    "PublishCircuitOpenError",
    "PublishError",
    "PublishTimeoutError",
    "ReadError",
    "Receipt",
    "SyncContextClient",
    "Topics",
    "Transaction",
    "ValidationError",
    "__version__",
]  # each loaded from the module _EXPORTS names


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'lukhas_context' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # the next lookup is a plain attribute
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})


if TYPE_CHECKING:  # what type checkers and IDEs see: the same names, imported eagerly
    from lukhas_context.schemas.exceptions import CodecError, LukhasError
    from lukhas_context.streams.breaker import BreakerPolicy, CircuitOpenError
    from lukhas_context.streams.changes import Change, Gap
    from lukhas_context.streams.client import (
        ClientConfig,
        Context,
        ContextClient,
        DryRun,
        Outcome,
        Receipt,
        SyncContextClient,
        Transaction,
    )
    from lukhas_context.streams.deadlines import (
        DeadlineExceededError,
        DeadlinePolicy,
        OverloadedError,
    )
    from lukhas_context.streams.exceptions import (
        ChangeGapError,
        CheckpointTimeoutError,
        ChecksumMismatchError,
        ClientError,
        ContextNotFoundError,
        CorruptChangeError,
        DocumentTooDeepError,
        DocumentTooLargeError,
        InvalidConfigError,
        InvalidContextIdError,
        InvalidDocumentError,
        InvalidPatchError,
        InvalidResumeTokenError,
        InvalidTTLError,
        NoSuchPositionError,
        NotAppliedYetError,
        PublishCircuitOpenError,
        PublishError,
        PublishTimeoutError,
        ReadError,
        ValidationError,
    )
    from lukhas_context.streams.topics import Topics
