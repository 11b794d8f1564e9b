"""Checks made before anything is sent: each failure is a typed ``ValidationError``."""

from __future__ import annotations

import math
import uuid
import warnings
from typing import Any, TypeVar, overload

import orjson

from lukhas_context.schemas.exceptions import PatchError
from lukhas_context.schemas.patch import check_depth, validate_json_patch
from lukhas_context.streams.exceptions import (
    DocumentTooDeepError,
    DocumentTooLargeError,
    InvalidContextIdError,
    InvalidDocumentError,
    InvalidPatchError,
    InvalidTTLError,
    ValidationError,
)

MAX_ID_BYTES = 256
MAX_TTL_S = 100 * 365 * 24 * 3600
DEFAULT_MAX_DOCUMENT_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 64
#: The longest wait a read may ask for, in seconds (the read API waits at most 30 s a request).
MAX_WAIT_S = 3600.0

T = TypeVar("T")


def context_key(context_id: object) -> bytes:
    """The UTF-8 key of a context id; ``InvalidContextIdError`` if it is not a valid id."""
    if not isinstance(context_id, str):
        raise InvalidContextIdError(f"context id must be a str, not {type(context_id).__name__}")
    try:
        key = context_id.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidContextIdError(f"context id is not valid UTF-8: {exc}") from None
    if not key:
        raise InvalidContextIdError("context id is empty")
    if len(key) > MAX_ID_BYTES:
        raise InvalidContextIdError(f"context id is {len(key)} bytes, over {MAX_ID_BYTES}")
    return key


def canonical_json(
    doc: Any, max_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES, max_depth: int = DEFAULT_MAX_DEPTH
) -> bytes:
    """Canonical JSON bytes of a document (sorted keys, no whitespace), checked and bounded:
    a JSON object, at most ``max_bytes`` long, nested at most ``max_depth`` deep."""
    if not isinstance(doc, dict):
        raise InvalidDocumentError(
            f"document must be a JSON object (dict), not {type(doc).__name__}"
        )
    try:
        check_depth(doc, max_depth)
    except PatchError as exc:
        raise DocumentTooDeepError(exc.reason) from None
    try:
        data = orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)
    except (orjson.JSONEncodeError, TypeError) as exc:
        raise InvalidDocumentError(f"document is not JSON-serialisable: {exc}") from None
    if len(data) > max_bytes:
        raise DocumentTooLargeError(f"document is {len(data)} bytes, over the limit of {max_bytes}")
    return data


def check_patch(patch: Any, merge: bool) -> None:
    """``InvalidPatchError`` for a patch the fold would reject whatever the document: a
    malformed JSON Patch or one over the fold's bounds (``schemas.patch``), or a merge patch
    nested deeper than a document may (the document takes its shape)."""
    try:
        if merge:
            if not isinstance(patch, dict):
                raise InvalidPatchError("a merge patch must be a JSON object")
            check_depth(patch, DEFAULT_MAX_DEPTH)
        else:
            validate_json_patch(patch)
    except PatchError as exc:
        raise InvalidPatchError(exc.reason) from None


def ttl_ms(ttl: float | None) -> int | None:
    """A TTL in seconds as whole milliseconds; None stays None."""
    if ttl is None:
        return None
    if isinstance(ttl, bool) or not isinstance(ttl, int | float):
        raise InvalidTTLError(f"ttl must be a number of seconds, not {type(ttl).__name__}")
    if not math.isfinite(ttl) or ttl <= 0 or ttl > MAX_TTL_S:
        raise InvalidTTLError(f"ttl must be in (0, {MAX_TTL_S}] seconds, got {ttl}")
    ms = round(ttl * 1000)
    if ms < 1:
        raise InvalidTTLError(f"ttl {ttl} s is under one millisecond")
    return ms


def check_version(expected_version: int | None) -> None:
    """``ValidationError`` unless None or an int in ``[0, 2^63)``."""
    if expected_version is not None and (
        isinstance(expected_version, bool)
        or not isinstance(expected_version, int)
        or not 0 <= expected_version < 2**63
    ):
        raise ValidationError(f"expected_version must be an int >= 0, got {expected_version!r}")


def check_wait(timeout: object) -> None:
    """A wait is a finite number of seconds in ``[0, MAX_WAIT_S]`` (NaN would never end)."""
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 <= timeout <= MAX_WAIT_S  # NaN fails this too
    ):
        shown = repr(timeout)[:40] if not isinstance(timeout, int) or timeout < 2**64 else "more"
        raise ValidationError(f"timeout must be seconds in [0, {MAX_WAIT_S:g}], got {shown}")


def checksum_bytes(checksum: str | None) -> bytes | None:
    """The 8 bytes of a checksum given as 16 hex digits (None stays None)."""
    if checksum is None:
        return None
    try:
        raw = bytes.fromhex(checksum)
    except ValueError:
        raw = b""
    if len(raw) != 8:
        raise ValidationError(f"a checksum is 16 hex digits, got {checksum!r}")
    return raw


@overload
def json_bytes(value: Any, limit: int, what: str) -> bytes: ...
@overload
def json_bytes(value: Any, limit: int, what: str, quiet: bool) -> bytes | None: ...
def json_bytes(value: Any, limit: int, what: str, quiet: bool = False) -> bytes | None:
    """JSON bytes of a patch, bounded; ``quiet``: None instead of an error."""
    try:
        data = orjson.dumps(value)
    except (orjson.JSONEncodeError, TypeError) as exc:
        if quiet:
            return None
        raise InvalidPatchError(f"{what} is not JSON-serialisable: {exc}") from None
    if len(data) > limit:
        if quiet:
            return None
        raise DocumentTooLargeError(f"{what} is {len(data)} bytes, over the limit of {limit}")
    return data


def check_event_id(event_id: object) -> uuid.UUID:
    """A caller's event id: a ``uuid.UUID`` or its text (32 hex digits, hyphens optional);
    ``ValidationError`` otherwise. The nil UUID is refused (it names no event)."""
    if isinstance(event_id, uuid.UUID):
        parsed = event_id
    elif isinstance(event_id, str) and len(event_id) <= 64:
        try:
            parsed = uuid.UUID(event_id)
        except ValueError:
            raise ValidationError(f"event id {event_id!r} is not a UUID") from None
    else:
        raise ValidationError(f"an event id is a UUID or its text, got {event_id!r:.60}")
    if parsed.int == 0:
        raise ValidationError("the nil UUID is not an event id")
    return parsed


def renamed_argument(new: T, old: T | None, new_name: str, old_name: str) -> T | None:
    """An argument given by its name or its old one: the old one with a
    ``DeprecationWarning`` (at the caller's caller), ``ValidationError`` when both are given.
    The names are the HTTP API's (``min_offset``...), one vocabulary everywhere."""
    if old is None:
        return new
    if new is not None:
        raise ValidationError(f"give {new_name}= only ({old_name}= is its old name)")
    warnings.warn(f"{old_name}= is deprecated: use {new_name}=", DeprecationWarning, stacklevel=3)
    return old
