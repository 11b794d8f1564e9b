"""Checks made before anything is sent: each failure is a typed ``ValidationError``."""

from __future__ import annotations

import math
import re
import uuid
import warnings
from collections.abc import Mapping
from typing import Any, TypeVar, overload

import orjson

from lukhas_context.schemas.exceptions import PatchError
from lukhas_context.schemas.patch import check_depth, validate_json_patch
from lukhas_context.streams.exceptions import (
    DocumentTooDeepError,
    DocumentTooLargeError,
    InvalidContextIdError,
    InvalidDocumentError,
    InvalidMetadataError,
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


#: An event's metadata (who wrote it, a trace context): a few short entries, never a payload.
MAX_METADATA_ENTRIES = 16
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_BYTES = 1024
MAX_METADATA_BYTES = 4096
#: The W3C trace context a write's span adds to its event's metadata (``streams.tracing``).
TRACE_KEYS = frozenset({"traceparent", "tracestate"})
_METADATA_KEY = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:/-]*")
_CONTROL = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def check_metadata(metadata: object) -> dict[str, str]:
    """An event's ``metadata`` ({} for None): at most 16 entries, each key 1-64 characters of
    ``A-Z a-z 0-9 . _ : / -`` (starting with a letter or digit), each value text of at most
    1 KiB in UTF-8 without control characters, 4 KiB in all; ``InvalidMetadataError``
    otherwise. The trace context (``TRACE_KEYS``) counts towards neither the 16 entries nor
    the 4 KiB: a caller's metadata that passes still passes once a write's span adds it. The
    WAL keeps it with the event for ever: it is for who wrote an event and its trace
    context, not for data (put that in the document)."""
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise InvalidMetadataError(
            f"metadata is a mapping of str to str, got {type(metadata).__name__}"
        )
    entries = sum(1 for key in metadata if key not in TRACE_KEYS)
    if entries > MAX_METADATA_ENTRIES:
        raise InvalidMetadataError(
            f"metadata has {entries} entries: at most {MAX_METADATA_ENTRIES} (besides "
            "traceparent and tracestate)"
        )
    total = 0
    checked: dict[str, str] = {}
    for key, value in metadata.items():
        if not (isinstance(key, str) and len(key) <= MAX_METADATA_KEY_CHARS
                and _METADATA_KEY.fullmatch(key)):  # fmt: skip
            raise InvalidMetadataError(
                f"metadata key {key!r:.80} is not 1-{MAX_METADATA_KEY_CHARS} characters of "
                "A-Z a-z 0-9 . _ : / - (starting with a letter or digit)"
            )
        if not isinstance(value, str) or _CONTROL.search(value):
            raise InvalidMetadataError(
                f"metadata {key}: the value is text without control characters, got {value!r:.60}"
            )
        size = len(value.encode())
        if size > MAX_METADATA_VALUE_BYTES:
            raise InvalidMetadataError(
                f"metadata {key}: a value of {size} bytes, at most {MAX_METADATA_VALUE_BYTES}"
            )
        if key not in TRACE_KEYS:
            total += len(key) + size
        checked[key] = value
    if total > MAX_METADATA_BYTES:
        raise InvalidMetadataError(
            f"metadata of {total} bytes: at most {MAX_METADATA_BYTES} in all"
        )
    return checked


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
