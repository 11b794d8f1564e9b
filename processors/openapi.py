"""The OpenAPI 3.1 description of the read API, served at ``GET /v1/openapi.json``.

Written by hand next to the handlers (``processors.api``), and held to them by a test
(``tests/unit/processors/test_openapi.py``): every route is described and nothing else is,
each operation's query parameters are exactly the ones its handler takes, and the document
is valid OpenAPI. The behaviour behind each operation is said once, in ``processors.api``'s
module doc; the summaries here point at it.
"""

from __future__ import annotations

from typing import Any

from lukhas_context.processors.problems import KINDS, PROBLEM_CONTENT_TYPE, TYPE_PREFIX

_INT64 = {"type": "integer", "minimum": 0, "maximum": 2**63 - 1}

#: Every query parameter an operation may take: name -> (schema, description).
QUERY: dict[str, tuple[dict[str, Any], str]] = {
    "min_offset": (
        {"type": "string", "pattern": "^[0-9]+:[0-9]+$"},
        "PARTITION:OFFSET: wait until that WAL offset is folded (read-your-writes).",
    ),
    "timeout": (
        {"type": "number", "minimum": 0},
        "Seconds to wait (default 5, cut to 30).",
    ),
    "as_of": (
        {"type": "string"},
        "Answer from the state as of a point of the log: ISO 8601, ms:EPOCH_MS or P:O.",
    ),
    "allow_stale": (
        {"type": "string", "enum": ["1", "0", "true", "false"]},
        "Accept an answer from a standby copy, however far behind.",
    ),
    "max_lag": (
        {"type": "integer", "minimum": 0},
        "Records a standby copy (reads) or a partition (/readyz) may be behind.",
    ),
    "after": (
        {"type": "string"},
        "Page after this (exclusive): an offset (history) or a context id (listing).",
    ),
    "limit": ({"type": "integer", "minimum": 1}, "Entries (or events) at most."),
    "sample": (
        {"type": "string", "enum": ["0", "1"]},
        "0: the last interval's counters, not fresh ones (a fresh sample asks the brokers "
        "for the WAL's ends); what peers ask, as they read only the load.",
    ),
    "context_id": ({"type": "string"}, "Only this context's changes (or dead letters)."),
    "partition": ({"type": "integer", "minimum": 0}, "Only this partition's dead letters."),
    "since": (
        {"type": "string"},
        "Dead-lettered at or after this: ISO 8601, ms:EPOCH_MS, or a DLQ offset.",
    ),
    "reason": ({"type": "string"}, "Only those whose reason contains this (any case)."),
    "prefix": ({"type": "string"}, "Only changes of contexts whose id starts with this."),
    "start": (
        {"type": "string"},
        "latest, earliest, EPOCH_MS or a resume token (default latest).",
    ),
    "deltas": (
        {"type": "string", "enum": ["1", "0", "true", "false"]},
        "Carry a JSON Patch from the previous version with each change.",
    ),
    "idle_timeout": (
        {"type": "number", "minimum": 0, "maximum": 86400},
        "End the stream after this many seconds without a change.",
    ),
}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_PROBLEM = {
    "description": "An error (RFC 9457 problem details).",
    "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref("Problem")}},
}


_OVERLOADED = {
    "description": "Unavailable: the worker has more reads in progress than its budget "
    "(--read-queue-budget; type urn:lukhas:problem:overloaded, the read was not done: ask "
    "again after Retry-After seconds, or another worker), or it serves no partition yet.",
    "headers": {
        "Retry-After": {
            "description": "Seconds to wait before asking again (overloaded only).",
            "schema": {"type": "integer", "minimum": 1},
        }
    },
    "content": {PROBLEM_CONTENT_TYPE: {"schema": _ref("Problem")}},
}


