"""A pool whose connection is closed by the broker reconnects, redeclares, and loses nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from support import Isolation, Management, eventually

from event import Message, Publisher, WorkerPool


async def test_pool_reconnects_after_the_broker_closes_its_connection(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management
) -> None:
    name = f"worker-{iso.namespace}"
    pool = WorkerPool(**pool_kwargs, name=name)
    handled: list[tuple[int, bool]] = []
    release = asyncio.Event()

    @pool.consumer("app.work")
    async def work(ctx: object, msg: Message[Any]) -> None:
        if msg.body["n"] == 0 and not msg.redelivered:
            await release.wait()  # in flight while the connection goes down
        handled.append((msg.body["n"], msg.redelivered))

    async with pool.running(), Publisher(**pool_kwargs) as publisher:
        await publisher.publish("app.work", {"n": 0})
        await eventually(lambda: pool.in_flight == 1)

        def closed() -> bool:
            return management.close_connections(name) == 1

        await eventually(closed, timeout=15, interval=0.5)
        release.set()  # the handler finishes after its channel died: its ack must not be sent anywhere
        await eventually(lambda: (0, True) in handled, timeout=30)  # redelivered on the new connection
        await asyncio.gather(*(publisher.publish("app.work", {"n": n}) for n in range(1, 51)))
        await eventually(lambda: len(handled) == 52, timeout=30)
        await asyncio.sleep(0.3)

    assert sorted(handled) == [(0, False), (0, True), *((n, False) for n in range(1, 51))]


async def test_publisher_reconnects_and_a_returned_publish_was_confirmed(
    pool_kwargs: dict[str, Any], iso: Isolation, management: Management, probe: Any
) -> None:
    channel = await probe.channel()
    queue = f"{iso.namespace}:sink"
    name = f"publisher-{iso.namespace}"
    async with Publisher(**pool_kwargs, connection_name=name) as publisher:
        await channel.queue_declare(queue, durable=True)
        await channel.queue_bind(queue, iso.exchange, routing_key="app.#")
        await publisher.publish("app.one", {"n": 1})

        def closed() -> bool:
            return management.close_connections(name) == 1

        await eventually(closed, timeout=15, interval=0.2)
        await publisher.publish("app.two", {"n": 2})  # waits for a new connection, then confirms
    bodies = sorted(m.body for m in await probe.take_all(queue))
    assert bodies == [b'{"n":1}', b'{"n":2}']


async def test_publisher_gives_up_after_its_reconnect_timeout(amqp_url: str, iso: Isolation) -> None:
    import time as clock

    from event import ConnectionFailed

    publisher = Publisher(amqp_url, namespace=iso.namespace, exchange=iso.exchange, reconnect_timeout=1.5)
    async with publisher:
        publisher.url = "amqp://guest:guest@127.0.0.1:1/"  # the broker is gone for good
        assert publisher._connection is not None
        await publisher._connection.close()
        started = clock.monotonic()
        try:
            await publisher.publish("app.a", {})
        except ConnectionFailed as exc:
            assert "could not reconnect within 1.5 s" in str(exc)
        else:
            raise AssertionError("a publish without a broker returned")
        assert clock.monotonic() - started < 5
