"""An AsyncAPI 3.0 document of a pool and of contracts: what it consumes, what is published, in which shape.

One channel per routing key (or binding pattern) on the pool's topic exchange, with AMQP bindings; a
``receive`` operation per consumer and key, a ``send`` operation per contract and per cron schedule; one
message per payload type, its JSON Schema made by pydantic when it is installed (``model_json_schema``
for a model, ``TypeAdapter`` for a dataclass or a TypedDict), else a plainer schema of the fields. Each
operation describes the delay and retry behaviour that applies to it (delay levels, back-off, dead queue).
``event asyncapi module:pool`` prints it.
"""

from __future__ import annotations

import dataclasses
import importlib
import re
import types
from collections.abc import Iterable
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints, is_typeddict
from urllib.parse import unquote, urlsplit

from event import protobuf, wire
from event.config import split_urls
from event.consumer import Consumer
from event.contracts import Contract
from event.pool import WorkerPool

ASYNCAPI_VERSION = "3.0.0"
AMQP_BINDING_VERSION = "0.3.0"
ANY_JSON = "AnyJson"  # the message of an untyped consumer: whatever JSON is published

Document = dict[str, Any]


def document(
    pool: WorkerPool | None = None,
    contracts: Iterable[Contract[Any]] = (),
    *,
    title: str = "",
    version: str = "1.0.0",
    description: str = "",
) -> Document:
    """The AsyncAPI 3.0 document (a JSON-ready dict) of ``pool``'s consumers and schedules, and of
    ``contracts``.

    Without a pool, the contracts are described on Hutch's default exchange ``hutch``.
    """
    contracts = list(dict.fromkeys(contracts))  # the same contract imported twice is one
    exchange = pool.exchange if pool is not None else "hutch"
    vhost = _vhost(pool.url) if pool is not None else "/"
    builder = _Builder(exchange, vhost)
    for contract in contracts:
        builder.send_contract(contract)
    if pool is not None:
        for consumer in pool.consumers:
            builder.receive(consumer, pool)
        for schedule in pool.schedules:
            builder.send_schedule(schedule.name, schedule.routing_key, schedule.expression)
    name = pool.namespace if pool is not None and pool.namespace else "event"
    doc: Document = {
        "asyncapi": ASYNCAPI_VERSION,
        "info": {
            "title": title or f"{name} events",
            "version": version,
            "description": description or _ABOUT,
        },
        "defaultContentType": wire.CONTENT_TYPE,
    }
    if pool is not None:
        doc["servers"] = _servers(pool.url)
    doc["channels"] = builder.channels
    doc["operations"] = builder.operations
    doc["components"] = {"messages": builder.messages, "schemas": builder.schemas()}
    return doc


_ABOUT = (
    "Events published as persistent JSON messages on a durable topic exchange, wire-compatible with "
    "Ruby's Hutch and hutch-schedule. Each consumer has its own durable queue bound to its routing keys; "
    "a message is acknowledged after its handler returns. A delayed publish (publish_in / publish_at) "
    "waits in the park queue of the smallest delay level at least the delay "
    f"({', '.join(map(str, wire.LEVELS))} seconds), so it is never delivered early; longer delays are "
    "parked again until due."
)


