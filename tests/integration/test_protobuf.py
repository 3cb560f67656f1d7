"""Protobuf payloads on the real broker: binary and JSON round trips, a retry, bad bodies dead-queued."""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from protobuf_messages import Item, Order
from support import Isolation, Probe, eventually

from event import Context, Contract, Message, Publisher, WorkerPool, wire

ORDER_JSON = Contract("shop.order.json", Order, content_type="application/json")


def an_order(order_id: str = "o-1") -> Any:
    return Order(
        order_id=order_id,
        total_cents=12_345_678_901,  # past 32 bits: the JSON mapping writes it as a string
        items=[Item(sku="tea", quantity=2)],
        status=Order.PAID,
        labels={"gift": "yes"},
    )


async def test_a_protobuf_message_goes_binary_and_comes_back_typed_also_after_a_retry(
    pool_kwargs: dict[str, Any],
) -> None:
    pool = WorkerPool(**pool_kwargs)
    seen: list[tuple[int, Any, bytes]] = []

    @pool.consumer("shop.order", retries=1, backoff=lambda failures: 0)  # the shortest level, 5 s
    async def order(ctx: Context, msg: Message[Order]) -> None:
        seen.append((msg.attempt, msg.body, msg.raw))
        if msg.attempt == 1:
            raise RuntimeError("warehouse busy")

    sent = an_order()
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("shop.order", sent, mandatory=True)
        await eventually(lambda: len(seen) == 2, timeout=20)

    assert [attempt for attempt, _, _ in seen] == [1, 2]
    for _, body, raw in seen:
        assert isinstance(body, Order)
        assert body == sent
        assert raw == sent.SerializeToString()  # binary on the wire, the retry copy too


async def test_json_bodies_from_another_client_and_a_json_contract_are_read_by_the_mapping(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    got: dict[str, tuple[Any, bytes]] = {}

    @pool.consumer("shop.order.ruby", "shop.order.json")
    async def order(ctx: Context, msg: Message[Any], payload: Order) -> None:
        got[msg.routing_key] = (payload, msg.raw)

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        # As a Ruby service publishes it: Hutch's JSON, the .proto's field names, a field added since.
        ruby = {"order_id": "o-2", "total_cents": 5, "items": [{"sku": "jam"}], "status": "SHIPPED", "new": 1}
        await probe.publish(
            iso.exchange, "shop.order.ruby", orjson.dumps(ruby), content_type="application/json"
        )
        await publisher.to(ORDER_JSON).publish(an_order("o-3"))
        await eventually(lambda: len(got) == 2)

    ruby_order, _ = got["shop.order.ruby"]
    assert ruby_order == Order(order_id="o-2", total_cents=5, items=[Item(sku="jam")], status=Order.SHIPPED)
    json_order, raw = got["shop.order.json"]
    assert json_order == an_order("o-3")
    assert orjson.loads(raw)["totalCents"] == "12345678901"  # published in the JSON mapping


async def test_bodies_that_do_not_parse_go_to_the_dead_queue_with_the_reason(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    handled: list[Any] = []

    @pool.consumer("shop.order", retries=3)
    async def order(ctx: Context, msg: Message[Order]) -> None:
        handled.append(msg.body)

    dead_queue = wire.dead_queue_name(iso.namespace, iso.exchange)
    async with pool.running():
        bodies = [
            ("bin", b"not protobuf", "application/x-protobuf"),
            ("json", b'{"total_cents": "many"}', "application/json"),
            ("xml", b"<order/>", "text/xml"),
        ]
        for message_id, body, content_type in bodies:
            await probe.publish(
                iso.exchange, "shop.order", body, content_type=content_type, message_id=message_id
            )

        async def all_dead() -> bool:
            return await probe.depth(dead_queue) == 3

        await eventually(all_dead)
        await asyncio.sleep(0.2)

    assert handled == []
    errors = {
        m.header.properties.message_id: m.header.properties.headers[wire.H_ERROR]
        for m in await probe.take_all(dead_queue)
    }
    assert errors["bin"].startswith(
        "DecodeError: body is not a valid eventtest.shop.Order protobuf message (Error parsing message"
    )
    assert errors["bin"].endswith("it starts with b'not protobuf'")
    assert errors["json"].startswith(
        "ValidationError: payload does not fit the eventtest.shop.Order protobuf message: "
        "Failed to parse total_cents field"
    )
    assert errors["xml"] == (
        "DecodeError: content type 'text/xml' is neither application/x-protobuf nor application/json, "
        "the two that eventtest.shop.Order protobuf messages are read from"
    )
