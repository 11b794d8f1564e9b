"""A faust-streaming app with one agent that follows the LUKHAS change topic.

Run it from the repository root (``lukhas up`` running, or any cluster with the topics):

    .venv/bin/faust -A examples.faust_changes worker -l info
    .venv/bin/python examples/faust_changes.py worker -l info        # the same

Add ``--datadir DIR`` (before ``worker``) to keep faust's state elsewhere than
``./<app id>-data``, and ``--without-web`` or ``--web-port N`` (after ``worker``) when port
6066 is taken.

Environment:

* ``LUKHAS_BOOTSTRAP``: Kafka, ``host:port[,host:port]`` or faust URLs
  (default ``kafka://127.0.0.1:19092``, where ``lukhas up`` listens);
* ``LUKHAS_TOPIC_PREFIX``: reads ``<prefix>.context.changes`` (default ``lukhas``);
* ``LUKHAS_PARTITIONS``: the change topic's partition count, for faust's information only
  (faust never creates or alters the topic; default unset);
* ``LUKHAS_FAUST_APP_ID``: the faust app id, i.e. its consumer group
  (default ``lukhas-faust-changes``);
* ``LUKHAS_FAUST_OUT``: a file to append one JSON line per change to (default: none).

The agent gets one ``ChangeRecord`` per record of the change topic, deletions and expiries
(tombstones, ``doc`` null) included, logs it, counts changes per kind (logged every 10 s and
at shutdown) and, with ``LUKHAS_FAUST_OUT``, appends it as JSON: ``context_id``, ``version``,
``kind`` (put/patch/touch/delete/expire), ``doc`` (the JSON document, null for a tombstone),
``checksum`` and ``event_id`` (hex), ``expires_at_ms``, ``wal_offset``, ``log_time_ms``, and
where faust read it: ``partition``, ``offset``. A change the processor published again after a
crash (a ``wal_offset`` not above the highest seen in its partition) is counted as a
``repeat`` and not handled twice.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from pathlib import Path
from typing import IO, Any

import faust
import orjson

from lukhas_context.streams.faust_support import change_from_event, change_topic
from lukhas_context.streams.topics import Topics

log = logging.getLogger("lukhas.faust_changes")


def broker_urls(bootstrap: str) -> list[str]:
    """``host:port,host:port`` (the LUKHAS form) or faust URLs -> faust broker URLs."""
    hosts = [h.strip() for h in bootstrap.replace(";", ",").split(",") if h.strip()]
    return [h if "://" in h else f"kafka://{h}" for h in hosts]


BOOTSTRAP = os.environ.get("LUKHAS_BOOTSTRAP") or "kafka://127.0.0.1:19092"
TOPICS = Topics(os.environ.get("LUKHAS_TOPIC_PREFIX") or "lukhas")
PARTITIONS = int(os.environ["LUKHAS_PARTITIONS"]) if os.environ.get("LUKHAS_PARTITIONS") else None
APP_ID = os.environ.get("LUKHAS_FAUST_APP_ID") or "lukhas-faust-changes"
OUT = os.environ.get("LUKHAS_FAUST_OUT")

app = faust.App(
    APP_ID,
    broker=broker_urls(BOOTSTRAP),
    consumer_auto_offset_reset="earliest",  # a new app id reads the topic from its start
)
changes_topic = change_topic(app, TOPICS, partitions=PARTITIONS)

counts: Counter[str] = Counter()
_high_wal_offset: dict[int, int] = {}  # partition -> highest wal_offset handled
_out: IO[bytes] | None = None


def _write(line: dict[str, Any]) -> None:
    global _out
    if OUT is None:
        return
    if _out is None:
        Path(OUT).parent.mkdir(parents=True, exist_ok=True)
        _out = open(OUT, "ab")  # noqa: SIM115 (kept open for the worker's life)
    _out.write(orjson.dumps(line) + b"\n")
    _out.flush()


@app.agent(changes_topic)
async def handle_changes(stream: faust.StreamT[Any]) -> None:
    async for event in stream.events():
        change = change_from_event(event)
        partition, offset = event.message.partition, event.message.offset
        if change.wal_offset <= _high_wal_offset.get(partition, -1):
            counts["repeat"] += 1
            continue
        _high_wal_offset[partition] = change.wal_offset
        kind = change.kind.name.lower()
        counts[kind] += 1
        log.info("change %s v%d %s at %d:%d", change.context_id, change.version, kind,
                 partition, offset)  # fmt: skip
        _write(
            {
                "context_id": change.context_id,
                "version": change.version,
                "kind": kind,
                "doc": change.document(),
                "checksum": change.checksum.hex(),
                "expires_at_ms": change.expires_at_ms,
                "wal_offset": change.wal_offset,
                "event_id": change.event_id.hex(),
                "log_time_ms": change.log_time_ms,
                "partition": partition,
                "offset": offset,
            }
        )


@app.timer(interval=10.0)  # type: ignore[untyped-decorator]
async def report_counts() -> None:
    log.info("changes so far: %s", dict(counts))


@app.on_before_shutdown.connect  # type: ignore[arg-type]
async def _close(sender: Any, *args: Any, signal: Any = None, **kwargs: Any) -> None:
    log.info("changes seen: %s", dict(counts))
    if _out is not None:
        _out.close()


if __name__ == "__main__":
    app.main()
