"""The client's public names, the front door: ``from lukhas_context.streams.client import
ContextClient, ClientConfig, SyncContextClient, Receipt, ...``.

Each lives in a module of its own: ``async_client`` (``ContextClient``, a front over
``writer``, ``reader``/``routing``, ``deltas`` and ``transaction``), ``sync_client``
(``SyncContextClient``), ``config`` (``ClientConfig``) and ``results`` (what the calls
return). The errors are in ``streams.exceptions``.
"""

from __future__ import annotations

from lukhas_context.streams.async_client import ContextClient
from lukhas_context.streams.config import MAX_TRANSACTION_TIMEOUT_S, ClientConfig
from lukhas_context.streams.results import (
    CheckpointRequest,
    Context,
    ContextPage,
    DryRun,
    History,
    HistoryEvent,
    ListedContext,
    Outcome,
    Receipt,
)
from lukhas_context.streams.sync_client import SyncContextClient
from lukhas_context.streams.transaction import Transaction

__all__ = [
    "MAX_TRANSACTION_TIMEOUT_S",
    "CheckpointRequest",
    "ClientConfig",
    "Context",
    "ContextClient",
    "ContextPage",
    "DryRun",
    "History",
    "HistoryEvent",
    "ListedContext",
    "Outcome",
    "Receipt",
    "SyncContextClient",
    "Transaction",
]
