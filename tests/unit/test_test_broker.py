"""The in-memory broker's own rules, where the shared scenario suite does not reach (no RabbitMQ here)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from event import Message, Publisher, Unroutable, WorkerPool, wire
from event.driver import PreconditionFailed, Properties, ResourceLocked
from event.testing import NotEmulatedWarning, TestBroker

URL = "amqp://nobody:nothing@127.0.0.1:1/"  # never dialled: the broker is in memory


async def test_mandatory_publish_with_no_queue_is_unroutable() -> None:
    publisher = Publisher(URL, namespace="t")
    async with TestBroker(publisher):
        with pytest.raises(Unroutable):
            await publisher.publish("app.nobody", {}, mandatory=True)
        await publisher.publish("app.nobody", {})  # dropped, as RabbitMQ drops it


async def test_max_length_drops_the_oldest_and_exclusive_queues_are_locked() -> None:
    broker = TestBroker()
    first = await broker.connect(URL, name="one")
    channel = await first.channel()
    await channel.queue_declare("q", arguments={"x-max-length": 2})
    for n in range(3):
        await channel.basic_publish(str(n).encode(), routing_key="q")
    assert [m.body for m in broker.queues["q"].messages] == [b"1", b"2"]

    await channel.queue_declare("lock", exclusive=True)
    other = await (await broker.connect(URL, name="two")).channel()
    with pytest.raises(ResourceLocked):
        await other.queue_declare("lock", exclusive=True)
    await first.close()
    assert "lock" not in broker.queues  # gone with its connection
    again = await (await broker.connect(URL, name="three")).channel()
    await again.queue_declare("lock", exclusive=True)


async def test_a_closed_channel_hands_its_unacked_messages_back_redelivered() -> None:
    broker = TestBroker()
    connection = await broker.connect(URL, name="c")
    channel = await connection.channel()
    await channel.queue_declare("q")
    await channel.basic_publish(b"x", routing_key="q")
    got = await channel.basic_get("q")
    assert got is not None and got.redelivered is False
    await channel.close()
    again = await (await connection.channel()).basic_get("q", no_ack=True)
    assert again is not None and (again.body, again.redelivered) == (b"x", True)


async def test_queue_arguments_must_match_on_redeclare() -> None:
    broker = TestBroker()
    channel = await (await broker.connect(URL, name="c")).channel()
    await channel.queue_declare("q", arguments={"x-max-length": 1})
    with pytest.raises(PreconditionFailed, match="inequivalent arg 'x-max-length'"):
        await channel.queue_declare("q", arguments={})
    channel = await (await broker.connect(URL, name="d")).channel()
    await channel.queue_declare("q", arguments={"x-max-length": 1, "x-note": "ignored"})
    assert broker.queues["q"].arguments == {"x-max-length": 1}  # the first declaration's stay


async def test_a_slow_rate_limit_waits_on_the_virtual_clock_not_the_real_one() -> None:
    pool = WorkerPool(URL, namespace="t")
    publisher = Publisher(URL, namespace="t")
    broker = TestBroker(pool, publisher)
    handled: list[float] = []

    @pool.consumer("app.rare", rate_limit="1/m")
    async def rare(ctx: object, msg: Message[Any]) -> None:
        handled.append(broker.now)

    started = time.monotonic()
    async with broker:
        for _ in range(3):
            await publisher.publish("app.rare", {})
        await broker.drain()
        assert len(handled) == 1  # the others wait for their time, and drain does not wait for them
        await broker.advance(120)
    assert [round(t - handled[0]) for t in handled] == [0, 60, 120]
    assert time.monotonic() - started < 5  # two virtual minutes, not real ones


async def test_the_virtual_clock_starts_at_the_real_time() -> None:
    before = time.time()
    broker = TestBroker()
    assert before <= broker.now <= time.time()
    assert broker.clock() == broker.now


async def test_the_pools_clock_follows_the_virtual_one_and_is_given_back() -> None:
    pool = WorkerPool(URL, namespace="t")

    @pool.consumer("app.a")
    async def a(ctx: object, msg: object) -> None: ...

    real = pool.clock
    async with TestBroker(pool, start=1000.0) as broker:
        assert pool.clock() == 1000.0
        await broker.advance(5)
        assert pool.clock() == 1005.0
    assert pool.clock is real


async def test_a_queue_feature_it_does_not_play_warns_instead_of_silently_differing() -> None:
    broker = TestBroker()
    channel = await (await broker.connect(URL, name="c")).channel()
    with pytest.warns(NotEmulatedWarning, match="x-single-active-consumer"):
        await channel.queue_declare("single", arguments={"x-single-active-consumer": True})
    with pytest.warns(NotEmulatedWarning, match="quorum"):
        await channel.queue_declare("qq", durable=True, arguments={"x-queue-type": "quorum"})


async def test_a_header_the_client_cannot_encode_raises_and_leaves_the_channel_open() -> None:
    broker = TestBroker()
    channel = await (await broker.connect(URL, name="c")).channel()
    await channel.queue_declare("q")
    with pytest.raises(TypeError, match="Unknown type"):
        await channel.basic_publish(b"x", routing_key="q", properties=Properties(headers={"t": (1,)}))
    await channel.basic_publish(b"y", routing_key="q")
    assert [m.body for m in broker.queues["q"].messages] == [b"y"]


async def test_leaving_with_rate_limited_messages_waiting_hands_them_back_at_once() -> None:
    pool = WorkerPool(URL, namespace="t")
    publisher = Publisher(URL, namespace="t")
    handled: list[int] = []

    @pool.consumer("app.rare", rate_limit="1/m")
    async def rare(ctx: object, msg: Message[Any]) -> None:
        handled.append(msg.body["n"])

    started = time.monotonic()
    async with TestBroker(pool, publisher) as broker:
        for n in range(3):
            await publisher.publish("app.rare", {"n": n})
        await broker.drain()
    assert handled == [0]  # the others never started: unacked, back in the queue, not run at exit
    assert time.monotonic() - started < 5  # not the pool's 30 s grace period
    queue = broker.queues["t:rare"]
    assert [m.redelivered for m in queue.messages] == [True, True]


async def test_a_batch_consumer_runs_its_lists_in_memory_too() -> None:
    pool = WorkerPool(URL, namespace="t")
    publisher = Publisher(URL, namespace="t")
    calls: list[list[int]] = []

    @pool.consumer("app.rows", batch=4, batch_wait=0.05)
    async def rows(ctx: object, msgs: list[Message[Any]]) -> None:
        calls.append([m.body["n"] for m in msgs])

    async with TestBroker(pool, publisher) as broker:
        for n in range(10):
            await publisher.publish("app.rows", {"n": n})
        await broker.drain()
    assert sorted(n for call in calls for n in call) == list(range(10))
    assert all(len(call) <= 4 for call in calls) and len(calls) >= 3


async def test_broker_retry_is_played_on_the_virtual_clock() -> None:
    pool = WorkerPool(URL, namespace="t")
    publisher = Publisher(URL, namespace="t")
    attempts: list[tuple[int, float]] = []
    broker = TestBroker(pool, publisher)

    @pool.consumer(
        "app.flaky", queue_type="quorum", retry="broker", retries=2, backoff=lambda n: 10 * (n + 1)
    )
    async def flaky(ctx: object, msg: Message[Any]) -> None:
        attempts.append((msg.attempt, broker.now))
        raise RuntimeError("no")

    with pytest.warns(NotEmulatedWarning, match="quorum"):
        async with broker:
            start = broker.now
            await publisher.publish("app.flaky", {})
            await broker.advance(60)
    assert [(a, round(t - start)) for a, t in attempts] == [(1, 0), (2, 10), (3, 30)]  # 10 s x count
    dead = broker.queues[wire.dead_queue_name("t", "hutch")].messages
    assert len(dead) == 1 and "no" in dead[0].props.headers["event-error"]
