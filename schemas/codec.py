"""Avro single-object encoding of ``ContextEvent`` and ``ContextChange``.

Framing (Avro specification, "Single-object encoding"): ``C3 01``, the 8-byte little-endian
CRC-64-AVRO fingerprint of the writer schema, then the Avro binary body.

Two implementations, one behaviour:

* the **fast path**, hand-written for the current (latest shipped) version of each schema, used
  on the hot path: fastavro costs about 8 µs a record each way here, which alone would spend
  the fold's whole per-event budget;
* the **reference path**, fastavro, used for every other writer version (schema resolution to
  the current reader schema) and by the tests, which assert that both produce the same bytes and
  the same values.

``decode`` raises ``BadMagicError``, ``UnknownSchemaError``, ``MalformedPayloadError`` or
``IncompatibleSchemaError`` (all ``CodecError``); it never raises anything else for any bytes.
"""

from __future__ import annotations

import io
from typing import Any

from fastavro import schemaless_reader, schemaless_writer

from lukhas_context.schemas import binary as b
from lukhas_context.schemas.event import (
    EMPTY_METADATA,
    OP_TYPES,
    ChangeKind,
    CheckpointBarrier,
    ContextChange,
    ContextEvent,
    Delete,
    Expire,
    Fence,
    Op,
    Patch,
    PatchFormat,
    Put,
    Touch,
)
from lukhas_context.schemas.exceptions import (
    BadMagicError,
    CodecError,
    IncompatibleSchemaError,
    MalformedPayloadError,
)
from lukhas_context.schemas.registry import SchemaRegistry, SchemaVersion

MAGIC = b"\xc3\x01"
HEADER_SIZE = 10
NAMESPACE = "lukhas.context"


def split_header(data: bytes) -> tuple[bytes, int]:
    """Returns the fingerprint and the offset of the body; ``CodecError`` on a bad frame."""
    if len(data) < HEADER_SIZE:
        if data[:2] != MAGIC[: len(data)] or not data:
            raise BadMagicError(f"not single-object Avro (starts {data[:2].hex() or 'empty'})")
        raise MalformedPayloadError(f"frame of {len(data)} bytes is shorter than its header")
    if data[:2] != MAGIC:
        raise BadMagicError(f"not single-object Avro (starts {data[:2].hex()})")
    return data[2:HEADER_SIZE], HEADER_SIZE


