"""Every schema version this code ships, by single-object fingerprint.

The ``.avsc`` files are package data named ``<Name>.v<N>.avsc``; the highest N of a name is the
reader schema. A fingerprint is CRC-64-AVRO of the Parsing Canonical Form, as the Avro
specification defines it, written little-endian in the single-object header.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import to_parsing_canonical_form

from lukhas_context.schemas.exceptions import SchemaFileError, UnknownSchemaError

_EMPTY = 0xC15D213AA4D7A795
_TABLE: list[int] = []
for _i in range(256):
    _fp = _i
    for _ in range(8):
        _fp = (_fp >> 1) ^ (_EMPTY & -(_fp & 1))
    _TABLE.append(_fp)

_FILE = re.compile(r"^(?P<name>[A-Za-z]+)\.v(?P<version>\d{1,6})\.avsc$")
#: The largest schema file ``load_dir`` reads.
MAX_SCHEMA_BYTES = 1024 * 1024


def crc64_avro(data: bytes) -> int:
    """The 64-bit Rabin fingerprint of the Avro specification ("CRC-64-AVRO")."""
    fp = _EMPTY
    for byte in data:
        fp = (fp >> 8) ^ _TABLE[(fp ^ byte) & 0xFF]
    return fp


@dataclass(frozen=True, slots=True)
class SchemaVersion:
    name: str
    version: int
    parsed: Any
    canonical: str
    fingerprint: bytes

    @property
    def header(self) -> bytes:
        """The 10-byte single-object header: ``C3 01`` and the fingerprint."""
        return b"\xc3\x01" + self.fingerprint


def schema_version(name: str, version: int, schema: dict[str, Any]) -> SchemaVersion:
    """Parses a schema and computes its canonical form and fingerprint."""
    parsed = parse_schema(schema, _write_hint=False)
    canonical = to_parsing_canonical_form(parsed)
    fingerprint = crc64_avro(canonical.encode()).to_bytes(8, "little")
    return SchemaVersion(name, version, parsed, canonical, fingerprint)


class SchemaRegistry:
    """Schema versions by fingerprint and by (name, version). ``readers`` fixes the reader
    schema of a name (else its highest version): writer versions added from a directory
    (``with_writers``) are decoded, resolved to the reader, never written."""

    def __init__(
        self, versions: list[SchemaVersion], readers: dict[str, SchemaVersion] | None = None
    ) -> None:
        self._by_fp = {v.fingerprint: v for v in versions}
        self._by_name: dict[str, dict[int, SchemaVersion]] = {}
        for v in versions:
            self._by_name.setdefault(v.name, {})[v.version] = v
        self._readers = dict(readers or {})

    @classmethod
    def shipped(cls) -> SchemaRegistry:
        """Every ``.avsc`` shipped in this package."""
        folder = resources.files("lukhas_context.schemas").joinpath("avro")
        versions = []
        for entry in sorted(folder.iterdir(), key=lambda e: e.name):
            match = _FILE.match(entry.name)
            if match:
                schema = json.loads(entry.read_text(encoding="utf-8"))
                versions.append(schema_version(match["name"], int(match["version"]), schema))
        return cls(versions)

    def with_version(self, version: SchemaVersion) -> SchemaRegistry:
        """A registry that also knows ``version`` (tests, rolling upgrades)."""
        return SchemaRegistry([*self._by_fp.values(), version], self._readers)

    def with_writers(self, versions: list[SchemaVersion]) -> SchemaRegistry:
        """A registry that also decodes records written with ``versions`` — newer writer
        schemas, resolved to this registry's reader schemas, which stay as they are (the hot
        path is written for them). ``SchemaFileError`` for a name this registry has no
        reader for, or a version number it knows with another schema."""
        readers = {name: self.latest(name) for name in self._by_name}
        for v in versions:
            if v.name not in readers:
                raise SchemaFileError(
                    f"{v.name}.v{v.version}.avsc: no schema of that name ships "
                    f"(known: {', '.join(sorted(readers))})"
                )
            known = self._by_name[v.name].get(v.version)
            if known is not None and known.fingerprint != v.fingerprint:
                raise SchemaFileError(
                    f"{v.name}.v{v.version}.avsc differs from the version {v.version} this "
                    "package ships: give a new writer version a new number"
                )
        return SchemaRegistry([*self._by_fp.values(), *versions], readers)

    @staticmethod
    def load_dir(path: Path) -> list[SchemaVersion]:
        """The ``Name.vN.avsc`` files of a directory (other files are ignored), parsed;
        ``SchemaFileError`` naming the file that is not a valid schema."""
        if not path.is_dir():
            raise SchemaFileError(f"schema directory {path} does not exist")
        versions = []
        for entry in sorted(path.iterdir()):
            match = _FILE.match(entry.name)
            if not match or not entry.is_file():
                continue
            if entry.stat().st_size > MAX_SCHEMA_BYTES:
                raise SchemaFileError(f"{entry}: over {MAX_SCHEMA_BYTES} bytes")
            try:
                schema = json.loads(entry.read_text(encoding="utf-8"))
                versions.append(schema_version(match["name"], int(match["version"]), schema))
            except (ValueError, TypeError, KeyError, RecursionError) as exc:
                raise SchemaFileError(f"{entry}: not a valid Avro schema ({exc})") from None
            except Exception as exc:  # fastavro raises its own kinds for bad schemas
                raise SchemaFileError(
                    f"{entry}: not a valid Avro schema ({type(exc).__name__}: {exc})"
                ) from None
        return versions

    def by_fingerprint(self, fingerprint: bytes) -> SchemaVersion:
        """The schema of a fingerprint; ``UnknownSchemaError`` when none ships."""
        try:
            return self._by_fp[fingerprint]
        except KeyError:
            raise UnknownSchemaError(bytes(fingerprint)) from None

    def latest(self, name: str) -> SchemaVersion:
        """The reader schema of ``name``: its highest version, unless fixed (``readers``)."""
        if name in self._readers:
            return self._readers[name]
        versions = self._by_name[name]
        return versions[max(versions)]

    def versions(self, name: str) -> list[SchemaVersion]:
        return [self._by_name[name][n] for n in sorted(self._by_name[name])]