class _Builder:
    """Collects channels, operations and messages; one place for their ids and references."""

    def __init__(self, exchange: str, vhost: str) -> None:
        self.exchange = exchange
        self.vhost = vhost
        self.channels: dict[str, Any] = {}
        self.operations: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self._message_ids: dict[Any, str] = {}  # payload type (or ANY_JSON) -> its message id
        self._types: dict[str, Any] = {}  # message id -> payload type, for the schemas

    def send_contract(self, contract: Contract[Any]) -> None:
        channel = self._channel(contract.routing_key)
        message = self._message(contract.type, channel, contract.content_type)
        self._operation(
            f"send_{_ident(contract.routing_key)}",
            {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel}"},
                "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
                "summary": contract.description or f"Publish a {_type_name(contract.type)}.",
                "description": (
                    f"publisher.to(contract).publish(...), published with routing key "
                    f"{contract.routing_key!r}; publish_in / publish_at park it until due."
                ),
                "bindings": {"amqp": _publish_binding()},
            },
        )

    def send_schedule(self, name: str, routing_key: str, expression: str) -> None:
        channel = self._channel(routing_key)
        message = self._message(ANY_JSON, channel)
        self._operation(
            f"cron_{_ident(name)}",
            {
                "action": "send",
                "channel": {"$ref": f"#/channels/{channel}"},
                "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
                "summary": f"Cron schedule {name!r}: {expression}",
                "description": "Published on every tick by the pool's elected cron leader, "
                "with message id <name>@<tick in UTC>.",
                "bindings": {"amqp": _publish_binding()},
            },
        )

    def receive(self, consumer: Consumer, pool: WorkerPool) -> None:
        wanted = consumer.payload.type if consumer.payload is not None else ANY_JSON
        for index, key in enumerate(consumer.routing_keys):
            channel = self._channel(key)
            message = self._message(wanted, channel)
            suffix = "" if len(consumer.routing_keys) == 1 else f"_{index + 1}"
            self._operation(
                f"receive_{_ident(consumer.queue)}{suffix}",
                {
                    "action": "receive",
                    "channel": {"$ref": f"#/channels/{channel}"},
                    "messages": [{"$ref": f"#/channels/{channel}/messages/{message}"}],
                    "summary": f"Consumed from queue {consumer.queue!r}.",
                    "description": _failure_policy(consumer, pool.dead_queue),
                    "bindings": {"amqp": {"ack": True, "bindingVersion": AMQP_BINDING_VERSION}},
                    "x-event-consumer": {
                        "queue": consumer.queue,
                        "handler": getattr(consumer.handler, "__qualname__", repr(consumer.handler)),
                        "prefetch": consumer.prefetch,
                        "maxConcurrency": consumer.max_concurrency,
                        "retries": consumer.retries,
                        "timeoutSeconds": consumer.timeout,
                        "maxDeliveries": consumer.max_deliveries,
                        "deadQueue": pool.dead_queue,
                    },
                },
            )

    def _channel(self, routing_key: str) -> str:
        ident = _ident(routing_key)
        self.channels.setdefault(
            ident,
            {
                "address": routing_key,
                "title": routing_key,
                "messages": {},
                "bindings": {
                    "amqp": {
                        "is": "routingKey",
                        "exchange": {
                            "name": self.exchange,
                            "type": "topic",
                            "durable": True,
                            "autoDelete": False,
                            "vhost": self.vhost,
                        },
                        "bindingVersion": AMQP_BINDING_VERSION,
                    }
                },
            },
        )
        return ident

    def _message(self, payload_type: Any, channel: str, content_type: str = "") -> str:
        ident = self._message_ids.get(payload_type)
        if ident is None:
            base = ANY_JSON if payload_type is ANY_JSON else _ident(_type_name(payload_type))
            ident, n = base, 1
            while ident in self.messages:  # two types of one name, from different modules
                n += 1
                ident = f"{base}_{n}"
            self._message_ids[payload_type] = ident
            self._types[ident] = payload_type
            self.messages[ident] = {
                "name": ident,
                "title": ident,
                "contentType": content_type or _content_type(payload_type),
                "summary": "Any JSON value (the consumer declares no payload type)."
                if payload_type is ANY_JSON
                else _summary(payload_type),
                "payload": {} if payload_type is ANY_JSON else {"$ref": f"#/components/schemas/{ident}"},
                "bindings": {"amqp": {"bindingVersion": AMQP_BINDING_VERSION}},
            }
        self.channels[channel]["messages"][ident] = {"$ref": f"#/components/messages/{ident}"}
        return ident

    def _operation(self, ident: str, operation: dict[str, Any]) -> None:
        name, n = ident, 1
        while name in self.operations:
            n += 1
            name = f"{ident}_{n}"
        self.operations[name] = operation

    def schemas(self) -> dict[str, Any]:
        """JSON Schemas of every payload type, keyed by message id, with the types they refer to."""
        typed = {ident: t for ident, t in self._types.items() if t is not ANY_JSON}
        return json_schemas(typed)


def _publish_binding() -> dict[str, Any]:
    return {"deliveryMode": wire.PERSISTENT, "timestamp": True, "bindingVersion": AMQP_BINDING_VERSION}


def _failure_policy(consumer: Consumer, dead_queue: str) -> str:
    if consumer.backoff is None:
        # the delays a failing message actually waits: hutch-schedule's back-off, rounded up to a level
        waits = [wire.delay_level(wire.retry_backoff(failures)) for failures in range(consumer.retries)]
        backoff = f"hutch-schedule's back-off of failures**4 + 2 seconds (waits of {waits} s)"
    else:
        backoff = f"the back-off {getattr(consumer.backoff, '__qualname__', 'function')}(failures)"
    handler = getattr(consumer.handler, "__qualname__", "the handler")
    parts = [
        f"Handled by {handler}; acknowledged when it returns.",
        f"A failing message is retried {consumer.retries} time(s), each after {backoff} or the delay "
        f"a Retry(in_=...) asks for, rounded up to a delay level and parked until due; then it goes to "
        f"the dead queue {dead_queue!r} with the error in its headers.",
        "A body that does not fit the payload type, or a Dead raised by the handler, goes to the dead "
        "queue at once.",
        f"A message whose deliveries end {consumer.max_deliveries} times unsettled (a crashed worker) "
        "goes to the dead queue too.",
    ]
    if consumer.timeout is not None:
        parts.append(f"A handler running over {consumer.timeout:g} s is cancelled and counts a failure.")
    if consumer.rate is not None:
        parts.append("Messages are held back by the consumer's rate limit.")
    return " ".join(parts)


