"""A pool whose connection closes reconnects, redeclares, loses nothing; a refused declare never ends it."""

from __future__ import annotations

import asyncio
import itertools
import urllib.parse
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from relay_support import Relay, relayed
from support import Isolation, Management, eventually

from event import Message, Publisher, WorkerPool, wire
from event.config import redact_url
from event.connect import connect, rotated


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


async def test_a_declare_refused_while_reconnecting_keeps_the_pool_running_and_not_ready(
    pool_kwargs: dict[str, Any],
    iso: Isolation,
    management: Management,
    probe: Any,
    caplog: pytest.LogCaptureFixture,
) -> None:
    name = f"worker-{iso.namespace}"
    pool = WorkerPool(**pool_kwargs, name=name)
    handled: list[int] = []

    @pool.consumer("app.work")
    async def work(ctx: object, msg: Message[Any]) -> None:
        handled.append(msg.body["n"])

    delay_queue = wire.park_queue_name(iso.namespace, iso.exchange, 5)  # one the pool requires
    task = asyncio.create_task(pool.run(install_signal_handlers=False))
    async with Publisher(**pool_kwargs) as publisher:
        await pool.wait_until_ready()
        # Another client takes a park queue with other arguments: every redeclare of it is refused.
        channel = await probe.channel()
        await channel.queue_delete(delay_queue)
        await channel.queue_declare(delay_queue, durable=True, arguments={"x-max-length": 3})
        await eventually(lambda: management.close_connections(name) == 1, timeout=15, interval=0.5)
        await eventually(
            lambda: "declared the shared" in caplog.text or "already exists" in caplog.text, timeout=15
        )
        await asyncio.sleep(2)
        assert not task.done()  # run() goes on
        assert not pool.ready
        refused = [r.getMessage() for r in caplog.records if delay_queue in r.getMessage()]
        assert refused and "127.0.0.1" in refused[-1]  # which queue, which node
        await publisher.publish("app.work", {"n": 1})  # consumers whose queues are fine still consume
        await eventually(lambda: handled == [1], timeout=10)
        await channel.queue_delete(delay_queue)  # the way out: the pool declares its own again
        await eventually(lambda: pool.ready, timeout=15)
    pool.stop()
    await task


async def test_a_pool_given_several_nodes_reaches_the_one_that_answers(
    pool_kwargs: dict[str, Any], iso: Isolation, amqp_url: str
) -> None:
    dead = "amqp://guest:guest@127.0.0.1:1/"
    for start in (0, 1):
        connection = await connect(f"{dead},{amqp_url}", name=f"probe-{iso.namespace}", start=start)
        assert connection.node.startswith(redact_url(amqp_url).rstrip("/"))
        await connection.close()
    pool = WorkerPool(**{**pool_kwargs, "url": [dead, amqp_url]})

    @pool.consumer("app.work")
    async def work(ctx: object, msg: Message[Any]) -> None:
        pass

    async with pool.running():
        assert pool.ready


@given(st.lists(st.text(min_size=1), min_size=1, max_size=6, unique=True), st.integers(0, 100))
def test_nodes_are_tried_from_the_start_node_round_the_list(urls: list[str], start: int) -> None:
    order = rotated(urls, start % len(urls))
    assert sorted(order) == sorted(urls)  # each once
    assert order[0] == urls[start % len(urls)]
    assert all(urls[(urls.index(a) + 1) % len(urls)] == b for a, b in itertools.pairwise(order))


async def test_a_connection_cut_while_the_pool_starts_is_reconnected_not_fatal(
    pool_kwargs: dict[str, Any], iso: Isolation
) -> None:
    # Cut at the commands channel's first frame: the consumers consume already, the start is not over.
    # The pool must neither have said it was ready nor give up: it reconnects, as for any loss.
    parts = urllib.parse.urlsplit(pool_kwargs["url"])
    relay = Relay(
        (parts.hostname or "127.0.0.1", parts.port or 5672),
        cut_when=wire.control_exchange_name(iso.exchange).encode(),
    )
    await relay.start()
    pool = WorkerPool(**{**pool_kwargs, "url": relayed(pool_kwargs["url"], relay.port)})
    got: list[int] = []

    @pool.consumer("app.x")
    async def x(ctx: object, msg: Message[Any]) -> None:
        got.append(msg.body["n"])

    try:
        async with pool.running():
            assert relay.cuts == 1, "the relay never saw the commands channel: the test tests nothing"
            assert pool.ready
            async with Publisher(**pool_kwargs) as publisher:
                await publisher.publish("app.x", {"n": 1})
            await eventually(lambda: got == [1])
    finally:
        await relay.close()
