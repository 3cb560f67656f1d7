"""The gateway's OpenAPI 3.1 document, written out by hand: the contract clients and the fuzz test read."""

from __future__ import annotations

from typing import Any

from event import __version__

_ERROR = {"$ref": "#/components/schemas/Error"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    reasons = {
        400: "the request is wrong; `error` says how",
        401: "no or a wrong bearer token (only when the gateway has a token)",
        403: "a cross-site request, or a browser's change without the CSRF token",
        404: "no such queue or message",
        409: "no running worker received the command, or none consumes the queue (pause), or (publish "
        "with mandatory=true) no queue is bound to receive the routing key",
        415: "a form body (application/x-www-form-urlencoded, curl -d's default): send JSON or the real type",
        413: "the body is larger than 1 MiB",
        503: "the broker (or its management API) is unreachable; nothing was done",
    }
    # 400: every route refuses query parameters it does not take.
    return {str(code): _json(_ERROR, reasons[code]) for code in sorted({400, *codes, 401, 403})}


def _query(name: str, schema: dict[str, Any], description: str, required: bool = False) -> dict[str, Any]:
    return {"name": name, "in": "query", "required": required, "schema": schema, "description": description}


def _path(name: str, description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": description,
    }


_QUEUE = {
    "type": "object",
    "required": ["name", "role", "messages", "unacked", "consumers", "paused"],
    "properties": {
        "name": {"type": "string"},
        "role": {
            "type": "string",
            "enum": ["consumer", "dead", "park", "delay", "control"],
            "description": "consumer: a pool's queue; dead: the bounded dead queue; park: event's delay "
            "queue of one level (retries, delayed events); delay: hutch-schedule's delay queue of one "
            "level; control: one running worker's command queue",
        },
        "messages": {"type": "integer", "description": "ready in the queue"},
        "unacked": {"type": "integer", "description": "delivered, not yet acknowledged"},
        "consumers": {"type": "integer"},
        "publish_rate": {"type": "number", "description": "messages in per second"},
        "deliver_rate": {"type": "number", "description": "messages out per second"},
        "ack_rate": {"type": "number"},
        "paused": {
            "type": "boolean",
            "description": "paused through this gateway and no consumer on it since (consumer queues)",
        },
        "pausable": {
            "type": "boolean",
            "description": "a worker consumes it, so a pause has an effect (consumer queues only)",
        },
        "level_s": {"type": "integer", "description": "the delay of a park or delay queue, in seconds"},
        "ttl_ms": {"type": ["integer", "null"], "description": "how long the dead queue keeps a message"},
        "max_length": {"type": ["integer", "null"], "description": "the dead queue's cap"},
        "worker": {"type": ["string", "null"], "description": "the connection of a control queue's worker"},
    },
}

_DEAD_SUMMARY_PROPERTIES: dict[str, Any] = {
    "key": {"type": "string", "description": "the message id, or a digest for a message without one"},
    "message_id": {"type": ["string", "null"]},
    "routing_key": {"type": "string"},
    "queue": {"type": ["string", "null"], "description": "the consumer queue it failed in"},
    "error": {"type": ["string", "null"], "description": "the last error (header event-error)"},
    "failed_at": {"type": ["string", "null"], "format": "date-time"},
    "attempts": {"type": "integer"},
    "body_preview": {"type": "string", "description": "the start of the body, as text"},
    "size": {"type": "integer", "description": "the body's size in bytes"},
}

_DEAD_SUMMARY = {
    "type": "object",
    "required": ["key", "routing_key", "attempts", "body_preview", "size"],
    "properties": _DEAD_SUMMARY_PROPERTIES,
}

_DEAD_MESSAGE = {
    "type": "object",
    "required": ["key", "routing_key", "attempts", "body", "headers", "is_json"],
    "properties": {
        **_DEAD_SUMMARY_PROPERTIES,
        "body": {"type": "string", "description": "the body as text (at most 256 KiB)"},
        "body_truncated": {"type": "boolean"},
        "is_json": {"type": "boolean"},
        "body_json": {"description": "the body parsed, when it is JSON (else null)"},
        "headers": {"type": "object", "description": "every header, x-death included"},
    },
}

_FILTER = [
    _query("routing_key", {"type": "string"}, "a part of the routing key, or a topic pattern with * or #"),
    _query("queue", {"type": "string"}, "a part of the failing queue's name"),
    _query("error", {"type": "string"}, "a part of the error text (case ignored)"),
    _query("since", {"type": "string", "format": "date-time"}, "failed at this time or later"),
    _query("until", {"type": "string", "format": "date-time"}, "failed at this time or earlier"),
]

_REQUEUED = {
    "type": "object",
    "required": ["requeued", "left"],
    "properties": {
        "requeued": {"type": "array", "items": {"type": ["string", "null"]}},
        "left": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"message_id": {"type": ["string", "null"]}, "reason": {"type": "string"}},
            },
        },
    },
}