def json_schemas(types_by_name: dict[str, Any]) -> dict[str, Any]:
    """A JSON Schema per named payload type, and those of the types they nest, for ``components.schemas``.

    pydantic makes them when it is installed and accepts the type; otherwise (no pydantic, or a
    ``typing.TypedDict`` that pydantic refuses before Python 3.12) :func:`basic_schema` does.
    """
    schemas: dict[str, Any] = {}
    for name, payload_type in types_by_name.items():
        if protobuf.is_message_type(payload_type):  # its JSON mapping; the binary form has the same fields
            schemas[name] = protobuf.json_schema(payload_type)
            continue
        made = _pydantic_schema(payload_type)
        if made is None:
            schemas[name] = basic_schema(payload_type)
            continue
        schema, nested = made
        schemas.update({key: value for key, value in nested.items() if key not in types_by_name})
        schemas[name] = schema
    return schemas


def _pydantic_schema(payload_type: Any) -> tuple[dict[str, Any], dict[str, Any]] | None:
    try:
        pydantic = importlib.import_module("pydantic")
    except ImportError:
        return None
    template = "#/components/schemas/{model}"
    try:
        if hasattr(payload_type, "model_json_schema"):
            schema: dict[str, Any] = payload_type.model_json_schema(ref_template=template)
        else:
            schema = pydantic.TypeAdapter(payload_type).json_schema(ref_template=template)
    except pydantic.PydanticUserError:
        return None
    nested = schema.pop("$defs", {})
    return schema, nested


def basic_schema(hint: Any) -> dict[str, Any]:
    """A JSON Schema of ``hint`` without pydantic: the shapes :mod:`event.payloads` checks, inlined."""
    origin = get_origin(hint)
    if hint is Any or hint is object:
        return {}
    if origin in (Union, types.UnionType):
        return {"anyOf": [basic_schema(option) for option in get_args(hint)]}
    if origin is Literal:
        return {"enum": list(get_args(hint))}
    if origin in (list, tuple, set, frozenset) or hint in (list, tuple, set, frozenset):
        args = get_args(hint)
        return {"type": "array", "items": basic_schema(args[0]) if args else {}}
    if origin is dict or hint is dict:
        args = get_args(hint)
        return {"type": "object", "additionalProperties": basic_schema(args[1]) if args else {}}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        hints = get_type_hints(hint)
        required = [
            f.name
            for f in dataclasses.fields(hint)
            if f.init and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        ]
        fields = [f.name for f in dataclasses.fields(hint) if f.init]
        return _object(hint, {name: hints.get(name, Any) for name in fields}, required)
    if is_typeddict(hint):
        return _object(hint, get_type_hints(hint), sorted(hint.__required_keys__))
    simple = {str: "string", int: "integer", float: "number", bool: "boolean", type(None): "null"}
    if hint in simple:
        return {"type": simple[hint]}
    return {}  # a type the payload check passes through as decoded


def _object(cls: Any, fields: dict[str, Any], required: list[str]) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "title": cls.__name__,
        "type": "object",
        "properties": {name: basic_schema(hint) for name, hint in fields.items()},
    }
    if required:
        schema["required"] = required
    return schema


def _servers(url: str) -> dict[str, Any]:
    servers: dict[str, Any] = {}
    for index, one in enumerate(split_urls(url)):
        parts = urlsplit(one)
        host = parts.hostname or "localhost"
        port = parts.port or (5671 if parts.scheme == "amqps" else 5672)
        servers[f"node{index}" if index else "broker"] = {
            "host": f"{host}:{port}",  # never the credentials
            "pathname": _vhost(one),
            "protocol": parts.scheme,
            "protocolVersion": "0.9.1",
        }
    return servers


def _vhost(url: str) -> str:
    path = urlsplit(split_urls(url)[0]).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def _summary(payload_type: Any) -> str:
    doc = (payload_type.__doc__ or "").strip().split("\n")[0]
    name = _type_name(payload_type)
    # a dataclass without a docstring gets its signature as one: not a summary
    return doc if doc and not doc.startswith(f"{name}(") else f"A {name}."


def _type_name(payload_type: Any) -> str:
    if protobuf.is_message_type(payload_type):
        return protobuf.type_name(payload_type)
    return str(getattr(payload_type, "__name__", payload_type))


def _content_type(payload_type: Any) -> str:
    """The content type a payload type is published with by default."""
    return protobuf.CONTENT_TYPE if protobuf.is_message_type(payload_type) else wire.CONTENT_TYPE


def _ident(text: str) -> str:
    """``text`` as an AsyncAPI key (letters, digits, ``.``, ``-``, ``_``), topic wildcards spelt out."""
    spelt = text.replace("*", "star").replace("#", "hash")
    return re.sub(r"[^\w.\-]", "_", spelt)


def contracts_in(module: types.ModuleType) -> list[Contract[Any]]:
    """The contracts a module holds as attributes (its own and those it imports), in definition order."""
    return [value for value in vars(module).values() if isinstance(value, Contract)]
