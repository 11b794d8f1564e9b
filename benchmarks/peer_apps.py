"""The peers' side of ``benchmarks/peers.py``: the same fold written for Quix Streams and for a
faust-streaming table, each run in a process of its own (``python benchmarks/peer_apps.py
quix|faust BOOTSTRAP WAL_TOPIC OUT_TOPIC STATE_DIR GUARANTEE``).

The work per WAL record, as close to the worker's as the frameworks allow: decode the Avro
event (this project's codec, the same cost for all), take the document of a put, make it
canonical (orjson, sorted keys), keep it as the context's state in the framework's RocksDB
store with a version, and emit one change record (Quix: to ``OUT_TOPIC``; faust: the table's
changelog topic, its own change stream). Each framework also backs its state with its own
changelog topic, as the worker backs its stores with the change topic.
"""

from __future__ import annotations

import sys
from typing import Any

import orjson

from lukhas_context.schemas.codec import EventCodec
from lukhas_context.schemas.event import Put

CODEC = EventCodec()
SORT = orjson.OPT_SORT_KEYS


def canonical_put(value: bytes) -> bytes | None:
    """The canonical document of a put; None for anything else (not folded by the peers)."""
    event = CODEC.decode(value)
    if type(event.op) is not Put:
        return None
    return orjson.dumps(orjson.loads(event.op.doc), option=SORT)


def run_quix(bootstrap: str, wal: str, out: str, state_dir: str, guarantee: str) -> None:
    from quixstreams import Application

    app = Application(
        broker_address=bootstrap, consumer_group=f"peer-quix-{out}", auto_offset_reset="earliest",
        state_dir=state_dir, processing_guarantee=guarantee, loglevel="WARNING",
    )  # fmt: skip
    source = app.topic(wal, key_deserializer="bytes", value_deserializer="bytes")
    sink = app.topic(out, key_serializer="bytes", value_serializer="bytes")

    def fold(value: bytes, state: Any) -> bytes | None:
        doc = canonical_put(value)
        if doc is None:
            return None
        version = (state.get("version") or 0) + 1
        state.set("version", version)
        state.set("doc", doc.decode())  # its state store keeps JSON values
        return b"%d:" % version + doc

    sdf = app.dataframe(source).apply(fold, stateful=True).filter(lambda v: v is not None)
    sdf.to_topic(sink)
    app.run()


def run_faust(bootstrap: str, wal: str, out: str, state_dir: str, guarantee: str) -> None:
    import faust

    app = faust.App(
        f"peer-faust-{out}", broker=f"kafka://{bootstrap}", store="rocksdb://",
        datadir=state_dir, processing_guarantee=guarantee.replace("-", "_"),
        topic_partitions=6, web_enabled=False,
    )  # fmt: skip
    source = app.topic(wal, key_type=bytes, value_type=bytes, key_serializer="raw",
                       value_serializer="raw")  # fmt: skip
    table = app.Table(out, default=None, key_type=bytes, value_type=bytes)

    @app.agent(source)
    async def fold(stream: Any) -> None:
        async for key, value in stream.items():
            doc = canonical_put(value)
            if doc is not None:
                old = table.get(key)
                version = int(old.split(b":", 1)[0]) + 1 if old else 1
                table[key] = b"%d:" % version + doc

    sys.argv = [sys.argv[0], "worker", "-l", "warn", "--without-web"]
    app.main()


if __name__ == "__main__":
    kind, *rest = sys.argv[1:]
    {"quix": run_quix, "faust": run_faust}[kind](*rest)
