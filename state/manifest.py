"""What a checkpoint promises and what a store sums up: plain data with no RocksDB in it, so
the client (a checkpoint's id), the barriers (a manifest on the change topic) and the store all
check them the same way without loading the storage engine.

A manifest carries the checkpoint id, partition, WAL topic, ``next_offset`` (the barrier's
offset + 1: the checkpoint holds the fold of exactly ``[0, next_offset)``), the record and
document counts, the digest (see ``state.store``), the wall time it was made, and the
checksum of all of that (xxh3-64 over the canonical JSON of the other fields).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from typing import Any

import orjson
import xxhash

from lukhas_context.state.exceptions import InvalidCheckpointError

MANIFEST_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Summary:
    """What a store holds, in O(1): the digest and the counts, as of ``next_offset``."""

    next_offset: int
    digest: int
    records: int
    documents: int

    @property
    def digest_hex(self) -> str:
        return f"{self.digest:016x}"


#: What a checkpoint id may be: it names a directory and a Kafka key.
CHECKPOINT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_checkpoint_id(checkpoint_id: str) -> str:
    """The id, or ``InvalidCheckpointError`` saying what an id may be."""
    if not CHECKPOINT_ID.fullmatch(checkpoint_id):
        raise InvalidCheckpointError(
            f"checkpoint id {checkpoint_id!r} must be 1-64 characters of letters, digits, "
            "'.', '_' and '-', starting with a letter or digit"
        )
    return checkpoint_id


@dataclass(frozen=True, slots=True)
class Manifest:
    """What one checkpoint holds. ``digest`` as 16 hex digits in the JSON."""

    checkpoint_id: str
    partition: int
    topic: str
    next_offset: int
    records: int
    documents: int
    digest: int
    created_at_ms: int

    def fields(self) -> dict[str, Any]:
        data = asdict(self)
        data["digest"] = f"{self.digest:016x}"
        return {"format": MANIFEST_FORMAT, **data}

    def to_json(self) -> bytes:
        """The manifest file's bytes: the fields plus the checksum of their canonical JSON."""
        fields = self.fields()
        fields["checksum"] = _checksum(fields)
        return orjson.dumps(fields, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes, where: str) -> Manifest:
        """Parses and checks a manifest; ``InvalidCheckpointError`` naming ``where``."""
        try:
            fields = orjson.loads(data)
            if not isinstance(fields, dict):
                raise ValueError("not a JSON object")
            claimed = fields.pop("checksum")
            if claimed != _checksum(fields):
                raise ValueError(f"checksum {claimed} does not match its fields")
            if fields.pop("format") != MANIFEST_FORMAT:
                raise ValueError("unknown manifest format")
            fields["digest"] = int(fields["digest"], 16)
            manifest = cls(**fields)
            for name, kind in _FIELD_TYPES.items():
                value = getattr(manifest, name)
                if type(value) is not kind or (isinstance(value, int) and not 0 <= value < 2**64):
                    raise ValueError(f"{name} {value!r} is not a {kind.__name__} in range")
            check_checkpoint_id(manifest.checkpoint_id)
        except (ValueError, KeyError, TypeError, InvalidCheckpointError) as exc:
            raise InvalidCheckpointError(f"invalid checkpoint manifest {where}: {exc}") from None
        return manifest

    def matches(self, summary: Summary) -> bool:
        """True when a store's summary is what this manifest promises."""
        return summary == Summary(self.next_offset, self.digest, self.records, self.documents)


#: The type of every manifest field (a manifest that parses may still hold anything).
_FIELD_TYPES: dict[str, type] = {
    "checkpoint_id": str, "partition": int, "topic": str, "next_offset": int, "records": int,
    "documents": int, "digest": int, "created_at_ms": int,
}  # fmt: skip


def _checksum(fields: dict[str, Any]) -> str:
    return xxhash.xxh3_64_hexdigest(orjson.dumps(fields, option=orjson.OPT_SORT_KEYS))
