"""Messages shaped exactly as Hutch and hutch-schedule shape them, in both directions (docs/hutch.md)."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

from aiormq import spec
from support import Isolation, Probe, eventually

from event import Message, Publisher, WorkerPool, wire


async def hutch_consumer_queue(probe: Probe, iso: Isolation, name: str, *keys: str) -> str:
    """What Hutch declares for a Ruby consumer class: a durable queue bound once per routing key."""
    channel = await probe.channel()
    queue = f"{iso.namespace}:{name}"
    await channel.exchange_declare(iso.exchange, exchange_type="topic", durable=True)
    await channel.queue_declare(queue, durable=True)
    for key in keys:
        await channel.queue_bind(queue, iso.exchange, routing_key=key)
    return queue


async def test_python_publishes_what_a_ruby_consumer_reads(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    queue = await hutch_consumer_queue(probe, iso, "send_welcome_email", "app.user.signed_up")
    async with Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.user.signed_up", {"user_id": 42})
    [got] = await probe.take_all(queue)
    props = got.header.properties
    assert json.loads(got.body) == {"user_id": 42}  # a JSON object: a Hash in Ruby
    assert (props.content_type, props.delivery_mode) == ("application/json", 2)
    assert uuid.UUID(props.message_id)
    assert props.timestamp is not None


async def test_a_python_delayed_message_reaches_a_ruby_consumer_after_its_delay(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    queue = await hutch_consumer_queue(probe, iso, "send_reminder", "app.reminder")
    async with Publisher(**pool_kwargs) as publisher:
        sent = time.monotonic()
        await publisher.publish_in(2, "app.reminder", {"n": 1})

    async def arrived() -> bool:
        return await probe.depth(queue) == 1

    await eventually(arrived, timeout=15)
    waited = time.monotonic() - sent
    assert 2 <= waited <= 6.5
    [got] = await probe.take_all(queue)
    assert got.header.properties.headers["CC"] == ["app.reminder"]
    assert json.loads(got.body) == {"n": 1}


async def test_a_hutch_schedule_delayed_message_reaches_a_python_consumer(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    pool = WorkerPool(**pool_kwargs)
    got: list[tuple[float, Message[Any]]] = []

    @pool.consumer("app.send_email")
    async def send_email(ctx: object, msg: Message[Any]) -> None:
        got.append((time.monotonic(), msg))

    async with pool.running():
        # hutch-schedule: its schedule exchange, the shared delay queue bound by the level's key, and a
        # publish there with CC = the real routing key.
        channel = await probe.channel()
        schedule = f"{iso.exchange}.schedule"
        await channel.exchange_declare(schedule, exchange_type="topic", durable=True)
        await channel.queue_bind(
            wire.delay_queue_name(iso.namespace, iso.exchange, 5), schedule, routing_key=f"{schedule}.5s"
        )
        sent = time.monotonic()
        await channel.basic_publish(
            b'{"to":"a@b.c"}',
            exchange=schedule,
            routing_key=f"{schedule}.5s",
            properties=spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                message_id=str(uuid.uuid4()),
                timestamp=datetime.fromtimestamp(int(time.time()), tz=UTC),
                headers={"CC": ["app.send_email"]},
                expiration="5000",
            ),
        )
        await eventually(lambda: len(got) == 1, timeout=15)
        await asyncio.sleep(0.3)
        await channel.exchange_delete(schedule)
    [(at, msg)] = got
    assert at - sent >= 5
    assert msg.routing_key == "app.send_email"
    assert msg.delivery_routing_key == f"{schedule}.5s"
    assert msg.attempt == 2  # hutch-schedule counts its own delay in x-death, and so does event (spec 6)
    assert msg.body == {"to": "a@b.c"}


async def test_python_and_ruby_consumers_share_a_queue_during_a_move(
    pool_kwargs: dict[str, Any], iso: Isolation, probe: Probe
) -> None:
    # The Ruby consumer's queue exists with its messages; the Python consumer of the same name takes over.
    queue = await hutch_consumer_queue(probe, iso, "send_welcome_email", "app.user.signed_up")
    async with Publisher(**pool_kwargs) as publisher:
        for n in range(20):
            await publisher.publish("app.user.signed_up", {"n": n})
    pool = WorkerPool(**pool_kwargs)
    handled: list[int] = []

    @pool.consumer("app.user.signed_up")
    async def send_welcome_email(ctx: object, msg: Message[Any]) -> None:
        handled.append(msg.body["n"])

    async with pool.running():
        await eventually(lambda: len(handled) == 20)
    assert sorted(handled) == list(range(20))
    assert await probe.depth(queue) == 0