_DELETED = {"type": "object", "required": ["deleted"], "properties": {"deleted": {"type": "integer"}}}

_COMMANDED = {
    "type": "object",
    "required": ["queue", "paused"],
    "properties": {"queue": {"type": "string"}, "paused": {"type": "boolean"}},
}

_MESSAGE_ID = _query("message_id", {"type": "string", "minLength": 1}, "only the message with this id")
_ALL = _query("all", {"type": "boolean"}, "every message")
_KEYS = _query(
    "key",
    {"type": "array", "items": {"type": "string", "minLength": 1}},
    "the messages with these keys (repeat the parameter: those selected on the page)",
) | {"style": "form", "explode": True}
_MATCHING = _query("matching", {"type": "boolean"}, "every message that passes the filter parameters")
_SELECTION = [_MESSAGE_ID, _KEYS, _ALL, _MATCHING, *_FILTER]


def openapi_document() -> dict[str, Any]:
    """The OpenAPI document served at ``/openapi.json``."""
    command = {
        "parameters": [_path("queue", "the consumer queue's full name, e.g. myapp:send_email")],
        "responses": {"202": _json(_COMMANDED, "sent to every running worker"), **_errors(404, 409, 503)},
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "event serve",
            "version": __version__,
            "description": "Publish events over HTTP and look after a namespace's queues and dead letters.",
        },
        "components": {
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {"type": "string", "description": "what is wrong, and the fix"},
                        "problem": {
                            "type": "string",
                            "enum": ["broker", "management"],
                            "description": "with a 503: what to fix, the broker (down, or refusing the "
                            "login) or its management API (off, or refusing the user)",
                        },
                    },
                },
            },
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{}, {"bearer": []}],
        "paths": {
            "/publish/{routing_key}": {
                "post": {
                    "summary": "Publish the JSON body with this routing key; 202 once the broker confirmed",
                    "operationId": "publish",
                    "parameters": [
                        _path("routing_key", "e.g. app.send_email (no wildcards)")
                        | {
                            "schema": {
                                "type": "string",
                                "pattern": r"^[^\s.*#]+(\.[^\s.*#]+)*$",
                                "maxLength": 255,
                            }
                        },
                        _query(
                            "in",
                            {"type": "number", "minimum": 0, "maximum": 31622400},
                            "deliver after this delay",
                        ),
                        _query(
                            "at",
                            {"type": "string", "format": "date-time"},
                            "deliver at this time (not with in)",
                        ),
                        _query(
                            "mandatory",
                            {"type": "boolean"},
                            "true: an unroutable key is a 409 and nothing is stored (default: a 202 "
                            "with routed false)",
                        ),
                    ],
                    "requestBody": {
                        "required": True,
                        "description": "JSON (no Content-Type: JSON too) is checked and published as "
                        "JSON; any other type but a form is published as bytes with its content type "
                        "(without in or at)",
                        "content": {
                            "application/json": {"schema": {}},
                            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                            "text/plain": {"schema": {"type": "string"}},
                        },
                    },
                    "responses": {
                        "202": _json(
                            {
                                "type": "object",
                                "required": ["message_id", "routing_key", "routed"],
                                "properties": {
                                    "message_id": {"type": "string"},
                                    "routing_key": {"type": "string"},
                                    "delay": {"type": ["number", "null"]},
                                    "routed": {
                                        "type": ["boolean", "null"],
                                        "description": "whether a queue received it (false: none is bound "
                                        "for the key, the broker dropped it); null for a delayed message, "
                                        "routed when due",
                                    },
                                },
                            },
                            "confirmed by the broker",
                        ),
                        **_errors(400, 409, 413, 415, 503),
                    },
                }
            },
            "/api/queues": {
                "get": {
                    "summary": "The namespace's queues with depth, unacked, consumers and rates",
                    "operationId": "queues",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["queues"],
                                "properties": {"queues": {"type": "array", "items": _QUEUE}},
                            },
                            "the queues",
                        ),
                        **_errors(400, 503),
                    },
                }
            },
            "/api/workers": {
                "get": {
                    "summary": "The namespace's running workers: connection, host, the queues each "
                    "consumes, messages in flight (from the management API); host name, pid, event's "
                    "version and per consumer queue the handlers in flight and whether it is paused, as "
                    "each worker reports them (null: the worker did not answer within 1 s)",
                    "operationId": "workers",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["workers"],
                                "properties": {
                                    "workers": {
                                        "type": "array",
                                        "items": {
                                            "type": "object",
                                            "required": ["connection", "queues", "in_flight"],
                                            "properties": {
                                                "connection": {"type": "string"},
                                                "name": {"type": ["string", "null"]},
                                                "platform": {"type": ["string", "null"]},
                                                "host": {"type": ["string", "null"]},
                                                "port": {"type": ["integer", "null"]},
                                                "connected_at": {
                                                    "type": ["string", "null"],
                                                    "format": "date-time",
                                                },
                                                "queues": {"type": "array", "items": {"type": "string"}},
                                                "in_flight": {"type": "integer"},
                                                "hostname": {"type": ["string", "null"]},
                                                "pid": {"type": ["integer", "null"]},
                                                "version": {"type": ["string", "null"]},
                                                "consumers": {
                                                    "type": ["array", "null"],
                                                    "items": {
                                                        "type": "object",
                                                        "required": ["queue", "in_flight", "paused"],
                                                        "properties": {
                                                            "queue": {"type": "string"},
                                                            "in_flight": {"type": "integer"},
                                                            "paused": {"type": "boolean"},
                                                        },
                                                    },
                                                },
                                            },
                                        },
                                    }
                                },
                            },
                            "the workers",
                        ),
                        **_errors(503),
                    },
                }
            },
            "/api/pull": {
                "get": {
                    "summary": "HTTP workers' pull queues: jobs waiting in the gateway, leases out, leases "
                    "expired so far",
                    "operationId": "pullStats",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["queues", "leased", "expired"],
                                "properties": {
                                    "queues": {"type": "object", "additionalProperties": {"type": "integer"}},
                                    "leased": {"type": "integer"},
                                    "expired": {"type": "integer"},
                                },
                            },
                            "the figures",
                        ),
                        **_errors(),
                    },
                }
            },
            "/api/queues/{queue}/next": {
                "get": {
                    "summary": "Take the next message of a pull queue (event serve --pull) under a lease; "
                    "204 when none came within wait",
                    "operationId": "pullNext",
                    "parameters": [
                        _path("queue", "the pull queue's full name, e.g. myapp:jobs"),
                        _query(
                            "lease",
                            {"type": "number", "minimum": 1, "maximum": 3600},
                            "seconds to ack or fail it before it goes back (default 60)",
                        ),
                        _query(
                            "wait",
                            {"type": "number", "minimum": 0, "maximum": 60},
                            "seconds to wait for a message (long poll; default 0)",
                        ),
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["lease", "queue", "routing_key", "attempt", "body"],
                                "properties": {
                                    "lease": {"type": "string"},
                                    "lease_s": {"type": "number"},
                                    "queue": {"type": "string"},
                                    "message_id": {"type": ["string", "null"]},
                                    "routing_key": {"type": "string"},
                                    "attempt": {"type": "integer"},
                                    "headers": {"type": "object"},
                                    "body": {"description": "the JSON body, or the bytes as text"},
                                },
                            },
                            "a message, leased",
                        ),
                        "204": {"description": "no message within wait"},
                        **_errors(404),
                    },
                }
            },
            "/api/queues/{queue}/leases/{lease}/ack": {
                "post": {
                    "summary": "The HTTP worker handled the leased message: it is acked",
                    "operationId": "pullAck",
                    "parameters": [_path("queue", "the pull queue"), _path("lease", "the lease id")],
                    "responses": {
                        "200": _json({"type": "object", "required": ["lease", "acked"]}, "acked"),
                        **_errors(404),
                    },
                }
            },
            "/api/queues/{queue}/leases/{lease}/fail": {
                "post": {
                    "summary": "The HTTP worker failed the leased message: retried by the consumer's rules, "
                    "or dead",
                    "operationId": "pullFail",
                    "parameters": [
                        _path("queue", "the pull queue"),
                        _path("lease", "the lease id"),
                        _query("error", {"type": "string"}, "the reason, kept in the event-error header"),
                        _query(
                            "retry_after",
                            {"type": "number", "minimum": 0, "maximum": 31622400},
                            "retry after this many seconds (counts an attempt)",
                        ),
                        _query("dead", {"type": "boolean"}, "true: straight to the dead queue"),
                    ],
                    "responses": {
                        "200": _json({"type": "object", "required": ["lease", "failed"]}, "failed"),
                        **_errors(404),
                    },
                }
            },
            "/api/history": {
                "get": {
                    "summary": "The last hour of the consumer and dead queues: ready, unacked, in/s, out/s "
                    "every 10 s, and per consumer queue the messages processed, failed, retried and dead "
                    "in each interval (as the workers report them), sampled by this gateway since it "
                    "started",
                    "operationId": "history",
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["interval_s", "times", "series"],
                                "properties": {
                                    "interval_s": {"type": "number"},
                                    "times": {"type": "array", "items": {"type": "number"}},
                                    "series": {
                                        "type": "object",
                                        "additionalProperties": {
                                            "type": "object",
                                            "additionalProperties": {
                                                "type": "array",
                                                "items": {"type": ["number", "null"]},
                                            },
                                        },
                                    },
                                },
                            },
                            "series per queue, oldest first: ready, unacked, in, out, and for consumer "
                            "queues processed, failed, retried, dead (null: the queue was not there, or "
                            "no worker reported it)",
                        ),
                        **_errors(),
                    },
                }
            },
            "/api/dead": {
                "get": {
                    "summary": "A page of the dead queue, newest first, filtered (messages stay in it)",
                    "operationId": "dead",
                    "parameters": [
                        _query(
                            "offset",
                            {"type": "integer", "minimum": 0, "maximum": 100000},
                            "skip this many (of those matching, newest first)",
                        ),
                        _query(
                            "limit", {"type": "integer", "minimum": 1, "maximum": 500}, "at most this many"
                        ),
                        *_FILTER,
                    ],
                    "responses": {
                        "200": _json(
                            {
                                "type": "object",
                                "required": ["queue", "exists", "total", "matching", "messages"],
                                "properties": {
                                    "queue": {"type": "string"},
                                    "exists": {"type": "boolean"},
                                    "total": {"type": "integer", "description": "messages in the queue"},
                                    "matching": {
                                        "type": "integer",
                                        "description": "of those, passing the filter",
                                    },
                                    "offset": {"type": "integer"},
                                    "read_at": {
                                        "type": "string",
                                        "format": "date-time",
                                        "description": "when the gateway last read the queue",
                                    },
                                    "reads": {
                                        "type": "integer",
                                        "description": "how often this gateway read the whole queue so far",
                                    },
                                    "messages": {"type": "array", "items": _DEAD_SUMMARY},
                                },
                            },
                            "the page",
                        ),
                        **_errors(400, 503),
                    },
                },
                "delete": {
                    "summary": "Purge the dead queue (needs confirm=true)",
                    "operationId": "purgeDead",
                    "parameters": [_query("confirm", {"type": "boolean"}, "must be true", required=True)],
                    "responses": {"200": _json(_DELETED, "purged"), **_errors(400, 404, 503)},
                },
            },
            "/api/dead/messages/{key}": {
                "get": {
                    "summary": "One dead message in full: headers with x-death, the body",
                    "operationId": "deadMessage",
                    "parameters": [_path("key", "the message's key (its message id) from the list")],
                    "responses": {"200": _json(_DEAD_MESSAGE, "the message"), **_errors(404, 503)},
                }
            },
            "/api/dead/requeue": {
                "post": {
                    "summary": "Send dead messages back to the queue each failed in: one by id, those "
                    "selected (key), all, or all matching a filter",
                    "operationId": "requeueDead",
                    "parameters": _SELECTION,
                    "responses": {"200": _json(_REQUEUED, "what was requeued"), **_errors(400, 404, 503)},
                }
            },
            "/api/dead/delete": {
                "post": {
                    "summary": "Delete dead messages, selected as for requeue (all=true and "
                    "matching=true need confirm=true)",
                    "operationId": "deleteDead",
                    "parameters": [
                        *_SELECTION,
                        _query("confirm", {"type": "boolean"}, "with all=true or matching=true"),
                    ],
                    "responses": {"200": _json(_DELETED, "deleted"), **_errors(400, 404, 503)},
                }
            },
            "/api/consumers/{queue}/pause": {
                "post": {
                    "summary": "Running workers stop taking messages from the queue",
                    "operationId": "pause",
                }
                | command
            },
            "/api/consumers/{queue}/resume": {
                "post": {
                    "summary": "Running workers take messages from the queue again",
                    "operationId": "resume",
                }
                | command
            },
            "/healthz": {
                "get": {
                    "summary": "200 while the gateway runs (needs no token)",
                    "operationId": "health",
                    "responses": {
                        "200": {
                            "description": "ok",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        },
                        "400": _json(_ERROR, "a query parameter was given"),
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "summary": "This document",
                    "operationId": "openapi",
                    "responses": {
                        "200": _json({"type": "object"}, "the OpenAPI document"),
                        **_errors(400),
                    },
                }
            },
            "/api": {
                "get": {
                    "summary": "This document as a page to read",
                    "operationId": "apiPage",
                    "responses": {
                        "200": {
                            "description": "an HTML page",
                            "content": {"text/html": {"schema": {"type": "string"}}},
                        },
                        **_errors(400),
                    },
                }
            },
        },
    }
