"""The change stream in Schema Registry wire format, for tools that read only that framing
(Kafka Connect's Avro converter, ksqlDB, Flink's ``avro-confluent`` format, ``kcat -s avro``).

The change topic's values are Avro single-object encoded (``C3 01``, the writer schema's 8-byte
fingerprint, the body): a standard any Avro library reads given the schema, but not the framing
of Confluent's serializers, which is ``00``, a 4-byte big-endian schema id assigned by a
Schema Registry, and the same body. With ``WorkerConfig.schema_registry_url`` set, a worker
registers every ``ContextChange`` schema version under the subject ``<mirror topic>-value``
(the registry's default topic-name strategy) at start, creates the mirror topic
(``Topics.changes_registry``, co-partitioned with the change topic, compacted alike) when it
is missing, and sends each round's changes to it too, re-framed, with the same keys and each
change's own headers (not the change topic's sequence numbers and round markers), before the
change topic's and in the round's own Kafka transaction: a ``read_committed`` reader of the
mirror sees exactly the changes of the change topic (``Publisher._send_round``). Tombstones
stay tombstones; the change topic's internal records (fence records, keys starting
``FE``/``FF``) are not mirrored.

Re-framing is a slice: the 10-byte header is replaced by a 5-byte one, the body is not decoded.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import aiohttp

from lukhas_context.processors.exceptions import InvalidWorkerConfigError, WorkerStartError
from lukhas_context.schemas.registry import SchemaRegistry, SchemaVersion

__all__ = ["Mirror", "check_registry_url", "redacted", "register"]

#: The single-object header (``C3 01`` and the fingerprint) and the wire-format one
#: (magic byte 0 and the schema id).
SOE_HEADER = 10
MAGIC = b"\x00"
CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"
#: Answers worth another try within the deadline (the registry is starting, or overloaded).
RETRIED_STATUS = frozenset({408, 429, 500, 502, 503, 504})
REQUEST_TIMEOUT_S = 10.0
MAX_URL = 2048
CHANGE_SCHEMA = "ContextChange"


def check_registry_url(url: str) -> str:
    """``url`` when it is an ``http``/``https`` URL with a host and no query or fragment
    (credentials may be given as ``https://user:password@host``); else
    ``InvalidWorkerConfigError`` saying what is wrong, without echoing a password."""
    if len(url) > MAX_URL:
        raise InvalidWorkerConfigError(f"schema registry URL: over {MAX_URL} characters")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise InvalidWorkerConfigError(f"schema registry URL is not a URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise InvalidWorkerConfigError(
            f"schema registry URL must be http(s)://HOST[:PORT][/PATH], got {redacted(url)!r}"
        )
    if parts.query or parts.fragment:
        raise InvalidWorkerConfigError(
            f"schema registry URL takes no query or fragment: {redacted(url)!r}"
        )
    return url


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***`` (for logs and errors)."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.hostname or ""
        netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    except ValueError:
        return "<not a URL>"


@dataclass(frozen=True, slots=True)
class Mirror:
    """Where a worker mirrors its changes, and each change schema's wire-format header."""

    topic: str
    #: Single-object fingerprint (8 bytes) -> ``00`` and the registry's 4-byte schema id.
    headers: dict[bytes, bytes]

    @classmethod
    def of(cls, topic: str, ids: dict[bytes, int]) -> Mirror:
        return cls(topic, {fp: MAGIC + sid.to_bytes(4, "big") for fp, sid in ids.items()})

    def frame(
        self, changes: Sequence[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]
    ) -> list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]]:
        """The mirror's records of a round's change records: values re-framed, tombstones
        kept, internal records left out. ``ValueError`` for a value this worker did not
        write (it cannot happen: the worker encodes every change it publishes)."""
        out: list[tuple[bytes, bytes | None, list[tuple[str, bytes]]]] = []
        headers = self.headers
        for key, value, hdrs in changes:
            if key[:1] in (b"\xfe", b"\xff"):
                continue
            if value is None:
                out.append((key, None, hdrs))
                continue
            header = headers.get(value[2:SOE_HEADER])
            if header is None or value[:2] != b"\xc3\x01":
                raise ValueError(f"change of {key!r}: not a registered ContextChange")
            out.append((key, header + value[SOE_HEADER:], hdrs))
        return out


def change_versions(schemas: SchemaRegistry | None = None) -> list[SchemaVersion]:
    """Every ``ContextChange`` version this package ships, oldest first."""
    shipped = schemas or SchemaRegistry.shipped()
    return shipped.versions(CHANGE_SCHEMA)


async def register(
    url: str, subject: str, versions: list[SchemaVersion], timeout_s: float = 30.0
) -> dict[bytes, int]:
    """Registers each of ``versions`` under ``subject`` (idempotent: a schema registered
    before gets its id back) and returns fingerprint -> schema id. Retries what a registry
    that is starting answers (refused connections, 5xx, 429) until ``timeout_s``; then, or at
    once for a refusal (incompatible schema, authentication), ``WorkerStartError`` naming the
    registry (its password hidden) and its answer."""
    base = url.rstrip("/")
    where = f"{base}/subjects/{quote(subject, safe='')}/versions"
    deadline = time.monotonic() + timeout_s
    ids: dict[bytes, int] = {}
    timeout = aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        for version in versions:
            body = {"schemaType": "AVRO", "schema": json.dumps(_schema_json(version))}
            ids[version.fingerprint] = await _post(session, where, body, deadline, url, subject)
    return ids


def _schema_json(version: SchemaVersion) -> Any:
    """The schema as registered: its parsing canonical form (what the fingerprint is of)."""
    return json.loads(version.canonical)


async def _post(
    session: aiohttp.ClientSession, where: str, body: Any, deadline: float, url: str,
    subject: str,
) -> int:  # fmt: skip
    cannot = f"cannot register the change schema as {subject!r} at {redacted(url)}"
    backoff = 0.2
    while True:
        try:
            async with session.post(
                where, json=body, headers={"Content-Type": CONTENT_TYPE}
            ) as response:
                text = await response.text(errors="replace")
                if response.status == 200:
                    return _schema_id(text, cannot)
                reason = f"HTTP {response.status}: {_message(text)}"
                if response.status not in RETRIED_STATUS:
                    raise WorkerStartError(f"{cannot}: {reason}")
        except (TimeoutError, aiohttp.ClientError, OSError) as exc:
            reason = str(exc) or type(exc).__name__
        if time.monotonic() + backoff > deadline:
            raise WorkerStartError(f"{cannot}: {reason}")
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, 2.0)


def _schema_id(text: str, cannot: str) -> int:
    try:
        sid = json.loads(text)["id"]
    except (ValueError, KeyError, TypeError):
        raise WorkerStartError(f"{cannot}: the answer has no schema id: {text[:200]!r}") from None
    if not isinstance(sid, int) or isinstance(sid, bool) or not 0 <= sid < 1 << 31:
        raise WorkerStartError(f"{cannot}: the answer's schema id is not one: {sid!r}")
    return sid


def _message(text: str) -> str:
    """A registry's error message (Confluent's ``{"error_code", "message"}``), else the
    start of the body, on one line."""
    try:
        message = json.loads(text).get("message")
    except (ValueError, AttributeError):
        message = None
    line = str(message if message else text).replace("\n", " ").strip()
    return line[:300] or "(empty answer)"
