"""Newer writer schemas from a directory (``lukhas worker --schema-dir``): decoded and resolved
to the shipped reader schema, which stays the one written and the one the hot path reads."""

from __future__ import annotations

import io
import json
import os
from importlib import resources
from pathlib import Path

import pytest
from fastavro import schemaless_writer

from lukhas_context.schemas.codec import EventCodec, event_to_avro
from lukhas_context.schemas.event import ContextEvent, Put
from lukhas_context.schemas.exceptions import SchemaFileError, UnknownSchemaError
from lukhas_context.schemas.registry import SchemaRegistry, schema_version


def v1() -> dict:  # type: ignore[type-arg]
    text = resources.files("lukhas_context.schemas").joinpath("avro/ContextEvent.v1.avsc")
    return json.loads(text.read_text())  # type: ignore[no-any-return]


def write_v2(folder: Path) -> None:
    schema = v1()
    schema["fields"].append({"name": "priority", "type": "int", "default": 0})
    (folder / "ContextEvent.v2.avsc").write_text(json.dumps(schema))
    (folder / "README.txt").write_text("not a schema: ignored")


def test_a_newer_writer_is_decoded_and_the_reader_stays_the_shipped_one(tmp_path: Path) -> None:
    write_v2(tmp_path)
    shipped = SchemaRegistry.shipped()
    upgraded = shipped.with_writers(SchemaRegistry.load_dir(tmp_path))
    assert upgraded.latest("ContextEvent").fingerprint == shipped.latest("ContextEvent").fingerprint
    (v2,) = [v for v in upgraded.versions("ContextEvent") if v.version == 2]
    event = ContextEvent(os.urandom(16), "c:1", Put(b'{"a":1}', None))
    out = io.BytesIO()
    out.write(v2.header)
    schemaless_writer(out, v2.parsed, {**event_to_avro(event), "priority": 3})
    data = out.getvalue()
    with pytest.raises(UnknownSchemaError):
        EventCodec().decode(data)
    codec = EventCodec(upgraded)
    assert codec.decode(data) == event
    assert codec.header == EventCodec().header  # writes stay in the shipped version
    assert codec.encode(event) == EventCodec().encode(event)


def test_unusable_schema_files_are_refused_by_name(tmp_path: Path) -> None:
    shipped = SchemaRegistry.shipped()
    with pytest.raises(SchemaFileError, match="does not exist"):
        SchemaRegistry.load_dir(tmp_path / "nope")
    (tmp_path / "ContextEvent.v9.avsc").write_text("{broken")
    with pytest.raises(SchemaFileError, match=r"ContextEvent\.v9\.avsc: not a valid Avro schema"):
        SchemaRegistry.load_dir(tmp_path)
    (tmp_path / "ContextEvent.v9.avsc").write_text('{"type": "no-such-type"}')
    with pytest.raises(SchemaFileError, match="not a valid Avro schema"):
        SchemaRegistry.load_dir(tmp_path)
    other = schema_version("ContextEvent", 1, {"type": "record", "name": "Y", "fields": []})
    with pytest.raises(SchemaFileError, match="differs from the version 1"):
        shipped.with_writers([other])
    unknown = schema_version("Widget", 1, {"type": "record", "name": "W", "fields": []})
    with pytest.raises(SchemaFileError, match="no schema of that name"):
        shipped.with_writers([unknown])
    # hostile nesting: a typed error, never a crash
    deep = '{"type":"array","items":' * 5000 + '"int"' + "}" * 5000
    (tmp_path / "ContextEvent.v9.avsc").write_text(deep)
    with pytest.raises(SchemaFileError):
        SchemaRegistry.load_dir(tmp_path)
