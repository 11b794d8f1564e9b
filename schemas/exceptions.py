"""The root of every error this distribution raises, and the errors of ``schemas``: the
codec's and the patch algebra's.

``LukhasError`` lives here because ``schemas`` is the one package every other package imports;
each package re-exports it from its own ``exceptions`` module.
"""

from __future__ import annotations


class LukhasError(Exception):
    """Root of every error raised by ``lukhas_context``.

    ``retriable`` says whether the same call may succeed if made again unchanged;
    ``not_found`` that what was asked for does not exist (the CLI exits 3).
    """

    retriable: bool = False
    not_found: bool = False


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


class MalformedTransactionError(CodecError):
    """A WAL record under the transaction key (``schemas.txrecord.TX_KEY``) that is not a
    transaction record."""


class ChangeChecksumError(CodecError):
    """A change whose document does not match the checksum it carries (corrupted on its way,
    or forged): never handed over as a good change."""


class BadFenceRecordError(CodecError):
    """A change-topic record with a fence record's key (``schemas.change.FENCE_KEY_PREFIX``)
    that is not a fence record as the processor writes it."""


class PatchError(LukhasError, ValueError):
    """A patch that cannot be applied to the document, or a document the store cannot hold
    (``schemas.patch``).

    ``reason`` is a short sentence for people, e.g. ``op 2 (remove): path /a/b does not
    exist``; operations are numbered from 0, as in the patch array.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class NestingTooDeepError(PatchError):
    """Objects and arrays nest deeper than ``max_depth`` (the root object is depth 1).

    Not the client's ``DocumentTooDeepError`` (a ``ValidationError`` raised before sending):
    this one is the patch algebra's, which the fold turns into a rejection."""

    def __init__(self, max_depth: int) -> None:
        super().__init__(f"the document nests objects and arrays deeper than {max_depth} levels")
        self.max_depth = max_depth


class SchemaFileError(LukhasError, ValueError):
    """A writer schema file (``--schema-dir``) that cannot be used: not ``Name.vN.avsc``,
    not JSON, not a valid Avro schema, or a version the package ships differently."""
