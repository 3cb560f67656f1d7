"""Pausing a pool's consumers (event.pausing, event.control), on the in-memory broker."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from event import ConfigurationError, Message, Publisher, WorkerPool, control
from event.metrics import exposition
from event.sending import Sender
from event.testing import TestBroker

URL = "amqp://nobody:nothing@127.0.0.1:1/"  # never dialled: the broker is in memory


def two_consumer_pool() -> tuple[WorkerPool, dict[str, list[int]]]:
    pool = WorkerPool(URL, namespace="shop", exchange="ex")
    seen: dict[str, list[int]] = {"orders": [], "mails": []}

    @pool.consumer("shop.order", queue="orders")
    async def orders(ctx: object, msg: Message[Any]) -> None:
        seen["orders"].append(msg.body["n"])

    @pool.consumer("shop.mail", queue="mails")
    async def mails(ctx: object, msg: Message[Any]) -> None:
        seen["mails"].append(msg.body["n"])

    return pool, seen


async def publish_both(publisher: Publisher, numbers: range) -> None:
    for n in numbers:
        await publisher.publish("shop.order", {"n": n})
        await publisher.publish("shop.mail", {"n": n})


async def test_a_paused_queue_waits_while_the_others_flow_and_resume_drains_it() -> None:
    pool, seen = two_consumer_pool()
    publisher = Publisher(URL, namespace="shop", exchange="ex")
    async with TestBroker(pool, publisher) as broker:
        await pool.pause("shop:orders")
        await pool.pause("shop:orders")  # twice is once
        assert pool.paused == {"shop:orders"}
        metrics = exposition(pool.registry).decode()
        assert 'event_consumer_paused{queue="shop:orders"} 1.0' in metrics
        assert 'event_consumer_paused{queue="shop:mails"} 0.0' in metrics
        await publish_both(publisher, range(5))
        await broker.drain()
        assert seen == {"orders": [], "mails": [0, 1, 2, 3, 4]}
        assert len(broker.queues["shop:orders"].messages) == 5
        await pool.resume("shop:orders")
        await broker.drain()
        assert sorted(seen["orders"]) == [0, 1, 2, 3, 4]
        assert pool.paused == frozenset()
        assert 'event_consumer_paused{queue="shop:orders"} 0.0' in exposition(pool.registry).decode()


async def test_pausing_a_queue_the_pool_does_not_consume_names_its_queues() -> None:
    pool, _ = two_consumer_pool()
    async with TestBroker(pool):
        with pytest.raises(ConfigurationError, match="no consumer queue 'shop:nothing'"):
            await pool.pause("shop:nothing")


async def test_a_command_on_the_control_exchange_reaches_the_pool() -> None:
    pool, seen = two_consumer_pool()
    other, other_seen = two_consumer_pool()  # a second worker of the namespace
    publisher = Publisher(URL, namespace="shop", exchange="ex")
    async with TestBroker(pool, other, publisher) as broker:
        sender = Sender.over(await broker.connect(URL, name="operator"))
        await control.send_command(
            sender, control.Command("pause", "shop:mails"), namespace="shop", exchange="ex"
        )
        await broker.drain()
        assert pool.paused == other.paused == {"shop:mails"}
        await publish_both(publisher, range(4))
        await broker.drain()
        assert seen["mails"] == other_seen["mails"] == []
        assert sorted(seen["orders"] + other_seen["orders"]) == [0, 1, 2, 3]
        await control.send_command(
            sender, control.Command("resume", "shop:mails"), namespace="shop", exchange="ex"
        )
        await broker.drain()
        assert sorted(seen["mails"] + other_seen["mails"]) == [0, 1, 2, 3]


@given(st.sampled_from(control.ACTIONS), st.text(min_size=1))
def test_a_command_survives_encoding(action: str, queue: str) -> None:
    command = control.Command(action, queue)
    assert control.decode_command(control.encode_command(command)) == command


@given(st.binary())
def test_anything_else_on_the_control_queue_decodes_to_none_not_an_error(raw: bytes) -> None:
    decoded = control.decode_command(raw)
    assert decoded is None or isinstance(decoded, control.ReportRequest) or decoded.action in control.ACTIONS


@given(st.text(min_size=1))
def test_a_report_request_survives_encoding_and_an_empty_reply_queue_is_refused(reply_to: str) -> None:
    request = control.ReportRequest(reply_to)
    assert control.decode_command(control.encode_command(request)) == request
    assert control.decode_command(b'{"action": "report", "reply_to": ""}') is None
    assert control.decode_command(b'{"action": "report"}') is None
