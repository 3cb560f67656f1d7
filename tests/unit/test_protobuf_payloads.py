"""Protobuf payloads without a broker: reading by content type, publishing, contracts, the AsyncAPI schema."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonschema
import orjson
import pytest
from protobuf_messages import Item, Order

from event import (
    ConfigurationError,
    Context,
    Contract,
    DecodeError,
    Message,
    Publisher,
    ValidationError,
    WorkerPool,
    asyncapi,
)
from event.payloads import converter, payload_spec
from event.protobuf import is_message, is_message_type, json_schema, loader, to_json
from event.publisher import encode_payload
from event.testing import TestBroker

SPEC = Path(__file__).resolve().parents[1] / "asyncapi_spec"
ASYNCAPI = jsonschema.Draft7Validator(json.loads((SPEC / "asyncapi-3.0.0.schema.json").read_text()))


@dataclass
class Plain:
    n: int


ORDER = Order(order_id="o-1", total_cents=7, items=[Item(sku="tea", quantity=2)], status=Order.PAID)


def test_a_body_is_read_by_its_content_type() -> None:
    load = loader(Order)
    binary = ORDER.SerializeToString()
    assert load(binary, "application/x-protobuf") == ORDER
    assert load(binary, "application/protobuf; proto=eventtest.shop.Order") == ORDER
    camel = orjson.dumps(to_json(ORDER))
    snake = orjson.dumps(to_json(ORDER, proto_names=True))
    assert b"orderId" in camel and b"order_id" in snake
    assert load(camel, "application/json") == load(snake, None) == ORDER  # None: Hutch's JSON


def test_what_does_not_parse_names_the_message_type_and_the_error() -> None:
    load = loader(Order)
    with pytest.raises(
        DecodeError, match=r"not a valid eventtest\.shop\.Order protobuf message \(Error parsing"
    ):
        load(b"\xff\xff\xff", "application/x-protobuf")
    with pytest.raises(DecodeError, match=r"body is not valid JSON .* for the eventtest\.shop\.Order"):
        load(b"{", "application/json")
    with pytest.raises(ValidationError, match=r"does not fit the eventtest\.shop\.Order .*items"):
        load(b'{"items": "tea", "status": "LOST"}', "application/json")  # an unknown enum name is ignored
    with pytest.raises(ValidationError, match="expected a JSON object"):
        load(b"[1]", "application/json")
    with pytest.raises(DecodeError, match="content type 'text/plain' is neither"):
        load(b"x", "text/plain")


def test_a_handler_typed_with_a_message_class_gets_a_loader_and_a_converter() -> None:
    async def typed(ctx: Context, msg: Message[Order]) -> None: ...

    async def argument(ctx: Context, msg: Message[Any], payload: Order) -> None: ...

    for handler, as_argument in ((typed, False), (argument, True)):
        spec = payload_spec(handler)
        assert spec is not None and spec.type is Order and spec.as_argument is as_argument
        assert (
            spec.load is not None and spec.load(ORDER.SerializeToString(), "application/x-protobuf") == ORDER
        )
        assert spec.convert(to_json(ORDER)) == ORDER


def test_other_payload_types_keep_the_json_path() -> None:
    async def handler(ctx: Context, msg: Message[Plain]) -> None: ...

    spec = payload_spec(handler)
    assert spec is not None and spec.load is None  # decode() then convert, as before
    assert not is_message_type(Plain) and not is_message(Plain(1)) and not is_message_type(None)


def test_a_message_nested_in_a_dataclass_is_read_from_its_json_mapping() -> None:
    @dataclass
    class Shipment:
        order: Order  # type: ignore[valid-type]  # Order is built at run time
        carrier: str

    made = converter(Shipment)({"order": {"orderId": "o-9"}, "carrier": "post"})
    assert made == Shipment(order=Order(order_id="o-9"), carrier="post")
    with pytest.raises(ValidationError, match="field 'order': payload does not fit"):
        converter(Shipment)({"order": {"totalCents": "many"}, "carrier": "post"})


def test_publishing_a_message_picks_binary_and_anything_else_json() -> None:
    assert encode_payload("shop.order", ORDER) == (ORDER.SerializeToString(), "application/x-protobuf")
    assert encode_payload("shop.order", to_json(ORDER)) == (orjson.dumps(to_json(ORDER)), "application/json")
    assert encode_payload("shop.order", Order()) == (b"", "application/x-protobuf")  # empty, still binary


def test_a_contracts_content_type_defaults_by_type_and_is_checked() -> None:
    assert Contract("shop.order", Order).content_type == "application/x-protobuf"
    assert Contract("shop.order", Order, content_type="application/json").content_type == "application/json"

    assert Contract("app.plain", Plain).content_type == "application/json"
    with pytest.raises(
        ConfigurationError, match=r"content_type 'application/x-protobuf' of contract 'app\.plain'"
    ):
        Contract("app.plain", Plain, content_type="application/x-protobuf")
    with pytest.raises(ConfigurationError, match="content_type 'text/xml'"):
        Contract("shop.order", Order, content_type="text/xml")


def test_the_asyncapi_document_gives_the_content_type_and_the_json_mapping_schema() -> None:
    doc = asyncapi.document(
        contracts=[
            Contract("shop.order", Order),
            Contract("shop.item", Item, content_type="application/json"),
        ]
    )
    errors = [e.message for e in ASYNCAPI.iter_errors(doc)]
    assert not errors, errors
    messages = doc["components"]["messages"]
    assert messages["eventtest.shop.Order"]["contentType"] == "application/x-protobuf"
    assert messages["eventtest.shop.Item"]["contentType"] == "application/json"
    schema = doc["components"]["schemas"]["eventtest.shop.Order"]
    assert schema == json_schema(Order)
    assert set(schema["properties"]) == {"orderId", "totalCents", "items", "status", "labels"}
    assert schema["properties"]["totalCents"] == {"type": "string", "format": "int64"}
    assert schema["properties"]["status"]["enum"] == ["STATUS_UNSPECIFIED", "PAID", "SHIPPED"]
    assert schema["properties"]["labels"] == {"type": "object", "additionalProperties": {"type": "string"}}
    validator = jsonschema.Draft7Validator(schema)
    assert not list(validator.iter_errors(to_json(Order(total_cents=2**40, labels={"a": "b"}, status=2))))
    assert list(validator.iter_errors({"totalCents": 5}))  # the mapping writes 64-bit integers as strings


async def test_the_in_memory_broker_carries_protobuf_messages_and_keeps_their_bodies_as_bytes() -> None:
    url = "amqp://nobody:nothing@127.0.0.1:1/"
    pool = WorkerPool(url, namespace="t")
    got: list[Any] = []

    @pool.consumer("shop.order")
    async def order(ctx: Context, msg: Message[Order]) -> None:
        got.append(msg.body)

    publisher = Publisher(url, namespace="t")
    async with TestBroker(pool, publisher) as broker:
        await publisher.publish("shop.order", ORDER)
        await publisher.publish_in(30, "shop.order", ORDER)
        await broker.advance(30)
    assert got == [ORDER, ORDER]
    assert [Order.FromString(p) for p in broker.published("shop.order")] == [ORDER, ORDER]


NO_PROTOBUF = textwrap.dedent(
    """
    import sys
    sys.modules["google.protobuf"] = None  # as if not installed
    import asyncio, json
    from dataclasses import dataclass
    from event import Message, Publisher, WorkerPool
    from event.testing import TestBroker

    @dataclass
    class Plain:
        n: int

    async def main():
        pool = WorkerPool("amqp://nobody:nothing@127.0.0.1:1/", namespace="t")
        seen = []

        @pool.consumer("app.plain")
        async def plain(ctx, msg: Message[Plain]) -> None:
            seen.append(msg.body.n)

        sender = Publisher("amqp://nobody:nothing@127.0.0.1:1/", namespace="t")
        async with TestBroker(pool, sender) as broker:
            await sender.publish("app.plain", Plain(3))
            await broker.drain()
        imported = sorted(m for m in sys.modules if m.startswith("google"))
        print(json.dumps({"seen": seen, "imported": imported}))

    asyncio.run(main())
    """
)


def test_without_protobuf_typed_payloads_work_and_nothing_of_it_is_imported() -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_PROTOBUF], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["seen"] == [3]
    assert report["imported"] in ([], ["google.protobuf"])  # at most the blocking entry itself