def _operation(
    summary: str,
    ok: dict[str, Any],
    query: tuple[str, ...] = (),
    errors: tuple[int, ...] = (400,),
    tags: tuple[str, ...] = ("reads",),
    unavailable: str | None = None,
    shed: bool = False,
    **extra: Any,
) -> dict[str, Any]:
    """``errors``: the statuses answered with a problem; ``unavailable``: a 503 that is a
    status document like the 200 (the health probes), saying when; ``shed``: a read the
    worker sheds over its read budget (``processors.shed``): its 503 carries Retry-After."""
    responses: dict[str, Any] = {"200": ok}
    for status in errors:
        responses[str(status)] = {"$ref": "#/components/responses/Problem"}
    if shed:
        responses["503"] = {"$ref": "#/components/responses/Overloaded"}
    if unavailable is not None:
        responses["503"] = {**ok, "description": f"{ok['description']} 503: {unavailable}."}
    operation = {
        "summary": summary,
        "tags": list(tags),
        "parameters": [
            {
                "name": name,
                "in": "query",
                "required": False,
                "schema": QUERY[name][0],
                "description": QUERY[name][1],
            }
            for name in query
        ],
        "responses": responses,
    }
    operation.update(extra)
    return operation


def _path_parameter(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


_CONTEXT_ID = _path_parameter("context_id", {"type": "string"}, "The context's id.")
_PARTITION = _path_parameter("partition", {"type": "integer", "minimum": 0}, "A WAL partition.")
_SESSION = _path_parameter("session", {"type": "string"}, "A verify session's id.")
_VERIFY = "Serves `lukhas verify` (range digests of a frozen copy of a store)."


def _verify_operation(summary: str) -> dict[str, Any]:
    return _operation(
        summary,
        _json({"type": "object"}, "The session's answer."),
        errors=(400, 404, 421, 500),
        tags=("verify",),
        description=_VERIFY,
    )


def _start_checkpoint() -> dict[str, Any]:
    """``POST /v1/checkpoints``: 202, a body that may name the id, the write token."""
    operation = _operation(
        "Start a checkpoint: a barrier on every WAL partition, as `lukhas checkpoint` does. "
        "Needs the write token; a worker without one is read-only (403).",
        _json({"type": "object"}, "checkpoint_id, barriers (partition -> offset)"),
        errors=(400, 401, 403, 503),
        tags=("cluster",),
        requestBody={
            "required": False,
            "content": {
                "application/json": {
                    "schema": {
                        "type": "object",
                        "properties": {"checkpoint_id": {"type": "string"}},
                        "additionalProperties": False,
                    }
                }
            },
        },
    )
    operation["responses"]["202"] = operation["responses"].pop("200")
    return operation


_DLQ_POSITION = {
    "required": True,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "properties": {
                    "position": {
                        "type": "string",
                        "pattern": "^[0-9]+:[0-9]+$",
                        "description": "The dead letter's DLQ position, PARTITION:OFFSET.",
                    }
                },
                "required": ["position"],
                "additionalProperties": False,
            }
        }
    },
}


def _dead_letter_paths() -> dict[str, Any]:
    """The dead-letter routes (``processors.deadletters_api``)."""
    redrive = _operation(
        "Re-drive one dead letter: its dry run, then its original bytes appended to the WAL "
        "under its original key, and the fold's outcome (`lukhas dlq redrive --yes`). Needs "
        "the write token; a worker without one is read-only (403).",
        _json({"type": "object"}, "appended, records (now, wal_position, outcome)"),
        errors=(400, 401, 403, 404, 503, 504),
        tags=("dead letters",),
        requestBody=_DLQ_POSITION,
    )
    return {
        "/v1/dead-letters": {
            "get": _operation(
                "The dead letters, partition by partition (oldest first in each), with why "
                "each was dead-lettered (`lukhas dlq list`).",
                _json({"type": "object"}, "dead_letters, limit, writable"),
                ("partition", "since", "reason", "context_id", "limit"),
                (400, 503, 504),
                tags=("dead letters",),
            ),
        },
        "/v1/dead-letters/{partition}/{offset}": {
            "parameters": [
                _path_parameter("partition", {"type": "integer", "minimum": 0}, "A DLQ partition."),
                _path_parameter("offset", _INT64, "An offset of the DLQ partition."),
            ],
            "get": _operation(
                "One dead letter decoded with this worker's codec: headers, key, the value's "
                "first bytes, and the event when it decodes (`lukhas dlq show`).",
                _json({"type": "object"}, "position, reason, source, headers, decoded, ..."),
                (),
                (400, 404, 503, 504),
                tags=("dead letters",),
            ),
        },
        "/v1/dead-letters/dry-run": {
            "post": _operation(
                "What re-driving one dead letter would do now: its owner's dry run. Appends "
                "nothing.",
                _json({"type": "object"}, "appended (false), records (now)"),
                errors=(400, 404, 503, 504),
                tags=("dead letters",),
                requestBody=_DLQ_POSITION,
            ),
        },
        "/v1/dead-letters/redrive": {"post": redrive},
    }


