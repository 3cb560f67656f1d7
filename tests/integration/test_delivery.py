"""Messages reach every matching consumer exactly once, with Hutch's properties both ways."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import aiormq
from aiormq import spec
from support import Isolation, eventually

from event import Context, Message, Publisher, WorkerPool


async def test_ten_thousand_messages_reach_each_matching_consumer_exactly_once(
    pool_kwargs: dict[str, Any],
) -> None:
    pool = WorkerPool(**pool_kwargs, concurrency=100)
    seen: dict[str, Counter[str]] = {"email": Counter(), "users": Counter(), "both": Counter()}

    @pool.consumer("app.send_email", prefetch=200)
    async def email(ctx: object, msg: Message[Any]) -> None:
        seen["email"][msg.body["id"]] += 1

    @pool.consumer("app.user.*", prefetch=200)
    async def users(ctx: object, msg: Message[Any]) -> None:
        seen["users"][msg.body["id"]] += 1

    @pool.consumer("app.send_email", "app.user.*", prefetch=200)
    async def both(ctx: object, msg: Message[Any]) -> None:
        seen["both"][msg.body["id"]] += 1

    emails = [f"e{i}" for i in range(5000)]
    signups = [f"u{i}" for i in range(5000)]
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        for chunk in range(0, 5000, 500):
            await asyncio.gather(
                *(publisher.publish("app.send_email", {"id": i}) for i in emails[chunk : chunk + 500]),
                *(publisher.publish("app.user.signed_up", {"id": i}) for i in signups[chunk : chunk + 500]),
            )
        await publisher.publish("app.user.deep.key", {"id": "nobody"})  # '*' matches one word only
        await eventually(lambda: sum(seen["both"].values()) >= 10000, timeout=120)
        await asyncio.sleep(0.5)  # anything extra would show up now

    assert seen["email"] == Counter(dict.fromkeys(emails, 1))
    assert seen["users"] == Counter(dict.fromkeys(signups, 1))
    assert seen["both"] == Counter(dict.fromkeys(emails + signups, 1))


async def test_publisher_sets_exactly_hutchs_properties(pool_kwargs: dict[str, Any], iso: Isolation) -> None:
    connection = await aiormq.connect(pool_kwargs["url"])
    channel = await connection.channel()
    queue = f"{iso.namespace}:probe"
    try:
        async with Publisher(**pool_kwargs) as publisher:
            await channel.queue_declare(queue, durable=True)
            await channel.queue_bind(queue, iso.exchange, routing_key="app.send_email")
            before = int(time.time())
            await publisher.publish("app.send_email", {"to": "a@b.c"})
            after = int(time.time())
        got = await channel.basic_get(queue, no_ack=True)
        props = got.header.properties
        assert got.body == b'{"to":"a@b.c"}'
        assert got.delivery.routing_key == "app.send_email"
        assert got.delivery.exchange == iso.exchange
        assert props.content_type == "application/json"
        assert props.delivery_mode == 2
        assert uuid.UUID(props.message_id).version == 4
        assert str(uuid.UUID(props.message_id)) == props.message_id
        assert before <= props.timestamp.timestamp() <= after
        assert props.timestamp.timestamp() == int(props.timestamp.timestamp())
        assert not props.headers
        unset = ("content_encoding", "priority", "correlation_id", "reply_to", "expiration", "message_type")
        assert all(getattr(props, name) is None for name in unset)
    finally:
        await connection.close()


async def test_a_message_shaped_by_hutch_is_consumed(pool_kwargs: dict[str, Any], iso: Isolation) -> None:
    pool = WorkerPool(**pool_kwargs)
    received: list[Message[Any]] = []

    @pool.consumer("app.send_email")
    async def send_email(ctx: object, msg: Message[Any]) -> None:
        received.append(msg)

    message_id = str(uuid.uuid4())
    async with pool.running():
        # What Hutch's publisher puts on the wire: JSON, persistent, a UUID, a timestamp, no headers.
        connection = await aiormq.connect(pool_kwargs["url"])
        channel = await connection.channel()
        await channel.basic_publish(
            b'{"to":"ruby@example.com"}',
            exchange=iso.exchange,
            routing_key="app.send_email",
            properties=spec.Basic.Properties(
                content_type="application/json",
                delivery_mode=2,
                message_id=message_id,
                timestamp=datetime.fromtimestamp(int(time.time()), tz=UTC),
            ),
        )
        await connection.close()
        await eventually(lambda: len(received) == 1)
    msg = received[0]
    assert (msg.routing_key, msg.body, msg.message_id, msg.attempt) == (
        "app.send_email",
        {"to": "ruby@example.com"},
        message_id,
        1,
    )
    assert msg.queue == f"{iso.namespace}:send_email"
    assert msg.redelivered is False


async def test_context_is_new_per_message_and_shared_with_middleware(pool_kwargs: dict[str, Any]) -> None:
    pool = WorkerPool(**pool_kwargs)
    contexts: list[Any] = []
    order: list[str] = []

    class MailContext(Context):
        user: str | None = None

    @pool.middleware
    async def outer(ctx: MailContext, msg: Message[Any], call_next: Any) -> Any:
        order.append("pool")
        ctx.user = msg.body["user"]
        return await call_next()

    async def own(ctx: MailContext, msg: Message[Any], call_next: Any) -> Any:
        order.append("consumer")
        return await call_next()

    @pool.consumer("app.send_email", context=MailContext, middleware=(own,))
    async def send_email(ctx: MailContext, msg: Message[Any]) -> None:
        contexts.append(ctx)

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.send_email", {"user": "ada"})
        await publisher.publish("app.send_email", {"user": "bob"})
        await eventually(lambda: len(contexts) == 2)
    assert sorted(ctx.user for ctx in contexts) == ["ada", "bob"]
    assert contexts[0] is not contexts[1]
    assert all(isinstance(ctx, MailContext) for ctx in contexts)
    assert order == ["pool", "consumer", "pool", "consumer"]


async def test_plain_def_handlers_run_in_threads(pool_kwargs: dict[str, Any]) -> None:
    import threading

    pool = WorkerPool(**pool_kwargs, threads=4)
    threads: list[str] = []

    @pool.consumer("app.sync")
    def blocking(ctx: object, msg: Message[Any]) -> None:
        time.sleep(0.05)
        threads.append(threading.current_thread().name)

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await asyncio.gather(*(publisher.publish("app.sync", {"n": n}) for n in range(8)))
        await eventually(lambda: len(threads) == 8)
    assert all(name.startswith("event-handler") for name in threads)


async def test_bodies_larger_than_a_frame_arrive_whole(pool_kwargs: dict[str, Any]) -> None:
    """The broker splits a body over several frames (131,072 bytes at most each, by default): the
    frame reader must hand every piece on, in order, with the properties of the header before it."""
    pool = WorkerPool(**pool_kwargs)
    got: dict[str, tuple[str, str | None]] = {}

    @pool.consumer("app.big")
    async def big(ctx: object, msg: Message[Any]) -> None:
        got[msg.body["size"]] = (msg.body["pad"], msg.message_id)

    sizes = [131_000, 131_072 * 3 + 17, 2_000_000]
    pads = {str(size): "".join(chr(ord("a") + (i * 7) % 26) for i in range(size)) for size in sizes}
    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        for size, pad in pads.items():
            await publisher.publish("app.big", {"size": size, "pad": pad}, message_id=f"big-{size}")
        await eventually(lambda: len(got) == len(sizes), timeout=30)
    assert got == {size: (pad, f"big-{size}") for size, pad in pads.items()}