class _Codec:
    """What both codecs share: registry lookup and the reference (fastavro) path."""

    name: str

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry = registry or SchemaRegistry.shipped()
        self.current: SchemaVersion = self.registry.latest(self.name)
        self.header = self.current.header
        self._fp = self.current.fingerprint

    def _reference_decode(self, data: bytes) -> dict[str, Any]:
        fingerprint, pos = split_header(data)
        writer = self.registry.by_fingerprint(fingerprint)
        if writer.name != self.name:
            raise IncompatibleSchemaError(f"writer schema is {writer.name}, not {self.name}")
        stream = io.BytesIO(data)
        stream.seek(pos)
        reader = None if writer is self.current else self.current.parsed
        try:
            record: Any = schemaless_reader(
                stream,
                writer.parsed,
                reader,
                return_record_name=True,
                return_record_name_override=True,
            )
        except CodecError:
            raise
        except Exception as exc:  # fastavro signals every kind of bad input differently
            if type(exc).__name__ == "SchemaResolutionError":
                raise IncompatibleSchemaError(str(exc)) from exc
            raise MalformedPayloadError(f"{type(exc).__name__}: {exc}") from exc
        if stream.tell() != len(data):
            raise MalformedPayloadError(f"{len(data) - stream.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise IncompatibleSchemaError(f"writer schema {writer.name} is not a record")
        return record

    def _reference_encode(self, record: dict[str, Any], version: SchemaVersion) -> bytes:
        out = io.BytesIO()
        out.write(version.header)
        schemaless_writer(out, version.parsed, record)
        return out.getvalue()


class EventCodec(_Codec):
    """Encodes and decodes ``ContextEvent`` (writes the current version only)."""

    name = "ContextEvent"

    def encode(self, event: ContextEvent) -> bytes:
        """Single-object bytes of ``event`` in the current schema version (fast path)."""
        return b"".join(
            (
                self.header,
                _fixed(event.event_id, 16),
                b.write_bytes(event.context_id.encode()),
                _write_op(event.op),
                b.write_optional_long(event.expected_version),
                _write_fence(event.fence),
                b.write_string_map(dict(event.metadata)),
            )
        )

    def decode(self, data: bytes) -> ContextEvent:
        """The event in ``data``, resolved to the current schema; else a ``CodecError``."""
        if data[2:HEADER_SIZE] == self._fp and data[:2] == MAGIC:
            try:
                return _read_event(data)
            except IndexError:
                raise MalformedPayloadError("truncated event") from None
        return event_from_avro(self._reference_decode(data))

    def encode_reference(self, event: ContextEvent, version: SchemaVersion | None = None) -> bytes:
        """The same bytes as ``encode``, through fastavro (tests; older writer versions)."""
        return self._reference_encode(event_to_avro(event), version or self.current)

    def decode_reference(self, data: bytes) -> ContextEvent:
        return event_from_avro(self._reference_decode(data))


class ChangeCodec(_Codec):
    """Encodes and decodes ``ContextChange`` (writes the current version only)."""

    name = "ContextChange"

    def encode(self, change: ContextChange) -> bytes:
        return self.encode_fields(
            change.context_id.encode(),
            change.version,
            change.kind,
            change.doc,
            change.checksum,
            change.expires_at_ms,
            change.wal_offset,
            change.event_id,
            change.log_time_ms,
        )

    def encode_fields(
        self,
        context_id: bytes,
        version: int,
        kind: int,
        doc: bytes,
        checksum: bytes,
        expires_at_ms: int | None,
        wal_offset: int,
        event_id: bytes,
        log_time_ms: int,
    ) -> bytes:
        """The fold's hot path: encodes from the fields it already holds (id as UTF-8 bytes)."""
        return b"".join(
            (
                self.header,
                b.write_long(len(context_id)),
                context_id,
                b.write_long(version),
                b.write_long(kind),
                b.write_long(len(doc)),
                doc,
                checksum,
                b.write_optional_long(expires_at_ms),
                b.write_long(wal_offset),
                event_id,
                b.write_long(log_time_ms),
            )
        )

    def decode(self, data: bytes) -> ContextChange:
        if data[2:HEADER_SIZE] == self._fp and data[:2] == MAGIC:
            try:
                return _read_change(data)
            except IndexError:
                raise MalformedPayloadError("truncated change") from None
        return change_from_avro(self._reference_decode(data))

    def encode_reference(
        self, change: ContextChange, version: SchemaVersion | None = None
    ) -> bytes:
        return self._reference_encode(change_to_avro(change), version or self.current)

    def decode_reference(self, data: bytes) -> ContextChange:
        return change_from_avro(self._reference_decode(data))


# ---- fast path: the current versions, field by field in schema order ----


def _write_op(op: Op) -> bytes:
    if type(op) is Put:
        return b"\x00" + b.write_bytes(op.doc) + b.write_optional_long(op.ttl_ms)
    if type(op) is Delete:
        return b"\x02"
    if type(op) is Patch:
        checksum = b"\x00" if op.expected_checksum is None else b"\x02" + op.expected_checksum
        return b"".join(
            (
                b"\x04",
                b.write_long(op.format),
                b.write_bytes(op.patch),
                checksum,
                b.write_optional_long(op.ttl_ms),
                b"\x01" if op.clear_ttl else b"\x00",
            )
        )
    if type(op) is Touch:
        return b"\x06" + b.write_optional_long(op.ttl_ms)
    if type(op) is Expire:
        return b"\x08" + b.write_long(op.version)
    if type(op) is CheckpointBarrier:
        return b"\x0a" + b.write_bytes(op.checkpoint_id.encode())
    raise TypeError(f"not an operation: {op!r}")


def _write_fence(fence: Fence | None) -> bytes:
    if fence is None:
        return b"\x00"
    return b"\x02" + b.write_bytes(fence.lock.encode()) + b.write_long(fence.token)


def _read_event(buf: bytes) -> ContextEvent:
    event_id, pos = b.read_fixed(buf, HEADER_SIZE, 16)
    context_id, pos = b.read_string(buf, pos)
    op, pos = _read_op(buf, pos)
    expected_version, pos = b.read_optional_long(buf, pos)
    fence: Fence | None = None
    if buf[pos]:
        if buf[pos] != 2:
            raise MalformedPayloadError(f"fence union index byte {buf[pos]}")
        lock, pos = b.read_string(buf, pos + 1)
        token, pos = b.read_long(buf, pos)
        fence = Fence(lock, token)
    else:
        pos += 1
    if buf[pos] == 0 and pos + 1 == len(buf):
        return ContextEvent(event_id, context_id, op, expected_version, fence, EMPTY_METADATA)
    metadata, pos = b.read_string_map(buf, pos)
    if pos != len(buf):
        raise MalformedPayloadError(f"{len(buf) - pos} trailing bytes")
    return ContextEvent(event_id, context_id, op, expected_version, fence, metadata)


def _read_op(buf: bytes, pos: int) -> tuple[Op, int]:
    branch, pos = b.read_index(buf, pos, len(OP_TYPES), "op")
    if branch == 0:
        doc, pos = b.read_bytes(buf, pos)
        ttl, pos = b.read_optional_long(buf, pos)
        return Put(doc, ttl), pos
    if branch == 1:
        return Delete(), pos
    if branch == 2:
        fmt, pos = b.read_index(buf, pos, len(PatchFormat), "PatchFormat")
        patch, pos = b.read_bytes(buf, pos)
        has_checksum, pos = b.read_index(buf, pos, 2, "union")
        checksum = None
        if has_checksum:
            checksum, pos = b.read_fixed(buf, pos, 8)
        ttl, pos = b.read_optional_long(buf, pos)
        clear, pos = b.read_boolean(buf, pos)
        return Patch(PatchFormat(fmt), patch, checksum, ttl, clear), pos
    if branch == 3:
        ttl, pos = b.read_optional_long(buf, pos)
        return Touch(ttl), pos
    if branch == 4:
        version, pos = b.read_long(buf, pos)
        return Expire(version), pos
    checkpoint_id, pos = b.read_string(buf, pos)
    return CheckpointBarrier(checkpoint_id), pos


def _read_change(buf: bytes) -> ContextChange:
    context_id, pos = b.read_string(buf, HEADER_SIZE)
    version, pos = b.read_long(buf, pos)
    kind, pos = b.read_index(buf, pos, len(ChangeKind), "ChangeKind")
    doc, pos = b.read_bytes(buf, pos)
    checksum, pos = b.read_fixed(buf, pos, 8)
    expires, pos = b.read_optional_long(buf, pos)
    wal_offset, pos = b.read_long(buf, pos)
    event_id, pos = b.read_fixed(buf, pos, 16)
    log_time, pos = b.read_long(buf, pos)
    if pos != len(buf):
        raise MalformedPayloadError(f"{len(buf) - pos} trailing bytes")
    return ContextChange(
        context_id,
        version,
        ChangeKind(kind),
        doc,
        checksum,
        expires,
        wal_offset,
        event_id,
        log_time,
    )


# ---- reference path: dataclass <-> fastavro record dicts ----

_OP_NAMES = {t: f"{NAMESPACE}.{t.__name__}" for t in OP_TYPES}


def event_to_avro(event: ContextEvent) -> dict[str, Any]:
    op: Any = event.op
    body: dict[str, Any]
    if isinstance(op, Patch):
        body = {
            "format": op.format.name,
            "patch": op.patch,
            "expected_checksum": op.expected_checksum,
            "ttl_ms": op.ttl_ms,
            "clear_ttl": op.clear_ttl,
        }
    else:
        body = {name: getattr(op, name) for name in op.__slots__}
    fence = None if event.fence is None else {"lock": event.fence.lock, "token": event.fence.token}
    return {
        "event_id": event.event_id,
        "context_id": event.context_id,
        "op": (_OP_NAMES[type(op)], body),
        "expected_version": event.expected_version,
        "fence": fence,
        "metadata": dict(event.metadata),
    }


def event_from_avro(record: dict[str, Any]) -> ContextEvent:
    try:
        name, body = record["op"]
        op_type = {v: k for k, v in _OP_NAMES.items()}[name]
        if op_type is Patch:
            body = dict(body, format=PatchFormat[body["format"]])
        op = op_type(**body)
        fence = record.get("fence")
        return ContextEvent(
            record["event_id"],
            record["context_id"],
            op,
            record.get("expected_version"),
            None if fence is None else Fence(fence["lock"], fence["token"]),
            record.get("metadata") or EMPTY_METADATA,
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise IncompatibleSchemaError(f"event does not map to the current model: {exc}") from exc


def change_to_avro(change: ContextChange) -> dict[str, Any]:
    record = {name: getattr(change, name) for name in ContextChange.__slots__}
    record["kind"] = change.kind.name
    return record


def change_from_avro(record: dict[str, Any]) -> ContextChange:
    try:
        fields = {name: record[name] for name in ContextChange.__slots__}
        fields["kind"] = ChangeKind[record["kind"]]
        return ContextChange(**fields)
    except (KeyError, TypeError, ValueError) as exc:
        raise IncompatibleSchemaError(f"change does not map to the current model: {exc}") from exc


def _fixed(value: bytes, size: int) -> bytes:
    if len(value) != size:
        raise ValueError(f"fixed({size}) value has {len(value)} bytes")
    return value