def document(version: str) -> dict[str, Any]:
    """The OpenAPI document of a worker of ``version``."""
    context_get = _operation(
        "Read a context (live, after a write, from a standby, or as of a point of the log).",
        _json(_ref("Context"), "The context; carries its version as ETag."),
        ("min_offset", "timeout", "as_of", "allow_stale", "max_lag"),
        (400, 404, 409, 421, 503, 504),
        shed=True,
    )
    context_get["parameters"].append(
        {
            "name": "If-None-Match",
            "in": "header",
            "required": False,
            "schema": {"type": "string"},
            "description": "Entity tags (the version, quoted) or *: 304 when one matches.",
        }
    )
    context_get["responses"]["304"] = {"description": "Not modified: the ETag matched."}
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "LUKHAS Context read API",
            "version": version,
            "description": "The HTTP API of a LUKHAS Context worker: reads of the state it "
            "folds from the WAL, outcomes, history, the change stream, health and metrics. "
            "Writes go to Kafka (the Python client or the CLI).",
        },
        "paths": {
            "/v1/contexts": {
                "get": _operation(
                    "List live contexts in id order, a page at a time, from every owner.",
                    _json(_ref("ContextList"), "A page of the listing."),
                    ("prefix", "after", "limit"),
                    (400, 503),
                    shed=True,
                ),
            },
            "/v1/contexts/{context_id}": {
                "parameters": [_CONTEXT_ID],
                "get": context_get,
            },
            "/v1/contexts/{context_id}/history": {
                "parameters": [_CONTEXT_ID],
                "get": _operation(
                    "What became of every event of a context, a page at a time.",
                    _json(_ref("History"), "A page of the context's history."),
                    ("after", "limit", "min_offset", "timeout"),
                    (400, 404, 421, 503, 504),
                    shed=True,
                ),
            },
            "/v1/outcomes/{partition}/{offset}": {
                "parameters": [
                    _PARTITION,
                    _path_parameter("offset", _INT64, "An offset of the partition."),
                ],
                "get": _operation(
                    "Wait until the event at a WAL position is folded; what became of it.",
                    _json(_ref("Outcome"), "The event's journal entry."),
                    ("timeout",),
                    (400, 404, 421, 503, 504),
                    shed=True,
                ),
            },
            "/v1/dry-run": {
                "post": _operation(
                    "What the fold would do with one event; appends nothing.",
                    _json(
                        {"type": "object"},
                        "status, version, reason, kind, doc, checksum, expires_at_ms",
                    ),
                    (),
                    (400, 413, 421, 503),
                    shed=True,
                    requestBody={
                        "required": True,
                        "content": {
                            "application/octet-stream": {
                                "schema": {"type": "string", "contentEncoding": "binary"}
                            }
                        },
                        "description": "One event, Avro single-object encoded.",
                    },
                ),
            },
            "/v1/partitions": {
                "get": _operation(
                    "The partitions this worker serves: next offsets, digests, restore state.",
                    _json({"type": "object"}, "digest, partitions, restoring"),
                    tags=("cluster",),
                ),
            },
            "/v1/members": {
                "get": _operation(
                    "The routing table: which worker serves which partition.",
                    _json({"type": "object"}, "member, api, partition_count, owners, members"),
                    tags=("cluster",),
                ),
            },
            "/v1/advice": {
                "get": _operation(
                    "Scaling advice: the workers the group's load needs, and this worker's "
                    "counters it comes from.",
                    _json(
                        {"type": "object"},
                        "sample, load, advice, desired_workers, peers_answered, interval_s, "
                        "cooldown_s",
                    ),
                    ("sample",),
                    (400, 404),
                    tags=("cluster",),
                ),
            },
            "/v1/cluster": {
                "get": _operation(
                    "The cluster as this worker sees it: every member's partitions, lag, "
                    "restores and standbys (an unreachable one says so), and whether each "
                    "partition's copies agree on its digest.",
                    _json({"type": "object"}, "api, partition_count, workers, partitions"),
                    tags=("cluster",),
                ),
            },
            "/v1/cluster/metrics": {
                "get": _operation(
                    "What the console's Metrics view plots, for every worker: events folded, "
                    "point reads and their seconds (counters since the worker started), "
                    "resident memory and its budget, and when it read them (an unreachable "
                    "worker says so, and why).",
                    _json(
                        {"type": "object"},
                        "api, workers: [{api, member, reachable, error, at_ms, folded, "
                        "read_seconds, reads, memory_resident_bytes, memory_budget_bytes}]",
                    ),
                    tags=("cluster",),
                ),
            },
            "/v1/checkpoints": {
                "get": _operation(
                    "The checkpoints the workers hold, newest first: each partition's "
                    "manifest (next offset, counts, digest), which workers hold it and "
                    "whether their digests agree.",
                    _json(
                        {"type": "object"},
                        "partition_count, checkpoints, held, unreachable",
                    ),
                    tags=("cluster",),
                ),
                "post": _start_checkpoint(),
            },
            **_dead_letter_paths(),
            "/console": {
                "get": _operation(
                    "The operators' console (a page that uses this API; no token needed).",
                    {
                        "description": "The console's page.",
                        "content": {"text/html": {"schema": {"type": "string"}}},
                    },
                    tags=("console",),
                ),
            },
            "/console/{asset}": {
                "parameters": [
                    _path_parameter(
                        "asset",
                        {"type": "string", "enum": ["console.js", "console.css", "icon.svg"]},
                        "One of the console's files.",
                    )
                ],
                "get": _operation(
                    "A file of the console (its script or style sheet).",
                    {
                        "description": "The file.",
                        "content": {
                            "text/javascript": {"schema": {"type": "string"}},
                            "text/css": {"schema": {"type": "string"}},
                            "image/svg+xml": {"schema": {"type": "string"}},
                        },
                    },
                    errors=(404,),
                    tags=("console",),
                ),
            },
            "/v1/changes": {
                "get": _operation(
                    "The change stream as server-sent events (Last-Event-ID resumes).",
                    {
                        "description": "The stream.",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    ("context_id", "prefix", "start", "deltas", "limit", "idle_timeout"),
                    (400, 503),
                    tags=("changes",),
                ),
            },
            "/v1/openapi.json": {
                "get": _operation(
                    "This document.",
                    _json({"type": "object"}, "OpenAPI 3.1"),
                    tags=("meta",),
                ),
            },
            "/v1/partitions/{partition}/verify": {
                "parameters": [_PARTITION],
                "post": _verify_operation("Open a verify session on a frozen copy."),
            },
            "/v1/partitions/{partition}/verify/{session}/split": {
                "parameters": [_PARTITION, _SESSION],
                "post": _verify_operation("Split key ranges of a verify session."),
            },
            "/v1/partitions/{partition}/verify/{session}/summarize": {
                "parameters": [_PARTITION, _SESSION],
                "post": _verify_operation("Digests of key ranges of a verify session."),
            },
            "/v1/partitions/{partition}/verify/{session}/rows": {
                "parameters": [_PARTITION, _SESSION],
                "post": _verify_operation("The rows of a key range of a verify session."),
            },
            "/v1/partitions/{partition}/verify/{session}": {
                "parameters": [_PARTITION, _SESSION],
                "delete": _verify_operation("End a verify session."),
            },
            "/healthz": {
                "get": _operation(
                    "200 while the worker folds, else 503 (kept; prefer /livez and /readyz).",
                    _json({"type": "object"}, "status, error, partitions, restoring, clock"),
                    tags=("health",),
                    unavailable="starting, or the fold loop ended",
                ),
            },
            "/livez": {
                "get": _operation(
                    "200 while the process works (starting and restoring included).",
                    _json({"type": "object"}, "status"),
                    tags=("health",),
                    unavailable="the fold loop ended with an error",
                ),
            },
            "/readyz": {
                "get": _operation(
                    "200 when every assigned partition is open and caught up, else 503.",
                    _json({"type": "object"}, "status, reasons, max_lag, partitions"),
                    ("max_lag",),
                    tags=("health",),
                    unavailable="not ready: the reasons say why",
                ),
            },
            "/metrics": {
                "get": _operation(
                    "Prometheus text exposition.",
                    {
                        "description": "Metrics.",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    tags=("health",),
                ),
            },
        },
        "components": {
            "responses": {"Problem": _PROBLEM, "Overloaded": _OVERLOADED},
            "schemas": {
                "Problem": {
                    "type": "object",
                    "required": ["type", "title", "status", "detail"],
                    "properties": {
                        "type": {
                            "type": "string",
                            "description": "about:blank, or one of: "
                            + ", ".join(TYPE_PREFIX + kind for kind in KINDS),
                        },
                        "title": {"type": "string"},
                        "status": {"type": "integer"},
                        "detail": {"type": "string"},
                        "error": {
                            "type": "string",
                            "deprecated": True,
                            "description": "The same as detail (the body before problems).",
                        },
                        "no_such": {"type": "string", "enum": ["partition", "offset"]},
                        "partition_count": {"type": "integer"},
                        "end_offset": {"type": "integer"},
                        "retry_after": {
                            "type": "integer",
                            "description": "overloaded: the seconds of the Retry-After header.",
                        },
                        "open_transaction": {"type": "object"},
                        "dead_letter_reason": {
                            "type": "string",
                            "description": "POST /v1/dry-run of bytes that are not an event: "
                            "the reason the fold would dead-letter them with.",
                        },
                    },
                },
                "Context": {
                    "type": "object",
                    "required": [
                        "context_id",
                        "version",
                        "doc",
                        "checksum",
                        "offset",
                        "partition",
                        "expires_at_ms",
                    ],
                    "properties": {
                        "context_id": {"type": "string"},
                        "version": {"type": "integer"},
                        "doc": {"type": "object"},
                        "checksum": {"type": "string", "pattern": "^[0-9a-f]{16}$"},
                        "offset": {"type": "integer"},
                        "partition": {"type": "integer"},
                        "expires_at_ms": {"type": ["integer", "null"]},
                        "as_of": {"type": "object"},
                    },
                },
                "ContextList": {
                    "type": "object",
                    "required": [
                        "contexts",
                        "more",
                        "next_after",
                        "partition_count",
                        "partitions",
                        "incomplete",
                    ],
                    "properties": {
                        "contexts": {"type": "array", "items": {"type": "object"}},
                        "more": {"type": "boolean"},
                        "next_after": {
                            "type": ["string", "null"],
                            "description": "Pass as after= for the next page.",
                        },
                        "partition_count": {"type": "integer"},
                        "partitions": {"type": "array", "items": {"type": "integer"}},
                        "incomplete": {
                            "type": "array",
                            "items": {"type": "integer"},
                            "description": "Partitions no worker answered for (restoring, "
                            "unowned, or their owner did not answer).",
                        },
                    },
                },
                "Outcome": {
                    "type": "object",
                    "properties": {
                        "partition": {"type": "integer"},
                        "offset": {"type": "integer"},
                        "status": {
                            "type": "string",
                            "enum": [
                                "applied",
                                "conflict",
                                "rejected",
                                "fenced",
                                "dead_lettered",
                                "duplicate",
                                "prepared",
                            ],
                        },
                        "version": {"type": ["integer", "null"]},
                        "reason": {"type": ["string", "null"]},
                        "duplicate_of": {"type": ["integer", "null"]},
                    },
                },
                "History": {
                    "type": "object",
                    "properties": {
                        "context_id": {"type": "string"},
                        "partition": {"type": "integer"},
                        "covered_from": {"type": ["integer", "null"]},
                        "pruned_below": {"type": ["integer", "null"]},
                        "next_offset": {"type": "integer"},
                        "events": {"type": "array", "items": {"type": "object"}},
                        "more": {"type": "boolean"},
                    },
                },
            },
        },
    }
