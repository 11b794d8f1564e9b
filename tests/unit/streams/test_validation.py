"""Producer-side validation: each bad input is a typed error before anything is sent."""

from __future__ import annotations

import math

import pytest

from lukhas_context.streams.exceptions import (
    DocumentTooDeepError,
    DocumentTooLargeError,
    InvalidContextIdError,
    InvalidDocumentError,
    InvalidTTLError,
    ValidationError,
)
from lukhas_context.streams.validation import MAX_TTL_S, canonical_json, context_key, ttl_ms


def test_context_ids() -> None:
    assert context_key("ctx-1") == b"ctx-1"
    assert context_key("é" * 128) == "é".encode() * 128  # 256 bytes: the limit
    for bad in ("", "é" * 129, "a" * 257, "\ud800", None, 5, b"bytes"):
        with pytest.raises(InvalidContextIdError):
            context_key(bad)


def test_documents() -> None:
    assert canonical_json({"b": 1, "a": [True, None]}) == b'{"a":[true,null],"b":1}'
    for bad in ([1], "s", 1, None, {1: "non-string key"}, {"x": object()}, {"f": math.nan * 0j}):
        with pytest.raises(InvalidDocumentError):
            canonical_json(bad)
    with pytest.raises(DocumentTooLargeError):
        canonical_json({"a": "x" * 100}, max_bytes=50)
    assert canonical_json({"a": "x" * 40}, max_bytes=50)
    deep: dict[str, object] = {"a": []}
    inner = deep["a"]
    for _ in range(70):
        inner.append([])  # type: ignore[attr-defined]
        inner = inner[0]  # type: ignore[index]
    with pytest.raises(DocumentTooDeepError):
        canonical_json(deep)
    assert canonical_json(deep, max_depth=100)


def test_ttls() -> None:
    assert ttl_ms(None) is None
    assert ttl_ms(1.5) == 1500
    assert ttl_ms(MAX_TTL_S) == MAX_TTL_S * 1000
    for bad in (0, -1, 0.0001, math.inf, math.nan, MAX_TTL_S + 1, True, "5"):
        with pytest.raises(InvalidTTLError):
            ttl_ms(bad)  # type: ignore[arg-type]


def test_validation_errors_are_value_errors_and_lukhas_errors() -> None:
    from lukhas_context.schemas.exceptions import LukhasError

    assert issubclass(ValidationError, ValueError)
    assert issubclass(ValidationError, LukhasError)
