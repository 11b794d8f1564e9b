"""The root of every error this distribution raises, and the codec's own errors.

``LukhasError`` lives here because ``schemas`` is the one package every other package imports;
each package re-exports it from its own ``exceptions`` module.
"""

from __future__ import annotations


class LukhasError(Exception):
    """Root of every error raised by ``lukhas_context``.

    ``retriable`` says whether the same call may succeed if made again unchanged.
    """

    retriable: bool = False


class CodecError(LukhasError, ValueError):
    """Bytes that are not a valid single-object Avro encoding of a known schema."""


class BadMagicError(CodecError):
    """The bytes do not start with the single-object marker ``C3 01``."""


class UnknownSchemaError(CodecError):
    """The 8-byte fingerprint names no schema version this code ships."""

    def __init__(self, fingerprint: bytes) -> None:
        super().__init__(f"unknown schema fingerprint {fingerprint.hex()}")
        self.fingerprint = fingerprint


class MalformedPayloadError(CodecError):
    """The body does not decode under its writer schema (truncated, trailing bytes, bombs)."""


class IncompatibleSchemaError(CodecError):
    """A known writer schema cannot be resolved to the reader schema."""


class BadTombstoneError(CodecError):
    """A tombstone (null value) on the change topic lacks its key or a header, or has a
    malformed one. ``header``: the header's name (None: the key)."""

    def __init__(self, message: str, header: str | None = None) -> None:
        super().__init__(message)
        self.header = header
